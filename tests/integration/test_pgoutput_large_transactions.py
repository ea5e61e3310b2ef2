"""A transaction far above pipeline.spill_changes, committed while the bridge runs on real PostgreSQL.

The bridge (direct source, prior-row store, local event log) spills it to disk and translates and publishes it
in slices. Its events must be complete and byte-identical to the in-memory path (the same WAL decoded from a
second slot without spilling and translated whole), and the replication stream must survive: the database's
wal_sender_timeout is lowered to 2 s, shorter than handling the transaction takes, so a bridge that stops
reporting while it works (as it did before slicing) has its walsender terminated by the server.
Runs once per server (ids [pg15], [pg18]; see legacy_db_any in tests/conftest.py).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from bridge.mapping.loader import load_mappings
from bridge.mapping.translate import translate
from bridge.pipeline import Pipeline
from bridge.sinks.locallog import LocalLogEventSink
from bridge.sinks.locallog_reader import EventLogReader
from bridge.sources.pgoutput.changes import PRIMARY_KEYS_SQL, PgOutputAssembler, primary_keys_from_rows
from bridge.sources.pgoutput.protocol import parse_lsn
from bridge.sources.pgoutput.source import PgOutputChangeSource
from bridge.sources.pgoutput.spill import SpillPolicy
from bridge.state import PriorRowStore
from tests.support.pgoutput_source import TABLES, drop_slot, source_settings

REPO = Path(__file__).resolve().parents[2]
RESTAURANT = load_mappings([REPO / "mappings" / "restaurant.yaml"])
LINES = 12_000
SLICE = 1_000


@pytest.fixture
def slots(legacy_db_any: str) -> Iterator[tuple[str, str]]:
    """The bridge's slot and publication name, and a reference slot; both slots dropped afterwards."""
    name = f"big_{uuid.uuid4().hex[:8]}"
    yield name, f"{name}_ref"
    for slot in (name, f"{name}_ref"):
        drop_slot(legacy_db_any, slot)


def commit_large_transaction(dsn: str) -> int:
    """One customer, menu item and order, LINES lines, every line's quantity changed, a few lines deleted."""
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO customers (id, email, full_name) VALUES (1, 'big@example.com', 'Big Buyer')")
        conn.execute("INSERT INTO menu_items (id, name, price) VALUES (1, 'Soup', 4.50)")
        conn.execute("INSERT INTO orders (id, customer_id) VALUES (1, 1)")
        conn.execute("INSERT INTO order_items (order_id, menu_item_id, quantity, unit_price) "
                     "SELECT 1, 1, 1 + g %% 5, 4.50 FROM generate_series(1, %s) g", (LINES,))
        conn.execute("UPDATE order_items SET quantity = quantity + 1")  # old rows: written slices earlier
        conn.execute("DELETE FROM order_items WHERE id % 1000 = 0")
        conn.commit()
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return parse_lsn(row[0])


def walsender_pid(dsn: str, slot: str) -> int | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    return row[0] if row else None


def in_memory_events(dsn: str, slot: str, publication: str, store_path: Path) -> list[tuple[object, ...]]:
    """The reference: the same WAL through the assembler without a spill policy, translated whole."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        keys = primary_keys_from_rows(conn.execute(PRIMARY_KEYS_SQL).fetchall())
        rows = conn.execute("SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, "
                            "'proto_version', '1', 'publication_names', %s)", (slot, publication)).fetchall()
    assembler = PgOutputAssembler(primary_keys=keys)
    transactions = [tx for lsn, data in rows if (tx := assembler.feed(parse_lsn(lsn), data)) is not None]
    assert len(transactions) == 1 and type(transactions[0].changes) is tuple
    store = PriorRowStore(store_path)
    try:
        events = translate(transactions[0], RESTAURANT, source_id="big", prior_rows=store).events
    finally:
        store.close()
    return [(tuple(event.headers()), event.key(), event.value()) for event in events]


def test_a_large_transaction_is_spilled_published_whole_and_the_stream_survives(
        legacy_db_any: str, slots: tuple[str, str], tmp_path: Path) -> None:
    name, reference = slots
    with psycopg.connect(legacy_db_any, autocommit=True) as conn:
        database = conn.info.dbname
        conn.execute(f'ALTER DATABASE "{database}" SET wal_sender_timeout = \'2s\'')  # walsenders start with it
    settings = source_settings(legacy_db_any, name)
    spill_dir = tmp_path / "spill"
    source = PgOutputChangeSource(settings, TABLES, spill=SpillPolicy(SLICE, spill_dir))
    store = PriorRowStore(tmp_path / "prior-rows.sqlite", tables=RESTAURANT.needs_before().keys())
    sink = LocalLogEventSink(tmp_path / "events")
    pipeline = Pipeline(source, sink, RESTAURANT, source_id="big", prior_rows=store, slice_changes=SLICE,
                        commit_interval_s=0.2)
    with psycopg.connect(legacy_db_any, autocommit=True) as conn:  # after the publication exists
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (reference,))
    stop, failure = threading.Event(), []

    def run() -> None:
        try:
            pipeline.run(stop)
        except BaseException as exc:  # noqa: BLE001  (reported by the test thread)
            failure.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while (walsender := walsender_pid(legacy_db_any, name)) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert walsender is not None, "the bridge never started streaming"
        end = commit_large_transaction(legacy_db_any)
        deadline = time.monotonic() + 600
        while source.acknowledged_lsn < end and runner.is_alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not failure, f"the bridge stopped: {failure[0]!r}"
        assert source.acknowledged_lsn >= end, "the transaction was not acknowledged in time"
        assert walsender_pid(legacy_db_any, name) == walsender, "the walsender was replaced: the stream broke"
    finally:
        stop.set()
        runner.join(timeout=60)
        source.close()
        sink.close()
        store.close()
    assert not failure, f"the bridge stopped: {failure[0]!r}"
    assert pipeline.stats.changes == 3 + LINES * 2 + LINES // 1000
    assert list(spill_dir.iterdir()) == []
    published = [(record.headers, record.key, record.value) for record in EventLogReader(tmp_path / "events").read()]
    expected = in_memory_events(legacy_db_any, reference, name, tmp_path / "reference.sqlite")
    assert len(expected) == 3 + LINES + LINES + LINES // 1000  # added, quantity changed, removed
    assert published == expected
