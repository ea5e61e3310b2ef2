"""Column types declared by the user, for Debezium topics written without schemas.

With `value.converter.schemas.enable=false` the JsonConverter drops the schema, and with it what the
values mean: a precise decimal is base64 with no scale, a date an int, a timestamp an int of µs or
ms depending on the column's precision and time.precision.mode. The bridge never guesses: a column
decodes exactly only when its PostgreSQL type is declared here and the connector's
decimal.handling.mode and time.precision.mode are known (DecodeOptions). Undeclared columns keep
their raw JSON value and are reported, so the mapping layer can refuse to use them.

With a schema, declarations only add what the schema cannot say: that a plain string or double
(decimal.handling.mode=string/double) was a numeric column. Anything else that contradicts the
schema is ignored: the schema is what Debezium actually wrote.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from bridge.changes import UNKNOWN
from bridge.errors import ConfigurationError
from bridge.sources.debezium import values as v
from bridge.sources.debezium.types import ColumnError, Converter, toast_aware

DECIMAL_MODES = ("precise", "string", "double")
TIME_MODES = ("adaptive", "adaptive_time_microseconds", "connect", "microseconds", "nanoseconds", "isostring")

_ALIASES = {
    "int2": "smallint", "smallserial": "smallint", "serial2": "smallint",
    "int": "integer", "int4": "integer", "serial": "integer", "serial4": "integer",
    "int8": "bigint", "bigserial": "bigint", "serial8": "bigint",
    "float4": "real", "float8": "double precision", "float": "double precision",
    "bool": "boolean", "decimal": "numeric",
    "character varying": "text", "varchar": "text", "character": "text", "char": "text", "bpchar": "text",
    "citext": "text", "name": "text", "enum": "text",
    "timestamp without time zone": "timestamp", "timestamp with time zone": "timestamptz",
    "time without time zone": "time", "time with time zone": "timetz",
}
# (precision, scale, decimal mode, time mode, placeholder forms, may be TOAST) -> (converter, what it expects)
Family = Callable[[int | None, int | None, str, str, v.ToastForms, bool], tuple[Converter, str]]
_TYPE = re.compile(r"^(?P<base>[a-z][a-z0-9 ]*?)\s*(?:\((?P<args>[0-9,\s-]*)\))?\s*(?P<zone>with(?:out)? time zone)?$")


class DeclaredTypes(Mapping[str, Mapping[str, str]]):
    """{table: {column: PostgreSQL type}}, validated once; decoding plans are cached on the instance.

    Tables are named "schema.table" (or just "table", matched in any schema). Types are PostgreSQL
    names: "numeric(10,2)", "numeric", "integer", "bigint", "text", "varchar(40)", "boolean", "date",
    "time", "time(3)", "timetz", "timestamp", "timestamp(3)", "timestamptz", "uuid", "json", "jsonb",
    "bytea", "text[]", "integer[]", ... (long spellings such as "timestamp(3) without time zone" too);
    declare an enum as "text" or "enum" (it arrives as its label). The connector's modes, which
    decide how each type was written, come with each call (DecodeOptions).
    """

    def __init__(self, tables: Mapping[str, Mapping[str, str]]) -> None:
        self._tables = {table: dict(columns) for table, columns in tables.items()}
        self._parsed: dict[str, dict[str, tuple[str, int | None, int | None, bool]]] = {}
        for table, columns in self._tables.items():
            self._parsed[table] = {}
            for column, pg_type in columns.items():
                try:
                    self._parsed[table][column] = parse_pg_type(pg_type)
                except ValueError as exc:
                    raise ConfigurationError(f"declared type of {table}.{column}: {exc}") from None
        self._plans: dict[tuple[str, str, str, str, str], DeclaredRowPlan | None] = {}
        self._numeric: dict[tuple[str, str], frozenset[str]] = {}

    @classmethod
    def of(cls, tables: Mapping[str, Mapping[str, str]] | None) -> DeclaredTypes | None:
        """Use an instance as is; compile a plain mapping (do that once, not per record)."""
        if tables is None or isinstance(tables, DeclaredTypes):
            return tables
        return cls(tables)

    def __getitem__(self, table: str) -> Mapping[str, str]:
        return self._tables[table]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tables)

    def __len__(self) -> int:
        return len(self._tables)

    def _table_key(self, schema: str, table: str) -> str | None:
        qualified = f"{schema}.{table}"
        if qualified in self._parsed:
            return qualified
        return table if table in self._parsed else None

    def row_plan(self, schema: str, table: str, placeholder: str, decimal_mode: str, time_mode: str
                 ) -> DeclaredRowPlan | None:
        """The plan for one table's rows and keys, or None when nothing is declared for it."""
        cache_key = (schema, table, placeholder, decimal_mode, time_mode)
        plan = self._plans.get(cache_key)
        if plan is None and cache_key not in self._plans:
            name = self._table_key(schema, table)
            forms = v.toast_forms(placeholder)
            plan = None if name is None else DeclaredRowPlan({
                column: declared_converter(parsed, decimal_mode, time_mode, forms)
                for column, parsed in self._parsed[name].items()
            })
            self._plans[cache_key] = plan
        return plan

    def numeric_columns(self, schema: str, table: str) -> frozenset[str]:
        """Columns declared numeric: with a schema, plain string/double fields of these decode to Decimal."""
        cache_key = (schema, table)
        if cache_key not in self._numeric:
            name = self._table_key(schema, table)
            self._numeric[cache_key] = frozenset(
                column for column, (base, _, _, array) in (self._parsed[name].items() if name else ())
                if base == "numeric" and not array)
        return self._numeric[cache_key]


def check_modes(decimal_mode: str, time_mode: str) -> None:
    if decimal_mode not in DECIMAL_MODES:
        raise ConfigurationError(f"decimal.handling.mode {decimal_mode!r} is not one of {', '.join(DECIMAL_MODES)}")
    if time_mode not in TIME_MODES:
        raise ConfigurationError(f"time.precision.mode {time_mode!r} is not one of {', '.join(TIME_MODES)}")


class DeclaredRowPlan:
    """Decodes a schemaless row in place; returns the names of columns nobody declared."""

    __slots__ = ("converters",)

    def __init__(self, converters: dict[str, tuple[Converter, str]]) -> None:
        self.converters = converters

    def decode(self, row: Any, undeclared: set[str]) -> dict[str, Any]:
        if row.__class__ is not dict:
            raise ColumnError("?", "a JSON object holding the row", row, None)
        converters = self.converters
        for name, value in row.items():
            entry = converters.get(name)
            if entry is None:
                undeclared.add(name)
            elif value is not None:
                try:
                    row[name] = entry[0](value)
                except Exception as exc:
                    raise ColumnError(name, entry[1], value, exc) from exc
        return row


def parse_pg_type(pg_type: str) -> tuple[str, int | None, int | None, bool]:
    """("numeric", precision, scale, is_array) from e.g. "numeric(10,2)", "timestamp(3)", "text[]"."""
    text = " ".join(pg_type.strip().lower().split())
    array = text.endswith("[]")
    text = text[:-2].strip() if array else text
    match = _TYPE.match(text)
    if not match:
        raise ValueError(f"{pg_type!r} is not a PostgreSQL type name")
    base = match["base"].strip()
    if match["zone"]:
        base = f"{base} {match['zone']}"
    base = _ALIASES.get(base, base)
    args = [int(a) for a in match["args"].split(",")] if match["args"] and match["args"].strip() else []
    if base not in _FAMILIES:
        raise ValueError(f"{pg_type!r} is not supported; supported: {', '.join(sorted(_FAMILIES))} "
                         "(and arrays of them; declare any enum type as 'enum')")
    first = args[0] if args else None
    second = args[1] if len(args) > 1 else None
    if base == "numeric":
        return base, first, (second if second is not None else 0 if first is not None else None), array
    return base, first, None, array


def declared_converter(parsed: tuple[str, int | None, int | None, bool], decimal_mode: str, time_mode: str,
                       forms: v.ToastForms) -> tuple[Converter, str]:
    base, precision, scale, array = parsed
    convert, expected = _FAMILIES[base](precision, scale, decimal_mode, time_mode, forms, not array)
    if not array:
        return convert, expected
    is_placeholder = forms.is_array_placeholder

    def elements(value: Any) -> Any:
        if value.__class__ is not list:
            raise TypeError("expected a JSON array")
        if is_placeholder(value):
            return UNKNOWN
        return [None if item is None else convert(item) for item in value]
    return elements, f"an array of {expected}"


def _numeric(precision: int | None, scale: int | None, decimal_mode: str, time_mode: str,
             forms: v.ToastForms, toast: bool) -> tuple[Converter, str]:
    if decimal_mode == "string":
        return toast_aware(v.decimal_from_string, forms.text, toast), "a numeric as text (decimal mode string)"
    if decimal_mode == "double":
        return v.decimal_from_double, "a numeric as a float64 (decimal mode double)"
    if scale is None:
        return v.decimal_from_variable_scale, 'an unconstrained numeric as {"scale": int, "value": base64}'

    def unscaled(value: Any) -> Any:
        return v.decimal_from_unscaled(value, scale)
    return toast_aware(unscaled, forms.bytes_b64, toast), f"numeric scale {scale}: base64 of the unscaled integer"


def _time_unit(time_mode: str, precision: int | None, *, is_time: bool) -> str:
    precision = 6 if precision is None else precision
    if time_mode == "adaptive" or (time_mode == "adaptive_time_microseconds" and not is_time):
        return "ms" if precision <= 3 else "us"
    return {"adaptive_time_microseconds": "us", "connect": "ms", "microseconds": "us",
            "nanoseconds": "ns", "isostring": "iso"}[time_mode]


_TIME_BY_UNIT = {"ms": v.time_from_millis, "us": v.time_from_micros, "ns": v.time_from_nanos, "iso": v.iso_time}
_TIMESTAMP_BY_UNIT = {"ms": v.timestamp_from_millis, "us": v.timestamp_from_micros, "ns": v.timestamp_from_nanos,
                      "iso": v.iso_timestamp}


def _time(precision: int | None, scale: int | None, decimal_mode: str, time_mode: str,
          forms: v.ToastForms, toast: bool) -> tuple[Converter, str]:
    unit = _time_unit(time_mode, precision, is_time=True)
    return _TIME_BY_UNIT[unit], f"a time of day ({unit}, time.precision.mode={time_mode})"


def _timestamp(precision: int | None, scale: int | None, decimal_mode: str, time_mode: str,
               forms: v.ToastForms, toast: bool) -> tuple[Converter, str]:
    unit = _time_unit(time_mode, precision, is_time=False)
    return _TIMESTAMP_BY_UNIT[unit], f"a timestamp ({unit} since epoch, time.precision.mode={time_mode})"


def _date(precision: int | None, scale: int | None, decimal_mode: str, time_mode: str,
          forms: v.ToastForms, toast: bool) -> tuple[Converter, str]:
    if time_mode == "isostring":
        return v.iso_date, "an ISO-8601 date"
    return v.date_from_days, "days since 1970-01-01"


def _text(precision: int | None, scale: int | None, decimal_mode: str, time_mode: str,
          forms: v.ToastForms, toast: bool) -> tuple[Converter, str]:
    placeholder = forms.text

    def text(value: Any) -> Any:
        if value.__class__ is not str:
            raise TypeError("expected a JSON string")
        return UNKNOWN if toast and value == placeholder else value
    return text, "a string"


def _fixed(convert: Converter, expected: str, placeholder_form: str | None = None) -> Family:
    def family(precision: int | None, scale: int | None, decimal_mode: str, time_mode: str,
               forms: v.ToastForms, toast: bool) -> tuple[Converter, str]:
        if placeholder_form is None:
            return convert, expected
        return toast_aware(convert, getattr(forms, placeholder_form), toast), expected
    return family


_FAMILIES: dict[str, Family] = {
    "smallint": _fixed(v.ranged_int(16, "smallint"), "a smallint"),
    "integer": _fixed(v.ranged_int(32, "integer"), "an integer"),
    "bigint": _fixed(v.ranged_int(64, "bigint"), "a bigint"),
    "real": _fixed(v.to_float, "a float"),
    "double precision": _fixed(v.to_float, "a float"),
    "boolean": _fixed(v.require_bool, "a boolean"),
    "numeric": _numeric,
    "text": _text,
    "date": _date,
    "time": _time,
    "timetz": _fixed(v.zoned_time, "an ISO-8601 time with zone"),
    "timestamp": _timestamp,
    "timestamptz": _fixed(v.zoned_timestamp, "an ISO-8601 timestamp in UTC"),
    "uuid": _fixed(v.to_uuid, "a UUID string"),
    "json": _fixed(v.parse_json_text, "a string holding JSON", "text"),
    "jsonb": _fixed(v.parse_json_text, "a string holding JSON", "text"),
    "bytea": _fixed(v.b64_bytes, "bytes as base64", "bytes_b64"),
}
