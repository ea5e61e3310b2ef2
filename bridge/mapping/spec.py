"""The models of a mapping file: its declared shape (pydantic), the problems pydantic finds, and column types.

The models describe the file only; expressions stay strings here and the rule compiler (compile.py)
compiles them into Python functions, collected in the CompiledRule/CompiledMappings of compiled.py.

A mapping file::

    version: 1
    namespace: restaurant            # event type = <namespace>.<aggregate type>.<Event>.v<major>
    schema: public                   # default PostgreSQL schema of the tables
    on_error: dead_letter            # or stop; a rule may override it
    tables:                          # declared columns and PostgreSQL types (schemaless decoding, checks)
      orders: {key: [id], columns: {id: bigint, status: varchar(20), ...}}
    rules:
      - id: orders.placed
        table: orders
        ops: [u]
        when: before.status != 'PLACED' and after.status == 'PLACED'
        emit:
          - event: OrderPlaced
            aggregate: {type: order, id: after.id}
            data: {orderId: after.id, ...}

The key is ``ops``, not ``on``: YAML 1.1 reads a bare ``on`` as the boolean true.
"""

from __future__ import annotations

import keyword
import re
import types
import typing
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from bridge.mapping.compiled import CompiledMappings

# The compiled form is in compiled.py; CompiledMappings is re-exported for code importing it from here.
__all__ = [
    "TYPE_EXAMPLES", "AggregateSpec", "CollectSpec", "CompiledMappings", "EmitSpec", "FieldObject", "FieldSpec",
    "MappingFileSpec", "RuleSpec", "TableSpec", "canonical_pg_type", "shape_problems",
]

OpLetter = Literal["r", "c", "u", "d", "t"]
ErrorPolicy = Literal["dead_letter", "stop"]


def name_pattern(regex: str, expected: str) -> AfterValidator:
    compiled = re.compile(regex)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"{value!r} is not valid: expected {expected}")
        return value

    return AfterValidator(check)


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


RuleId = Annotated[str, name_pattern(r"[a-z][a-z0-9_]*([.-][a-z0-9_]+)*", "a lowercase id like 'orders.placed'")]
EventName = Annotated[str, name_pattern(r"[A-Z][A-Za-z0-9]*", "an event name in CamelCase like 'OrderPlaced'")]
AggregateType = Annotated[str, name_pattern(r"[a-z][a-z0-9_]*", "a lowercase aggregate type like 'order'")]
Namespace = Annotated[str, name_pattern(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*", "a lowercase namespace like 'restaurant'")]
SqlName = Annotated[str, name_pattern(r"[A-Za-z_][A-Za-z0-9_$]*", "a table or column name")]
TableRef = Annotated[str, name_pattern(r"([A-Za-z_][A-Za-z0-9_$]*\.)?[A-Za-z_][A-Za-z0-9_$]*", "'table' or 'schema.table'")]
Ops = Annotated[list[OpLetter], BeforeValidator(_as_list), Field(min_length=1)]


def _check_let_name(name: str) -> str:
    if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
        raise ValueError(f"{name!r} is not valid: expected a name like 'lines' (letters, digits, _; no leading _)")
    return name


LetName = Annotated[str, AfterValidator(_check_let_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CollectSpec(_Strict):
    """Gather the changes of one table in the same transaction: one object (``fields``) or value per change."""

    table: TableRef
    ops: Ops = ["c"]
    where: str | None = None  # sees `row`: the collected change's after image (before for deletes)
    fields: dict[str, FieldSpec] | None = None
    value: str | None = None

    @model_validator(mode="after")
    def _one_output(self) -> CollectSpec:
        if (self.fields is None) == (self.value is None):
            raise ValueError("a collect needs exactly one of 'fields' (a list of objects) "
                             "or 'value' (a list of values)")
        return self


class FieldObject(_Strict):
    """The long form of a payload field: ``{value|const|collect|fields, optional, when}``."""

    value: str | None = None
    const: Any = None
    collect: CollectSpec | None = None
    # A nested object built from fields of its own (each any field form): {fields: {amount: ..., currency: ...}}
    fields: dict[str, FieldSpec] | None = None
    optional: bool = False  # omit the field when its value is UNKNOWN (unchanged TOAST) instead of failing
    when: str | None = None  # include the field only when this is true

    @model_validator(mode="after")
    def _one_source(self) -> FieldObject:
        given = [k for k in ("value", "const", "collect", "fields") if k in self.model_fields_set]
        if len(given) != 1:
            raise ValueError("a field needs exactly one of 'value' (an expression), 'const', 'collect' or "
                             "'fields' (an object)" + (f", got {' and '.join(given)}" if given else ""))
        if self.fields is not None and self.optional:
            raise ValueError("'optional' is for a 'value' that may be unknown; mark the object's own fields "
                             "optional instead")
        return self


def _field_kind(value: Any) -> str:
    if isinstance(value, str):
        return "expression"
    if isinstance(value, dict):
        return "object"
    return "constant"


#: A payload field: a string is an expression, a mapping is a FieldObject, anything else a constant.
FieldSpec = Annotated[
    Annotated[str, Tag("expression")] | Annotated[FieldObject, Tag("object")] | Annotated[Any, Tag("constant")],
    Discriminator(_field_kind),
]


class AggregateSpec(_Strict):
    type: AggregateType
    id: str  # expression


class EmitSpec(_Strict):
    event: EventName
    version: int = Field(default=1, ge=1)  # the major version, part of the event type and of the event id
    aggregate: AggregateSpec
    when: str | None = None
    each: str | None = None  # an expression giving a list: one event per element, bound to `item`
    data: dict[str, FieldSpec] = {}
    # For snapshot reads (op r: backfill, initial snapshot): when the fact happened, from the row's own
    # timestamps (an aware timestamp, or null for the time the snapshot was taken). Live changes keep their
    # commit time.
    snapshot_time: str | None = None


class RuleSpec(_Strict):
    id: RuleId
    description: str | None = None
    table: TableRef
    ops: Ops
    when: str | None = None
    let: dict[LetName, FieldSpec] = {}
    ignore: bool = False
    emit: list[EmitSpec] = []
    on_error: ErrorPolicy | None = None

    @model_validator(mode="after")
    def _emits_or_ignores(self) -> RuleSpec:
        if self.ignore == bool(self.emit):
            raise ValueError("a rule needs either 'emit' (a list of events) or 'ignore: true', not both or neither")
        return self


class TableSpec(_Strict):
    schema_: SqlName | None = Field(default=None, alias="schema")
    key: list[SqlName] | None = None  # primary-key columns (default: id if declared)
    columns: dict[SqlName, str] = {}


class MappingFileSpec(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    version: Literal[1] = 1
    namespace: Namespace
    schema_: SqlName = Field(default="public", alias="schema")
    on_error: ErrorPolicy = "dead_letter"
    description: str | None = None
    tables: dict[SqlName, TableSpec] = {}
    rules: list[RuleSpec] = Field(min_length=1)


FieldObject.model_rebuild()
CollectSpec.model_rebuild()

# -- pydantic's errors, as paths into the YAML data and messages that say what was expected -------------------


def shape_problems(data: Any, exc: ValidationError, root: type[BaseModel] | None = None) -> list[tuple[list[Any], str]]:
    """(path into ``data``, message) for each error of ``root.model_validate(data)`` (root: MappingFileSpec)."""
    problems = []
    for error in exc.errors(include_url=False):
        loc, kind, message = list(error["loc"]), error["type"], error["msg"].removeprefix("Value error, ")
        if loc and loc[-1] == "[key]":  # a dict key failed, not its value
            loc.pop()
            message = f"key {loc[-1]!r}: {message}"
        if kind == "invalid_key":  # YAML gave a non-string key, e.g. `on:` read as true
            loc[-1] = error.get("input")
            message = f"{loc[-1]!r} is not a field name"
            if loc[-1] is True:
                message += "; YAML reads a bare 'on' as true: the operations go under 'ops'"
        elif kind == "missing":
            message = f"missing required field '{loc[-1]}'"
        elif kind == "extra_forbidden":
            model = _model_at(root or MappingFileSpec, loc[:-1])
            allowed = [f.alias or n for n, f in model.model_fields.items()] if model else []
            message = f"unknown field '{loc[-1]}'" + (f" (expected one of {', '.join(allowed)})" if allowed else "")
        elif kind != "value_error" and not message.startswith("key "):  # say what was given
            message = f"{message} (got {error.get('input')!r})"
        named = kind in ("missing", "extra_forbidden", "invalid_key")
        problems.append((_data_path(data, loc, names_field=named), message))
    return problems


def _data_path(data: Any, loc: Sequence[Any], names_field: bool) -> list[Any]:
    """pydantic's loc minus the union tags it inserts ('object', 'expression'): a path into the data.

    ``names_field``: the last element names a field (missing or unknown) and is kept even if absent.
    """
    path: list[Any] = []
    for position, element in enumerate(loc):
        in_dict = isinstance(data, dict) and element in data
        in_list = isinstance(data, list) and isinstance(element, int) and 0 <= element < len(data)
        if in_dict or in_list:
            data = data[element]
        elif not (names_field and position == len(loc) - 1):
            continue  # a tag
        path.append(element)
    return path


def _model_at(root: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The model validating the object at ``loc`` (tags included), to list the fields it allows."""
    current: Any = root
    for element in loc:
        current, was_tag = _unwrap(current, element)
        if was_tag:
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = next((f for n, f in current.model_fields.items() if element in (n, f.alias)), None)
            current = info.annotation if info else None
        elif typing.get_origin(current) is list and isinstance(element, int):
            current = typing.get_args(current)[0]
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        else:
            current = None
        if current is None:
            return None
    current, _ = _unwrap(current, None)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any, tag: Any) -> tuple[Any, bool]:
    """Strip Annotated and Optional; in a tagged union pick the member named by ``tag`` (then True)."""
    used_tag = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [m for m in typing.get_args(annotation) if m is not type(None)]
            tagged = [m for m in members if typing.get_origin(m) is Annotated
                      and any(getattr(meta, "tag", None) == tag for meta in m.__metadata__)]
            if not tagged and len(members) > 1:
                return None, False
            annotation, used_tag = (tagged or members)[0], used_tag or bool(tagged)
        else:
            return annotation, used_tag


# -- PostgreSQL type names -----------------------------------------------------------------------------------
# Declared types are normalised to what PostgreSQL's format_type() prints, so a daemon can compare them with
# the catalog and a decoder needs to know one spelling per type.

_ALIASES = {
    "int": "integer", "int4": "integer", "integer": "integer", "serial": "integer", "serial4": "integer",
    "int8": "bigint", "bigint": "bigint", "bigserial": "bigint", "serial8": "bigint",
    "int2": "smallint", "smallint": "smallint", "smallserial": "smallint", "serial2": "smallint",
    "float4": "real", "real": "real", "float8": "double precision", "double precision": "double precision",
    "float": "double precision", "bool": "boolean", "boolean": "boolean", "text": "text", "date": "date",
    "json": "json", "jsonb": "jsonb", "uuid": "uuid", "bytea": "bytea", "money": "money", "inet": "inet",
    "cidr": "cidr", "macaddr": "macaddr", "xml": "xml", "oid": "oid", "interval": "interval",
    "numeric": "numeric", "decimal": "numeric",
    "varchar": "character varying", "character varying": "character varying",
    "char": "character", "character": "character", "bpchar": "character",
    "timestamp": "timestamp without time zone", "timestamp without time zone": "timestamp without time zone",
    "timestamptz": "timestamp with time zone", "timestamp with time zone": "timestamp with time zone",
    "time": "time without time zone", "time without time zone": "time without time zone",
    "timetz": "time with time zone", "time with time zone": "time with time zone",
}
_TYPE = re.compile(r"(?P<name>[a-z][a-z0-9 ]*?)\s*(\((?P<args>[0-9 ,]+)\))?(?P<zone>\s+with(out)? time zone)?"
                   r"(?P<array>(\s*\[\s*\])*)")
TYPE_EXAMPLES = "bigint, integer, numeric(10,2), varchar(255), char(2), text, text[], boolean, jsonb, " \
                "timestamptz, timestamp, date, uuid"


def canonical_pg_type(declared: str) -> str:
    """``varchar(255)`` -> ``character varying(255)``, ``timestamptz`` -> ``timestamp with time zone``, ...

    Raises ValueError for a type this bridge cannot decode (with examples of those it can).
    """
    text = " ".join(declared.lower().split())
    match = _TYPE.fullmatch(text)
    base = match.group("name").strip() if match else ""
    zone = (match.group("zone") or "").strip() if match else ""
    name = f"{base} {zone}" if zone and base in ("timestamp", "time") else None if zone else _ALIASES.get(base)
    if match is None or name is None:
        raise ValueError(f"unknown PostgreSQL type {declared!r} (expected a type such as {TYPE_EXAMPLES}; "
                         "declare enums and domains as text)")
    args = [a.strip() for a in (match.group("args") or "").split(",") if a.strip()]
    if name == "numeric" and len(args) == 1:
        args.append("0")  # numeric(10) is numeric(10,0)
    if name == "character" and not args:
        args = ["1"]  # char is char(1)
    if args and name.startswith("time"):  # the precision goes before the zone: timestamp(3) with time zone
        word, _, rest = name.partition(" ")
        name = f"{word}({args[0]}) {rest}"
    elif args:
        name = f"{name}({','.join(args)})"
    return name + ("[]" if match.group("array") else "")  # PostgreSQL keeps no array dimensions either
