"""What `cdc-bridge demo` shows: a live panel on a terminal, plain lines anywhere else.

Pure rendering: the demo feeds an EventTally with the records it reads back from the event log and
passes the facts it gathered; the functions here only turn them into lines.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import click

from bridge.eventlog import KIND_DEAD_LETTER
from bridge.pipeline import PipelineStats
from bridge.sinks.locallog_reader import LogRecord
from bridge.tail import text_line

RATE_WINDOW_S = 5.0
LATEST_SHOWN = 8


@dataclass
class DemoFacts:
    """Where things are, and the gauges read from the database."""

    database: str
    server: str
    slot: str
    log_dir: Path
    traffic: str
    slot_lag_bytes: int | None = None
    error: str | None = None


class EventTally:
    """Counts per event type, the recent rate, the newest events, and how long after its commit each arrived."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.total = 0
        self.dead_letters = 0
        self.latest: deque[LogRecord] = deque(maxlen=LATEST_SHOWN)
        self._arrivals: deque[tuple[float, int]] = deque()  # (monotonic second, events) within the window
        self.lag_ms: float | None = None  # commit of the newest event -> read back from the log

    def add(self, record: LogRecord, *, now: float | None = None, wall: datetime | None = None) -> None:
        now = time.monotonic() if now is None else now
        if record.kind == KIND_DEAD_LETTER:
            self.dead_letters += 1
            return
        self.total += 1
        self.counts[short_type(record.type)] += 1
        self.latest.append(record)
        if self._arrivals and self._arrivals[-1][0] == int(now):
            self._arrivals[-1] = (int(now), self._arrivals[-1][1] + 1)
        else:
            self._arrivals.append((int(now), 1))
        committed = _parse_time(record.time)
        if committed is not None:
            self.lag_ms = max(0.0, ((wall or datetime.now(UTC)) - committed).total_seconds() * 1000)

    def rate(self, now: float | None = None) -> float:
        """Events per second over the last RATE_WINDOW_S seconds."""
        now = time.monotonic() if now is None else now
        while self._arrivals and self._arrivals[0][0] < now - RATE_WINDOW_S:
            self._arrivals.popleft()
        return sum(count for _, count in self._arrivals) / RATE_WINDOW_S


def short_type(full: str | None) -> str:
    """restaurant.order.OrderPlaced.v1 -> OrderPlaced.v1"""
    parts = (full or "?").rsplit(".", 2)
    return ".".join(parts[-2:]) if len(parts) == 3 else (full or "?")


def frame(facts: DemoFacts, tally: EventTally, stats: PipelineStats, *, width: int, elapsed_s: float) -> list[str]:
    """The live panel, one string per terminal line, cut to `width`."""
    bold = lambda text: click.style(text, bold=True)  # noqa: E731
    lines = [
        bold("cdc-bridge demo") + f"  legacy restaurant -> domain events   {elapsed_s:6.0f} s   Ctrl-C stops",
        "",
        f"  legacy database  {facts.database}  ({facts.server})",
        f"  legacy traffic   {facts.traffic}",
        f"  source           pgoutput slot {facts.slot}, WAL held for the bridge {_bytes(facts.slot_lag_bytes)}",
        f"  bridge           {stats.transactions:,} transactions, {stats.changes:,} row changes read; "
        f"{stats.acknowledged:,} events acknowledged, {stats.dead_letters:,} dead letters",
        f"  event log        {facts.log_dir}  ({tally.total:,} events, {tally.rate():,.1f}/s, newest read "
        f"{_ms(tally.lag_ms)} after its commit)",
        "",
        bold(f"  {'event type':<34}{'count':>9}"),
    ]
    lines += [f"  {name:<34}{count:>9,}" for name, count in sorted(tally.counts.items())] or ["  (none yet)"]
    lines += ["", bold("  newest events")]
    lines += ["  " + text_line(record) for record in tally.latest] or ["  (none yet)"]
    if facts.error:
        lines += ["", click.style(f"  stopped: {facts.error}", fg="red", bold=True)]
    return [_cut(line, width) for line in lines]


def status_line(facts: DemoFacts, tally: EventTally, stats: PipelineStats, *, elapsed_s: float) -> str:
    """One line of the same gauges, for output that is not a terminal."""
    return (f"[demo {elapsed_s:.0f}s] events {tally.total} ({tally.rate():.1f}/s), transactions {stats.transactions}, "
            f"dead letters {stats.dead_letters}, newest after commit {_ms(tally.lag_ms)}, "
            f"slot lag {_bytes(facts.slot_lag_bytes)}")


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _bytes(count: int | None) -> str:
    if count is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return "?"


def _ms(value: float | None) -> str:
    return "?" if value is None else f"{value:,.0f} ms"


def _cut(line: str, width: int) -> str:
    """Cut to `width` visible characters, keeping colour codes whole and resetting them at the cut."""
    visible = 0
    out: list[str] = []
    index = 0
    while index < len(line):
        if line[index] == "\x1b":
            end = line.find("m", index)
            if end != -1:
                out.append(line[index:end + 1])
                index = end + 1
                continue
        if visible >= width:
            out.append("\x1b[0m")
            break
        out.append(line[index])
        visible += 1
        index += 1
    return "".join(out)
