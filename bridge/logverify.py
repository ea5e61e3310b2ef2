"""`cdc-bridge log verify`: check every segment of an event log and report records, torn tails and damage.

Exit codes: 0 the log is whole; 1 no damage, but a torn tail (an append a crash interrupted: never
acknowledged, and the next writer cuts it); 2 damage (or no log there): something acknowledged does not
read back, and nothing was changed. Like every reader it takes no lock and writes nothing.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from bridge.eventlog import (
    DEAD_LETTERS,
    DEFAULT_LOG_DIR,
    EVENTS,
    KIND_DEAD_LETTER,
    KIND_EVENT,
    LOCK_FILE,
    SEGMENT_HEADER,
    CorruptLogError,
    FrameScanner,
    SegmentSummary,
    body_id_and_sequence,
    list_segments,
    log_root,
    open_segment,
    segment_name,
    summary_path,
)
from bridge.logdamage import gap_error, inspect_stop, well_formed
from bridge.sinks.locallog_reader import EventLogReader

EXIT_WHOLE, EXIT_TORN_TAIL, EXIT_DAMAGED = 0, 1, 2
KIND_NAMES = {KIND_EVENT: "event", KIND_DEAD_LETTER: "dead letter"}


@dataclass
class Report:
    """What verify found, as the lines it prints, and counts that decide the exit code."""

    lines: list[str] = field(default_factory=list)
    damaged: int = 0
    torn: int = 0

    def damage(self, text: str) -> None:
        self.damaged += 1
        self.lines.append(f"    damaged: {text}")

    def note(self, text: str) -> None:
        self.lines.append(f"    {text}")

    @property
    def exit_code(self) -> int:
        return EXIT_DAMAGED if self.damaged else EXIT_TORN_TAIL if self.torn else EXIT_WHOLE


@dataclass
class SegmentCheck:
    """One segment read end to end: its whole records up to the first damage, and what else was found."""

    scanned: SegmentSummary
    damaged: bool = False
    records_after_damage: int = 0
    state: str = "ok"


def check_segment(path: Path, base: int, *, last: bool, kind: int | None, writer: int | None,
                  report: Report) -> SegmentCheck:
    try:
        file = open_segment(path, base)
    except CorruptLogError as exc:
        report.damage(str(exc).removeprefix("event log damaged: "))
        return SegmentCheck(SegmentSummary(base, size=0), damaged=True, state="DAMAGED")
    check = SegmentCheck(SegmentSummary(base))
    closed_cleanly = last and _summary_matches_size(path)
    with file:
        position = SEGMENT_HEADER.size
        while True:
            scanner = FrameScanner(file, position)
            for at, body in scanner:
                if not well_formed(body) or (kind is not None and body[0] != kind):
                    check.damaged = True
                    report.damage(f"{path} byte {at}: a record that passes its checksum but is not a well-formed "
                                  f"{KIND_NAMES.get(kind or 0, 'record')} (kind {body[0]}, {len(body)} bytes)")
                elif check.damaged:
                    check.records_after_damage += 1
                else:
                    check.scanned.note(body_id_and_sequence(body)[1], at)
            if not check.damaged:
                check.scanned.size = scanner.end
            position = scanner.end
            if scanner.status == "end":
                break
            offset = None if check.damaged else base + check.scanned.count
            bad = inspect_stop(file, path, position, offset, sealed=not last, closed_cleanly=closed_cleanly)
            if bad is None:
                continue  # a record was being appended: it is whole now
            if bad.torn_tail:
                _torn_tail(bad.torn_bytes, position, offset, bad.reason, writer, check, report)
                break
            check.damaged = True
            report.damage(bad.describe())
            if bad.resumes_at is None:
                break
            position = bad.resumes_at
    if check.damaged:
        check.state = "DAMAGED"
    return check


def _torn_tail(torn_bytes: int, position: int, offset: int | None, reason: str, writer: int | None,
               check: SegmentCheck, report: Report) -> None:
    where = f"{torn_bytes} bytes at byte {position} (offset {'unknown' if offset is None else offset})"
    if writer is not None:
        check.state = "ok, a record being appended"
        report.note(f"an incomplete record: {where}: the writer (pid {writer}) is running, so it is most likely "
                    "being appended right now; run verify again to be sure")
        return
    report.torn += 1
    check.state = "torn tail"
    report.note(f"torn tail: {where}: {reason}; an append a crash interrupted, never acknowledged: "
                "the next writer cuts it")


def check_summary(path: Path, check: SegmentCheck, *, last: bool, report: Report) -> None:
    """A summary is a cache, but readers trust one that matches the segment's size to find offsets."""
    stored = _stored_summary(path)
    target = summary_path(path)
    if stored is None:
        if target.exists():
            report.note(f"{target.name}: unreadable summary (ignored; the next writer rebuilds it)")
        elif not last:
            report.note(f"{target.name}: no summary (the next writer rebuilds it)")
        return
    size = path.stat().st_size
    if stored.get("size") != size:
        if last:
            report.note(f"{target.name}: stale summary of an earlier clean close (ignored)")
        else:
            report.damage(f"{target}: the summary says the sealed segment holds {stored.get('size')} bytes, it holds "
                          f"{size}: a sealed segment never changes, so it was cut or appended to")
        return
    if check.damaged:
        return
    expected = json.loads(check.scanned.to_json())
    wrong = [name for name in ("base_offset", "count", "min_sequence", "max_sequence", "sparse_every", "sparse")
             if stored.get(name) != expected[name]]
    if wrong:
        report.damage(f"{target}: its {', '.join(wrong)} disagree(s) with the segment ({check.scanned.count} "
                      "records); readers trust it to find offsets: delete it (the next writer rebuilds it)")


def _stored_summary(path: Path) -> dict[str, Any] | None:
    try:
        stored = json.loads(summary_path(path).read_text())
    except (OSError, ValueError):
        return None
    return stored if isinstance(stored, dict) and stored.get("format") == 1 else None


def _summary_matches_size(path: Path) -> bool:
    stored = _stored_summary(path)
    return stored is not None and stored.get("size") == path.stat().st_size


def check_names_and_modes(log_dir: Path, segments: list[tuple[int, Path]], report: Report) -> None:
    named = {path.name for _, path in segments} | {summary_path(path).name for _, path in segments}
    for entry in sorted(log_dir.iterdir()):
        name = entry.name
        if name not in named and name != LOCK_FILE:
            if name.endswith(".tmp"):
                report.note(f"{name}: the leftover of an interrupted write (the next writer removes it)")
            elif name.endswith(".log"):
                report.damage(f"{entry}: not a segment name (20 digits, the offset of its first record, + .log): "
                              "readers and writers skip it; if it is a segment, rename it to the offset it starts at")
            elif name.endswith(".summary.json"):
                report.note(f"{name}: a summary without its segment")
            else:
                report.note(f"{name}: not part of the log")
    for path in [log_dir, *(path for _, path in segments), *(summary_path(p) for _, p in segments)]:
        _check_mode(path, report)


def _check_mode(path: Path, report: Report) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077:
        wanted = "700" if path.is_dir() else "600"
        report.lines.append(f"    warning: {path} is readable by group or others (mode {mode:04o}): it holds "
                            f"customer data; `chmod {wanted} {path}`")


def live_writer(lock_dir: Path) -> int | None:
    """The pid of the process holding the log's writer lock, if one does (then a partial record is most
    likely an append in progress). Looked up in /proc/locks, so the lock is not touched: taking it, even
    for a moment, could make a bridge starting at that moment refuse the log."""
    lock = lock_dir / LOCK_FILE
    try:
        info = lock.stat()
        locks = Path("/proc/locks").read_text()
    except OSError:
        return None
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    for line in locks.splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == device and fields[4].isdigit():
            return int(fields[4])
    return None


def verify_log(name: str, log_dir: Path, kind: int | None, report: Report) -> None:
    segments = list_segments(log_dir)
    header_at = len(report.lines)
    check_names_and_modes(log_dir, segments, report)
    lock_dir = log_root(log_dir / segment_name(0))
    writer = live_writer(lock_dir)
    _check_mode(lock_dir / LOCK_FILE, report)
    total, expected = 0, 0  # expected: where the next segment must start; None once damage hides it
    for index, (base, path) in enumerate(segments):
        last = index == len(segments) - 1
        if expected is not None and base != expected:
            report.damage(str(gap_error(path, expected)).removeprefix("event log damaged: "))
        line_at = len(report.lines)
        check = check_segment(path, base, last=last, kind=kind, writer=writer, report=report)
        check_summary(path, check, last=last, report=report)
        after = f", {check.records_after_damage} more after the damage" if check.records_after_damage else ""
        report.lines.insert(line_at, f"  {path.name}  {check.scanned.count} records{after}  "
                                     f"{path.stat().st_size} bytes  {check.state}")
        total += check.scanned.count + check.records_after_damage
        expected = None if check.damaged else base + check.scanned.count
    first = segments[0][0] if segments else 0
    span = f", offsets {first}-{first + total - 1}" if total and expected is not None else ""
    report.lines.insert(header_at, f"{name}: {total} records in {len(segments)} segment"
                                   f"{'' if len(segments) == 1 else 's'}{span} ({log_dir})")


def logs_to_check(root: Path, dead_letter_path: Path | None) -> list[tuple[str, Path, int | None]]:
    """(name, directory, record kind) of each log: a log directory's events and dead letters, or a
    directory of segments itself (a dead-letter log kept elsewhere)."""
    if (root / EVENTS).is_dir():
        logs: list[tuple[str, Path, int | None]] = [(EVENTS, root / EVENTS, KIND_EVENT)]
        if (root / DEAD_LETTERS).is_dir():
            logs.append((DEAD_LETTERS, root / DEAD_LETTERS, KIND_DEAD_LETTER))
    elif root.is_dir() and list_segments(root):
        logs = [(root.name, root, None)]
    else:
        EventLogReader(root)  # raises LogNotFound, saying what is missing
        logs = []
    if dead_letter_path is not None:
        if not list_segments(dead_letter_path):
            EventLogReader(dead_letter_path.parent, log=dead_letter_path.name)
        logs.append((DEAD_LETTERS, dead_letter_path, KIND_DEAD_LETTER))
    return logs


@click.group("log")
def log_group() -> None:
    """The local event log: check it."""


@log_group.command("verify")
@click.option("--log", "log_dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_LOG_DIR,
              envvar="BRIDGE_EVENT_LOG", show_default=True,
              help="The event log directory (the local log sink's path) [env: BRIDGE_EVENT_LOG].")
@click.option("--dead-letter-path", type=click.Path(file_okay=False, path_type=Path),
              help="The dead-letter log, when the sink keeps it elsewhere (sink.dead_letter_path).")
@click.pass_context
def verify_command(ctx: click.Context, log_dir: Path, dead_letter_path: Path | None) -> None:
    """Check every segment and record of the log.

    Exit 0: every record reads back; 1: a torn tail only (an append a crash interrupted: never acknowledged,
    the next writer cuts it); 2: damage (anything else that does not read back). Checks the header, records
    and checksums, contiguous offsets, summaries, names and file modes of the events and the dead letters.
    Takes no lock.
    """
    report = Report()
    for name, directory, kind in logs_to_check(log_dir, dead_letter_path):
        verify_log(name, directory, kind, report)
    for line in report.lines:
        click.echo(line)
    if report.damaged:
        click.echo(f"DAMAGED: {report.damaged} problem(s) above; nothing was changed. Readers stop at the damage "
                   "and the bridge refuses to open a damaged segment: restore the files named from a backup, or "
                   "follow the remedy each line gives (exit 2)")
    elif report.torn:
        click.echo("TORN TAIL: no damage; a crashed writer left an incomplete append, never acknowledged; the next "
                   "writer (cdc-bridge run) cuts it (exit 1)")
    else:
        click.echo("ok: every segment reads back whole")
    ctx.exit(report.exit_code)

