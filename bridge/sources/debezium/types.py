"""Compile a Kafka Connect schema (as the JsonConverter writes it) into a plan that decodes rows exactly.

Debezium repeats the full schema on every record, so the decoder compiles each distinct schema once
(debezium.records caches plans by the schema's JSON text) and then decodes a row with one converter
call per column: no per-value type dispatch, no second look at the schema.

The semantic `name` decides the Python value (io.debezium.time.MicroTimestamp -> naive datetime, Connect
Decimal -> Decimal, ...); without a name the Connect type does (int32 -> int, string -> str). A plain
string or double carries no hint that it was a numeric column (decimal.handling.mode=string/double);
the caller can name such columns (`numeric_columns`) so they decode to Decimal too.

Every converter type-checks its input, so a value that does not fit its schema raises ColumnError
(naming the column and what was expected) instead of flowing on as the wrong type.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from bridge.changes import UNKNOWN
from bridge.sources.debezium import values as v

Converter = Callable[[Any], Any]


class SchemaError(ValueError):
    """The schema itself is not a Connect schema the bridge understands."""


class ColumnError(ValueError):
    """One column's value does not fit its schema or declared type."""

    def __init__(self, column: str, expected: str, value: Any, cause: BaseException | None, *,
                 message: str | None = None) -> None:
        shown = repr(value)
        shown = shown if len(shown) <= 120 else shown[:117] + "..."
        reason = f" ({cause})" if cause is not None and str(cause) else ""
        super().__init__(f"column {column!r}: " + (message or f"expected {expected}, got {shown}{reason}"))
        self.column = column

    def located(self, where: str) -> ColumnError:
        """The same error, its message prefixed with where the row sits (e.g. "after of public.orders")."""
        self.args = (f"{where}: {self.args[0]}",)
        return self


class StructPlan:
    """Decodes one struct (a table row or a key) in place: fields of the JSON object become exact values."""

    __slots__ = ("name", "fields", "size")

    def __init__(self, name: str, fields: list[tuple[str, Converter, str, bool]]) -> None:
        self.name = name
        self.fields = tuple(fields)  # (field name, converter, what is expected, optional)
        self.size = len(fields)

    def decode(self, row: Any) -> dict[str, Any]:
        if row.__class__ is not dict:
            raise ColumnError(self.name, f"a JSON object for struct {self.name}", row, None)
        if len(row) != self.size:
            raise self._shape_error(row)
        for name, convert, expected, optional in self.fields:
            try:
                value = row[name]
            except KeyError:
                raise self._shape_error(row) from None
            if value is None:
                if not optional:
                    raise ColumnError(name, f"{expected} (the field is not optional)", value, None)
                continue
            try:
                row[name] = convert(value)
            except ColumnError:
                raise
            except Exception as exc:  # every converter failure becomes one clear message
                raise ColumnError(name, expected, value, exc) from exc
        return row

    def _shape_error(self, row: dict[str, Any]) -> ColumnError:
        expected = [name for name, *_ in self.fields]
        missing = [name for name in expected if name not in row]
        extra = [name for name in row if name not in expected]
        if missing:
            return ColumnError(missing[0], "", None, None, message=(
                f"missing: the schema {self.name} has it (and {len(missing) - 1} more missing: {missing[1:6]})"
                if len(missing) > 1 else f"missing: the schema {self.name} has it, the value does not"))
        return ColumnError(extra[0], "", None, None, message=(
            f"not in the schema {self.name} (fields not in the schema: {extra[:6]})"))


def compile_struct(schema: Any, forms: v.ToastForms, numeric_columns: Collection[str] = ()) -> StructPlan:
    """A plan for a struct schema; `numeric_columns` are plain string/double fields holding numerics."""
    if not isinstance(schema, Mapping) or schema.get("type") != "struct" or not isinstance(schema.get("fields"), list):
        raise SchemaError(f"expected a struct schema with fields, got {_brief(schema)}")
    fields = []
    for field in schema["fields"]:
        if not isinstance(field, Mapping) or not isinstance(field.get("field"), str):
            raise SchemaError(f"struct {schema.get('name')!r} has a field without a name: {_brief(field)}")
        name = field["field"]
        if name in numeric_columns and field.get("name") is None and field.get("type") in _NUMERIC_REFINEMENTS:
            convert, expected = _NUMERIC_REFINEMENTS[field["type"]](forms)
        else:
            convert, expected = compile_value(field, forms, toast=True)
        fields.append((name, convert, expected, bool(field.get("optional", False))))
    return StructPlan(str(schema.get("name") or "struct"), fields)


def compile_value(schema: Mapping[str, Any], forms: v.ToastForms, *, toast: bool) -> tuple[Converter, str]:
    """The converter for one field's value and a description of what it expects.

    `toast` is True for a row's columns, which may carry the unchanged-TOAST placeholder; array elements
    and nested struct fields never do (the placeholder replaces the whole column).
    """
    name = schema.get("name")
    kind = schema.get("type")
    if name in _SEMANTIC:
        return _SEMANTIC[name](schema, forms, toast)
    if kind in _PLAIN:
        return _PLAIN[kind](schema, forms, toast)
    raise SchemaError(f"unknown Connect type {kind!r} in {_brief(schema)}")


# --- converters by Connect type -------------------------------------------------------------------


def _text(forms: v.ToastForms, toast: bool) -> Converter:
    if not toast:
        return v.require_str
    placeholder = forms.text

    def text(value: Any) -> Any:
        if value.__class__ is not str:
            raise TypeError("expected a JSON string")
        return UNKNOWN if value == placeholder else value
    return text


def toast_aware(convert: Converter, placeholder: str, toast: bool) -> Converter:
    """Check for the placeholder (in its form for this type) before converting."""
    if not toast:
        return convert

    def checked(value: Any) -> Any:
        return UNKNOWN if value == placeholder else convert(value)
    return checked


def _plain_string(schema: Any, forms: v.ToastForms, toast: bool) -> tuple[Converter, str]:
    return _text(forms, toast), "a string"


def _plain_bytes(schema: Any, forms: v.ToastForms, toast: bool) -> tuple[Converter, str]:
    return toast_aware(v.b64_bytes, forms.bytes_b64, toast), "bytes as base64"


def _plain_array(schema: Any, forms: v.ToastForms, toast: bool) -> tuple[Converter, str]:
    items = schema.get("items")
    if not isinstance(items, Mapping):
        raise SchemaError(f"array without an items schema: {_brief(schema)}")
    item, item_expected = compile_value(items, forms, toast=False)
    is_placeholder = forms.is_array_placeholder

    def array(value: Any) -> Any:
        if value.__class__ is not list:
            raise TypeError("expected a JSON array")
        if toast and is_placeholder(value):
            return UNKNOWN
        return [None if element is None else item(element) for element in value]
    return array, f"an array of {item_expected}"


def _plain_struct(schema: Any, forms: v.ToastForms, toast: bool) -> tuple[Converter, str]:
    plan = compile_struct(schema, forms)
    return plan.decode, f"struct {plan.name}"


def _plain_map(schema: Any, forms: v.ToastForms, toast: bool) -> tuple[Converter, str]:
    keys, _ = compile_value(schema.get("keys") or {}, forms, toast=False)
    values, values_expected = compile_value(schema.get("values") or {}, forms, toast=False)

    def mapping(value: Any) -> dict[Any, Any]:
        pairs = value.items() if value.__class__ is dict else value  # non-string keys: [[k, v], ...]
        return {keys(k): None if item is None else values(item) for k, item in pairs}
    return mapping, f"a map of {values_expected}"


def _fixed(convert: Converter, expected: str) -> Callable[[Any, v.ToastForms, bool], tuple[Converter, str]]:
    return lambda schema, forms, toast: (convert, expected)


_PLAIN: dict[str, Callable[[Any, v.ToastForms, bool], tuple[Converter, str]]] = {
    "int8": _fixed(v.ranged_int(8, "int8"), "an int8"),
    "int16": _fixed(v.ranged_int(16, "int16"), "an int16"),
    "int32": _fixed(v.ranged_int(32, "int32"), "an int32"),
    "int64": _fixed(v.ranged_int(64, "int64"), "an int64"),
    "float": _fixed(v.to_float, "a float32"),
    "double": _fixed(v.to_float, "a float64"),
    "boolean": _fixed(v.require_bool, "a boolean"),
    "string": _plain_string,
    "bytes": _plain_bytes,
    "array": _plain_array,
    "struct": _plain_struct,
    "map": _plain_map,
}


# --- converters by semantic name ------------------------------------------------------------------


def _connect_decimal(schema: Any, forms: v.ToastForms, toast: bool) -> tuple[Converter, str]:
    try:
        scale = int((schema.get("parameters") or {})["scale"])
    except (KeyError, TypeError, ValueError):
        raise SchemaError(f"Decimal without an integer 'scale' parameter: {_brief(schema)}") from None

    def decimal(value: Any) -> Any:
        return v.decimal_from_unscaled(value, scale)
    expected = (f"org.apache.kafka.connect.data.Decimal: base64 of the unscaled two's-complement integer, scale "
                f"{scale} (JsonConverter decimal.format=BASE64)")
    return toast_aware(decimal, forms.bytes_b64, toast), expected


def _variable_scale(schema: Any, forms: v.ToastForms, toast: bool) -> tuple[Converter, str]:
    return (v.decimal_from_variable_scale,
            'io.debezium.data.VariableScaleDecimal {"scale": int, "value": base64 unscaled integer}')


def _named(convert: Converter, expected: str, *, toast_text: bool = False
           ) -> Callable[[Any, v.ToastForms, bool], tuple[Converter, str]]:
    def factory(schema: Any, forms: v.ToastForms, toast: bool) -> tuple[Converter, str]:
        return (toast_aware(convert, forms.text, toast) if toast_text else convert), expected
    return factory


def _enum(schema: Any, forms: v.ToastForms, toast: bool) -> tuple[Converter, str]:
    allowed = (schema.get("parameters") or {}).get("allowed")
    return _text(forms, toast), f"an enum label{f' ({allowed})' if allowed else ''}"


_SEMANTIC: dict[str, Callable[[Any, v.ToastForms, bool], tuple[Converter, str]]] = {
    "org.apache.kafka.connect.data.Decimal": _connect_decimal,
    "io.debezium.data.VariableScaleDecimal": _variable_scale,
    "io.debezium.time.Date": _named(v.date_from_days, "io.debezium.time.Date: days since 1970-01-01"),
    "org.apache.kafka.connect.data.Date": _named(v.date_from_days, "Connect Date: days since 1970-01-01"),
    "io.debezium.time.Time": _named(v.time_from_millis, "io.debezium.time.Time: ms past midnight"),
    "org.apache.kafka.connect.data.Time": _named(v.time_from_millis, "Connect Time: ms past midnight"),
    "io.debezium.time.MicroTime": _named(v.time_from_micros, "io.debezium.time.MicroTime: µs past midnight"),
    "io.debezium.time.NanoTime": _named(v.time_from_nanos, "io.debezium.time.NanoTime: ns past midnight"),
    "io.debezium.time.Timestamp": _named(v.timestamp_from_millis, "io.debezium.time.Timestamp: ms since epoch"),
    "org.apache.kafka.connect.data.Timestamp": _named(v.timestamp_from_millis, "Connect Timestamp: ms since epoch"),
    "io.debezium.time.MicroTimestamp": _named(v.timestamp_from_micros,
                                              "io.debezium.time.MicroTimestamp: µs since epoch"),
    "io.debezium.time.NanoTimestamp": _named(v.timestamp_from_nanos, "io.debezium.time.NanoTimestamp: ns since epoch"),
    "io.debezium.time.ZonedTimestamp": _named(v.zoned_timestamp, "io.debezium.time.ZonedTimestamp: ISO-8601 in UTC"),
    "io.debezium.time.ZonedTime": _named(v.zoned_time, "io.debezium.time.ZonedTime: ISO-8601 time with zone"),
    "io.debezium.time.IsoDate": _named(v.iso_date, "io.debezium.time.IsoDate: ISO-8601 date"),
    "io.debezium.time.IsoTime": _named(v.iso_time, "io.debezium.time.IsoTime: ISO-8601 time"),
    "io.debezium.time.IsoTimestamp": _named(v.iso_timestamp, "io.debezium.time.IsoTimestamp: ISO-8601 timestamp"),
    "io.debezium.time.MicroDuration": _named(v.reject_duration, "an interval as text"),
    "io.debezium.data.Uuid": _named(v.to_uuid, "io.debezium.data.Uuid: a UUID string"),
    "io.debezium.data.Json": _named(v.parse_json_text, "io.debezium.data.Json: a string holding JSON",
                                    toast_text=True),
    "io.debezium.data.Enum": _enum,
}


def _numeric_from_string(forms: v.ToastForms) -> tuple[Converter, str]:
    return (toast_aware(v.decimal_from_string, forms.text, True),
            "a numeric as text (decimal.handling.mode=string)")


def _numeric_from_double(forms: v.ToastForms) -> tuple[Converter, str]:
    return v.decimal_from_double, "a numeric as float64 (decimal.handling.mode=double, lossy)"


_NUMERIC_REFINEMENTS = {"string": _numeric_from_string, "double": _numeric_from_double, "float": _numeric_from_double}


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 160 else text[:157] + "..."
