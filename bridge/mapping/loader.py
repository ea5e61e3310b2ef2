"""Mapping files in, CompiledMappings out; every problem is a MappingError naming file, line, rule and field.

Three steps: YAML is read node by node so that every value keeps its line number (yaml_lines.py); pydantic
checks the shape (spec.py; its error locations are mapped back to those lines); then every expression is
compiled once, names and columns are checked against the declared tables (and, when given, the
database's known schema), and the rules are indexed for translate() (compile.py, compiled.py). This
module runs the steps over files and directories and checks what spans files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from pydantic import ValidationError

from bridge.changes import Op
from bridge.contracts.registry import ContractRegistry, check_contract_folder, contracts_folder_of
from bridge.errors import MappingError
from bridge.mapping.compile import FileReport, compile_file
from bridge.mapping.compiled import CompiledMappings, CompiledRule, DeclaredTypes
from bridge.mapping.spec import MappingFileSpec, canonical_pg_type, shape_problems
from bridge.mapping.yaml_lines import problem_line, read_yaml

# read_yaml and FileReport live in yaml_lines.py and compile.py; callers import them from here too.
__all__ = [
    "FileReport", "check_files", "declared_types_of", "discover_mapping_files", "load_mappings", "needs_before",
    "read_yaml", "replica_identity_problems",
]

# -- loading ----------------------------------------------------------------------------------------------

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
    """Load every file and report its problems instead of raising (rule ids must be unique across files).

    A mapping file with a ``contracts`` folder next to it is checked against those contracts (each emit has
    one and fits it) and its events are validated against them at run time; the folder's own problems are
    reported with the file.
    """
    reports: list[FileReport] = []
    seen: dict[str, str] = {}
    registries: dict[Path, tuple[ContractRegistry, list[str]]] = {}
    for path in discover_mapping_files(paths):
        report = FileReport(str(path))
        folder = contracts_folder_of(path)
        contracts = None
        if folder.is_dir():
            if folder not in registries:
                registries[folder] = check_contract_folder(folder)
            contracts, contract_problems = registries[folder]
            report.contracts = str(folder)
            if contract_problems:
                report.problems.extend(contract_problems)
                reports.append(report)
                continue
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
        compile_file(doc, spec, known_schema, report, seen, contracts)
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


def load_mappings(paths: Iterable[str | Path], *, known_schema: DeclaredTypes | None = None,
                  retired: Iterable[str] = ()) -> CompiledMappings:
    """Load and compile mapping files (or directories of them); raises MappingError on the first problem.

    ``retired``: event types with major whose emits are no longer published (the end of a dual-publishing
    window; see :func:`retire_events`).
    """
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
    rules = retire_events([r for report in reports for r in report.rules], set(retired))
    return CompiledMappings(rules, files=[r.path for r in reports], declared_types=declared, keys=keys, schemas=schemas)


def retire_events(rules: list[CompiledRule], retired: set[str]) -> list[CompiledRule]:
    """The rules with their emits of retired event types marked retired (not published; still counted, so the
    ids of the rule's other events do not move). A retired type must be one the rules emit, in a rule that
    also emits a later major of the event: retiring must end a window, never the event itself."""
    if not retired:
        return rules
    emitted = {emit.type for rule in rules for emit in rule.emits}
    for event_type in sorted(retired - emitted):
        raise MappingError(f"retired_events: no rule emits '{event_type}' (they emit {', '.join(sorted(emitted))}); "
                           "name an event type with its major, as in ce_type")
    kept = []
    for rule in rules:
        dropped = [e for e in rule.emits if e.type in retired]
        if dropped:
            for emit in dropped:
                base = emit.type.rpartition(".v")[0]
                if not any(e.type.rpartition(".v")[0] == base and e.major > emit.major and e.type not in retired
                           for e in rule.emits):
                    raise MappingError(f"{rule.origin}: rule '{rule.id}': retired_events names '{emit.type}', but the "
                                       f"rule publishes no later major of it: retiring it would stop the event; "
                                       f"add the new major's emit first (dual publishing), or remove the emit")
            rule = replace(rule, emits=tuple(replace(e, retired=True) if e.type in retired else e for e in rule.emits))
        kept.append(rule)
    return kept


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
