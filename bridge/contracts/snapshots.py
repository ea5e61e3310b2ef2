"""The committed schema snapshots of every published revision and their lock file; `contracts publish`.

Layout, inside the contracts folder::

    schemas/restaurant.order.OrderPlaced/1.0.schema.json    the canonical bytes of revision 1.0
    contracts.lock                                          {"restaurant.order.OrderPlaced 1.0": "sha256:<hex>"}

A published revision never changes (consumers hold its schema): publishing only adds snapshots, except
that a documentation-only difference (descriptions, titles) is rewritten, since no consumer can depend on it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, NamedTuple

from bridge.contracts.compat import DOCUMENTATION, OPTIONAL_FIELD_ADDED, Change, breaking, compare
from bridge.contracts.registry import SCHEMAS_FOLDER, ContractRegistry, Major
from bridge.contracts.schema import revision_schema, schema_bytes
from bridge.errors import ContractError

LOCK_FILE = "contracts.lock"
_SNAPSHOT_NAME = re.compile(r"(\d+)\.(\d+)\.schema\.json")
_LOCK_KEY = re.compile(r"(\S+) (\d+)\.(\d+)")


class Revision(NamedTuple):
    """One revision of one major of an event type: what a snapshot and a lock entry are about."""

    type: str  # without .v<major>
    major: int
    revision: int

    @property
    def lock_key(self) -> str:
        return f"{self.type} {self.major}.{self.revision}"

    @property
    def label(self) -> str:
        return f"revision {self.major}.{self.revision} of {self.type}.v{self.major}"


def snapshot_path(folder: Path, key: Revision) -> Path:
    return folder / SCHEMAS_FOLDER / key.type / f"{key.major}.{key.revision}.schema.json"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def regenerate(major: Major, revision: int) -> bytes:
    """The canonical bytes a revision's snapshot must hold."""
    return schema_bytes(revision_schema(major, revision))


def read_lock(folder: Path) -> dict[str, str]:
    """The lock file's entries ({} when there is none); ContractError when it is not what publish writes."""
    path = folder / LOCK_FILE
    if not path.exists():
        return {}
    try:
        lock = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ContractError(f"{path}: not a readable JSON lock file ({exc}); restore it from version control") from None
    if not isinstance(lock, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in lock.items()):
        raise ContractError(f'{path}: expected {{"<type> <major>.<revision>": "sha256:<hex>"}}; restore it from version control')
    return lock


def write_lock(folder: Path, lock: dict[str, str]) -> None:
    text = json.dumps(lock, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    (folder / LOCK_FILE).write_text(text, encoding="utf-8")


def parse_lock_key(key: str) -> Revision | None:
    found = _LOCK_KEY.fullmatch(key)
    return Revision(found.group(1), int(found.group(2)), int(found.group(3))) if found else None


def committed_snapshots(folder: Path) -> tuple[dict[Revision, Path], list[Path]]:
    """The snapshot files under schemas/, by revision; and the files there that are not named like one."""
    found: dict[Revision, Path] = {}
    strays: list[Path] = []
    root = folder / SCHEMAS_FOLDER
    for path in sorted(root.rglob("*")) if root.is_dir() else []:
        if path.is_dir():
            continue
        name = _SNAPSHOT_NAME.fullmatch(path.name)
        if name is None or path.parent.parent != root:
            strays.append(path)
            continue
        found[Revision(path.parent.name, int(name.group(1)), int(name.group(2)))] = path
    return found, strays


def field_line(major: Major, path: str) -> str:
    """file:line of a field (dotted path, `[]` for list items) in the contract file, or of its nearest parent."""
    where: list[Any] = ["majors", major.number, "fields"]
    tokens = path.split(".") if path else []
    for index, token in enumerate(tokens):
        where.append(token.split("[")[0])
        where.extend(["items"] * token.count("[]"))
        if index < len(tokens) - 1:
            where.append("fields")
    return major.contract.line_of(*where)


def drift_problems(major: Major, revision: int, changes: list[Change], latest_published: int) -> list[str]:
    """Why a published revision no longer regenerates as its snapshot, and what to do (empty: documentation only)."""
    key = Revision(major.contract.type, major.number, revision)
    problems = [f"{field_line(major, c.new_path)}: {key.label} is published, but the contract changed it: {c.message}"
                for c in breaking(changes)]
    problems += [f"{field_line(major, c.new_path)}: field '{c.path}' is new in {key.label}, "
                 f"which is already published: give it `since: {latest_published + 1}` (a published revision "
                 "never changes; new optional fields make a new revision)"
                 for c in changes if c.kind == OPTIONAL_FIELD_ADDED]
    return problems


def publish(registry: ContractRegistry) -> list[str]:
    """Write the snapshot and lock entry of every revision that has none; say what was written.

    Nothing is written when any published revision would change other than in its documentation (or a new
    revision would break an earlier one of its major): ContractError lists every such problem instead.
    """
    folder = registry.folder
    if folder is None:
        raise ContractError("publish needs a registry loaded from a contracts folder")
    lock = read_lock(folder)
    snapshots, _ = committed_snapshots(folder)
    problems: list[str] = []
    writes: list[tuple[Revision, Path, bytes, str]] = []
    for major in registry.majors():
        published = [k.revision for k in snapshots if (k.type, k.major) == (major.contract.type, major.number)]
        earlier: dict[int, Any] = {}
        for revision in range(major.revision + 1):
            key = Revision(major.contract.type, major.number, revision)
            data, path = regenerate(major, revision), snapshot_path(folder, key)
            if key in snapshots:
                problems += _published_problems(major, key, path, data, lock, max(published), writes)
            elif key.lock_key in lock:
                problems.append(f"{path}: missing, but {LOCK_FILE} says {key.label} was published: restore the "
                                "snapshot from version control (a published revision never goes away)")
            else:
                problems += _new_revision_problems(major, key, json.loads(data), earlier)
                writes.append((key, path, data, f"published {key.label}: {path}"))
            earlier[revision] = json.loads(data)
    if problems:
        raise ContractError("publish refused, nothing written:\n" + "\n".join(problems))
    for key, path, data, _ in writes:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        lock[key.lock_key] = digest(data)
    if writes:
        write_lock(folder, lock)
    return [message for *_, message in writes]


def _published_problems(major: Major, key: Revision, path: Path, data: bytes, lock: dict[str, str],
                        latest_published: int, writes: list[tuple[Revision, Path, bytes, str]]) -> list[str]:
    current = path.read_bytes()
    if lock.get(key.lock_key) != digest(current):
        state = "has no entry for it" if key.lock_key not in lock else "holds another hash (edited by hand?)"
        return [f"{path}: {LOCK_FILE} {state}: restore the snapshot and {LOCK_FILE} from version control "
                "(`cdc-bridge contracts check` tells more)"]
    if current == data:
        return []
    try:
        changes = compare(json.loads(current), json.loads(data))
    except (ContractError, ValueError) as exc:
        return [f"{path}: {key.label}: {exc}"]
    if all(c.kind == DOCUMENTATION for c in changes):
        writes.append((key, path, data, f"updated {key.label}: documentation only "
                                        f"({len(changes)} description/title change(s)): {path}"))
        return []
    return drift_problems(major, key.revision, changes, latest_published)


def _new_revision_problems(major: Major, key: Revision, schema: Any, earlier: dict[int, Any]) -> list[str]:
    """A new revision must be compatible with every earlier revision of its major (FULL_TRANSITIVE)."""
    problems = []
    for revision, old in earlier.items():
        try:
            changes = breaking(compare(old, schema))
        except ContractError as exc:
            return [f"{major.contract.line_of('majors', major.number)}: {key.label}: {exc}"]
        problems += [f"{field_line(major, c.new_path)}: {key.label} against revision {major.number}.{revision}: "
                     f"{c.message}" for c in changes]
        if problems:  # the same change would be reported again against every later revision
            break
    return problems
