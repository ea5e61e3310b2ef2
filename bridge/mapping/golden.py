"""Golden cases: recorded changes in, expected events out, kept next to the mapping they test.

``mappings/<name>.tests/*.yaml`` test ``mappings/<name>.yaml`` (or the file named by ``mapping:``)::

    source_id: golden                  # optional
    fixtures: {order: &order {id: 7, ...}}   # optional: anchors the cases reuse (<<: *order)
    cases:
      - name: checkout emits OrderPlaced with lines and total
        prior_rows:                    # optional; when present the prior-row store is enabled
          - {table: orders, row: {id: 7, status: OPEN, ...}}
        transaction:                   # or `change:` (one change in its own transaction), or `transactions:`
          xid: 812                     # optional, like commit_lsn and commit_time
          changes:
            - {op: c, table: orders, after: {id: 7, ...}}        # key: from the table's declared key
            - {op: u, table: orders, after: {...}}               # no before: REPLICA IDENTITY DEFAULT
        expect:
          events:                      # in order; each compares only the keys it gives
            - {type: restaurant.order.OrderPlaced.v1, subject: order/7, data: {...}}
          dead_letters: [{rule: orders.placed, error: "REPLICA IDENTITY FULL"}]  # error: a substring
          unmatched: {orders: 1}       # optional, like ignored
          error: "..."                 # optional: a rule with on_error: stop fails (a substring)

Row values are YAML, converted by the declared column types (numeric -> Decimal: quote money, "12.50";
timestamptz -> aware datetime, ...); ``!unknown`` is an unchanged TOAST value.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bridge.changes import UNKNOWN, Op, RowChange, SourcePosition, Transaction
from bridge.contracts.models import violation_text
from bridge.contracts.registry import ContractRegistry, contracts_folder_of, load_contracts
from bridge.errors import MappingError
from bridge.events import to_json_value
from bridge.mapping.compiled import CompiledMappings
from bridge.mapping.loader import load_mappings
from bridge.mapping.spec import shape_problems
from bridge.mapping.prior_rows import InMemoryPriorRows
from bridge.mapping.translate import TranslationResult, translate
from bridge.mapping.yaml_lines import YamlDocument, field_path, read_yaml

_BASE_TIME = datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChangeIn(_Strict):
    op: Literal["r", "c", "u", "d", "t"]
    table: str
    schema_: str | None = Field(default=None, alias="schema")
    key: dict[str, Any] | None = None
    old_key: dict[str, Any] | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    lsn: int | str | None = None
    seq: int = 0


class TransactionIn(_Strict):
    xid: int | None = None
    commit_lsn: int | str | None = None
    commit_time: datetime | None = None
    changes: list[ChangeIn] = Field(min_length=1)


class PriorRowIn(_Strict):
    table: str
    schema_: str | None = Field(default=None, alias="schema")
    key: dict[str, Any] | None = None
    row: dict[str, Any]


class ExpectedEvent(_Strict):
    type: str
    subject: str | None = None
    id: str | None = None
    rule: str | None = None
    sequence: str | None = None
    data: dict[str, Any] | None = None


class ExpectedDeadLetter(_Strict):
    rule: str
    error: str = ""  # a substring of the message


class Expect(_Strict):
    events: list[ExpectedEvent] = []
    dead_letters: list[ExpectedDeadLetter] = []
    unmatched: dict[str, int] | None = None
    ignored: dict[str, int] | None = None
    error: str | None = None


class CaseIn(_Strict):
    name: str
    description: str | None = None
    prior_rows: list[PriorRowIn] | None = None
    change: ChangeIn | None = None
    transaction: TransactionIn | None = None
    transactions: list[TransactionIn] | None = None
    expect: Expect

    @model_validator(mode="after")
    def _one_input(self) -> CaseIn:
        given = [k for k in ("change", "transaction", "transactions") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a case needs exactly one of 'change', 'transaction' or 'transactions'")
        return self


class CaseFile(_Strict):
    mapping: str | None = None
    source_id: str = "golden"
    fixtures: Any = None  # free-form: YAML anchors (&row) for rows the cases reuse
    cases: list[CaseIn] = Field(min_length=1)


@dataclass(frozen=True)
class GoldenCase:
    file: str
    line: int
    name: str
    mapping: Path
    source_id: str
    transactions: tuple[Transaction, ...]
    prior_rows: tuple[tuple[str, str, Mapping[str, Any], Mapping[str, Any]], ...] | None
    expect: Expect

    @property
    def label(self) -> str:
        return f"{self.file}:{self.line} {self.name}"


@dataclass
class CaseOutcome:
    case: GoldenCase
    passed: bool
    report: str = ""  # a unified diff of expected vs actual, or the error
    rules_run: Counter[str] = field(default_factory=Counter)


# -- finding and reading cases ------------------------------------------------------------------------------

def discover_case_files(paths: Iterable[str | Path]) -> list[Path]:
    """Case files named by ``paths``: case files, ``*.tests`` folders, mapping files (their ``.tests``
    folder) or folders holding those."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir() and path.name.endswith(".tests"):
            found.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")))
        elif path.is_dir():
            for folder in sorted(p for p in path.iterdir() if p.is_dir() and p.name.endswith(".tests")):
                found.extend(discover_case_files([folder]))
        elif path.is_file() and path.parent.name.endswith(".tests"):
            found.append(path)
        elif path.is_file():
            folder = path.with_suffix(".tests")
            found.extend(discover_case_files([folder]) if folder.is_dir() else [])
        else:
            raise MappingError(f"{path}: no such file or directory")
    return found


def load_case_file(path: str | Path, cache: dict[Path, CompiledMappings] | None = None) -> list[GoldenCase]:
    """Read one case file; its mapping is loaded (once per cache) to know the tables' types and keys."""
    doc = read_yaml(path, allow_unknown_tag=True)
    try:
        spec = CaseFile.model_validate(doc.data if doc.data is not None else {})
    except ValidationError as exc:
        found = shape_problems(doc.data, exc, CaseFile)
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise MappingError(_case_problem(doc, found[0][0], found[0][1]) + more) from None
    mapping = _mapping_of(Path(path), spec.mapping)
    cache = {} if cache is None else cache
    if mapping not in cache:
        cache[mapping] = load_mappings([mapping])
    mappings = cache[mapping]
    folder = contracts_folder_of(mapping)  # loaded once per case file, for the expected payloads
    contracts = load_contracts(folder) if folder.is_dir() else None
    cases = []
    for index, case in enumerate(spec.cases):
        where = ("cases", index)
        try:
            txs = [case.transaction] if case.transaction else case.transactions or [
                TransactionIn(changes=[case.change])]  # type: ignore[list-item]
            transactions = tuple(_transaction(t, i, mappings) for i, t in enumerate(txs))
            prior = None if case.prior_rows is None else tuple(_prior_row(p, mappings) for p in case.prior_rows)
        except (ValueError, TypeError, InvalidOperation) as exc:
            raise MappingError(_case_problem(doc, list(where), f"case '{case.name}': {exc}")) from None
        if contracts is not None:
            _check_expected_against_contracts(doc, where, case, contracts)
        cases.append(GoldenCase(str(path), doc.line_of(where), case.name, mapping, spec.source_id,
                                transactions, prior, case.expect))
    return cases


def _check_expected_against_contracts(doc: YamlDocument, where: tuple[Any, ...], case: CaseIn,
                                      registry: ContractRegistry) -> None:
    """An expected event's payload must obey its contract too: a case cannot bless an event no consumer may
    receive. (Only payloads given whole: `data` of an event whose type has a contract.)"""
    for index, event in enumerate(case.expect.events):
        major = registry.major(event.type) if event.data is not None else None
        if major is None:
            continue
        try:
            major.model().model_validate_json(json.dumps(to_json_value(event.data, "data")))
        except ValidationError as exc:
            path = list(where) + ["expect", "events", index, "data"]
            raise MappingError(_case_problem(doc, path, f"case '{case.name}': the expected {event.type} does not "
                                             f"obey its contract ({major.contract.path}): {violation_text(exc)}")) from None


def _case_problem(doc: YamlDocument, path: list[Any], message: str) -> str:
    return f"{doc.path}:{doc.line_of(path)}: " + (f"field '{field_path(path)}': " if path else "") + message


def _mapping_of(case_file: Path, named: str | None) -> Path:
    if named is not None:
        return case_file.parent / named
    folder = case_file.parent
    for suffix in (".yaml", ".yml"):
        candidate = folder.with_name(folder.name.removesuffix(".tests") + suffix)
        if candidate.is_file():
            return candidate
    raise MappingError(f"{case_file}: no mapping next to {folder} and no 'mapping:' in the file")


def _transaction(spec: TransactionIn, index: int, mappings: CompiledMappings) -> Transaction:
    commit_lsn = _lsn(spec.commit_lsn) if spec.commit_lsn is not None else 1000 * (index + 1) + 999
    commit_time = spec.commit_time or _BASE_TIME + timedelta(minutes=index)
    if commit_time.tzinfo is None:
        raise ValueError("commit_time needs a time zone, e.g. 2024-01-01T12:00:00Z")
    xid = spec.xid if spec.xid is not None else 500 + index
    changes = tuple(_change(c, j, commit_lsn, commit_time, xid, index, mappings) for j, c in enumerate(spec.changes))
    return Transaction(xid=xid, commit_lsn=commit_lsn, commit_time=commit_time, changes=changes)


def _change(spec: ChangeIn, j: int, commit_lsn: int, commit_time: datetime, xid: int, index: int,
            mappings: CompiledMappings) -> RowChange:
    types = mappings.declared_types().get(spec.table, {})
    before, after = _row(spec.before, types), _row(spec.after, types)
    key = _row(spec.key, types) if spec.key is not None else _key_of(spec.table, after or before, mappings)
    lsn = _lsn(spec.lsn) if spec.lsn is not None else 1000 * (index + 1) + j
    return RowChange(op=Op(spec.op), schema=spec.schema_ or mappings.schemas.get(spec.table, "public"),
                     table=spec.table, key=None if spec.op == "t" else key, before=before, after=after,
                     position=SourcePosition(commit_lsn, lsn, spec.seq), commit_time=commit_time, xid=xid,
                     old_key=_row(spec.old_key, types))


def _prior_row(spec: PriorRowIn, mappings: CompiledMappings) -> tuple[str, str, Mapping[str, Any], Mapping[str, Any]]:
    row = _row(spec.row, mappings.declared_types().get(spec.table, {}))
    assert row is not None
    key = _row(spec.key, {}) if spec.key is not None else _key_of(spec.table, row, mappings)
    if not key:
        raise ValueError(f"prior row of {spec.table}: give its key")
    return spec.schema_ or mappings.schemas.get(spec.table, "public"), spec.table, key, row


def _key_of(table: str, row: Mapping[str, Any] | None, mappings: CompiledMappings) -> dict[str, Any] | None:
    columns = mappings.keys.get(table) or ("id",)
    if row is None or any(c not in row for c in columns):
        return None
    return {c: row[c] for c in columns}


def _lsn(value: int | str) -> int:
    if isinstance(value, int):
        return value
    high, _, low = value.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def _row(values: Mapping[str, Any] | None, types: Mapping[str, str]) -> dict[str, Any] | None:
    if values is None:
        return None
    row = {}
    for column, value in values.items():
        try:
            row[column] = _coerce(value, types.get(column))
        except (ValueError, TypeError, InvalidOperation):
            raise ValueError(f"column {column}: {value!r} is not a {types.get(column)} value") from None
    return row


def _coerce(value: Any, pg_type: str | None) -> Any:
    """A YAML value as the bridge's sources decode that PostgreSQL type (see bridge.changes)."""
    if value is None or value is UNKNOWN or pg_type is None:
        return value
    if pg_type.endswith("[]"):
        return [_coerce(v, pg_type[:-2]) for v in value]
    if pg_type.startswith("numeric") or pg_type == "money":
        return Decimal(value) if isinstance(value, (str, int)) else Decimal(repr(value))
    if pg_type in ("bigint", "integer", "smallint"):
        return int(value)
    if pg_type == "boolean":
        if not isinstance(value, bool):
            raise ValueError(f"{value!r} is not a boolean")
        return value
    if pg_type.startswith("timestamp"):
        moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
        if "with time zone" in pg_type:
            if moment.tzinfo is None:
                raise ValueError(f"{value!r}: a timestamptz needs a time zone")
            return moment.astimezone(timezone.utc)
        return moment if moment.tzinfo is None else moment.astimezone(timezone.utc).replace(tzinfo=None)
    if pg_type == "date":
        return value if isinstance(value, date) else date.fromisoformat(str(value))
    if pg_type == "uuid":
        return UUID(str(value))
    if pg_type in ("json", "jsonb"):
        return value
    return str(value)


# -- running ------------------------------------------------------------------------------------------------

def run_case(case: GoldenCase, mappings: CompiledMappings) -> CaseOutcome:
    prior: InMemoryPriorRows | None = None
    if case.prior_rows is not None:
        prior = InMemoryPriorRows()
        for schema, table, key, row in case.prior_rows:
            prior.put(schema, table, key, row)
    total = TranslationResult()
    raised: str | None = None
    for tx in case.transactions:
        result = translate(tx, mappings, source_id=case.source_id, prior_rows=prior)
        stop = next((d for d in result.dead_letters if d.on_error == "stop"), None)
        if stop is not None:  # the pipeline publishes nothing of this transaction and stops
            raised = stop.error
            total.rule_hits[stop.rule_id] += 1
            break
        total.events.extend(result.events)
        total.dead_letters.extend(result.dead_letters)
        total.unmatched.update(result.unmatched)
        total.ignored.update(result.ignored)
        total.rule_hits.update(result.rule_hits)
        if prior is not None:
            prior.remember_transaction(tx)
    runs = total.rule_hits + Counter(d.rule_id for d in total.dead_letters)
    expected, actual = _compare(case.expect, total, raised)
    if expected == actual:
        return CaseOutcome(case, True, rules_run=runs)
    diff = difflib.unified_diff(_dump(expected), _dump(actual), "expected", "actual", lineterm="", n=4)
    return CaseOutcome(case, False, "\n".join(diff), rules_run=runs)


def _compare(expect: Expect, result: TranslationResult, raised: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """What was expected and what came out, each reduced to what the case checks."""
    expected: dict[str, Any] = {"events": [], "dead_letters": []}
    actual: dict[str, Any] = {"events": [], "dead_letters": []}
    for index, event in enumerate(result.events):
        wanted = expect.events[index] if index < len(expect.events) else ExpectedEvent(type="", subject="", data={})
        shown = {"type": event.type, "subject": event.subject, "id": event.id, "rule": event.rule_id,
                 "sequence": event.sequence, "data": to_json_value(event.data)}
        actual["events"].append({k: v for k, v in shown.items() if k in wanted.model_fields_set or k == "type"})
    expected["events"] = [to_json_value(e.model_dump(exclude_unset=True)) for e in expect.events]
    for index, letter in enumerate(result.dead_letters):
        wanted_error = expect.dead_letters[index].error if index < len(expect.dead_letters) else None
        error = wanted_error if wanted_error is not None and wanted_error in letter.error else letter.error
        actual["dead_letters"].append({"rule": letter.rule_id, "error": error})
    expected["dead_letters"] = [{"rule": d.rule, "error": d.error} for d in expect.dead_letters]
    for name in ("unmatched", "ignored"):
        wanted_counts = getattr(expect, name)
        if wanted_counts is not None:
            expected[name] = dict(sorted(wanted_counts.items()))
            actual[name] = dict(sorted(getattr(result, name).items()))
    if expect.error is not None or raised is not None:
        expected["error"] = expect.error
        actual["error"] = expect.error if raised is not None and expect.error and expect.error in raised else raised
    return expected, actual


def _dump(document: Mapping[str, Any]) -> list[str]:
    return yaml.safe_dump(dict(document), sort_keys=False, allow_unicode=True, width=110).splitlines()


def run_golden(paths: Iterable[str | Path]) -> list[CaseOutcome]:
    """Load and run every case under ``paths``; a malformed case file raises MappingError."""
    cache: dict[Path, CompiledMappings] = {}
    outcomes = []
    for case_file in discover_case_files(paths):
        for case in load_case_file(case_file, cache):
            outcomes.append(run_case(case, cache[case.mapping]))
    return outcomes
