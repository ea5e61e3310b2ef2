"""`cdc-bridge backfill`: events for the rows that already exist, from one consistent snapshot, resumable.

The rows come from the exported snapshot of a temporary logical slot (bridge/snapshot.py): they hold exactly
the transactions committed before the slot's consistent point, the cut. The cut is recorded in the run's
manifest and in every event (CloudEvents extension `backfillcut`), so a new service folds the backfill, then
the live events whose commit position (the first 16 hex digits of `ce_sequence`) is after the cut, and has
every aggregate exactly once. Rows go through the daemon's own pipeline: the same mappings, envelope, dead
letters and sinks, acknowledged batch by batch; event ids come from (source, table, key, rule, major, output
index), so a rerun or a resume gives the same ids.

Nothing here writes to the legacy database or touches a running daemon's prior-row store or slot: a role
with SELECT on the mapped tables and REPLICATION (for the temporary slot) is enough, and only plain SELECTs
(COPY of a query) read the tables.

A resumed run (`--resume RUN`) reads what was not acknowledged from a new snapshot: the manifest then lists
each snapshot's cut and the key ranges read from it (see the README's Backfill section for what that means).
"""

from __future__ import annotations

import gc
import logging
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.backfill_state import RunLock, RunState, mappings_digest, new_run_id, write_private_json
from bridge.backfill_target import CountingSink, DryRunSink, Target, publish_manifest
from bridge.changes import SnapshotMark, SourcePosition
from bridge.errors import BridgeError, ConfigurationError
from bridge.mapping.compiled import CompiledMappings
from bridge.mapping.loader import load_mappings
from bridge.pipeline import Pipeline, PipelineStats
from bridge.ports import EventSink, SourceUnit
from bridge.redact import dsn_problem, redacted_dsn
from bridge.settings import KafkaSink, Settings
from bridge.snapshot import SnapshotReader, TableShape, export_snapshot
from bridge.snapshot_scan import SnapshotBatch, SnapshotScan, TableProgress
from bridge.sources.pgoutput.protocol import lsn_text, parse_lsn

log = logging.getLogger("bridge.backfill")

DEFAULT_BATCH_ROWS = 1000
# The cyclic collector's first threshold while a scan runs (Python's default: 700). A backfill allocates a few
# dozen container objects per row (the row, its change, its events and their data) and keeps up to
# max_in_flight_events events alive until the sink acknowledges them: at the default the collector ran
# thousands of young collections per 100,000 rows and promoted those events, so its full collections kept
# traversing them; a sixth of a backfill's time (bench/README.md). The rows are freed by reference counting
# either way.
SCAN_GC_THRESHOLD = 10_000


@dataclass
class BackfillOptions:
    tables: list[str] | None = None  # None: every mapped table whose rules give existing rows a meaning
    where: dict[str, str] = field(default_factory=dict)  # table -> SQL predicate
    batch_size: int = DEFAULT_BATCH_ROWS
    rate: float | None = None  # rows per second, at most
    to: str | None = None
    dry_run: bool = False
    resume: str | None = None
    dsn: str | None = None
    runs_dir: Path | None = None


@dataclass
class BackfillResult:
    run_id: str
    complete: bool
    run_dir: Path | None
    cut: str
    tables: dict[str, TableProgress]
    events: Counter[str]
    dead_letters: int
    seconds: float
    target: str
    skipped: dict[str, str] = field(default_factory=dict)  # mapped tables not read, and why
    manifest: dict[str, Any] | None = None


class BackfillInterrupted(BridgeError):
    """A run stopped by an error once it had begun publishing: what was acknowledged is saved, --resume goes on."""

    def __init__(self, cause: BridgeError, run_id: str) -> None:
        super().__init__(f"{cause} (backfill {run_id} stopped; what the target acknowledged is saved: continue "
                         f"with `cdc-bridge backfill --resume {run_id}` once that is fixed)")
        self.exit_code, self.retryable = cause.exit_code, cause.retryable


class BackfillSource:
    """The snapshot scan as the pipeline's ChangeSource: a batch per poll (at most `rate` rows/s); `finished` (the
    pipeline's stop) is set once every row was handed out, so the pipeline drains and stops; each checkpoint
    saves the tables' acknowledged progress."""

    def __init__(self, scan: SnapshotScan, state: RunState | None, finished: threading.Event,
                 rate: float | None) -> None:
        self._scan, self._state, self._finished, self._rate = scan, state, finished, rate
        self._started = time.monotonic()
        self._rows = 0

    def poll(self, timeout_s: float) -> list[SourceUnit]:
        if self._rate is not None:
            wait = self._started + self._rows / self._rate - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, timeout_s))
                if wait > timeout_s:
                    return []
        unit = self._scan.next_unit()
        if unit is None:
            self._finished.set()
            return []
        handle: SnapshotBatch = unit.handle
        self._rows += handle.rows
        return [unit]

    def done(self, unit: SourceUnit) -> None:
        self._scan.done(unit)

    def commit(self) -> SourcePosition | None:
        if self._scan.advance() and self._state is not None:
            self._state.save()
        return None  # no upstream position to acknowledge: progress is per table, in the run's state

    def pending(self) -> int:
        return self._scan.in_flight

    def keep_alive(self) -> None:
        pass

    def close(self) -> None:
        pass


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """The collector's first threshold at SCAN_GC_THRESHOLD while the pipeline runs, restored however it ends."""
    before = gc.get_threshold()
    gc.set_threshold(max(SCAN_GC_THRESHOLD, before[0]), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def run_backfill(settings: Settings, options: BackfillOptions, *, stop: threading.Event | None = None,
                 display: Any | None = None) -> BackfillResult:
    """Check everything, take the snapshot, publish; returns what was done (complete or stopped).

    Every problem found before publishing (an unknown table, a failing --where, a table without a primary key
    or without a rule for existing rows, a target that cannot be written) is a ConfigurationError."""
    stop = stop or threading.Event()
    started = time.monotonic()
    mappings = load_mappings(settings.mappings, retired=settings.retired_events)
    order, skipped = choose_tables(mappings, options.tables)
    dsn = _dsn(settings, options)
    where_text = redacted_dsn(dsn)
    runs_dir = options.runs_dir or default_runs_dir(settings)
    state = _state_for(settings, options, mappings, order, runs_dir)
    lock = None if options.dry_run else RunLock(state.run_dir)
    try:
        target = Target.parse(state.target, settings)
        reader, cut = _open_snapshot(dsn, state, where_text, settings, dry_run=options.dry_run)
        try:
            shapes = _describe(reader, state, mappings)
            for name, total in _totals(reader, shapes, state).items():
                state.progress.setdefault(name, TableProgress(name)).total = total
            mark = SnapshotMark(state.run_id, cut)
            state.cuts.append({"cut": lsn_text(cut), "cut_lsn": cut, "snapshot_taken_at": reader.started_at.isoformat(),
                               "from": {s.table: state.progress[s.table].after for s in shapes
                                        if not state.progress[s.table].done}})
            sink_settings = target.sink_settings(settings, state.run_dir)
            opened = DryRunSink() if options.dry_run else _open_target(sink_settings, mappings, settings.logging)
            sink = CountingSink(opened, sink_settings)
            try:
                if not options.dry_run:
                    state.save()
                scan = SnapshotScan(reader, shapes, mark, state.batch_size, state.progress, state.where)
                stats = PipelineStats()
                source = BackfillSource(scan, None if options.dry_run else state, stop, options.rate)
                pipeline = Pipeline(source, sink, mappings, source_id=settings.source_id, prior_rows=None,
                                    max_in_flight_events=settings.pipeline.max_in_flight_events,
                                    commit_interval_s=settings.pipeline.commit_interval_s,
                                    on_error=settings.pipeline.on_error, stats=stats,
                                    slice_changes=settings.pipeline.spill_changes)
                log.info("backfill started", extra={
                    "run_id": state.run_id, "cut": lsn_text(cut), "tables": state.tables, "target": state.target,
                    "database": where_text, "dry_run": options.dry_run, "resumed": len(state.cuts) > 1})
                if display is not None:
                    display.start(state.progress, shapes, stats)
                try:
                    with _fewer_collections():
                        pipeline.run(stop)  # set by a signal, or by the source once every row was handed out
                except BridgeError as exc:
                    if options.dry_run:
                        raise
                    raise BackfillInterrupted(exc, state.run_id) from exc
                finally:
                    if display is not None:
                        display.stop()
            finally:
                sink.close()
        finally:
            reader.close()
        complete = scan.finished
        result = BackfillResult(
            run_id=state.run_id, complete=complete, run_dir=None if options.dry_run else state.run_dir,
            cut=lsn_text(cut), tables=state.progress, seconds=time.monotonic() - started, target=state.target,
            events=sink.events, dead_letters=sink.dead_letters, skipped=skipped)
        if complete and not options.dry_run:
            state.complete = True
            state.save()
            result.manifest = _manifest(state, result, sink)
            write_private_json(state.run_dir / "manifest.json", result.manifest)
            if isinstance(sink_settings, KafkaSink):
                publish_manifest(sink_settings, state.run_id, result.manifest)
        return result
    finally:
        if lock is not None:
            lock.release()
            if not state.path.exists():  # stopped before it began: leave no run behind to resume
                shutil.rmtree(state.run_dir, ignore_errors=True)


def choose_tables(mappings: CompiledMappings, requested: Sequence[str] | None) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(schema, table) to read, parents first (the order rules first name them), and mapped tables left out with why."""
    first_rule = {}
    for rule in mappings.rules:
        first_rule.setdefault(rule.table, rule)
    meaning = mappings.snapshot_tables()
    if requested:
        for table in requested:
            if table not in first_rule:
                raise ConfigurationError(f"--tables {table}: no mapping rule reads a table of that name (mapped "
                                         f"tables: {', '.join(first_rule)})")
            if table not in meaning:
                raise ConfigurationError(
                    f"--tables {table}: no rule says what an existing row of {table} means: add r to the ops of a "
                    f"rule of {table} (the one that handles inserts, usually) or an ignore rule with ops [r], or "
                    "leave the table out")
        chosen = [table for table in first_rule if table in requested]
    else:
        chosen = [table for table in first_rule if table in meaning]
    skipped = {table: "no rule for existing rows (op r)" for table in first_rule if table not in meaning}
    if not requested and not chosen:
        raise ConfigurationError("no mapped table has a rule for existing rows (op r): nothing to backfill")
    return [(first_rule[t].schema, t) for t in chosen], skipped


def default_runs_dir(settings: Settings) -> Path:
    return settings.state.path.parent / "backfills" if settings.state.path is not None else Path(".state/bridge/backfills")


def _dsn(settings: Settings, options: BackfillOptions) -> str:
    if options.dsn:
        if problem := dsn_problem(options.dsn):  # libpq's own message would quote it, password and all
            raise ConfigurationError(f"--dsn: {problem}")
        return options.dsn
    dsn = getattr(settings.source, "dsn", None)
    if not dsn:
        raise ConfigurationError("backfill reads the legacy database directly: pass --dsn (or BRIDGE_BACKFILL_DSN); "
                                 "with source.kind pgoutput it defaults to source.dsn")
    return str(dsn)


def _state_for(settings: Settings, options: BackfillOptions, mappings: CompiledMappings,
               order: list[tuple[str, str]], runs_dir: Path) -> RunState:
    digest = mappings_digest(mappings.files)
    if options.resume is None:
        if options.batch_size < 1:
            raise ConfigurationError("--batch-size must be at least 1")
        tables = {table for _, table in order}
        for table in options.where:
            if table not in tables:
                raise ConfigurationError(f"--where {table}=...: {table} is not among the tables this backfill reads "
                                         f"({', '.join(sorted(tables))})")
        run_id = new_run_id()
        target = Target.parse(options.to, settings).describe(runs_dir / run_id)
        return RunState(run_id=run_id, run_dir=runs_dir / run_id, source_id=settings.source_id,
                        tables=[f"{s}.{t}" for s, t in order], where=dict(options.where), target=target,
                        batch_size=options.batch_size, mappings=digest)
    if options.dry_run:
        raise ConfigurationError("--dry-run publishes nothing, so there is nothing to resume: leave out --resume")
    state = RunState.load(runs_dir, options.resume)
    if state.complete:
        raise ConfigurationError(f"backfill {state.run_id} is complete; its manifest is {state.run_dir / 'manifest.json'}")
    given = {"--tables": options.tables and [f"{s}.{t}" for s, t in order] != state.tables,
             "--where": options.where and options.where != state.where,
             "--to": options.to is not None and Target.parse(options.to, settings).describe(state.run_dir) != state.target}
    if conflicting := [name for name, differs in given.items() if differs]:
        raise ConfigurationError(f"--resume {state.run_id} continues the run as it was started; leave out "
                                 f"{', '.join(conflicting)} (it reads {', '.join(state.tables)} to {state.target})")
    if state.mappings != digest:
        raise ConfigurationError(
            f"the mapping files changed since backfill {state.run_id} started: its first part was translated by the "
            "old rules. Start a new backfill (without --resume), or restore the mappings it started with")
    if state.source_id != settings.source_id:
        raise ConfigurationError(f"backfill {state.run_id} was started with source_id {state.source_id!r}, not "
                                 f"{settings.source_id!r}: event ids would differ")
    return state


def _open_snapshot(dsn: str, state: RunState, where: str, settings: Settings, *,
                   dry_run: bool) -> tuple[SnapshotReader, int]:
    """The reader inside a snapshot and its cut: a temporary slot's exported snapshot (released once imported),
    or, for a dry run, which needs no REPLICATION, a snapshot of its own at the current WAL position."""
    timeout = getattr(settings.source, "connect_timeout_s", 10.0)
    if dry_run:
        reader = SnapshotReader.open(dsn, None, where=where, connect_timeout_s=timeout)
        row = reader.connection.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        return reader, parse_lsn(row[0]) if row else 0
    slot = f"cdc_bridge_backfill_{state.run_id.rsplit('-', 1)[-1]}_{len(state.cuts)}"
    exported = export_snapshot(dsn, slot, temporary=True, where=where, connect_timeout_s=timeout,
                               application_name="cdc-bridge-backfill")
    try:
        reader = SnapshotReader.open(dsn, exported.snapshot_name, where=where, connect_timeout_s=timeout,
                                     application_name="cdc-bridge-backfill")
    finally:
        exported.release()  # the temporary slot goes with it: no WAL is held while the tables are read
    return reader, exported.cut_lsn


def _describe(reader: SnapshotReader, state: RunState, mappings: CompiledMappings) -> list[TableShape]:
    shapes = []
    for qualified in state.tables:
        schema, _, table = qualified.partition(".")
        shape = reader.describe(schema, [table])[table]
        if predicate := state.where.get(table):
            reader.check_predicate(shape, predicate)
        shapes.append(shape)
    return shapes


def _totals(reader: SnapshotReader, shapes: list[TableShape], state: RunState) -> dict[str, int]:
    """Rows each table holds in this snapshot (with its --where): what progress is measured against."""
    return {shape.table: reader.count(shape, state.where.get(shape.table)) for shape in shapes}


def _open_target(sink_settings: Any, mappings: CompiledMappings, logging_settings: Any) -> EventSink:
    """The target's sink (in a second process with sink.separate_process, as the daemon's); one that cannot be
    written is a ConfigurationError before anything is read."""
    from bridge.sinks.process import open_configured_sink

    return open_configured_sink(sink_settings, mappings.aggregates(), log_level=logging_settings.level,
                                log_format=logging_settings.format)


def _manifest(state: RunState, result: BackfillResult, sink: CountingSink) -> dict[str, Any]:
    first_cut = state.cuts[0]
    return {
        "run_id": state.run_id, "source_id": state.source_id, "complete": True,
        "cut": first_cut["cut"], "cut_sequence": f"{first_cut['cut_lsn']:016X}",
        "cuts": state.cuts, "resumed": len(state.cuts) - 1,
        "started_at": state.started_at, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tables": {p.table: {"rows": p.rows, "where": state.where.get(p.table)} for p in state.progress.values()},
        "events": dict(sorted(result.events.items())), "dead_letters": result.dead_letters,
        "target": state.target, "output": sink.where(),
        "how_to_consume": (
            "Fold every event of this backfill, then the live events whose commit position is after the cut: the "
            "first 16 hex digits of ce_sequence greater than cut_sequence. With more than one cut (a resumed run), "
            "rows listed under a later cut's 'from' key ranges were read at that later cut."),
    }
