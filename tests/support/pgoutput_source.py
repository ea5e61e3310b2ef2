"""Helpers for tests of PgOutputChangeSource itself: its settings, a slot dropped afterwards, units received."""

from __future__ import annotations

import time
from typing import Any

import psycopg

from bridge.ports import SourceUnit
from bridge.settings import PgOutputSource
from bridge.sources.pgoutput.source import PgOutputChangeSource

TABLES = ("customers", "customer_addresses", "menu_items", "orders", "order_items")


def source_settings(dsn: str, slot: str, **overrides: Any) -> PgOutputSource:
    """Slot and publication named `slot`, no heartbeats unless asked, frequent status updates, and no initial
    snapshot unless asked: these tests count what the stream hands out, which a snapshot's batches would precede
    (tests/integration/test_pgoutput_initial_snapshot.py tests the snapshot)."""
    values: dict[str, Any] = {"dsn": dsn, "slot_name": slot, "publication_name": slot,
                              "heartbeat_interval_s": 3600.0, "status_interval_s": 0.2, "snapshot": "never"}
    return PgOutputSource(**(values | overrides))


def drop_slot(dsn: str, slot: str) -> None:
    """Drop the slot once no walsender holds it (a just-closed stream's may, for a moment)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        deadline = time.monotonic() + 10
        while conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND active",
                           (slot,)).fetchone() and time.monotonic() < deadline:
            time.sleep(0.1)
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                     (slot,))


def receive_and_acknowledge(source: PgOutputChangeSource, count: int, acknowledge: int) -> list[SourceUnit]:
    """Poll until `count` transactions (not heartbeats) arrived; the first `acknowledge` are done and reported."""
    received: list[SourceUnit] = []
    deadline = time.monotonic() + 30
    while len(received) < count:
        assert time.monotonic() < deadline, f"only {len(received)} of {count} transactions arrived"
        received.extend(u for u in source.poll(0.3) if not u.heartbeat)
    for unit in received[:acknowledge]:
        source.done(unit)
    assert source.commit() is not None
    time.sleep(0.5)  # the status update reaches the server
    return received
