"""The demo's view: counting per type, the recent rate, the commit-to-log lag, and lines that fit."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bridge.demo_view import DemoFacts, EventTally, _cut, frame, short_type, status_line
from bridge.eventlog import KIND_DEAD_LETTER, KIND_EVENT
from bridge.pipeline import PipelineStats
from bridge.sinks.locallog_reader import LogRecord

COMMIT = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _record(offset: int, event_type: str, kind: int = KIND_EVENT) -> LogRecord:
    headers = (("ce_type", event_type.encode()), ("ce_time", b"2026-11-25T12:00:00.000000Z"),
               ("ce_subject", b"order/7"))
    return LogRecord(offset=offset, kind=kind, id=f"id-{offset}", sequence=None, headers=headers, key=b"7",
                     value=b'{"orderId": 7, "total": "18.90"}', aggregate_type="order", rule_id="r")


def test_the_tally_counts_per_type_and_ignores_dead_letters_in_the_event_counts() -> None:
    tally = EventTally()
    for offset, name in enumerate(["OrderOpened", "OrderPlaced", "OrderOpened"]):
        tally.add(_record(offset, f"restaurant.order.{name}.v1"), now=100.0, wall=COMMIT)
    tally.add(_record(3, "restaurant.order.OrderOpened.v1", kind=KIND_DEAD_LETTER), now=100.0, wall=COMMIT)
    assert tally.counts == {"OrderOpened.v1": 2, "OrderPlaced.v1": 1}
    assert (tally.total, tally.dead_letters) == (3, 1)
    assert [r.offset for r in tally.latest] == [0, 1, 2]


def test_the_rate_covers_only_the_recent_window_and_the_lag_is_commit_to_reading() -> None:
    tally = EventTally()
    for second in range(10):
        tally.add(_record(second, "restaurant.order.OrderOpened.v1"), now=1000.0 + second,
                  wall=COMMIT + timedelta(milliseconds=40))
    assert tally.rate(now=1009.5) == 5 / 5.0  # seconds 1005..1009 are inside the 5 s window
    assert round(tally.lag_ms or 0) == 40


def test_short_types_and_lines_cut_to_the_terminal_keep_colours_whole() -> None:
    assert short_type("restaurant.menu_item.MenuItemPriceChanged.v2") == "MenuItemPriceChanged.v2"
    assert short_type(None) == "?"
    coloured = "\x1b[1mbold\x1b[0m and plain text that is long"
    cut = _cut(coloured, 10)
    assert ANSI.sub("", cut) == "bold and p"
    assert cut.endswith("\x1b[0m")


def test_the_frame_shows_every_gauge_within_the_width() -> None:
    facts = DemoFacts(database="host=127.0.0.1 port=5432 dbname=restaurant", server="PostgreSQL 18.6",
                      slot="cdc_bridge_demo", log_dir=Path(".state/demo/events"), traffic="20 transactions/s",
                      slot_lag_bytes=3 * 1024 * 1024)
    tally = EventTally()
    tally.add(_record(0, "restaurant.order.OrderPlaced.v1"), wall=COMMIT + timedelta(milliseconds=12))
    stats = PipelineStats(transactions=5, changes=9, events=1, acknowledged=1)
    lines = [ANSI.sub("", line) for line in frame(facts, tally, stats, width=80, elapsed_s=3)]
    text = "\n".join(lines)
    assert all(len(line) <= 80 for line in lines)
    assert "PostgreSQL 18.6" in text and "3.0 MB" in text and "12 ms" in text
    assert "OrderPlaced.v1" in text and "5 transactions" in text
    facts.error = "the bridge failed: boom"
    assert "stopped: the bridge failed: boom" in "\n".join(frame(facts, tally, stats, width=200, elapsed_s=3))
    line = status_line(facts, tally, stats, elapsed_s=3)
    assert "events 1" in line and "transactions 5" in line and "slot lag 3.0 MB" in line
