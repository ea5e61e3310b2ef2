"""Mapping files in, CompiledMappings out; every problem is a MappingError naming file, line, rule and field.

Three steps: YAML is read node by node so that every value keeps its line number; pydantic checks the
shape (its error locations are mapped back to those lines); then every expression is compiled once, names
and columns are checked against the declared tables (and, when given, the database's known schema), and
the rules are indexed for translate().
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bridge.changes import UNKNOWN, Op
from bridge.errors import MappingError
from bridge.mapping.expr import (
    FUNCTIONS,
    EvalError,
    ExprError,
    NameSpec,
    compile_expression,
    equality_probe,
)
from bridge.mapping.spec import (
    CollectSpec,
    CompiledEmit,
    CompiledField,
    CompiledMappings,
    CompiledRule,
    DeclaredTypes,
    EmitSpec,
    FieldObject,
    Getter,
    MappingFileSpec,
    RuleSpec,
    canonical_pg_type,
    shape_problems,
)
from bridge.mapping.translate import (
    NAMES,
    aggregate_id_of,
    collector,
    guard,
    let_getter,
    must_be_bool,
    must_be_list,
    publishable,
)

_MAX_NODES = 200_000
_MAX_DEPTH = 64
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class YamlDocument:
    """Plain Python data from a YAML file, and the line of every key and list item (by path)."""

    path: str
    data: Any
    lines: Mapping[tuple[Any, ...], int]

    def line_of(self, path: Sequence[Any]) -> int:
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return 1


def read_yaml(path: str | Path, *, allow_unknown_tag: bool = False) -> YamlDocument:
    """Parse one YAML document safely (no Python tags), rejecting duplicate keys and alias bombs.

    ``!unknown`` (golden cases only) stands for bridge.changes.UNKNOWN, an unchanged TOAST value.
    """
    shown = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingError(f"{shown}: cannot read the file: {exc}") from None
    loader = _Loader(text)
    lines: dict[tuple[Any, ...], int] = {(): 1}
    try:
        node = loader.get_single_node()
        walker = _Walker(shown, loader, lines, allow_unknown_tag)
        data = None if node is None else walker.construct(node, (), 0)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise MappingError(f"{shown}:{line}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise MappingError(f"{shown}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    return YamlDocument(shown, data, lines)


class _Walker:
    def __init__(self, path: str, loader: Any, lines: dict[tuple[Any, ...], int], allow_unknown: bool) -> None:
        self.path, self.loader, self.lines, self.allow_unknown = path, loader, lines, allow_unknown
        self.count = 0

    def fail(self, node: yaml.Node, message: str) -> MappingError:
        return MappingError(f"{self.path}:{node.start_mark.line + 1}: {message}")

    def construct(self, node: yaml.Node, path: tuple[Any, ...], depth: int) -> Any:
        self.count += 1
        if self.count > _MAX_NODES or depth > _MAX_DEPTH:
            raise self.fail(node, "the document is too large or too deeply nested (aliases?)")
        if isinstance(node, yaml.ScalarNode):
            if node.tag == "!unknown":
                if not self.allow_unknown:
                    raise self.fail(node, "!unknown is only allowed in golden test cases")
                return UNKNOWN
            return self.loader.construct_object(node)
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, child in enumerate(node.value):
                self.lines[path + (index,)] = child.start_mark.line + 1
                items.append(self.construct(child, path + (index,), depth + 1))
            return items
        if isinstance(node, yaml.MappingNode):
            written: dict[Any, int] = {}  # keys written here (not merged in with <<), to catch duplicates
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                if not isinstance(key_node, yaml.ScalarNode):
                    raise self.fail(key_node, "keys must be plain scalars")
                key = self.loader.construct_object(key_node)
                if key in written:
                    raise self.fail(key_node, f"duplicate key {key!r} (first on line {written[key]})")
                written[key] = key_node.start_mark.line + 1
            self.loader.flatten_mapping(node)  # << merge keys first; keys written here override them
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self.loader.construct_object(key_node)
                self.lines[path + (key,)] = key_node.start_mark.line + 1
                result[key] = self.construct(value_node, path + (key,), depth + 1)
            return result
        raise self.fail(node, f"unsupported YAML node {type(node).__name__}")


# -- problems: one line each, "file:line: rule 'id', field 'path': what is wrong (what was expected)" --------

def field_path(path: Sequence[Any]) -> str:
    text = ""
    for element in path:
        is_index = isinstance(element, int) and not isinstance(element, bool)
        text += f"[{element}]" if is_index else (f".{element}" if text else str(element))
    return text


def problem_line(doc: YamlDocument, path: Sequence[Any], message: str) -> str:
    """Locate ``path`` (a path into the YAML data) and name its rule and field."""
    where = [f"{doc.path}:{doc.line_of(path)}:"]
    rest = list(path)
    if len(rest) >= 2 and rest[0] == "rules" and isinstance(rest[1], int):
        rules = doc.data.get("rules") if isinstance(doc.data, dict) else None
        raw = rules[rest[1]] if isinstance(rules, list) and rest[1] < len(rules) else None
        rule_id = raw.get("id") if isinstance(raw, dict) else None
        where.append(f"rule '{rule_id}'" if isinstance(rule_id, str) else f"rule #{rest[1] + 1}")
        rest = rest[2:]
    if rest:
        where.append(f"field '{field_path(rest)}'")
    head, tail = where[0], ", ".join(where[1:])
    return f"{head} {tail}: {message}" if tail else f"{head} {message}"


# -- loading ----------------------------------------------------------------------------------------------

@dataclass
class FileReport:
    """What `cdc-bridge mappings validate` prints for one file."""

    path: str
    problems: list[str] = field(default_factory=list)
    rules: tuple[CompiledRule, ...] = ()
    tables: dict[str, dict[str, str]] = field(default_factory=dict)
    keys: dict[str, tuple[str, ...]] = field(default_factory=dict)
    schemas: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def discover_mapping_files(paths: Iterable[str | Path]) -> list[Path]:
    """Mapping files named by ``paths``: files as given, directories' own *.yaml/*.yml (not sub-folders)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            raise MappingError(f"{path}: no such mapping file or directory")
    return found


def check_files(paths: Iterable[str | Path], *, known_schema: DeclaredTypes | None = None) -> list[FileReport]:
    """Load every file and report its problems instead of raising (rule ids must be unique across files)."""
    reports: list[FileReport] = []
    seen: dict[str, str] = {}
    for path in discover_mapping_files(paths):
        report = FileReport(str(path))
        try:
            doc = read_yaml(path)
        except MappingError as exc:
            report.problems.append(str(exc))
            reports.append(report)
            continue
        try:
            spec = MappingFileSpec.model_validate(doc.data if doc.data is not None else {})
        except ValidationError as exc:
            found = shape_problems(doc.data, exc)
            report.problems.extend(problem_line(doc, where, message) for where, message in found)
            reports.append(report)
            continue
        _Builder(doc, spec, known_schema, report, seen).run()
        reports.append(report)
    _check_shadowed(reports)
    return reports


def _check_shadowed(reports: list[FileReport]) -> None:
    """An emitting rule under an unconditional ignore rule for the same table and op can never emit."""
    silencers: dict[tuple[str, str, Op], CompiledRule] = {}
    for rule in (r for report in reports for r in report.rules if r.ignore and r.when is None):
        for op in rule.ops:
            silencers.setdefault((rule.schema, rule.table, op), rule)
    for report in reports:
        for rule in (r for r in report.rules if not r.ignore):
            for op in sorted(rule.ops):
                ignore = silencers.get((rule.schema, rule.table, op))
                if ignore is not None:
                    report.problems.append(
                        f"{rule.origin}: rule '{rule.id}': can never emit for op {op.value}: ignore rule "
                        f"'{ignore.id}' ({ignore.origin}) silences {rule.qualified_table} op {op.value} "
                        "unconditionally (ignore rules are tried first)")


def load_mappings(paths: Iterable[str | Path], *, known_schema: DeclaredTypes | None = None) -> CompiledMappings:
    """Load and compile mapping files (or directories of them); raises MappingError on the first problem."""
    paths = list(paths)
    reports = check_files(paths, known_schema=known_schema)
    if not reports:
        raise MappingError(f"no mapping files in {', '.join(map(str, paths))}")
    problems = [p for r in reports for p in r.problems]
    if problems:
        more = f" (and {len(problems) - 1} more; run `cdc-bridge mappings validate`)" if len(problems) > 1 else ""
        raise MappingError(problems[0] + more)
    declared: dict[str, dict[str, str]] = {}
    keys: dict[str, tuple[str, ...]] = {}
    schemas: dict[str, str] = {}
    for report in reports:
        for table, columns in report.tables.items():
            if columns and declared.setdefault(table, columns) != columns:
                raise MappingError(f"{report.path}: table '{table}' is declared with other columns or types "
                                   "in another mapping file; declare it once")
        keys.update(report.keys)
        schemas.update(report.schemas)
    return CompiledMappings([r for report in reports for r in report.rules], files=[r.path for r in reports],
                            declared_types=declared, keys=keys, schemas=schemas)


def needs_before(mappings: CompiledMappings) -> dict[str, tuple[str, ...]]:
    """table -> rules reading old values of its updates/deletes (`before`, `changed`).

    Such a table needs REPLICA IDENTITY FULL or the prior-row store; see :func:`replica_identity_problems`.
    """
    return mappings.needs_before()


def replica_identity_problems(mappings: CompiledMappings, *, full_tables: Iterable[str],
                              prior_store: bool) -> list[str]:
    """Why the daemon must not start: tables whose rules need old rows that nobody will provide.

    ``full_tables``: tables (schema.table or plain names) whose REPLICA IDENTITY is FULL.
    """
    if prior_store:
        return []
    full = set(full_tables)
    needing: dict[str, list[str]] = {}
    for rule in mappings.rules:
        if rule.reads_before and rule.qualified_table not in full and rule.table not in full:
            needing.setdefault(rule.qualified_table, []).append(rule.id)
    return [f"{table}: rules {', '.join(repr(r) for r in rules)} read old values (before/changed), but the table's "
            f"REPLICA IDENTITY is not FULL and no prior-row store is configured; run ALTER TABLE {table} "
            "REPLICA IDENTITY FULL, or enable the prior-row store"
            for table, rules in needing.items()]


def declared_types_of(tables: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str]]:
    """Canonical types for a {table: {column: type}} mapping (e.g. read from a database or SQLAlchemy)."""
    return {t: {c: canonical_pg_type(pg) for c, pg in columns.items()} for t, columns in tables.items()}


# -- compiling one validated file -----------------------------------------------------------------------------

@dataclass
class _RuleState:
    id: str
    used: set[str] = field(default_factory=set)  # names read anywhere in the rule


class _Builder:
    """Compiles one validated mapping file into CompiledRules, collecting problems instead of stopping."""

    def __init__(self, doc: YamlDocument, spec: MappingFileSpec, known_schema: DeclaredTypes | None,
                 report: FileReport, seen: dict[str, str]) -> None:
        self.doc, self.spec, self.report, self.seen = doc, spec, report, seen
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

    def expr(self, text: str, path: tuple[Any, ...], names: Mapping[str, NameSpec], state: _RuleState) -> Getter | None:
        try:
            compiled = compile_expression(text, names)
        except ExprError as exc:
            self.problem(path, str(exc))
            return None
        state.used |= compiled.names
        return compiled.evaluate

    def predicate(self, text: str | None, path: tuple[Any, ...], names: Mapping[str, NameSpec],
                  state: _RuleState) -> Getter | None:
        if text is None:
            return None
        evaluate = self.expr(text, path, names, state)
        return guard(evaluate, state.id, field_path(path[2:]), check=must_be_bool) if evaluate else None

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
        if len(self.report.problems) > problems_before:
            return None
        ops = frozenset(Op(letter) for letter in rule.ops)
        reads_before = bool(state.used & {"before", "changed"}) and bool(ops & {Op.UPDATE, Op.DELETE})
        return CompiledRule(
            id=rule.id, origin=origin, namespace=self.spec.namespace, schema=schema, table=table, ops=ops,
            ignore=rule.ignore, on_error=rule.on_error or self.spec.on_error, when=when, lets=lets,
            emits=tuple(e for e in emits if e is not None), reads_before=reads_before)

    def emit(self, path: tuple[Any, ...], emit: EmitSpec, names: dict[str, NameSpec],
             item_fields: Mapping[str, frozenset[str]], state: _RuleState) -> CompiledEmit | None:
        when = self.predicate(emit.when, path + ("when",), names, state)
        each, inner = None, names
        if emit.each is not None:
            evaluate = self.expr(emit.each, path + ("each",), names, state)
            each = guard(evaluate, state.id, field_path(path[2:] + ("each",)), check=must_be_list) if evaluate else None
            inner = {**names, "item": NameSpec(NAMES["item"], item_fields.get(emit.each.strip()), "field", "each item")}
        id_path = path + ("aggregate", "id")
        evaluate = self.expr(emit.aggregate.id, id_path, inner, state)
        aggregate_id = guard(evaluate, state.id, field_path(id_path[2:]), check=aggregate_id_of) if evaluate else None
        fields = [self.field(name, spec, path + ("data", name), inner, state) for name, spec in emit.data.items()]
        if aggregate_id is None or None in fields or (emit.each is not None and each is None):
            return None
        return CompiledEmit(
            event=emit.event, major=emit.version, aggregate_type=emit.aggregate.type, aggregate_id=aggregate_id,
            type=f"{self.spec.namespace}.{emit.aggregate.type}.{emit.event}.v{emit.version}",
            fields=tuple(f for f in fields if f is not None), when=when, each=each)

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
            spec, path, optional = spec.value, path + ("value",), spec.optional
        elif not isinstance(spec, str):
            return self.constant(spec, path), None
        evaluate = self.expr(spec, path, names, state)
        if evaluate is None:
            return None, None
        return guard(evaluate, state.id, field_path(path[2:]), check=publishable if publish else None,
                     optional=optional), None

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
            evaluate = self.expr(spec.value, path + ("value",), inner, state)
            name = field_path(path[2:] + ("value",))
            value = guard(evaluate, state.id, name, check=publishable) if evaluate else None
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
            probe = (found[0], guard(key, state.id, field_path(path[2:] + ("where",)))) if key else None
        ops = frozenset(Op(letter) for letter in spec.ops)
        getter = collector(schema, table, ops, where, value, tuple(f for f in fields if f is not None), probe)
        return getter, (frozenset(spec.fields) if spec.fields is not None else None)


def _canonical_or_raw(pg_type: str) -> str:
    try:
        return canonical_pg_type(pg_type)
    except ValueError:
        return " ".join(pg_type.lower().split())
