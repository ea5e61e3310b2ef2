"""A backfill run's directory: its state (what it reads, where it publishes, how far each table is) and its manifest.

    <runs dir>/<run id>/state.json     rewritten atomically at every checkpoint (owner-only)
    <runs dir>/<run id>/manifest.json  written once the run is complete
    <runs dir>/<run id>/lock           held (flock) while a process works on the run

A table's progress is the key of the last row whose batch, and every batch before it, the target acknowledged:
`--resume` starts each table after it, so it publishes only what was not acknowledged.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.errors import ConfigurationError
from bridge.private_files import make_private_directories
from bridge.snapshot_scan import TableProgress

STATE_FORMAT = 1


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def mappings_digest(paths: Iterable[str]) -> str:
    """What the rules were when the run started: a resumed run must translate with the same ones."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.encode() + b"\0")
        try:
            digest.update(Path(path).read_bytes())
        except OSError:
            pass
    return digest.hexdigest()


@dataclass
class RunState:
    run_id: str
    run_dir: Path
    source_id: str
    tables: list[str]  # "schema.table", in reading order
    where: dict[str, str]
    target: str  # the --to it was started with (resolved)
    batch_size: int
    mappings: str  # mappings_digest
    progress: dict[str, TableProgress] = field(default_factory=dict)  # by plain table name
    cuts: list[dict[str, Any]] = field(default_factory=list)  # one per snapshot read from (a resume adds one)
    started_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    complete: bool = False

    @property
    def path(self) -> Path:
        return self.run_dir / "state.json"

    def as_dict(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "run_id": self.run_id, "source_id": self.source_id, "tables": self.tables,
                "where": self.where, "target": self.target, "batch_size": self.batch_size, "mappings": self.mappings,
                "progress": {name: p.as_dict() for name, p in self.progress.items()}, "cuts": self.cuts,
                "started_at": self.started_at, "complete": self.complete}

    def save(self) -> None:
        make_private_directories(self.run_dir)
        write_private_json(self.path, self.as_dict())

    @classmethod
    def load(cls, runs_dir: Path, run_id: str) -> RunState:
        run_dir = runs_dir / run_id
        try:
            data = json.loads((run_dir / "state.json").read_text())
        except FileNotFoundError:
            known = sorted(p.name for p in runs_dir.iterdir() if (p / "state.json").exists()) if runs_dir.is_dir() else []
            raise ConfigurationError(
                f"--resume {run_id}: no backfill run of that id in {runs_dir} (runs there: {', '.join(known) or 'none'}); "
                "pass --runs-dir if it was started with one") from None
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"--resume {run_id}: cannot read {run_dir / 'state.json'}: {exc}") from None
        if data.get("format") != STATE_FORMAT:
            raise ConfigurationError(f"--resume {run_id}: {run_dir / 'state.json'} has an unknown format")
        return cls(run_id=data["run_id"], run_dir=run_dir, source_id=data["source_id"], tables=list(data["tables"]),
                   where=dict(data["where"]), target=data["target"], batch_size=int(data["batch_size"]),
                   mappings=data["mappings"], cuts=list(data["cuts"]), started_at=data["started_at"],
                   complete=bool(data["complete"]),
                   progress={name: TableProgress.from_dict(p) for name, p in data["progress"].items()})


def write_private_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically (a crash leaves the old file or the new one), owner-only."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=1, sort_keys=True)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


class RunLock:
    """One process per run: a second `--resume` of a run still being worked on is refused, not interleaved."""

    def __init__(self, run_dir: Path) -> None:
        make_private_directories(run_dir)
        self._fd = os.open(run_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise ConfigurationError(f"backfill run {run_dir.name} is in use by another process (lock "
                                     f"{run_dir / 'lock'}): wait for it, or stop it first") from None

    def release(self) -> None:
        os.close(self._fd)  # closing drops the lock
