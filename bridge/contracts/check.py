"""`cdc-bridge contracts check`: snapshots, lock, revisions, compatibility and examples of a contracts folder.

What it verifies, each problem naming the contract file and line, the type, major, revision and field:
    (a) every revision 0..R of every major regenerates byte-identical to its committed snapshot
    (b) every snapshot's bytes match its hash in contracts.lock, and every lock entry has its snapshot
    (c) no published revision or major has gone from its contract
    (d) the revisions of a major are published contiguously (0..R, nothing beyond: (a) and (c))
    (e) within each major every pair of revisions passes compat both ways (FULL_TRANSITIVE)
    (f) every example validates against its own revision and every later one (JSON Schema and pydantic)
    (g) every contract file loads
    (h) every major after the first upcasts every example of the previous major into a valid payload
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from pydantic import ValidationError

from bridge.contracts.compat import DOCUMENTATION, breaking, compare, read_shape
from bridge.contracts.models import violation_text
from bridge.contracts.registry import ContractRegistry, Major, check_contract_folder
from bridge.contracts.upcast import upcast_problems
from bridge.contracts.snapshots import (LOCK_FILE, Revision, committed_snapshots, digest, drift_problems,
                                        field_line, parse_lock_key, read_lock, regenerate, snapshot_path)
from bridge.errors import ContractError


@dataclass
class CheckReport:
    """The outcome of a check: problems of contract files that do not load, and every other problem."""

    load_problems: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    revisions: int = 0
    examples: int = 0

    @property
    def all(self) -> list[str]:
        return list(dict.fromkeys(self.load_problems + self.problems))


def check_contracts(folder: Path) -> list[str]:
    """Every problem of a contracts folder (empty: the contracts, snapshots and lock agree)."""
    return run_check(folder).all


def run_check(folder: Path) -> CheckReport:
    if not folder.is_dir():  # an empty registry would pass every check
        return CheckReport(load_problems=[f"{folder}: no contracts folder (expected contract files like "
                                          f"{folder}/order/OrderPlaced.yaml)"])
    registry, load_problems = check_contract_folder(folder)
    report = CheckReport(load_problems=list(load_problems))
    try:
        lock = read_lock(folder)
    except ContractError as exc:
        report.problems.append(str(exc))
        lock = {}
    snapshots, strays = committed_snapshots(folder)
    report.problems += [f"{path}: not a snapshot (expected schemas/<type>/<major>.<revision>.schema.json, "
                        "written by `cdc-bridge contracts publish`)" for path in strays]
    tampered = _lock_problems(folder, lock, snapshots, report.problems)
    for major in registry.majors():
        _check_major(folder, major, lock, snapshots, tampered, report)
    if not load_problems:  # a contract that does not load would look like a removed one
        report.problems += _removed_majors(registry, snapshots)
        report.problems += upcast_problems(registry)
    return report


def _lock_problems(folder: Path, lock: dict[str, str], snapshots: dict[Revision, Path], problems: list[str]) -> set[Revision]:
    """(b); returns the revisions whose snapshot does not match the lock (not compared further)."""
    tampered = set()
    for key, path in snapshots.items():
        entry = lock.get(key.lock_key)
        if entry is None:
            problems.append(f"{path}: {key.label} has a snapshot but no entry in {folder / LOCK_FILE}: snapshots are "
                            f"written by `cdc-bridge contracts publish` only; restore {LOCK_FILE} from version "
                            "control, or delete the snapshot and publish")
            tampered.add(key)
        elif entry != digest(path.read_bytes()):
            problems.append(f"{path}: {key.label}: the snapshot does not match its hash in {folder / LOCK_FILE} "
                            "(edited by hand?): a published snapshot never changes; restore it from version "
                            f"control (git checkout -- {path})")
            tampered.add(key)
    for entry in sorted(lock):
        key = parse_lock_key(entry)
        if key is None:
            problems.append(f"{folder / LOCK_FILE}: entry '{entry}' is not '<type> <major>.<revision>'")
        elif key not in snapshots:
            problems.append(f"{folder / LOCK_FILE}: entry '{entry}' has no snapshot {snapshot_path(folder, key)}: "
                            "restore the snapshot from version control (a published revision never goes away)")
    return tampered


def _check_major(folder: Path, major: Major, lock: dict[str, str], snapshots: dict[Revision, Path],
                 tampered: set[Revision], report: CheckReport) -> None:
    contract, problems = major.contract, report.problems
    own = {k.revision: p for k, p in snapshots.items() if (k.type, k.major) == (contract.type, major.number)}
    latest_published = max(own, default=-1)
    schemas: dict[int, Any] = {}  # revision -> regenerated schema
    compared: dict[int, tuple[str, Any]] = {}  # revision -> (label, schema) for the pairwise check (e)
    for revision in range(major.revision + 1):
        key = Revision(contract.type, major.number, revision)
        report.revisions += 1
        data = regenerate(major, revision)
        schemas[revision] = json.loads(data)
        if not _understood(schemas[revision], f"{contract.line_of('majors', major.number)}: {key.label}", problems):
            continue
        if revision not in own:
            if key.lock_key not in lock:  # otherwise the lock check reported the lost snapshot
                problems.append(f"{contract.line_of('majors', major.number)}: {key.label} is not published: run "
                                f"`cdc-bridge contracts publish` and commit {folder / 'schemas'} and {folder / LOCK_FILE}")
            compared[revision] = (f"revision {major.number}.{revision} (not yet published)", schemas[revision])
            continue
        snapshot = _snapshot(own[revision], key, problems)
        if snapshot is None:
            continue
        compared[revision] = (f"snapshot {major.number}.{revision}", snapshot)
        if key in tampered or own[revision].read_bytes() == data:
            continue
        changes = _compare(snapshot, schemas[revision], f"{own[revision]}: {key.label}", problems)
        if changes is not None and all(c.kind == DOCUMENTATION for c in changes):
            problems.append(f"{contract.line_of('majors', major.number)}: {key.label}: its snapshot differs in "
                            "documentation only (descriptions, titles): run `cdc-bridge contracts publish` to "
                            "update the snapshot")
        elif changes is not None:
            problems += drift_problems(major, revision, changes, latest_published)
    for revision in sorted(r for r in own if r > major.revision):  # (c) published revisions gone
        key = Revision(contract.type, major.number, revision)
        snapshot = _snapshot(own[revision], key, problems)
        if snapshot is None:
            continue
        compared[revision] = (f"snapshot {major.number}.{revision}", snapshot)
        gone = (f"{key.label} was published ({own[revision]}), but the contract's latest revision is "
                f"{major.number}.{major.revision}: a published revision never goes away")
        changes = _compare(snapshot, schemas[major.revision], f"{own[revision]}: {key.label}", problems)
        found = breaking(changes or [])
        problems += [f"{field_line(major, c.new_path)}: {gone}: {c.message}" for c in found]
        if changes is not None and not found:
            problems.append(f"{contract.line_of('majors', major.number)}: {gone}; restore the fields it had")
    _check_pairs(major, compared, problems)
    _check_examples(major, schemas, report)


def _understood(schema: Any, where: str, problems: list[str]) -> bool:
    try:
        read_shape(schema)
    except ContractError as exc:
        problems.append(f"{where}: {exc}")
        return False
    return True


def _snapshot(path: Path, key: Revision, problems: list[str]) -> Any:
    try:
        snapshot = json.loads(path.read_bytes())
    except ValueError as exc:
        problems.append(f"{path}: {key.label}: the snapshot is not JSON ({exc}); restore it from version control")
        return None
    return snapshot if _understood(snapshot, f"{path}: {key.label}", problems) else None


def _compare(old: Any, new: Any, where: str, problems: list[str]) -> list[Any] | None:
    try:
        return compare(old, new)
    except ContractError as exc:
        problems.append(f"{where}: {exc}")
        return None


def _check_pairs(major: Major, compared: dict[int, tuple[str, Any]], problems: list[str]) -> None:
    """(e): every pair i < j of a major's revisions, both directions (compare checks both at once)."""
    ordered = sorted(compared.items())
    for index, (_, (old_label, old)) in enumerate(ordered):
        for _, (new_label, new) in ordered[index + 1:]:
            for change in breaking(_compare(old, new, f"{major.event_type} {old_label} -> {new_label}", problems) or []):
                problems.append(f"{field_line(major, change.new_path)}: {major.event_type} {old_label} -> {new_label}: "
                                f"{change.message}")


def _check_examples(major: Major, schemas: dict[int, Any], report: CheckReport) -> None:
    """(f): an example must stay valid for its own revision and every later one of its major."""
    validators = {r: Draft202012Validator(s, format_checker=Draft202012Validator.FORMAT_CHECKER)
                  for r, s in schemas.items()}
    for index, example in enumerate(major.spec.examples):
        report.examples += 1
        where = major.contract.line_of("majors", major.number, "examples", index)
        text = json.dumps(example.data)
        for revision in range(example.revision, major.revision + 1):
            what = (f"{where}: example {index} of {major.event_type} (written for revision {major.number}."
                    f"{example.revision}) does not validate against revision {major.number}.{revision}")
            error = next(iter(sorted(validators[revision].iter_errors(example.data), key=lambda e: list(e.path))), None)
            if error is not None:
                place = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.path).lstrip(".")
                report.problems.append(f"{what}: {'field ' + repr(place) + ': ' if place else ''}{error.message} (JSON Schema)")
                continue
            try:  # JSON mode: published events are JSON, where decimals and timestamps are strings
                major.model(revision).model_validate_json(text, strict=True)
            except ValidationError as exc:
                report.problems.append(f"{what}: {violation_text(exc)} (pydantic model)")


def _removed_majors(registry: ContractRegistry, snapshots: dict[Revision, Path]) -> list[str]:
    """(c): published majors (or whole event types) no contract declares any more."""
    problems = []
    for event_type, number in sorted({(k.type, k.major) for k in snapshots}):
        contract = registry.contracts.get(event_type)
        paths = sorted(str(p) for k, p in snapshots.items() if (k.type, k.major) == (event_type, number))
        if contract is None:
            problems.append(f"{paths[0]}: {event_type}.v{number} was published, but no contract file declares "
                            f"{event_type} any more: restore its contract (a published major stays; consumers "
                            "may still read it)")
        elif number not in contract.majors:
            problems.append(f"{contract.line_of('majors')}: major {number} of {event_type} was published "
                            f"({paths[0]}), but the contract no longer has it: restore major {number} (a published "
                            "major stays; consumers may still read it)")
    return problems
