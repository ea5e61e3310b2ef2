"""The direct source's first phase after it created its slot: every mapped table read in the slot's exported snapshot.

    phase = InitialSnapshot(opened, tables, settings, marker_file, where)
    units = phase.poll(timeout_s)      # a few batches of op-r rows (SnapshotScan), parents' tables first
    phase.done(unit)                   # the sink acknowledged the batch's events
    if phase.commit(): ...             # True once every batch is done: the marker says complete; now stream

The snapshot sees exactly what committed before the slot's consistent point and the slot streams exactly
what committed after it, so reading the one and then streaming the other neither loses nor repeats a change.
The phase is complete only when every batch was acknowledged and the pipeline, which flushes the prior-row
store before each commit, has made the rows read durable there: updates and deletes streamed afterwards
then find their rows' old values. A phase that ends earlier (a stop, an outage, kill -9) leaves the marker
incomplete, and the next start redoes the snapshot on a new slot (snapshot_marker.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import psycopg
import psycopg.errors
from psycopg import sql

from bridge.changes import SnapshotMark
from bridge.errors import ConfigurationError, ServiceUnavailable
from bridge.ports import SourceUnit
from bridge.settings import PgOutputSource
from bridge.snapshot_scan import SnapshotBatch, SnapshotScan
from bridge.sources.pgoutput.setup import first_line
from bridge.sources.pgoutput.snapshot_marker import MarkerFile
from bridge.sources.pgoutput.snapshot_slot import OpenedSnapshot, SnapshotSlot

log = logging.getLogger("bridge.sources.pgoutput.source")

# Batches handed out per poll: the pipeline translates and publishes between polls, and keeps acks flowing.
MAX_UNITS_PER_POLL = 4
PROGRESS_INTERVAL_S = 30.0

# Tables up to this many rows are counted exactly in the snapshot (cheap); bigger ones take the planner's estimate.
COUNT_LIMIT = 10_000
_ESTIMATE_SQL = """
SELECT c.reltuples::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
"""


class InitialSnapshot:
    """Reads `tables` (in this order) from the imported snapshot as SourceUnits, and says when all are done."""

    def __init__(self, opened: OpenedSnapshot, tables: Sequence[str], settings: PgOutputSource,
                 marker_file: MarkerFile, where: str) -> None:
        self._reader, self._marker, self._file = opened.reader, opened.marker, marker_file
        self._slot, self._where = settings.slot_name, where
        assert self._marker.cut_lsn is not None, "the slot exists: its cut is known"
        shapes = self._reader.describe(settings.schema_name, tables)
        self._scan = SnapshotScan(self._reader, [shapes[t] for t in tables],
                                  SnapshotMark("initial", self._marker.cut_lsn, self._marker.epoch),
                                  settings.snapshot_batch_rows, progress={})
        self._started = self._last_report = time.monotonic()
        self.finished = False
        rows, estimated = self._count()
        log.info("initial snapshot started: every mapped table is read in the slot's exported snapshot, then the "
                 "slot is streamed from its consistent point", extra={
                     "slot": self._slot, "cut": self._marker.cut_text, "epoch": self._marker.epoch,
                     "tables": list(tables), "rows_to_read": rows, "rows_estimated": estimated})

    @classmethod
    def begin(cls, slot: SnapshotSlot | None, tables: Sequence[str], settings: PgOutputSource,
              where: str) -> InitialSnapshot | None:
        """The phase, when `slot` (setup.prepare's creator) created the slot with a snapshot; else None."""
        if slot is None or slot.opened is None:
            return None
        try:
            return cls(slot.opened, tables, settings, slot.marker_file, where)
        except BaseException:
            slot.opened.reader.close()
            raise

    @property
    def pending(self) -> int:
        """Batches handed out and not done, plus one until the phase is complete: it is never idle."""
        return self._scan.in_flight + 1

    def poll(self, timeout_s: float) -> list[SourceUnit]:
        """The next few batches; when every batch is handed out, wait `timeout_s` for their acknowledgements."""
        units: list[SourceUnit] = []
        while len(units) < MAX_UNITS_PER_POLL and not self._scan.exhausted:
            unit = self._next()
            if unit is None:
                break
            units.append(unit)
        self._report_progress()
        if not units and timeout_s > 0:
            time.sleep(timeout_s)  # nothing to read: only acknowledgements are awaited, and they come to the pipeline
        return units

    def owns(self, unit: SourceUnit) -> bool:
        return isinstance(unit.handle, SnapshotBatch)

    def done(self, unit: SourceUnit) -> None:
        self._scan.done(unit)

    def commit(self) -> bool:
        """Take the batches done in order; True once all are (the marker then says complete, the reader is closed)."""
        self._scan.advance()
        if not self._scan.finished:
            return False
        self._file.write(self._marker.completed())
        self.finished = True
        self._reader.close()
        log.info("initial snapshot finished", extra={
            "slot": self._slot, "cut": self._marker.cut_text, "epoch": self._marker.epoch, "rows": self._rows()[1],
            "seconds": round(time.monotonic() - self._started, 1)})
        return True

    def close(self) -> None:
        if self.finished:
            return
        self._reader.close()
        read, acknowledged = self._rows()
        log.warning("initial snapshot stopped before it finished: the next start redoes it on a new slot", extra={
            "slot": self._slot, "cut": self._marker.cut_text, "epoch": self._marker.epoch, "rows_read": read,
            "rows_acknowledged": acknowledged})

    def _next(self) -> SourceUnit | None:
        try:
            return self._scan.next_unit()
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ConfigurationError(
                f"the initial snapshot cannot read {self._table()} on {self._where}: {first_line(exc)}. Grant the "
                "source's user SELECT on every mapped table, or set source.snapshot: never") from exc
        except psycopg.Error as exc:
            raise ServiceUnavailable(
                f"the initial snapshot's connection to {self._where} failed while reading {self._table()}: "
                f"{first_line(exc)}; the next run redoes the snapshot") from exc

    def _table(self) -> str:
        shape = self._scan.reading
        return shape.qualified if shape is not None else "no table (all read)"

    def _rows(self) -> tuple[int, int]:
        """Rows read, and rows whose batches were acknowledged in order."""
        progress = self._scan.progress.values()
        return sum(p.read for p in progress), sum(p.rows for p in progress)

    def _report_progress(self) -> None:
        now = time.monotonic()
        if now - self._last_report < PROGRESS_INTERVAL_S:
            return
        self._last_report = now
        read, acknowledged = self._rows()
        done = [table for table, p in self._scan.progress.items() if p.done]
        log.info("initial snapshot progress", extra={
            "slot": self._slot, "rows_read": read, "rows_acknowledged": acknowledged,
            "rows_to_read": sum(p.total or 0 for p in self._scan.progress.values()), "reading": self._table(),
            "tables_done": done, "seconds": round(now - self._started, 1)})

    def _count(self) -> tuple[int, bool]:
        """Rows the snapshot holds (kept as each table's total for progress), and whether any is an estimate."""
        estimated = False
        conn = self._reader.connection
        try:
            for shape in self._scan.shapes:
                row = conn.execute(_ESTIMATE_SQL, (shape.schema, shape.table)).fetchone()
                total = max(int(row[0]), 0) if row is not None else 0
                if total < COUNT_LIMIT:  # (statistics of a table just filled may say 0: count it)
                    query = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} LIMIT {}) s").format(
                        sql.Identifier(shape.schema, shape.table), sql.Literal(COUNT_LIMIT + 1))
                    total = int(conn.execute(query).fetchone()[0])  # type: ignore[index]
                estimated = estimated or total > COUNT_LIMIT
                self._scan.progress[shape.table].total = total
        except psycopg.Error as exc:
            raise ServiceUnavailable(f"the initial snapshot's connection to {self._where} failed: {first_line(exc)}"
                                     ) from exc
        return sum(p.total or 0 for p in self._scan.progress.values()), estimated
