"""The compiled form of mapping files: what the rule compiler builds from spec.py's models and translate() runs.

Expressions are functions of a scope here (:data:`Getter`), rules are indexed by (schema, table, op), and
:class:`Scope` is what one rule's expressions read while translating one change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from bridge.changes import Op

#: table -> column -> PostgreSQL type (canonical spelling), as declared by the mapping files.
DeclaredTypes = Mapping[str, Mapping[str, str]]
Getter = Callable[[Any], Any]
OMIT: Final = object()  # an optional field whose value was unknown: leave it out of the payload


class Scope:
    """What one rule's expressions read while translating one change: the change context, the rule's lazily
    computed `let` values, and the current `row` (inside collect) and `item` (inside `each`)."""

    __slots__ = ("ctx", "item", "let_fns", "lets", "row")

    def __init__(self, ctx: Any, let_fns: Mapping[str, Getter]) -> None:
        self.ctx, self.let_fns = ctx, let_fns
        self.lets: dict[str, Any] | None = None
        self.row: Any = None
        self.item: Any = None

    def let(self, name: str) -> Any:
        lets = self.lets
        if lets is None:
            lets = self.lets = {}
        elif name in lets:
            return lets[name]
        value = lets[name] = self.let_fns[name](self)
        return value


@dataclass(frozen=True, slots=True)
class CompiledField:
    name: str
    evaluate: Getter  # guarded: raises TranslationError naming rule and field, or returns OMIT
    when: Getter | None = None


@dataclass(frozen=True, slots=True)
class CompiledEmit:
    event: str
    major: int
    type: str  # <namespace>.<aggregate type>.<Event>.v<major>
    aggregate_type: str
    aggregate_id: Getter
    fields: tuple[CompiledField, ...]
    when: Getter | None = None
    each: Getter | None = None
    snapshot_time: Getter | None = None  # guarded: an aware datetime or None; evaluated for snapshot reads only
    # The contract the payload must obey: raises ContractViolation (None: the mapping has no contracts).
    check: Callable[[Mapping[str, Any]], None] | None = None
    dataschema: str | None = None  # the contract revision, published as ce_dataschema
    # Retired (retired_events: the end of a dual-publishing window): still evaluated and counted, so that the
    # rule's other events keep their output index, hence their ids and sequences; never published.
    retired: bool = False


def reads_column(reads: frozenset[tuple[str, str]], table: str, column: str) -> bool:
    """Whether a rule with these reads (CompiledRule.reads) depends on `column` of `table`."""
    return (table, column) in reads or (table, "*") in reads or ("*", "*") in reads


@dataclass(frozen=True, slots=True)
class CompiledRule:
    id: str
    origin: str  # file:line, for reports
    namespace: str
    schema: str
    table: str
    ops: frozenset[Op]
    ignore: bool
    on_error: str
    when: Getter | None
    lets: Mapping[str, Getter]
    emits: tuple[CompiledEmit, ...]
    reads_before: bool  # reads `before` or `changed` on an update or delete: needs the old row
    # (table, column) pairs its expressions read; column "*" a whole row, ("*", "*") any table (`tx`).
    # The default, for rules built by hand, claims everything: a schema change then stops them too.
    reads: frozenset[tuple[str, str]] = frozenset({("*", "*")})

    def reads_column(self, table: str, column: str) -> bool:
        return reads_column(self.reads, table, column)

    @property
    def qualified_table(self) -> str:
        return f"{self.schema}.{self.table}"


class CompiledMappings:
    """Every rule of one or more mapping files, indexed by (schema, table, op letter) for translate()."""

    def __init__(self, rules: Sequence[CompiledRule], *, files: Sequence[str] = (),
                 declared_types: DeclaredTypes | None = None, keys: Mapping[str, tuple[str, ...]] | None = None,
                 schemas: Mapping[str, str] | None = None) -> None:
        self.rules = tuple(rules)
        self.files = tuple(files)
        self._declared: DeclaredTypes = declared_types or {}
        self.keys: Mapping[str, tuple[str, ...]] = keys or {}  # table -> primary-key columns
        self.schemas: Mapping[str, str] = schemas or {}  # table -> schema
        # Keyed by the op's letter (change.op._value_), a plain string: an Op's own hash is a Python call.
        index: dict[tuple[str, str, str], tuple[list[CompiledRule], list[CompiledRule]]] = {}
        for rule in self.rules:
            for op in rule.ops:
                ignores, emitters = index.setdefault((rule.schema, rule.table, op.value), ([], []))
                (ignores if rule.ignore else emitters).append(rule)
        self.index = {k: (tuple(ignores), tuple(emitters)) for k, (ignores, emitters) in index.items()}
        self.overlay_tables = frozenset((r.schema, r.table) for r in self.rules if r.reads_before)
        self._column_counts = {table: len(columns) for table, columns in self._declared.items()}

    def declared_types(self) -> DeclaredTypes:
        """table -> column -> PostgreSQL type, for decoding schemaless Debezium JSON exactly."""
        return self._declared

    def column_count(self, table: str) -> int | None:
        return self._column_counts.get(table)

    def needs_before(self) -> dict[str, tuple[str, ...]]:
        """table -> ids of the rules reading old values (`before`, `changed`) of its updates or deletes.

        Such a table needs REPLICA IDENTITY FULL or the prior-row store (see loader.replica_identity_problems).
        """
        needs: dict[str, list[str]] = {}
        for rule in self.rules:
            if rule.reads_before:
                needs.setdefault(rule.table, []).append(rule.id)
        return {table: tuple(ids) for table, ids in needs.items()}

    def rules_reading(self, table: str, column: str) -> list[CompiledRule]:
        """The rules whose translation depends on `column` of `table` (plain names): a schema change of it
        concerns exactly these."""
        return [rule for rule in self.rules if rule.reads_column(table, column)]

    def tables(self) -> list[str]:
        """The tables rules read (plain names; each rule's schema is in rule.schema)."""
        return sorted({rule.table for rule in self.rules})

    def tables_in_rule_order(self) -> list[str]:
        """The tables rules read, in the order rules first mention them: mappings name parents first, so a
        snapshot read in this order publishes an order's events before its lines'."""
        return list(dict.fromkeys(rule.table for rule in self.rules))

    def event_types(self) -> list[str]:
        return sorted({emit.type for rule in self.rules for emit in rule.emits if not emit.retired})

    def unchecked_event_types(self) -> list[str]:
        """Event types published without a contract check (their mapping file has no contracts folder)."""
        return sorted({emit.type for rule in self.rules for emit in rule.emits if emit.check is None and not emit.retired})

    def aggregates(self) -> list[tuple[str, str]]:
        """(namespace, aggregate type) of every event the rules can emit: the sink's topics."""
        return sorted({(emit.type.rsplit(".", 3)[0], emit.aggregate_type) for rule in self.rules for emit in rule.emits})

    def snapshot_tables(self) -> dict[str, list[str]]:
        """table -> ids of the rules that say what an existing row (a snapshot read, op r) means: emit or ignore."""
        tables: dict[str, list[str]] = {}
        for rule in self.rules:
            if Op.READ in rule.ops:
                tables.setdefault(rule.table, []).append(rule.id)
        return tables

    def rule_count(self) -> int:
        return len(self.rules)
