"""Does a table as PostgreSQL now streams it still fit the mappings? Relation messages against declared types.

    watch = SchemaWatch(MappingContract.of(mappings), schema="public")
    for note in watch.observe(relation, user_types, lsn): log(note)   # at every Relation message
    watch.stopped_rules                                               # rule id -> reason, for translate()

pgoutput sends a table's Relation message (its columns with type OIDs and modifiers) before the first
change of it in a session and again after its definition changes. Each declared column
(`tables.<t>.columns` of the mapping files) is compared with it; a column whose type no longer fits, or
that is gone, stops every rule reading it (bridge.mapping.compiled.CompiledRule.reads): their changes are
dead-lettered, or the bridge halts, per the rule's on_error policy, rather than published malformed.

Compatible, so the rules go on: the decoded value of every row, and so every event, stays what it was.
- text-like types among themselves: text, varchar of any length, name, enum labels, string-like extension
  types (citext): a varchar(120) -> varchar(200), or a varchar status becoming an enum, changes no value;
- smallint, integer and bigint among themselves: the value is the same integer (a widening to bigint is
  the usual fix for an id running out; consumers see the same JSON numbers);
- numeric of the same scale, whatever the precision: numeric(10,2) -> numeric(12,2) keeps "1.50";
- real and double precision; json and jsonb; another precision of a timestamp or time;
- a domain as its base type, an array as its element type.
Drift: everything else, e.g. integer -> numeric(10,2) (1 becomes "1.00"), numeric -> text ("cheap"),
numeric(10,2) -> numeric(10,3) or unconstrained numeric (the scale is part of the text), timestamp <->
timestamptz, character(n) to another length or to varchar (blank padding changes the value), and a
declared column that is gone. A column that is new, or not declared, is not compared (rules can only
read declared columns of a declared table); for a table without declarations, only columns that rules
read by name are checked, for presence.

Pure: no I/O. The user types (enums, domains) come from the catalog through the caller.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.mapping.compiled import reads_column
from bridge.sources.pgoutput.protocol import Relation, lsn_text
from bridge.sources.pgoutput.values import UserType, array_element_oid

_BUILTIN_NAMES = {
    16: "boolean", 17: "bytea", 18: '"char"', 19: "name", 20: "bigint", 21: "smallint", 23: "integer", 25: "text",
    26: "oid", 114: "json", 142: "xml", 650: "cidr", 700: "real", 701: "double precision", 774: "macaddr8",
    790: "money", 829: "macaddr", 869: "inet", 1042: "character", 1043: "character varying", 1082: "date",
    1083: "time without time zone", 1114: "timestamp without time zone", 1184: "timestamp with time zone",
    1186: "interval", 1266: "time with time zone", 1700: "numeric", 2950: "uuid", 3802: "jsonb",
}
_TEXT_LIKE = {"text", "character varying", "name"}
_KIND_OF = {"smallint": "integer", "integer": "integer", "bigint": "integer", "real": "float",
            "double precision": "float", "json": "json", "jsonb": "json"}
_TIME_TYPES = {"time without time zone", "time with time zone", "timestamp without time zone",
               "timestamp with time zone"}
# format_type()'s spelling, as bridge.mapping.spec.canonical_pg_type writes declared types.
_CANONICAL = re.compile(r"(?P<name>[a-z\" ]+?)(?:\((?P<args>[0-9, -]+)\))?(?P<zone> with(?:out)? time zone)?"
                        r"(?P<array>\[\])?")


@dataclass(frozen=True, slots=True)
class PgType:
    text: str  # as PostgreSQL spells it: numeric(10,2), character varying(120), public.order_status
    kind: str  # what its values decode to: equal kinds are compatible


def _spell(name: str, args: tuple[int, ...]) -> str:
    if not args:
        return name
    if name in _TIME_TYPES:  # the precision goes before the zone: timestamp(3) with time zone
        word, _, zone = name.partition(" ")
        return f"{word}({args[0]}) {zone}"
    return f"{name}({','.join(map(str, args))})"


def _kind(name: str, args: tuple[int, ...]) -> str:
    if name in _TEXT_LIKE:
        return "text"
    if name == "character":
        return f"character({args[0] if args else 1})"
    if name == "numeric":
        return f"numeric with scale {args[1]}" if len(args) == 2 else "numeric of any scale"
    return _KIND_OF.get(name, name)  # time types keep their name without the precision


def declared_type(canonical: str) -> PgType:
    """A declared type, already in canonical form (bridge.mapping.spec.canonical_pg_type)."""
    match = _CANONICAL.fullmatch(canonical)
    if match is None:
        return PgType(canonical, canonical)
    name = match.group("name").strip() + (match.group("zone") or "")
    args = tuple(int(a) for a in (match.group("args") or "").split(",") if a.strip())
    kind = _kind(name, args)
    return PgType(canonical, kind + "[]" if match.group("array") else kind)


def _modifier_args(name: str, modifier: int) -> tuple[int, ...]:
    """PostgreSQL's type modifier as format_type() shows it."""
    if modifier < 0:
        return ()
    if name in ("character varying", "character"):
        return (modifier - 4,)
    if name == "numeric":
        packed = modifier - 4
        return ((packed >> 16) & 0xFFFF, ((packed & 0x7FF) ^ 1024) - 1024)  # the scale may be negative
    if name in _TIME_TYPES:
        return (modifier,)
    return ()


def streamed_type(type_oid: int, modifier: int, user_types: Mapping[int, UserType], depth: int = 0) -> PgType:
    """A Relation column's type, as PostgreSQL would spell it, and the kind of value it decodes to."""
    name = _BUILTIN_NAMES.get(type_oid)
    if name is not None:
        args = _modifier_args(name, modifier)
        return PgType(_spell(name, args), _kind(name, args))
    element = array_element_oid(type_oid)
    user = user_types.get(type_oid)
    if element is None and user is not None and user.category == "A" and user.element_oid:
        element = user.element_oid
    if element is not None and depth < 8:
        inner = streamed_type(element, modifier, user_types, depth + 1)
        return PgType(inner.text + "[]", inner.kind + "[]")
    if user is None:
        return PgType(f"type OID {type_oid}", f"type OID {type_oid}")
    label = f"{user.namespace}.{user.name}"
    if user.kind == "e" or (user.kind == "b" and user.category == "S"):
        return PgType(label, "text")  # enum labels, citext: decoded as text
    if user.kind == "d" and user.base_oid and depth < 8:
        base = streamed_type(user.base_oid, user.base_modifier, user_types, depth + 1)
        return PgType(f"{label} (a domain over {base.text})", base.kind)
    return PgType(label, label)


@dataclass(frozen=True, slots=True)
class ColumnDrift:
    """A column rules read that no longer fits: its type changed incompatibly, or it is gone."""

    table: str  # schema.table
    column: str
    declared: str | None  # None: read by rules, but not declared
    found: str | None  # None: the table no longer has it

    def describe(self) -> str:
        declared = f"declared {self.declared}" if self.declared else "read by rules"
        if self.found is None:
            return f"{self.table}.{self.column} is {declared} in the mapping but no longer in the table"
        return f"{self.table}.{self.column} is {declared} in the mapping but the stream now carries {self.found}"


@dataclass(frozen=True)
class MappingContract:
    """What the mappings expect of the tables: declared column types, and which rules read which columns."""

    declared: Mapping[str, Mapping[str, str]]  # table -> column -> canonical type
    reads: Mapping[str, frozenset[tuple[str, str]]]  # rule id -> (table, column or "*"); ("*", "*"): any

    @classmethod
    def of(cls, mappings: Any) -> MappingContract:
        """From CompiledMappings: declared_types() and each rule's reads."""
        return cls(declared=mappings.declared_types(), reads={rule.id: rule.reads for rule in mappings.rules})

    def readers(self, table: str, column: str) -> list[str]:
        return [rule for rule, reads in self.reads.items() if reads_column(reads, table, column)]

    def named_columns(self, table: str) -> set[str]:
        """Columns of `table` some rule reads by name."""
        return {column for reads in self.reads.values() for t, column in reads if t == table and column != "*"}


@dataclass(frozen=True, slots=True)
class Note:
    """Something to log about a Relation message: level, message, fields."""

    level: int
    message: str
    fields: dict[str, Any] = field(default_factory=dict)


class SchemaWatch:
    """Keeps, per table, the drift its newest Relation message shows, and the rules that drift stops."""

    def __init__(self, contract: MappingContract, *, schema: str) -> None:
        self._contract = contract
        self._schema = schema
        self._drift: dict[str, tuple[ColumnDrift, ...]] = {}
        self._noted_compatible: set[tuple[str, str, str]] = set()
        self.stopped_rules: dict[str, str] = {}

    def observe(self, relation: Relation, user_types: Mapping[int, UserType], lsn: int) -> list[Note]:
        """Compare one Relation message with the declarations; update stopped_rules; say what changed."""
        if (relation.namespace or "pg_catalog") != self._schema:
            return []
        table, qualified = relation.name, relation.qualified_name
        found = {column.name: streamed_type(column.type_oid, column.type_modifier, user_types)
                 for column in relation.columns}
        declared = self._contract.declared.get(table, {})
        drifts: list[ColumnDrift] = []
        notes: list[Note] = []
        for column, spelled in declared.items():
            expected, actual = declared_type(spelled), found.get(column)
            if actual is None or actual.kind != expected.kind:
                drifts.append(ColumnDrift(qualified, column, spelled, None if actual is None else actual.text))
            elif actual.text != expected.text and (table, column, actual.text) not in self._noted_compatible:
                self._noted_compatible.add((table, column, actual.text))
                notes.append(Note(logging.INFO, "column type differs from the mapping compatibly; rules go on",
                                  {"table": qualified, "column": column, "declared": spelled, "found": actual.text}))
        drifts += [ColumnDrift(qualified, column, None, None)
                   for column in sorted(self._contract.named_columns(table) - set(declared) - set(found))]
        before = self._drift.get(table, ())
        if tuple(drifts) == before:
            return notes
        self._drift[table] = tuple(drifts)
        self.stopped_rules = self._stopped()
        if drifts:
            for drift in drifts:
                notes.append(Note(logging.WARNING, "schema drift: rules stopped", {
                    "table": qualified, "column": drift.column, "declared": drift.declared, "found": drift.found,
                    "lsn": lsn_text(lsn), "rules": self._contract.readers(table, drift.column),
                    "error": drift.describe()}))
        else:
            notes.append(Note(logging.WARNING, "table fits the mapping again; its rules resume",
                              {"table": qualified, "lsn": lsn_text(lsn)}))
        return notes

    def _stopped(self) -> dict[str, str]:
        reasons: dict[str, list[str]] = {}
        for table, drifts in self._drift.items():
            for drift in drifts:
                readers = self._contract.readers(table, drift.column)
                reason = (f"schema drift: {drift.describe()}; rules reading it: {', '.join(readers)}. Fix the "
                          "mapping (declare the column's new type, adjust these rules) or the table, then restart")
                for rule in readers:
                    reasons.setdefault(rule, []).append(reason)
        return {rule: "; ".join(texts) for rule, texts in reasons.items()}
