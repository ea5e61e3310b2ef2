"""The daemon with the direct source, run in this process until it has caught up with the legacy database.

`run_daemon` runs in a thread with the restaurant mappings, the local event log as sink and a prior-row
store; the test thread meanwhile writes legacy traffic, then waits until the slot is confirmed past
everything written, and stops the daemon (a graceful stop: drain and commit). An exception of the daemon
(a stop policy, a broken stream) is raised in the test thread.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from bridge.daemon import run_daemon
from bridge.eventlog import DEAD_LETTERS, EVENTS
from bridge.pipeline import PipelineStats
from bridge.settings import Settings
from bridge.sinks.locallog_reader import EventLogReader, LogRecord
from bridge.sources.pgoutput.protocol import parse_lsn
from tests.support.local_stack import REPO_ROOT


def direct_settings(dsn: str, slot: str, workdir: Path, *, events: str = "events",
                    pipeline: dict[str, Any] | None = None, **source: Any) -> Settings:
    """Restaurant mappings, source pgoutput on `dsn`, sink the local log `workdir/<events>`, store in `workdir`;
    `pipeline` adds pipeline settings."""
    return Settings(
        source_id="legacy-restaurant",
        mappings=[REPO_ROOT / "mappings" / "restaurant.yaml"],
        source={"kind": "pgoutput", "dsn": dsn, "slot_name": slot, "publication_name": slot,
                "heartbeat_interval_s": 0.5, "status_interval_s": 0.2, **source},
        sink={"kind": "locallog", "path": str(workdir / events), "fsync_interval_ms": 1.0},
        state={"path": str(workdir / "prior-rows.sqlite")},
        pipeline={"commit_interval_s": 0.3, **(pipeline or {})},
        logging={"level": "INFO", "format": "json"},
    )


def confirmed_flush(dsn: str, slot: str) -> int | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                           (slot,)).fetchone()
    return None if row is None or row[0] is None else parse_lsn(row[0])


def current_wal_lsn(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return parse_lsn(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])  # type: ignore[index]


def snapshot_marker(settings: Settings) -> dict[str, Any] | None:
    """The initial snapshot's marker file as written (None when there is none yet or it is being replaced)."""
    path = settings.source.snapshot_file(settings.state.path)  # type: ignore[union-attr]
    try:
        return json.loads(path.read_text())  # type: ignore[union-attr]
    except (FileNotFoundError, ValueError):
        return None


class DaemonThread:
    """run_daemon in a thread; `stop()` drains it and raises what it raised."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = PipelineStats()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="daemon-under-test", daemon=True)

    def _run(self) -> None:
        try:
            run_daemon(self.settings, stop=self._stop, stats=self.stats)
        except BaseException as exc:  # noqa: BLE001 (handed to the test thread)
            self.error = exc

    def start(self) -> DaemonThread:
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def check(self) -> None:
        if not self.alive and self.error is not None:
            raise self.error

    def wait_for_slot(self, dsn: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while confirmed_flush(dsn, self.settings.source.slot_name) is None:  # type: ignore[union-attr]
            self.check()
            assert self.alive, "the daemon ended before creating its slot"
            assert time.monotonic() < deadline, f"no slot after {timeout_s}s"
            time.sleep(0.1)

    def wait_for_snapshot(self, epoch: int = 0, timeout_s: float = 120) -> dict[str, Any]:
        """Until the initial snapshot's marker says complete for `epoch`; the marker. A slot exists before its
        snapshot is read: DDL run in between makes the reader fail and the next start redo it on a new slot."""
        deadline = time.monotonic() + timeout_s
        while not ((marker := snapshot_marker(self.settings)) and marker["complete"] and marker["epoch"] == epoch):
            self.check()
            assert self.alive, "the daemon ended during its snapshot"
            assert time.monotonic() < deadline, f"no complete snapshot (epoch {epoch}) within {timeout_s}s: {marker}"
            time.sleep(0.1)
        return marker

    def wait_caught_up(self, dsn: str, timeout_s: float = 180) -> None:
        """Until the slot is confirmed past the WAL written so far (heartbeats move it on a quiet database)."""
        target = current_wal_lsn(dsn)
        deadline = time.monotonic() + timeout_s
        while (confirmed_flush(dsn, self.settings.source.slot_name) or 0) < target:  # type: ignore[union-attr]
            self.check()
            assert self.alive, "the daemon ended early"
            assert time.monotonic() < deadline, f"not caught up within {timeout_s}s"
            time.sleep(0.2)

    def stop(self, timeout_s: float = 60) -> PipelineStats:
        self._stop.set()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"the daemon did not stop within {timeout_s}s"
        if self.error is not None:
            raise self.error
        return self.stats


def run_until_caught_up(settings: Settings, dsn: str, during: Callable[[], Any] | None = None) -> PipelineStats:
    """Start the daemon, run `during` once its slot exists, wait until it caught up, stop it; its stats."""
    daemon = DaemonThread(settings).start()
    try:
        daemon.wait_for_slot(dsn)
        if during is not None:
            during()
        daemon.wait_caught_up(dsn)
    except BaseException:
        daemon._stop.set()
        daemon._thread.join(60)
        if daemon.error is not None:
            raise daemon.error from None
        raise
    return daemon.stop()


def log_records(settings: Settings, *, dead_letters: bool = False) -> list[LogRecord]:
    path = Path(settings.sink.path)  # type: ignore[union-attr]
    if not path.exists():
        return []
    return list(EventLogReader(path, log=DEAD_LETTERS if dead_letters else EVENTS).read(0))


def payloads(records: list[LogRecord]) -> list[tuple[str, dict[str, Any]]]:
    """(event type, data) of each record, in log order."""
    return [(record.type or "", json.loads(record.value)) for record in records]
