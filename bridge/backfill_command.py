"""The `cdc-bridge backfill` command: options in, a summary out (bridge/backfill.py does the work)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import click

from bridge.backfill import DEFAULT_BATCH_ROWS, BackfillOptions, BackfillResult
from bridge.errors import ConfigurationError

LIVE_WARNING = ("--to live: the backfill's events go into the live topics (or log). A consumer that already holds "
                "an aggregate sees it created again (ids differ from the live events'): use it only for consumers "
                "that start empty, or that deduplicate by aggregate")


def _where_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    where: dict[str, str] = {}
    for pair in pairs:
        table, sep, predicate = pair.partition("=")
        if not sep or not table.strip() or not predicate.strip():
            raise ConfigurationError(f"--where {pair!r}: expected TABLE=PREDICATE, e.g. --where \"orders=created_at >= "
                                     "'2024-01-01'\"")
        if table.strip() in where:
            raise ConfigurationError(f"--where {table.strip()} is given twice: join the predicates with AND")
        where[table.strip()] = predicate.strip()
    return where


def _tables(values: tuple[str, ...]) -> list[str] | None:
    tables = [name.strip() for value in values for name in value.split(",") if name.strip()]
    return tables or None


@click.command("backfill")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), envvar="BRIDGE_CONFIG",
              help="YAML settings file [env: BRIDGE_CONFIG] (the daemon's: mappings, source_id, sink)")
@click.option("--tables", multiple=True, metavar="TABLE[,TABLE]",
              help="Only these tables (default: every mapped table whose rules say what an existing row means).")
@click.option("--where", "where", multiple=True, metavar="TABLE=PREDICATE",
              help="Only the rows of TABLE where the SQL PREDICATE holds; repeatable.")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_ROWS, show_default=True,
              help="Rows per read (keyset pagination in primary-key order) and per acknowledged step.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), metavar="ROWS_PER_S",
              help="Read at most this many rows per second (spares the legacy database).")
@click.option("--to", "to", metavar="TARGET",
              help="topics[:SUFFIX] (Kafka; default suffix .backfill), log[:DIR] (a local event log), or live. "
                   "Default: topics:.backfill with a Kafka sink, a log in the run's directory with a local one.")
@click.option("--dry-run", is_flag=True, help="Read and translate, publish nothing; print what would be published.")
@click.option("--resume", metavar="RUN_ID", help="Continue a run that stopped, after its last acknowledged batch.")
@click.option("--dsn", envvar="BRIDGE_BACKFILL_DSN",
              help="The legacy database [env: BRIDGE_BACKFILL_DSN]; default: source.dsn of the direct source.")
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where runs keep their state and manifest (default: backfills/ beside state.path).")
def backfill_command(config_file: Path | None, tables: tuple[str, ...], where: tuple[str, ...], batch_size: int,
                     rate: float | None, to: str | None, dry_run: bool, resume: str | None, dsn: str | None,
                     runs_dir: Path | None) -> None:
    """Publish events for the rows that already exist, from one consistent snapshot, while the daemon runs.

    Events go to a backfill target, not the live topics, with a manifest naming the snapshot's cut: a new
    service folds the backfill, then the live events committed after the cut. Stopped or killed, a run
    continues with --resume RUN_ID. Exit codes: 0 complete, 1 stopped before the end, 2 wrong input.
    """
    from bridge.backfill import run_backfill
    from bridge.backfill_progress import ProgressDisplay
    from bridge.daemon import stop_on_signals
    from bridge.observability import configure_logging
    from bridge.settings import load_settings

    settings = load_settings(config_file)
    configure_logging(settings.logging.level, settings.logging.format)
    options = BackfillOptions(tables=_tables(tables), where=_where_pairs(where), batch_size=batch_size, rate=rate,
                              to=to, dry_run=dry_run, resume=resume, dsn=dsn, runs_dir=runs_dir)
    if (to or "").partition(":")[0] == "live":
        click.echo(f"warning: {LIVE_WARNING}", err=True)
    stop = threading.Event()
    with stop_on_signals(stop):
        result = run_backfill(settings, options, stop=stop, display=ProgressDisplay())
    click.echo(summary(result, dry_run=dry_run))
    if not result.complete:
        sys.exit(1)


def summary(result: BackfillResult, *, dry_run: bool) -> str:
    lines = [f"backfill {result.run_id}: {'dry run, nothing published' if dry_run else 'complete' if result.complete else 'stopped before the end'}"
             f" in {result.seconds:.1f} s; cut {result.cut}; target {result.target}"]
    for progress in result.tables.values():
        lines.append(f"  {progress.table}: {progress.read if dry_run else progress.rows} rows"
                     f"{'' if progress.done or dry_run else f' acknowledged of {progress.total}'}")
    for event_type, count in sorted(result.events.items()):
        lines.append(f"  {event_type}: {count}")
    lines.append(f"  dead letters: {result.dead_letters}")
    for table, why in result.skipped.items():
        lines.append(f"  not read: {table} ({why})")
    if result.manifest is not None and result.run_dir is not None:
        lines.append(f"manifest: {result.run_dir / 'manifest.json'}")
    elif not result.complete and not dry_run:
        lines.append(f"resume with: cdc-bridge backfill --resume {result.run_id} (same --config)")
    return "\n".join(lines)
