"""Traffic like the legacy restaurant app's: ``python -m legacy_db.simulate --dsn DSN [options]``.

A pure :class:`~legacy_db.planner.Planner` decides what happens (seeded: same seed, same actions, same values);
an :class:`~legacy_db.executor.Executor` writes each action as one transaction on one connection. This module
only drives the two: when to stop, how fast to go, what to report.

Against an empty database two runs with the same seed leave identical tables except for the database's own
clock columns (see :data:`legacy_db.tables.CLOCK_COLUMNS`). Against a database with rows, the run only touches
rows it created itself and salts its e-mail addresses so they cannot collide with an earlier run's.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import click
import psycopg

from legacy_db.executor import Executor, SimulationDiverged, SimulationError
from legacy_db.planner import Planner
from legacy_db.report import SimulationReport, TransactionRecord

__all__ = ["SimulationError", "SimulationReport", "TransactionRecord", "email_namespace", "run_simulation"]

APPLICATION_NAME = "legacy-restaurant-app"


def email_namespace(conn: psycopg.Connection[Any]) -> str:
    """"" on a database without customers (so fresh databases get identical data), otherwise a tag that no
    earlier run can have used: customer ids only grow, and every run creates customers in its first action."""
    row = conn.execute("SELECT max(id) FROM customers").fetchone()
    return "" if row is None or row[0] is None else f"r{row[0]}"


def run_simulation(
    dsn: str,
    *,
    seed: int = 42,
    count: int | None = None,
    duration: float | None = None,
    rate: float | None = None,
    stop: threading.Event | None = None,
    keep_transactions: bool = True,
    durable_commits: bool = False,
    mix: str = "restaurant",
) -> SimulationReport:
    """Run up to ``count`` transactions and/or for up to ``duration`` seconds, whichever ends first.

    ``rate`` paces to a steady schedule (transaction i starts at start + i/rate; a late transaction does not
    push back the ones after it). Without ``rate`` it runs as fast as the database allows. ``stop`` ends the
    run after the current transaction (the CLI sets it on Ctrl-C); with neither ``count``, ``duration`` nor
    ``stop`` the run would never end, which is refused. ``keep_transactions=False`` keeps only totals, for
    runs long enough that a record per transaction would not fit in memory. ``mix`` names the traffic
    (:data:`legacy_db.planner.MIXES`): the restaurant's everyday mix, or "checkouts" (orders of 10-50 lines).

    Commits are asynchronous (``synchronous_commit = off`` for this session only) unless ``durable_commits``:
    the WAL written, and so the change stream, is identical, while throughput on a 2-core machine goes from
    about 2,000 to about 3,300 transactions per second. A server crash could lose the last fraction of a
    second of simulated traffic, which is not worth an fsync per transaction. Before returning, the run
    waits until its WAL is flushed, because logical decoding only streams flushed WAL: whoever reads the
    change stream next sees every transaction in the report.
    """
    if count is None and duration is None and stop is None:
        raise ValueError("give count, duration or a stop event: the run would never end")
    if count is not None and count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if duration is not None and duration < 0:
        raise ValueError(f"duration must be >= 0, got {duration}")
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be > 0 transactions per second, got {rate}")

    with psycopg.connect(dsn, autocommit=True, application_name=APPLICATION_NAME) as conn:
        if not durable_commits:
            conn.execute("SET synchronous_commit = off")
        namespace = email_namespace(conn)
        planner = Planner(seed, namespace, mix)
        executor = Executor(conn)
        report = SimulationReport(seed=seed, namespace=namespace)
        started = time.monotonic()
        deadline = None if duration is None else started + duration
        try:
            for _ in _schedule(started, count, deadline, rate, stop, report):
                report.record(executor.execute(planner.next_action()), keep=keep_transactions)
        except SimulationError as exc:
            if isinstance(exc, SimulationDiverged):
                report.record(exc.record, keep=keep_transactions)  # it committed: keep the books right
            report.stop_reason = "error"
            exc.report = report  # what did commit before the failure, for the caller to inspect
            raise
        finally:
            report.elapsed_s = time.monotonic() - started
            if not durable_commits and not conn.broken:
                _wait_for_wal_flush(conn)
    return report


def _wait_for_wal_flush(conn: psycopg.Connection[Any], timeout: float = 5.0) -> None:
    """Wait until the WAL up to this session's last commit is flushed (the WAL writer does it within
    ``wal_writer_delay``, 200 ms by default); afterwards logical decoding can see all of the run."""
    try:
        target = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]  # type: ignore[index]
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            row = conn.execute("SELECT pg_current_wal_flush_lsn() >= %s::pg_lsn", (target,)).fetchone()
            if row is not None and row[0]:
                return
            time.sleep(0.01)
    except psycopg.Error:
        pass  # nothing to wait for on a broken connection; the caller reports the original problem


def _schedule(
    started: float,
    count: int | None,
    deadline: float | None,
    rate: float | None,
    stop: threading.Event | None,
    report: SimulationReport,
) -> Iterator[int]:
    """Yield once per transaction to run, waiting for its slot when paced; set ``report.stop_reason``."""
    i = 0
    while True:
        if count is not None and i >= count:
            report.stop_reason = "count"
            return
        if stop is not None and stop.is_set():
            report.stop_reason = "stopped"
            return
        if rate is not None:
            due = started + i / rate
            wait = due - time.monotonic()
            if deadline is not None and due >= deadline:
                wait = deadline - time.monotonic()  # no slot left before the deadline: just wait it out
            if wait > 0 and _sleep(wait, stop):
                report.stop_reason = "stopped"
                return
        if deadline is not None and time.monotonic() >= deadline:
            report.stop_reason = "duration"
            return
        yield i
        i += 1


def _sleep(seconds: float, stop: threading.Event | None) -> bool:
    """Sleep, waking early if ``stop`` is set; return whether it was."""
    if stop is None:
        time.sleep(seconds)
        return False
    return stop.wait(seconds)


def _install_stop_handlers(stop: threading.Event) -> None:
    """First Ctrl-C (or SIGTERM): finish the current transaction, then stop. Second Ctrl-C: stop now."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        stop.set()
        click.echo("stopping after the current transaction (Ctrl-C again to abort)", err=True)

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@click.command()
@click.option("--dsn", required=True, envvar="LEGACY_DSN", help="Legacy database (or env LEGACY_DSN).")
@click.option("--seed", default=42, show_default=True, help="Same seed, same actions and values.")
@click.option("--count", type=click.IntRange(min=0), help="Stop after this many transactions.")
@click.option("--duration", type=click.FloatRange(min=0), help="Stop after this many seconds.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Transactions per second (default: max).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), help="Write JSON here.")
@click.option("--migrate", is_flag=True, help="Apply the legacy schema migrations first.")
@click.option(
    "--durable-commits",
    is_flag=True,
    help="Keep synchronous_commit as configured (an fsync per transaction; slower). Default: off for this run.",
)
@click.option(
    "--totals-only",
    is_flag=True,
    help="Do not list every transaction (xid, action, changes) in the --report file, only totals (long runs).",
)
def main(
    dsn: str,
    seed: int,
    count: int | None,
    duration: float | None,
    rate: float | None,
    report_path: Path | None,
    migrate: bool,
    durable_commits: bool,
    totals_only: bool,
) -> None:
    """Write legacy-app traffic to the restaurant database. Without --count or --duration, runs until Ctrl-C."""
    from legacy_db.migrate import require_parseable_dsn

    require_parseable_dsn(dsn)
    try:
        if migrate:
            from legacy_db.migrate import MigrationError, apply_migrations

            try:
                applied = apply_migrations(dsn)
            except MigrationError as exc:
                raise click.ClickException(str(exc)) from exc
            click.echo(f"migrations applied: {', '.join(applied) or 'none (up to date)'}", err=True)
        stop = threading.Event()
        _install_stop_handlers(stop)
        report = run_simulation(
            dsn,
            seed=seed,
            count=count,
            duration=duration,
            rate=rate,
            stop=stop,
            # Per-transaction records only matter for the report file; without one, memory stays flat.
            keep_transactions=report_path is not None and not totals_only,
            durable_commits=durable_commits,
        )
    except psycopg.OperationalError as exc:
        raise click.ClickException(f"cannot use the database: {_first_line(exc)}") from exc
    except psycopg.errors.UndefinedTable as exc:
        raise click.ClickException(f"{_first_line(exc)}: is the legacy schema migrated? (try --migrate)") from exc
    except SimulationError as exc:
        if exc.report is not None:
            click.echo(exc.report.summary(), err=True)
        raise click.ClickException(str(exc)) from exc
    click.echo(report.summary())
    if report_path is not None:
        report_path.write_text(report.to_json(), encoding="utf-8")
        click.echo(f"report written to {report_path}", err=True)


if __name__ == "__main__":
    main()
