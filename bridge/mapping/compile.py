"""The rule compiler: one validated mapping file in, CompiledRules out, every problem collected on the way.

Every expression is compiled once (expr.py), names and columns are checked against the declared tables
(and, when given, the database's known schema), and the compiled expressions are wired into the run-time
helpers of closures.py (the field guard is compiled into each expression). Problems are not raised: they go into the file's :class:`FileReport`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bridge.changes import Op
from bridge.contracts.registry import ContractRegistry
from bridge.mapping.closures import (
    NAMES,
    aggregate_id_of,
    build_object,
    event_time_of,
    collector,
    guard,
    let_getter,
    must_be_bool,
    must_be_list,
    publishable,
)
from bridge.mapping.compiled import (
    CompiledEmit,
    CompiledField,
    CompiledRule,
    DeclaredTypes,
    Getter,
)
from bridge.mapping.contract_fit import RULE, emit_contract_problems
from bridge.mapping.expr import ExprError, NameSpec, compile_expression, equality_probe
from bridge.mapping.functions import FUNCTIONS
from bridge.mapping.spec import (
    CollectSpec,
    EmitSpec,
    FieldObject,
    MappingFileSpec,
    RuleSpec,
    canonical_pg_type,
)
from bridge.mapping.values import EvalError
from bridge.mapping.yaml_lines import YamlDocument, field_path, problem_line


@dataclass
class FileReport:
    """What `cdc-bridge mappings validate` prints for one file."""

    path: str
    problems: list[str] = field(default_factory=list)
    rules: tuple[CompiledRule, ...] = ()
    tables: dict[str, dict[str, str]] = field(default_factory=dict)
    keys: dict[str, tuple[str, ...]] = field(default_factory=dict)
    schemas: dict[str, str] = field(default_factory=dict)
    contracts: str | None = None  # the contracts folder its emits are checked against, if it has one

    @property
    def ok(self) -> bool:
        return not self.problems


# -- compiling one validated file -----------------------------------------------------------------------------

def compile_file(doc: YamlDocument, spec: MappingFileSpec, known_schema: DeclaredTypes | None,
                 report: FileReport, seen: dict[str, str], contracts: ContractRegistry | None = None) -> None:
    """Compile one validated file into ``report``; ``seen``: rule id -> where it is defined, across files;
    ``contracts``: the contracts every emit must fit (None: the file has no contracts folder)."""
    _Builder(doc, spec, known_schema, report, seen, contracts).run()


@dataclass
class _RuleState:
    id: str
    used: set[str] = field(default_factory=set)  # names read anywhere in the rule
    columns: set[tuple[str, str]] = field(default_factory=set)  # (table, column or "*") read anywhere


class _Builder:
    """Compiles one validated mapping file into CompiledRules, collecting problems instead of stopping."""

    def __init__(self, doc: YamlDocument, spec: MappingFileSpec, known_schema: DeclaredTypes | None,
                 report: FileReport, seen: dict[str, str], contracts: ContractRegistry | None) -> None:
        self.doc, self.spec, self.report, self.seen, self.contracts = doc, spec, report, seen, contracts
        self.known = None if known_schema is None else {
            name.rpartition(".")[2]: {c: _canonical_or_raw(t) for c, t in columns.items()}
            for name, columns in known_schema.items()}
        declared = set(spec.tables)
        self.universe: frozenset[str] | None = (
            frozenset(declared) if declared else frozenset(self.known) if self.known is not None else None)

    def problem(self, path: Sequence[Any], message: str) -> None:
        self.report.problems.append(problem_line(self.doc, path, message))

    def run(self) -> None:
        self.declare_tables()
        rules = [self.rule(index, rule) for index, rule in enumerate(self.spec.rules)]
        if not self.report.problems:
            self.report.rules = tuple(r for r in rules if r is not None)

    def declare_tables(self) -> None:
        for name, table in self.spec.tables.items():
            path = ("tables", name)
            columns: dict[str, str] = {}
            for column, pg_type in table.columns.items():
                try:
                    columns[column] = canonical_pg_type(pg_type)
                except ValueError as exc:
                    self.problem(path + ("columns", column), str(exc))
            key = tuple(table.key) if table.key else ("id",) if "id" in columns else ()
            for column in key:
                if columns and column not in columns:
                    self.problem(path + ("key",), f"key column '{column}' is not among the declared columns")
            if self.known is not None:
                self.check_known(name, columns, path)
            self.report.tables[name], self.report.keys[name] = columns, key
            self.report.schemas[name] = table.schema_ or self.spec.schema_

    def check_known(self, name: str, columns: Mapping[str, str], path: tuple[Any, ...]) -> None:
        assert self.known is not None
        known = self.known.get(name)
        if known is None:
            self.problem(path, f"unknown table '{name}' (the database has {', '.join(sorted(self.known))})")
            return
        for column, pg_type in columns.items():
            if column not in known:
                self.problem(path + ("columns", column), f"unknown column '{column}' of {name} "
                             f"(the database has {', '.join(known)})")
            elif known[column] != pg_type:
                self.problem(path + ("columns", column), f"declared as {pg_type}, but the database has {known[column]}")

    def columns_of(self, table: str) -> frozenset[str] | None:
        declared = self.report.tables.get(table)
        if declared:
            return frozenset(declared)
        if self.known is not None and table in self.known:
            return frozenset(self.known[table])
        return None

    def table_ref(self, ref: str, path: tuple[Any, ...]) -> tuple[str, str]:
        schema, _, table = ref.rpartition(".")
        if self.universe is not None and table not in self.universe:
            where = "declared tables" if self.spec.tables else "tables in the database"
            self.problem(path, f"unknown table '{table}' ({where}: {', '.join(sorted(self.universe))})")
        return schema or self.report.schemas.get(table) or self.spec.schema_, table

    def expr(self, text: str, path: tuple[Any, ...], names: Mapping[str, NameSpec], state: _RuleState, *,
             check: Getter | None = None, optional: bool = False) -> Getter | None:
        """The compiled expression at `path`, guarded as that field of the rule: failures become
        TranslationErrors naming rule and field (closures.guard); None if it is refused."""
        try:
            compiled = compile_expression(text, names, guard(state.id, field_path(path[2:]), check=check,
                                                                optional=optional))
        except ExprError as exc:
            self.problem(path, str(exc))
            return None
        state.used |= compiled.names
        state.columns |= compiled.columns
        return compiled.evaluate

    def predicate(self, text: str | None, path: tuple[Any, ...], names: Mapping[str, NameSpec],
                  state: _RuleState) -> Getter | None:
        if text is None:
            return None
        return self.expr(text, path, names, state, check=must_be_bool)

    def rule(self, index: int, rule: RuleSpec) -> CompiledRule | None:
        base, problems_before = ("rules", index), len(self.report.problems)
        origin = f"{self.doc.path}:{self.doc.line_of(base)}"
        if rule.id in self.seen:
            self.problem(base + ("id",), f"rule id '{rule.id}' is already used at {self.seen[rule.id]}; "
                         "rule ids are part of event ids and must be unique")
        self.seen.setdefault(rule.id, origin)
        schema, table = self.table_ref(rule.table, base + ("table",))
        state, columns = _RuleState(rule.id), self.columns_of(table)
        key_columns = frozenset(self.report.keys.get(table, ())) or None
        names: dict[str, NameSpec] = {
            "before": NameSpec(NAMES["before"], columns, "column", table),
            "after": NameSpec(NAMES["after"], columns, "column", table),
            "changed": NameSpec(NAMES["changed"]),
            "key": NameSpec(NAMES["key"], key_columns, "key column", table),
            "op": NameSpec(NAMES["op"]),
            "tx": NameSpec(NAMES["tx"], self.universe, "table"),
        }
        lets: dict[str, Getter] = {}
        item_fields: dict[str, frozenset[str]] = {}  # let name -> fields of the objects its collect yields
        for name, spec in rule.let.items():
            path = base + ("let", name)
            if name in names or name in FUNCTIONS or name in ("row", "item"):
                self.problem(path, f"let name '{name}' hides a built-in name or function; choose another")
                continue
            if isinstance(spec, FieldObject) and (spec.optional or spec.when is not None):
                self.problem(path, "let entries take no 'optional' or 'when'")
                continue
            evaluate, fields = self.value(spec, path, names, state, publish=False)
            if evaluate is not None:
                lets[name] = evaluate
            names[name] = NameSpec(let_getter(name))
            if fields is not None:
                item_fields[name] = fields
        when = self.predicate(rule.when, base + ("when",), names, state)
        emits = [self.emit(base + ("emit", j), emit, names, item_fields, state) for j, emit in enumerate(rule.emit)]
        if self.contracts is not None:
            emits = [self.bind_contract(base + ("emit", j), spec, compiled, rule, table)
                     for j, (spec, compiled) in enumerate(zip(rule.emit, emits))]
        for j, emit in enumerate(rule.emit):
            if emit.snapshot_time is not None and "r" not in rule.ops:
                self.problem(base + ("emit", j, "snapshot_time"), "snapshot_time applies to snapshot reads only: add "
                             "r to the rule's ops, or remove it")
        if len(self.report.problems) > problems_before:
            return None
        ops = frozenset(Op(letter) for letter in rule.ops)
        reads_before = bool(state.used & {"before", "changed"}) and bool(ops & {Op.UPDATE, Op.DELETE})
        reads = set(state.columns)
        if "changed" in state.used:  # compares every column of the row
            reads.add((table, "*"))
        if "tx" in state.used:  # any row of any table in the transaction
            reads.add(("*", "*"))
        return CompiledRule(
            id=rule.id, origin=origin, namespace=self.spec.namespace, schema=schema, table=table, ops=ops,
            ignore=rule.ignore, on_error=rule.on_error or self.spec.on_error, when=when, lets=lets,
            emits=tuple(e for e in emits if e is not None), reads_before=reads_before, reads=frozenset(reads))

    def bind_contract(self, path: tuple[Any, ...], spec: EmitSpec, emit: CompiledEmit | None, rule: RuleSpec,
                      table: str) -> CompiledEmit | None:
        """The emit checked against its contract (every misfit a problem), carrying the contract's run-time check."""
        assert self.contracts is not None
        event_type = f"{self.spec.namespace}.{spec.aggregate.type}.{spec.event}.v{spec.version}"
        major, problems = emit_contract_problems(spec, event_type, self.contracts, columns=self.report.tables.get(table),
                                                 tables=self.report.tables, lets=rule.let)
        for where, message in problems:
            self.problem(path[:2] + where[1:] if where[:1] == (RULE,) else path + where, message)
        if emit is None or major is None:
            return emit
        return replace(emit, check=major.checker, dataschema=major.dataschema())

    def emit(self, path: tuple[Any, ...], emit: EmitSpec, names: dict[str, NameSpec],
             item_fields: Mapping[str, frozenset[str]], state: _RuleState) -> CompiledEmit | None:
        when = self.predicate(emit.when, path + ("when",), names, state)
        each, inner = None, names
        if emit.each is not None:
            each = self.expr(emit.each, path + ("each",), names, state, check=must_be_list)
            inner = {**names, "item": NameSpec(NAMES["item"], item_fields.get(emit.each.strip()), "field", "each item")}
        id_path = path + ("aggregate", "id")
        aggregate_id = self.expr(emit.aggregate.id, id_path, inner, state, check=aggregate_id_of)
        fields = [self.field(name, spec, path + ("data", name), inner, state) for name, spec in emit.data.items()]
        snapshot_time = None
        if emit.snapshot_time is not None:
            time_path = path + ("snapshot_time",)
            snapshot_time = self.expr(emit.snapshot_time, time_path, inner, state, check=event_time_of)
            if snapshot_time is None:
                return None
        if aggregate_id is None or None in fields or (emit.each is not None and each is None):
            return None
        return CompiledEmit(
            event=emit.event, major=emit.version, aggregate_type=emit.aggregate.type, aggregate_id=aggregate_id,
            type=f"{self.spec.namespace}.{emit.aggregate.type}.{emit.event}.v{emit.version}",
            fields=tuple(f for f in fields if f is not None), when=when, each=each, snapshot_time=snapshot_time)

    def field(self, name: str, spec: Any, path: tuple[Any, ...], names: Mapping[str, NameSpec],
              state: _RuleState, in_collect: bool = False) -> CompiledField | None:
        when = None
        if isinstance(spec, FieldObject) and spec.when is not None:
            when = self.predicate(spec.when, path + ("when",), names, state)
        evaluate, _ = self.value(spec, path, names, state, publish=True, in_collect=in_collect)
        return None if evaluate is None else CompiledField(name, evaluate, when)

    def value(self, spec: Any, path: tuple[Any, ...], names: Mapping[str, NameSpec], state: _RuleState, *,
              publish: bool, in_collect: bool = False) -> tuple[Getter | None, frozenset[str] | None]:
        """A field's or let's getter, and the fields of the objects it yields when it is a collect."""
        optional = False
        if isinstance(spec, FieldObject):
            if "const" in spec.model_fields_set:
                return self.constant(spec.const, path + ("const",)), None
            if spec.collect is not None:
                if in_collect:
                    self.problem(path + ("collect",), "a collect cannot be nested inside another collect")
                    return None, None
                return self.collect(spec.collect, path + ("collect",), names, state)
            if spec.fields is not None:
                return self.nested_object(spec.fields, path + ("fields",), names, state, in_collect), None
            spec, path, optional = spec.value, path + ("value",), spec.optional
        elif not isinstance(spec, str):
            return self.constant(spec, path), None
        return self.expr(spec, path, names, state, check=publishable if publish else None, optional=optional), None

    def nested_object(self, fields: Mapping[str, Any], path: tuple[Any, ...], names: Mapping[str, NameSpec],
                      state: _RuleState, in_collect: bool) -> Getter | None:
        """A field's ``fields:``: an object built like a payload (each field any form; `when`/`optional` leave
        a field out of the object, not the object out of the payload)."""
        compiled = [self.field(n, s, path + (n,), names, state, in_collect=in_collect) for n, s in fields.items()]
        if None in compiled:
            return None
        built = tuple(f for f in compiled if f is not None)
        return lambda scope: build_object(built, scope)

    def constant(self, value: Any, path: tuple[Any, ...]) -> Getter | None:
        try:
            value = publishable(value)
        except EvalError as exc:
            self.problem(path, f"this constant cannot go into an event: {exc}")
            return None
        if isinstance(value, (dict, list)):  # events must not share mutable payload parts
            return lambda scope: copy.deepcopy(value)
        return lambda scope: value

    def collect(self, spec: CollectSpec, path: tuple[Any, ...], names: Mapping[str, NameSpec],
                state: _RuleState) -> tuple[Getter | None, frozenset[str] | None]:
        schema, table = self.table_ref(spec.table, path + ("table",))
        inner = {**names, "row": NameSpec(NAMES["row"], self.columns_of(table), "column", table)}
        where = self.predicate(spec.where, path + ("where",), inner, state)
        value: Getter | None = None
        fields: list[CompiledField | None] = []
        if spec.value is not None:
            value = self.expr(spec.value, path + ("value",), inner, state, check=publishable)
            if value is None:
                return None, None
        else:
            assert spec.fields is not None
            fields = [self.field(n, s, path + ("fields", n), inner, state, in_collect=True)
                      for n, s in spec.fields.items()]
            if None in fields:
                return None, None
        if spec.where is not None and where is None:
            return None, None
        probe = None
        found = equality_probe(spec.where) if spec.where is not None else None
        if found is not None:  # index the rows by this column instead of scanning the transaction per change
            key = self.expr(found[1], path + ("where",), names, state)
            probe = (found[0], key) if key else None
        ops = frozenset(Op(letter) for letter in spec.ops)
        getter = collector(schema, table, ops, where, value, tuple(f for f in fields if f is not None), probe)
        return getter, (frozenset(spec.fields) if spec.fields is not None else None)


def _canonical_or_raw(pg_type: str) -> str:
    try:
        return canonical_pg_type(pg_type)
    except ValueError:
        return " ".join(pg_type.lower().split())
