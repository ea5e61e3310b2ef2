"""`cdc-bridge check`: everything the configured bridge needs, checked before it runs, each finding saying
what to change. `run` makes the same checks at start: errors stop it, warnings are logged.

    check(settings, mappings) -> Report          the findings, in groups (source, tables, sink, store)
    Report.exit_code                              0 ok, 1 warnings only, 2 an input to fix, 3 a service unreachable

The checks are a handful of catalog and metadata queries (no table scans), so `run` pays well under a
second for them. What each source can be asked differs: the direct source's PostgreSQL is checked in
bridge/preflight_postgres.py; Kafka (the Debezium source's topics and group, the sink's topics) in
bridge/preflight_kafka.py; the local log and the prior-row store here, since they are plain files.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import click

from bridge.redact import scrub

Level = Literal["ok", "warning", "error"]
# Groups in the order they are printed.
AREAS = ("mappings", "source", "tables", "prior-row store", "sink")

EXIT_OK, EXIT_WARNINGS, EXIT_ERRORS, EXIT_UNAVAILABLE = 0, 1, 2, 3


@dataclass(frozen=True)
class Finding:
    level: Level
    area: str  # one of AREAS
    subject: str  # what was checked: "wal_level", "slot cdc_bridge", "public.orders.price"
    message: str  # what was found and, unless ok, what to change
    unavailable: bool = False  # a service did not answer: retrying may help, the input may be fine


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)

    def add(self, level: Level, area: str, subject: str, message: str, *, unavailable: bool = False) -> None:
        self.findings.append(Finding(level, area, subject, message, unavailable))

    def ok(self, area: str, subject: str, message: str) -> None:
        self.add("ok", area, subject, message)

    def warn(self, area: str, subject: str, message: str) -> None:
        self.add("warning", area, subject, message)

    def error(self, area: str, subject: str, message: str) -> None:
        self.add("error", area, subject, message)

    def unreachable(self, area: str, subject: str, message: str) -> None:
        self.add("error", area, subject, message, unavailable=True)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def exit_code(self) -> int:
        errors = self.errors
        if any(not f.unavailable for f in errors):
            return EXIT_ERRORS
        if errors:
            return EXIT_UNAVAILABLE
        return EXIT_WARNINGS if self.warnings else EXIT_OK

    def as_text(self) -> str:
        lines = []
        for area in sorted({f.area for f in self.findings}, key=lambda a: AREAS.index(a) if a in AREAS else 99):
            lines.append(f"{area}:")
            for f in (f for f in self.findings if f.area == area):
                lines.append(f"  {f.level.upper() if f.level != 'ok' else 'ok':<8} {f.subject}: {f.message}")
        verdict = {EXIT_OK: "ok", EXIT_WARNINGS: f"{len(self.warnings)} warning(s)",
                   EXIT_ERRORS: f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)",
                   EXIT_UNAVAILABLE: f"{len(self.errors)} service(s) unreachable, {len(self.warnings)} warning(s)"}
        lines.append(f"result: {verdict[self.exit_code]}")
        return "\n".join(lines)

    def as_json(self) -> str:
        return json.dumps({"exit_code": self.exit_code, "findings": [asdict(f) for f in self.findings]}, indent=2)


def check(settings: Any, mappings: Any) -> Report:
    """Every check that applies to these settings; never raises for what it finds."""
    report = Report()
    _check_mappings(report, settings, mappings)
    if settings.source.kind == "pgoutput":
        from bridge.preflight_postgres import check_direct_source

        check_direct_source(report, settings, mappings)
        spill = settings.pipeline.spill_directory(settings.state.path)
        _check_writable(report, "source", "pipeline.spill_path", spill, f"the spill files of large transactions in {spill}")
    else:
        from bridge.preflight_kafka import check_debezium_source

        check_debezium_source(report, settings, mappings)
    if settings.sink.kind == "kafka":
        from bridge.preflight_kafka import check_kafka_sink

        check_kafka_sink(report, settings.sink, mappings)
    else:
        check_local_log(report, settings.sink)
    return report


def _check_mappings(report: Report, settings: Any, mappings: Any) -> None:
    report.ok("mappings", ", ".join(mappings.files) or "mappings",
              f"{mappings.rule_count()} rules over {len(mappings.tables())} tables")
    needing = mappings.needs_before()
    if settings.state.path is None and needing:
        full = settings.source.full_identity_tables() if settings.source.kind == "debezium" else frozenset()
        # The direct source reads each table's REPLICA IDENTITY itself (the tables group says which are FULL).
        if settings.source.kind == "debezium" and (left := sorted(
                t for t in needing if t not in full and f"{settings.source.schema_name}.{t}" not in full)):
            report.error("prior-row store", "state.path", (
                f"the store is disabled (state.path: null), but rules of {', '.join(left)} read old values and "
                "those tables are not in source.replica_identity_full: set state.path, or ALTER TABLE ... REPLICA "
                "IDENTITY FULL and list the tables in source.replica_identity_full"))
    elif settings.state.path is not None:
        _check_writable(report, "prior-row store", "state.path", Path(settings.state.path).parent,
                        f"the prior-row store {settings.state.path}")


# --- plain files: the prior-row store and the local log --------------------------------------------------

def _check_writable(report: Report, area: str, subject: str, directory: Path, what: str) -> bool:
    """The directory, or the nearest folder that exists above it (created at start), must be writable."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        report.error(area, subject, (
            f"{what} cannot be written: {existing} is not a writable folder for user {_user()}; choose a "
            "writable path (under systemd's ProtectSystem=strict: the unit's StateDirectory, /var/lib/cdc-bridge)"))
        return False
    return True


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid())


def check_local_log(report: Report, sink: Any) -> None:
    directories = [("sink.path", Path(sink.path))]
    if sink.dead_letter_path is not None:
        directories.append(("sink.dead_letter_path", Path(sink.dead_letter_path)))
    for subject, directory in directories:
        if not _check_writable(report, "sink", subject, directory, f"the local event log {directory}"):
            continue
        holder = _lock_holder(directory)
        if holder is not None:
            report.warn("sink", subject, (
                f"the event log {directory} is being written by another process (pid {holder}): a second writer "
                "cannot start; stop that bridge first, or give this one its own sink.path"))
        else:
            report.ok("sink", subject, f"local event log {directory} is writable and not locked")


def _lock_holder(directory: Path) -> str | None:
    """The pid in the log's writer lock while another process holds it; None when it is free."""
    from bridge.eventlog import LOCK_FILE

    path = directory / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        # A shared lock cannot be had while a writer holds its exclusive one; ours is dropped at once.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
    finally:
        os.close(fd)


def stored_row_counts(path: Path | None, tables: Iterable[str], limits: Mapping[str, int]) -> dict[str, int] | str:
    """Per table, how many rows the prior-row store has seen (counting stops at the table's limit, so a big
    store costs no more than the legacy table it is compared with); a message when the file is unreadable."""
    if path is None or not Path(path).exists():
        return {table: 0 for table in tables}
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return {table: db.execute(
                "SELECT count(*) FROM (SELECT DISTINCT row_key FROM prior_rows WHERE tbl = ? LIMIT ?)",
                (table, limits.get(table, 0) + 1)).fetchone()[0] for table in tables}
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        return (f"{path} is not a readable prior-row store ({exc}): move it away to start an empty one "
                "(old values of rows it had seen will then be missing), or point state.path at the right file")


# --- the command ---------------------------------------------------------------------------------------

@click.command("check")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), envvar="BRIDGE_CONFIG",
              help="YAML settings file [env: BRIDGE_CONFIG], as for `run`")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: exit_code and every finding.")
@click.pass_context
def check_command(ctx: click.Context, config_file: Path | None, as_json: bool) -> None:
    """Check what `run` needs (server, slot, publication, tables, topics, store); exit 0 ok, 1 warnings, 2 errors."""
    from bridge.mapping.loader import load_mappings
    from bridge.settings import load_settings

    settings = load_settings(config_file)
    report = check(settings, load_mappings(settings.mappings, retired=settings.retired_events))
    # Findings quote addresses as configured (a Kafka address may carry user:password): blank the secrets.
    click.echo(scrub(report.as_json() if as_json else report.as_text()))
    ctx.exit(report.exit_code)


def enforce_at_start(settings: Any, mappings: Any, log: Any) -> Report:
    """`run`'s preflight: errors in the input stop the start with every finding; warnings are logged. An
    unreachable service is only logged: opening the source or sink says so again (and may wait for it)."""
    from bridge.errors import ConfigurationError

    report = check(settings, mappings)
    for finding in report.findings:
        if finding.level == "warning" or finding.unavailable:
            log.warning("preflight: %s", finding.message, extra={"area": finding.area, "subject": finding.subject})
    if problems := [f for f in report.errors if not f.unavailable]:
        raise ConfigurationError(
            f"preflight found {len(problems)} problem(s): "
            + "; ".join(f"{f.area} {f.subject}: {f.message}" for f in problems)
            + " (`cdc-bridge check --config ...` lists every finding)")
    return report
