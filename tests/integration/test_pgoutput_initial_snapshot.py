"""The direct source's initial snapshot against real PostgreSQL 15 and 18: rows written before the bridge first
ran are published (op r) from the slot's exported snapshot, then the slot is streamed from its consistent point.

The published events, folded by the reference consumer, must equal the legacy rows exactly: with traffic
during the snapshot (nothing lost or doubled between snapshot and stream), and after the snapshot was
interrupted (kill -9 of a bridge process, or its connection cut) and redone on a new slot with new ids.
Updates and deletes of rows that existed before the bridge get their old values from the prior-row store,
which the snapshot filled (the fold checks every oldPrice and oldQuantity).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bridge.eventlog import DEAD_LETTERS, EVENTS
from bridge.events import snapshot_event_id
from bridge.sinks.locallog_reader import EventLogReader, LogNotFound, LogRecord
from legacy_db.simulate import run_simulation
from tests.support.bridge_process import BridgeProcess, write_e2e_config
from tests.support.direct_bridge import DaemonThread, confirmed_flush, current_wal_lsn, direct_settings, log_records
from tests.support.event_checks import legacy_rows
from tests.support.pgoutput_source import drop_slot
from tests.support.restaurant_fold import FoldingConsumer, legacy_state

SOURCE_ID = "legacy-restaurant"
SNAPSHOT_TABLES = ["customers", "customer_addresses", "menu_items", "orders", "order_items"]


@pytest.fixture
def slot(legacy_db_any: str) -> Iterator[str]:
    name = f"snap_{uuid.uuid4().hex[:8]}"
    yield name
    drop_slot(legacy_db_any, name)  # a slot left behind would keep the test database from being dropped


# --- helpers ---------------------------------------------------------------------------------------------

def events_in(directory: Path, *, log: str = EVENTS) -> int:
    """Records in the local event log (it may be written meanwhile)."""
    try:
        return EventLogReader(directory, log=log).end_offset()
    except LogNotFound:
        return 0


def fold(records: list[LogRecord]) -> FoldingConsumer:
    consumer = FoldingConsumer()
    for record in records:
        consumer.apply(record.type or "", json.loads(record.value))
    return consumer


def assert_fold_is_the_legacy_state(records: list[LogRecord], dsn: str) -> None:
    consumer = fold(records)
    customers, items, orders = legacy_state(legacy_rows(dsn))
    assert consumer.customers == customers
    assert consumer.live_menu_items() == items
    assert consumer.orders == orders


def snapshot_id(table: str, row_id: int, rule: str, epoch: int) -> str:
    return snapshot_event_id(SOURCE_ID, "public", table, {"id": row_id}, rule, 1, 0, epoch)


def is_snapshot(record: LogRecord) -> bool:
    return record.header("ce_backfill") == "initial"


class ExistingRows:
    """Changes of rows that existed before the bridge ran, in transactions of their own: a reprice, a quantity
    change, a line removed, an order deleted with its lines. Their rules read old values (before.price,
    before.quantity, before.order_id), which only the snapshot's rows in the prior-row store can give."""

    def __init__(self, dsn: str, seed: int) -> None:
        self.dsn, self.rng = dsn, random.Random(seed)
        with psycopg.connect(dsn) as conn:
            self.items = [r[0] for r in conn.execute("SELECT id FROM menu_items ORDER BY id")]
            self.lines = {r[0]: r[1] for r in conn.execute("SELECT id, order_id FROM order_items ORDER BY id")}
            self.orders = [r[0] for r in conn.execute("SELECT id FROM orders ORDER BY id")]
        assert self.items and self.lines and self.orders, "the history has rows of every kind to change"
        self.done: Counter[str] = Counter()

    def change_one(self, conn: psycopg.Connection[Any]) -> None:
        kind = self.rng.choice(["price", "price", "quantity", "quantity", "remove line", "delete order"])
        with conn.transaction():
            if kind == "price":
                conn.execute("UPDATE menu_items SET price = price + 0.75, updated_on = now() WHERE id = %s",
                             (self.rng.choice(self.items),))
            elif kind == "quantity" and self.lines:
                conn.execute("UPDATE order_items SET quantity = quantity + 1 WHERE id = %s",
                             (self.rng.choice(sorted(self.lines)),))
            elif kind == "remove line" and self.lines:
                line = self.rng.choice(sorted(self.lines))
                del self.lines[line]
                conn.execute("DELETE FROM order_items WHERE id = %s", (line,))
            elif kind == "delete order" and self.orders:
                order = self.orders.pop(self.rng.randrange(len(self.orders)))
                for line in [line for line, owner in self.lines.items() if owner == order]:
                    del self.lines[line]
                conn.execute("DELETE FROM order_items WHERE order_id = %s", (order,))  # children first, no cascade
                conn.execute("DELETE FROM orders WHERE id = %s", (order,))
        self.done[kind] += 1

    def change(self, count: int) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for _ in range(count):
                self.change_one(conn)


# --- 1. rows from before the bridge, then live changes ----------------------------------------------------

def test_rows_from_before_the_bridge_are_published_as_a_snapshot_then_live_changes_with_old_values(
        legacy_db_any: str, slot: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dsn = legacy_db_any
    caplog.set_level(logging.INFO)
    run_simulation(dsn, seed=7, count=300)
    before = legacy_rows(dsn)
    item, old_price = next((i, row["price"]) for i, row in sorted(before["menu_items"].items()))
    settings = direct_settings(dsn, slot, tmp_path)
    daemon = DaemonThread(settings).start()
    try:
        marker = daemon.wait_for_snapshot()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE menu_items SET price = price + 1.25, updated_on = now() WHERE id = %s", (item,))
        daemon.wait_caught_up(dsn)
    finally:
        stats = daemon.stop()
    records = log_records(settings)
    assert log_records(settings, dead_letters=True) == [] and stats.dead_letters == 0

    snapshot = [r for r in records if is_snapshot(r)]
    assert records[:len(snapshot)] == snapshot, "the snapshot's events come first"
    assert {r.header("ce_backfillcut") for r in snapshot} == {marker["cut"]}
    added = {json.loads(r.value)["menuItemId"]: r.id for r in snapshot if r.type and ".MenuItemAdded." in r.type}
    assert added == {i: snapshot_id("menu_items", i, "menu_items.added", 0) for i in before["menu_items"]}
    signed_up = {json.loads(r.value)["customerId"]: r.id for r in snapshot if r.type and ".CustomerSignedUp." in r.type}
    assert signed_up == {c: snapshot_id("customers", c, "customers.signed_up", 0) for c in before["customers"]}
    # Parents first: each table's events follow the tables the rules name before it.
    tables = [r.rule_id.split(".")[0] for r in snapshot if r.rule_id]
    assert [t for i, t in enumerate(tables) if i == 0 or tables[i - 1] != t] == [
        t for t in SNAPSHOT_TABLES if t in tables]

    live = [(r.type, json.loads(r.value)) for r in records[len(snapshot):]]
    assert live == [("restaurant.menu_item.MenuItemPriceChanged.v1", {
        "menuItemId": item, "oldPrice": str(old_price), "newPrice": str(old_price + Decimal("1.25"))})]
    assert_fold_is_the_legacy_state(records, dsn)

    messages = [r.getMessage() for r in caplog.records]
    assert "started" in messages
    started = next(r for r in caplog.records if r.getMessage().startswith("initial snapshot started"))
    rows = sum(len(table_rows) for table_rows in before.values())
    assert (started.slot, started.cut, started.tables) == (slot, marker["cut"], SNAPSHOT_TABLES)  # type: ignore[attr-defined]
    assert (started.rows_to_read, started.rows_estimated) == (rows, False)  # type: ignore[attr-defined]
    finished = next(r for r in caplog.records if r.getMessage() == "initial snapshot finished")
    assert finished.rows == rows and finished.seconds >= 0  # type: ignore[attr-defined]
    assert stats.transactions == 1, "snapshot batches are not counted as legacy transactions"


# --- 2. traffic while the snapshot is read ----------------------------------------------------------------

def test_traffic_during_the_snapshot_is_neither_lost_nor_doubled(legacy_db_any: str, slot: str,
                                                                 tmp_path: Path) -> None:
    """The snapshot sees what committed before the slot's consistent point, the stream what committed after:
    traffic throughout the snapshot (new rows and changes of existing ones) must come through exactly once."""
    dsn = legacy_db_any
    run_simulation(dsn, seed=3, count=3000)
    existing = ExistingRows(dsn, seed=3)
    # A row a batch: the snapshot takes long enough for plenty of traffic to commit while it is read.
    settings = direct_settings(dsn, slot, tmp_path, snapshot_batch_rows=1)
    stop_traffic = threading.Event()
    during: list[int] = []

    def traffic() -> None:
        round_ = 0
        while not stop_traffic.is_set():
            round_ += 1
            during.append(len(run_simulation(dsn, seed=100 + round_, count=20).transactions))
            existing.change(2)

    daemon = DaemonThread(settings).start()
    writer = threading.Thread(target=traffic)
    try:
        daemon.wait_for_slot(dsn)
        writer.start()
        daemon.wait_for_snapshot()
        stop_traffic.set()
        writer.join(60)
        committed_during = sum(during)
        existing.change(40)  # and after, when every existing row is in the store
        run_simulation(dsn, seed=99, count=100)
        daemon.wait_caught_up(dsn)
    finally:
        stop_traffic.set()
        if writer.is_alive():
            writer.join(60)
        stats = daemon.stop()
    print(f"{committed_during} legacy transactions committed while the snapshot was read")
    assert committed_during >= 20, f"only {committed_during} transactions overlapped the snapshot: it was too quick"
    assert existing.done["price"] and existing.done["quantity"]
    records = log_records(settings)
    assert log_records(settings, dead_letters=True) == [] and stats.dead_letters == 0
    ids = [r.id for r in records]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} event ids appear twice"
    snapshot = [r for r in records if is_snapshot(r)]
    assert snapshot and records[:len(snapshot)] == snapshot
    assert_fold_is_the_legacy_state(records, dsn)


# --- 3. interrupted and redone ----------------------------------------------------------------------------

def test_a_snapshot_killed_midway_is_redone_on_a_new_slot_with_new_ids(legacy_db_any: str, slot: str,
                                                                      tmp_path: Path) -> None:
    dsn = legacy_db_any
    run_simulation(dsn, seed=17, count=1500)
    before = legacy_rows(dsn)
    events = tmp_path / "events"
    config = write_e2e_config(
        tmp_path, source={"kind": "pgoutput", "dsn": dsn, "slot_name": slot, "publication_name": slot,
                          "heartbeat_interval_s": 0.5, "status_interval_s": 0.2, "snapshot_batch_rows": 2},
        sink={"kind": "locallog", "path": str(events), "fsync_interval_ms": 1.0})
    marker_path = tmp_path / "prior-rows.snapshot.json"
    log = tmp_path / "bridge.log"
    first = BridgeProcess(config, log).start()
    second: BridgeProcess | None = None
    try:
        deadline = time.monotonic() + 120
        while events_in(events) < 300:
            assert first.alive() and time.monotonic() < deadline, first.log()[-3000:]
            time.sleep(0.05)
        first.kill()  # kill -9, mid-snapshot
        interrupted = json.loads(marker_path.read_text())
        assert not interrupted["complete"], "the snapshot finished before the kill: the test proves nothing"
        assert interrupted["slot"] == slot and interrupted["epoch"] == 0 and interrupted["cut"]
        first_attempt = list(EventLogReader(events).read())

        second = BridgeProcess(config, log).start()
        deadline = time.monotonic() + 120
        while not json.loads(marker_path.read_text())["complete"]:
            assert second.alive() and time.monotonic() < deadline, second.log()[-3000:]
            time.sleep(0.1)
        redone = json.loads(marker_path.read_text())
        ExistingRows(dsn, seed=17).change(30)  # the store has the snapshot's rows: old values are known
        target = current_wal_lsn(dsn)
        while (confirmed_flush(dsn, slot) or 0) < target:
            assert second.alive() and time.monotonic() < deadline, second.log()[-3000:]
            time.sleep(0.2)
        assert second.stop() == 0, second.log()[-3000:]
    finally:
        for process in (first, second):
            if process is not None and process.alive():
                process.kill()
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    redos = [e for e in lines if "was interrupted before it finished and is being redone" in e["message"]]
    assert len(redos) == 1 and f"initial snapshot of slot '{slot}' (cut {interrupted['cut']}" in redos[0]["message"]
    assert redone["epoch"] == 1 and redone["cut"] != interrupted["cut"]

    records = list(EventLogReader(events).read())
    assert [r.id for r in records[:len(first_attempt)]] == [r.id for r in first_attempt]
    later = records[len(first_attempt):]
    assert {r.header("ce_backfillcut") for r in first_attempt} == {interrupted["cut"]}
    assert {r.header("ce_backfillcut") for r in later if is_snapshot(r)} == {redone["cut"]}
    assert not {r.id for r in first_attempt} & {r.id for r in later}, "the redo's ids are its own"
    first_added = {json.loads(r.value)["customerId"]: r.id for r in first_attempt if r.type and ".CustomerSignedUp." in r.type}
    assert first_added and first_added == {c: snapshot_id("customers", c, "customers.signed_up", 0) for c in first_added}
    redo_added = {json.loads(r.value)["customerId"]: r.id for r in later if r.type and ".CustomerSignedUp." in r.type}
    assert redo_added == {c: snapshot_id("customers", c, "customers.signed_up", 1) for c in before["customers"]}
    assert events_in(events, log=DEAD_LETTERS) == 0
    assert_fold_is_the_legacy_state(records, dsn)


def test_a_connection_lost_mid_snapshot_is_ridden_out_by_a_redo_in_the_same_process(
        legacy_db_any: str, slot: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dsn = legacy_db_any
    caplog.set_level(logging.INFO)
    run_simulation(dsn, seed=23, count=1500)
    settings = direct_settings(dsn, slot, tmp_path, snapshot_batch_rows=2)
    daemon = DaemonThread(settings).start()
    try:
        deadline = time.monotonic() + 120
        while events_in(Path(settings.sink.path)) < 300:  # type: ignore[union-attr]
            daemon.check()
            assert time.monotonic() < deadline, "no snapshot events"
            time.sleep(0.05)
        with psycopg.connect(dsn, autocommit=True) as conn:
            cut = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE application_name = 'cdc-bridge-snapshot' AND datname = current_database()"
                               ).fetchall()
        assert cut == [(True,)], "the snapshot's reading connection was not found: it already finished?"
        daemon.wait_for_snapshot(epoch=1)
        ExistingRows(dsn, seed=23).change(30)
        daemon.wait_caught_up(dsn)
    finally:
        stats = daemon.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert any("initial snapshot's connection to" in m and "the next run redoes the snapshot" in m
               for m in messages), messages[-20:]
    assert any("was interrupted before it finished and is being redone" in m for m in messages)
    assert stats.dead_letters == 0
    assert_fold_is_the_legacy_state(log_records(settings), dsn)
