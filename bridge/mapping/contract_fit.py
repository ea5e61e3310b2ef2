"""Whether an emit can produce what its contract promises, decided before anything runs.

For each emit: its event type and major have a contract; every payload field is in the contract; every
field the contract requires is always set (not under `when:` or `optional:`); and where a field's value
is a plain column read (`after.price`, `row.unit_price`, `item.price` of a collect), or a constant, the
column's declared PostgreSQL type can fit the field's type (text cannot go into an integer field). What
an expression computes is not guessed here: the run-time check of every event covers it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from bridge.contracts.registry import ContractRegistry, Major
from bridge.contracts.spec import TypeSpec
from bridge.mapping.spec import CollectSpec, EmitSpec, FieldObject

#: A problem: (path below the emit, message); a path starting with RULE is below the rule instead (a `let`).
Problem = tuple[tuple[Any, ...], str]
RULE = "^rule"

_COLUMN_READ = re.compile(r"\s*(after|before|key|row|item)\.([A-Za-z_][A-Za-z0-9_$]*)\s*")
_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*")

# The contract types a PostgreSQL type's values can take (json takes anything).
_FITS: tuple[tuple[re.Pattern[str], frozenset[str]], ...] = tuple((re.compile(p), frozenset(t)) for p, t in (
    (r"smallint|integer|bigint", {"integer", "number"}),
    (r"numeric(\(.*\))?", {"decimal"}),
    (r"real|double precision", {"number"}),
    (r"text|character varying(\(.*\))?|character(\(.*\))?|citext|name", {"string", "enum"}),
    (r"boolean", {"boolean"}),
    (r"timestamp(\(\d+\))? with time zone", {"timestamp"}),
    (r"timestamp(\(\d+\))? without time zone", set()),  # naive: as_utc(...) first
    (r"date", {"date"}),
    (r"uuid", {"uuid"}),
    (r"jsonb?", {"json"}),
))


def emit_contract_problems(emit: EmitSpec, event_type: str, registry: ContractRegistry, *,
                           columns: Mapping[str, str] | None, tables: Mapping[str, Mapping[str, str]],
                           lets: Mapping[str, Any]) -> tuple[Major | None, list[Problem]]:
    """The emit's contract major (None if there is none) and every way the emit does not fit it."""
    major = registry.major(event_type)
    if major is None:
        contract = registry.find(event_type.rpartition(".v")[0])
        folder = registry.folder or "the contracts folder"
        if contract is None:
            name = event_type.rpartition(".v")[0]
            hint = f"add {folder}/{name.split('.')[-2]}/{emit.event}.yaml (see the README's Contracts section)"
            return None, [(("event",), f"no contract for {event_type}: {hint}")]
        return None, [(("version",), f"contract {contract.type} ({contract.path}) has no major {emit.version} "
                       f"(it has {', '.join(map(str, sorted(contract.majors)))}): add major {emit.version} to it")]
    problems: list[Problem] = []
    fields = major.fields
    each = _collect_of(emit.each, lets)
    for name, spec in emit.data.items():
        declared = fields.get(name)
        if declared is None:
            problems.append((("data", name), f"field '{name}' is not in contract {major.event_type} "
                             f"({major.contract.path}; it has {', '.join(fields)}): add it there as an optional "
                             f"field with since: {major.revision + 1}, or leave it out of the event"))
            continue
        conditional = isinstance(spec, FieldObject) and (spec.optional or spec.when is not None)
        if conditional and not declared.optional:
            problems.append((("data", name), f"field '{name}' may be left out ({'when' if spec.when else 'optional'}), "
                             f"but contract {major.event_type} requires it: mark it optional in "
                             f"{major.contract.path} (a new major if that revision is published) or always set it"))
        problems.extend(_value_problems(spec, declared, ("data", name), columns, tables, lets, each))
    for name, declared in fields.items():
        if not declared.optional and name not in emit.data:
            problems.append((("data",), f"contract {major.event_type} requires field '{name}', but the rule never "
                             f"sets it: add '{name}' to the emit's data"))
    return major, problems


def _collect_of(each: str | None, lets: Mapping[str, Any]) -> CollectSpec | None:
    """The collect an `each: <let>` iterates, when the let is a collect."""
    match = _NAME.fullmatch(each or "")
    spec = lets.get(match.group(1)) if match else None
    return spec.collect if isinstance(spec, FieldObject) else None


def _value_problems(spec: Any, declared: TypeSpec, path: tuple[Any, ...], columns: Mapping[str, str] | None,
                    tables: Mapping[str, Mapping[str, str]], lets: Mapping[str, Any],
                    each: CollectSpec | None, row_columns: Mapping[str, str] | None = None) -> list[Problem]:
    if isinstance(spec, FieldObject):
        if "const" in spec.model_fields_set:
            return _constant_problems(spec.const, declared, path + ("const",))
        if spec.collect is not None:
            return _collect_problems(spec.collect, declared, path + ("collect",), tables)
        if spec.fields is not None:
            return _object_problems(spec.fields, declared, path + ("fields",), columns, tables, lets, each,
                                    row_columns)
        spec, path = spec.value, path + ("value",)
    if not isinstance(spec, str):
        return _constant_problems(spec, declared, path)
    name = _NAME.fullmatch(spec)
    if name and isinstance(lets.get(name.group(1)), FieldObject) and lets[name.group(1)].collect is not None:
        return _collect_problems(lets[name.group(1)].collect, declared, (RULE, "let", name.group(1), "collect"), tables)
    read = _COLUMN_READ.fullmatch(spec)
    if read is None:
        return []
    origin, column = read.groups()
    if origin == "item":
        # item.x of an `each:` over a collect of objects: its field x, read from a row of the collect's table
        item_fields = None if each is None else each.fields
        if item_fields is None or column not in item_fields:
            return []
        found = _value_problems(item_fields[column], declared, path, None, tables, {}, None,
                                tables.get(each.table.rpartition(".")[2]))
        return [(where, f"item.{column}: {message}") for where, message in found]
    source = row_columns if origin == "row" else columns
    pg_type = (source or {}).get(column)
    if pg_type is None:
        return []
    reason = _type_misfit(pg_type, declared)
    return [] if reason is None else [(path, f"{origin}.{column} is {pg_type}, which cannot fit {reason}")]


def _collect_problems(collect: CollectSpec, declared: TypeSpec, path: tuple[Any, ...],
                      tables: Mapping[str, Mapping[str, str]]) -> list[Problem]:
    if declared.type != "list" or declared.items is None:
        return [(path, f"a collect gives a list, but the contract field is {declared.type}")]
    row_columns = tables.get(collect.table.rpartition(".")[2])
    item = declared.items
    if collect.value is not None:
        return _value_problems(collect.value, item, path + ("value",), None, tables, {}, None, row_columns)
    if item.type != "object" or item.fields is None:
        return [(path + ("fields",), f"a collect of objects, but the contract's list holds {item.type}")]
    problems: list[Problem] = []
    for name, spec in (collect.fields or {}).items():
        field_decl = item.fields.get(name)
        if field_decl is None:
            problems.append((path + ("fields", name), f"field '{name}' is not in the contract's objects "
                             f"(they have {', '.join(item.fields)})"))
            continue
        problems.extend(_value_problems(spec, field_decl, path + ("fields", name), None, tables, {}, None, row_columns))
    problems.extend((path + ("fields",), f"the contract's objects require field '{name}', but the collect never sets it")
                    for name, field_decl in item.fields.items()
                    if not field_decl.optional and name not in (collect.fields or {}))
    return problems


def _object_problems(fields: Mapping[str, Any], declared: TypeSpec, path: tuple[Any, ...],
                     columns: Mapping[str, str] | None, tables: Mapping[str, Mapping[str, str]],
                     lets: Mapping[str, Any], each: CollectSpec | None,
                     row_columns: Mapping[str, str] | None) -> list[Problem]:
    """A `fields:` object against an object field of the contract: like a payload, one level down."""
    if declared.type != "object" or declared.fields is None:
        return [(path, f"'fields' builds an object, but the contract field is {_declared_text(declared)}")]
    problems: list[Problem] = []
    for name, spec in fields.items():
        field_decl = declared.fields.get(name)
        if field_decl is None:
            problems.append((path + (name,), f"field '{name}' is not in the contract's object "
                             f"(it has {', '.join(declared.fields)})"))
            continue
        if isinstance(spec, FieldObject) and (spec.optional or spec.when is not None) and not field_decl.optional:
            problems.append((path + (name,), f"field '{name}' may be left out, but the contract's object requires it"))
        problems.extend(_value_problems(spec, field_decl, path + (name,), columns, tables, lets, each,
                                        row_columns))
    problems.extend((path, f"the contract's object requires field '{name}', but 'fields' never sets it")
                    for name, field_decl in declared.fields.items() if not field_decl.optional and name not in fields)
    return problems


def _constant_problems(value: Any, declared: TypeSpec, path: tuple[Any, ...]) -> list[Problem]:
    if value is None:
        ok = declared.nullable or declared.type == "json"
    else:
        ok = declared.type == "json" or {
            "string": isinstance(value, str), "enum": value in (declared.values or ()),
            "integer": type(value) is int, "number": type(value) in (int, float), "boolean": type(value) is bool,
            "list": isinstance(value, list), "object": isinstance(value, dict),
        }.get(declared.type, True)  # decimals, timestamps...: written as strings in YAML; the run-time check decides
    return [] if ok else [(path, f"the constant {value!r} cannot fit {_declared_text(declared)}")]


def _type_misfit(pg_type: str, declared: TypeSpec) -> str | None:
    """Why values of a PostgreSQL type cannot fit a field (None: they can, or it cannot be told)."""
    if declared.type == "json":
        return None
    if pg_type.endswith("[]"):
        if declared.type != "list" or declared.items is None:
            return _declared_text(declared)
        inner = _type_misfit(pg_type[:-2], declared.items)
        return None if inner is None else f"a list of {inner}"
    for pattern, fits in _FITS:
        if pattern.fullmatch(pg_type):
            return None if declared.type in fits else _declared_text(declared)
    return None  # a type this check does not know: left to the run-time check


def _declared_text(declared: TypeSpec) -> str:
    if declared.type == "enum":
        return f"an enum field ({', '.join(declared.values or ())})"
    return f"a{'n' if declared.type[0] in 'aeiou' else ''} {declared.type} field"


