"""PgOutputChangeSource against real PostgreSQL 15 and 18: setup, streaming, acknowledgement, heartbeats.

Each test uses its own slot and publication in a fresh database and drops the slot at the end. The
simulator's report (xid and per-table changes of every committed transaction) is the expectation.
Tests run once per server (ids [pg15], [pg18]; see legacy_db_any in tests/conftest.py).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from bridge.changes import Op
from bridge.errors import ConfigurationError, ServiceUnavailable
from bridge.ports import SourceUnit
from bridge.sources.pgoutput.source import HEARTBEAT_PREFIX, PgOutputChangeSource
from bridge.sources.pgoutput.protocol import lsn_text, parse_lsn
from legacy_db.simulate import run_simulation
from tests.conftest import LegacyServer
from tests.support.pgoutput_source import TABLES, drop_slot, source_settings



@pytest.fixture
def names(legacy_db_any: str) -> Iterator[str]:
    """A slot and publication name for this test; the slot is dropped afterwards."""
    name = f"pgs_{uuid.uuid4().hex[:8]}"
    yield name
    drop_slot(legacy_db_any, name)


settings = source_settings


def is_heartbeat(unit: SourceUnit) -> bool:
    tx = unit.transaction
    structurally = tx is not None and all(
        c.op is Op.MESSAGE and c.key == {"prefix": HEARTBEAT_PREFIX} for c in tx.changes)
    assert unit.heartbeat == structurally, f"the source flags heartbeat={unit.heartbeat} on {tx}"
    return structurally


def collect(source: PgOutputChangeSource, count: int, *, timeout_s: float = 30.0) -> list[SourceUnit]:
    """Poll until `count` units that are not heartbeats arrived (fails on timeout), then a little more."""
    units: list[SourceUnit] = []
    deadline = time.monotonic() + timeout_s
    while len(units) < count:
        assert time.monotonic() < deadline, f"only {len(units)} of {count} transactions arrived"
        units.extend(u for u in source.poll(0.5) if not is_heartbeat(u))
    units.extend(u for u in source.poll(0.5) if not is_heartbeat(u))
    return units


def confirmed_flush(dsn: str, slot: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                           (slot,)).fetchone()
    assert row is not None, f"slot {slot} is gone"
    return parse_lsn(row[0])


def wait_for_flush(dsn: str, slot: str, at_least: int, source: PgOutputChangeSource | None = None) -> int:
    """Status updates are asynchronous: wait until the slot shows them (polling keeps the stream alive)."""
    deadline = time.monotonic() + 10
    while (lsn := confirmed_flush(dsn, slot)) < at_least and time.monotonic() < deadline:
        if source is not None:
            source.poll(0.1)
            source.commit()
        else:
            time.sleep(0.1)
    return lsn


def test_each_parameter_runs_on_the_postgresql_it_names(legacy_server: LegacyServer, legacy_db_any: str) -> None:
    with psycopg.connect(legacy_db_any, autocommit=True) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None
    number = int(row[0])
    assert f"pg{number // 10000}" == legacy_server.label  # [pg15] on 15.x, [pg18] on 18.x: never both on one


def test_publication_and_slot_are_created_for_exactly_the_tables(legacy_db_any: str, names: str) -> None:
    source = PgOutputChangeSource(settings(legacy_db_any, names), ["orders", "customers"])
    try:
        assert source.created_publication and source.created_slot
        with psycopg.connect(legacy_db_any, autocommit=True) as conn:
            published = set(conn.execute("SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
                                         (names,)).fetchall())
            slot = conn.execute("SELECT plugin, slot_type FROM pg_replication_slots WHERE slot_name = %s",
                                (names,)).fetchone()
        assert published == {("public", "orders"), ("public", "customers")}
        assert slot == ("pgoutput", "logical")
        assert source.slot_lag_bytes() >= 0
    finally:
        source.close()
    again = PgOutputChangeSource(settings(legacy_db_any, names), ["customers", "orders"])
    try:
        assert not again.created_publication and not again.created_slot  # found, reused, nothing dropped
    finally:
        again.close()


def test_a_publication_with_other_tables_is_refused_with_the_fix(legacy_db_any: str, names: str) -> None:
    with psycopg.connect(legacy_db_any, autocommit=True) as conn:
        conn.execute(f"CREATE PUBLICATION {names} FOR TABLE customers, menu_items")
    with pytest.raises(ConfigurationError) as caught:
        PgOutputChangeSource(settings(legacy_db_any, names), ["customers", "orders"])
    message = str(caught.value)
    assert "public.orders" in message and "public.menu_items" in message
    assert f'ALTER PUBLICATION "{names}" SET TABLE "public"."customers", "public"."orders"' in message


def test_simulated_traffic_comes_out_as_the_simulators_transactions(legacy_db_any: str, names: str) -> None:
    source = PgOutputChangeSource(settings(legacy_db_any, names), TABLES)
    try:
        report = run_simulation(legacy_db_any, seed=7, count=300, durable_commits=True)
        units = collect(source, len(report.transactions))
    finally:
        source.close()
    assert all(u.error is None for u in units)
    transactions = [u.transaction for u in units]
    assert [tx.xid for tx in transactions] == [r.xid for r in report.transactions]
    for tx, record in zip(transactions, report.transactions, strict=True):
        assert Counter((c.table, c.op.value) for c in tx.changes) == record.changes, tx.xid
    commits = [tx.commit_lsn for tx in transactions]
    assert commits == sorted(commits) and len(set(commits)) == len(commits)


def test_only_acknowledged_transactions_advance_the_slot(legacy_db_any: str, names: str) -> None:
    config = settings(legacy_db_any, names)
    first = PgOutputChangeSource(config, TABLES)
    try:
        report = run_simulation(legacy_db_any, seed=3, count=40, durable_commits=True)
        units = collect(first, 40)
        assert first.commit() is None  # nothing done yet
        for unit in units[:15]:
            first.done(unit)
        first.done(units[20])  # done out of order: not safe while 15..19 are not
        safe = first.commit()
        acked = units[14].transaction.commit_lsn
        assert safe is not None and safe.commit_lsn == acked
        assert wait_for_flush(legacy_db_any, names, acked, first) == acked
        first.poll(1.0)  # keepalives and status updates while idle must not move it further
        first.commit()
    finally:
        first.close()
    assert confirmed_flush(legacy_db_any, names) == acked

    second = PgOutputChangeSource(config, TABLES)  # a restart: the unacknowledged come again
    try:
        again = collect(second, 25)
        assert [u.transaction.xid for u in again] == [r.xid for r in report.transactions[15:]]
        for unit in again:
            second.done(unit)
        last = again[-1].transaction.commit_lsn
        assert second.commit().commit_lsn == last
        assert wait_for_flush(legacy_db_any, names, last, second) >= last
    finally:
        second.close()

    third = PgOutputChangeSource(config, TABLES)  # everything acknowledged: nothing comes again
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            assert [u for u in third.poll(0.5) if not is_heartbeat(u)] == []
    finally:
        third.close()


def test_a_quiet_databases_slot_advances_through_heartbeats(legacy_db_any: str, names: str) -> None:
    source = PgOutputChangeSource(settings(legacy_db_any, names, heartbeat_interval_s=0.3), TABLES)
    try:
        start = confirmed_flush(legacy_db_any, names)
        heartbeats: list[SourceUnit] = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            for unit in source.poll(0.2):
                assert is_heartbeat(unit), unit
                heartbeats.append(unit)
                source.done(unit)
            source.commit()
        assert len(heartbeats) >= 2
        newest = heartbeats[-1].transaction.commit_lsn
        assert newest > start
        assert wait_for_flush(legacy_db_any, names, newest, source) >= newest
        assert source.slot_lag_bytes() < newest - start + 1_000_000
    finally:
        source.close()


def test_an_undecodable_transaction_is_a_unit_with_its_error_and_still_acknowledged(legacy_db_any: str,
                                                                                    names: str) -> None:
    with psycopg.connect(legacy_db_any, autocommit=True) as conn:
        conn.execute("CREATE TABLE odd (id int PRIMARY KEY, p point)")  # point has no exact decoder
    source = PgOutputChangeSource(settings(legacy_db_any, names), ["odd"])
    try:
        with psycopg.connect(legacy_db_any) as conn:
            bad_xid = conn.execute("INSERT INTO odd VALUES (1, '(1,2)') RETURNING pg_current_xact_id()::text"
                                   ).fetchone()[0]
            conn.commit()
            conn.execute("INSERT INTO odd VALUES (2, NULL)")
            conn.commit()
        units = collect(source, 2)
        assert len(units) == 2
        bad, good = units
        assert bad.transaction is None and bad.error is not None and "'p'" in str(bad.error)
        assert bad.raw["xid"] == int(bad_xid) and bad.raw["relation"] == "public.odd"
        assert good.error is None and good.transaction.changes[0].after == {"id": 2, "p": None}
        source.done(bad)
        source.done(good)
        last = good.transaction.commit_lsn
        assert source.commit().commit_lsn == last
        assert wait_for_flush(legacy_db_any, names, last, source) >= last
    finally:
        source.close()


def test_acknowledged_heartbeats_do_not_come_again_after_a_restart(legacy_db_any: str, names: str) -> None:
    config = settings(legacy_db_any, names, heartbeat_interval_s=0.2)
    source = PgOutputChangeSource(config, TABLES)
    try:
        heartbeats: list[SourceUnit] = []
        while len(heartbeats) < 2:
            heartbeats.extend(source.poll(0.5))
        for unit in heartbeats:
            source.done(unit)
        newest = source.commit().commit_lsn
    finally:
        source.close()
    again = PgOutputChangeSource(settings(legacy_db_any, names), TABLES)  # no new heartbeats of its own
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            assert [u.transaction.commit_lsn for u in again.poll(0.3) if u.transaction.commit_lsn <= newest] == []
    finally:
        again.close()


def test_a_resent_message_at_the_acknowledged_position_is_skipped(legacy_db_any: str, names: str) -> None:
    """Nothing at or before confirmed_flush_lsn comes again, even a message starting exactly there."""
    source = PgOutputChangeSource(settings(legacy_db_any, names, heartbeat_interval_s=0.2), TABLES)
    try:
        first: list[SourceUnit] = []
        while not first:
            first = source.poll(0.5)
    finally:
        source.close()  # not acknowledged by the source itself
    at = first[0].transaction.commit_lsn
    with psycopg.connect(legacy_db_any, autocommit=True) as conn:
        conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (names, f"{at >> 32:X}/{at & 0xFFFFFFFF:X}"))
    assert confirmed_flush(legacy_db_any, names) == at
    again = PgOutputChangeSource(settings(legacy_db_any, names), TABLES)
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            assert [u.transaction.commit_lsn for u in again.poll(0.3) if u.transaction.commit_lsn <= at] == []
    finally:
        again.close()


def test_an_unreachable_server_is_service_unavailable_without_the_password() -> None:
    dsn = "postgresql://bridge:s3cret@127.0.0.1:1/legacy"
    with pytest.raises(ServiceUnavailable) as caught:
        PgOutputChangeSource(settings(dsn, "unused"), ["customers"])
    assert "127.0.0.1" in str(caught.value) and "port=1" in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_keepalives_never_confirm_a_received_but_unacknowledged_transaction(legacy_db_any: str,
                                                                           names: str) -> None:
    """Transactions interleave in the WAL: A begins, B and C commit, A commits; the stream sends B, C, A.

    With only B done, the slot must stay exactly at B's commit however many keepalives arrive (psycopg2's
    cursor would move its reported flush to a keepalive's WAL end by itself, confirming C and A unsent).
    """
    source = PgOutputChangeSource(settings(legacy_db_any, names), TABLES)
    insert = ("INSERT INTO customers (email, full_name, created_at, updated_on) "
              "VALUES (%s, 'x', now(), now()::timestamp)")
    try:
        with psycopg.connect(legacy_db_any) as early, psycopg.connect(legacy_db_any, autocommit=True) as other:
            early.execute(insert, ("a@example.com",))
            other.execute(insert, ("b@example.com",))
            other.execute(insert, ("c@example.com",))
            early.commit()
        units = collect(source, 3)
        emails = [u.transaction.changes[0].after["email"] for u in units]
        assert emails == ["b@example.com", "c@example.com", "a@example.com"]
        source.done(units[0])
        acked = source.commit().commit_lsn
        assert acked == units[0].transaction.commit_lsn
        wait_for_flush(legacy_db_any, names, acked, source)
        before = source.keepalives_received
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            source.poll(0.2)
            source.commit()
        assert source.keepalives_received > before, "no keepalive arrived: the test proved nothing"
        assert confirmed_flush(legacy_db_any, names) == acked
    finally:
        source.close()
    assert confirmed_flush(legacy_db_any, names) == acked


def test_a_busy_slot_is_waited_for_then_named(legacy_db_any: str, names: str) -> None:
    first = PgOutputChangeSource(settings(legacy_db_any, names), TABLES)
    try:
        began = time.monotonic()
        with pytest.raises(ServiceUnavailable) as caught:
            PgOutputChangeSource(settings(legacy_db_any, names, slot_busy_wait_s=1.0), TABLES)
        assert time.monotonic() - began >= 1.0, "it waited for the slot before giving up"
        assert names in str(caught.value) and "another bridge" in str(caught.value)
        releaser = threading.Timer(1.5, first.close)  # like a dead bridge's walsender going away
        releaser.start()
        second = PgOutputChangeSource(settings(legacy_db_any, names, slot_busy_wait_s=30.0), TABLES)
        second.close()
        releaser.join()
    finally:
        first.close()


def test_a_mapped_table_missing_from_the_database_is_named(legacy_db_any: str, names: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        PgOutputChangeSource(settings(legacy_db_any, names), ["customers", "invoices"])
    message = str(caught.value)
    assert "public.invoices" in message and "public.customers" not in message and "source.dsn" in message
    with psycopg.connect(legacy_db_any, autocommit=True) as conn:  # refused before creating anything
        assert conn.execute("SELECT count(*) FROM pg_publication WHERE pubname = %s", (names,)).fetchone()[0] == 0


def test_a_slot_dropped_and_created_again_is_never_skipped_by_the_kept_position(legacy_db_any: str, names: str,
                                                                               tmp_path: Path) -> None:
    """The acknowledged position kept on disk skips only what this bridge published on this slot's history:
    a new slot of the same name starts at the WAL's end, past it, so its transactions all come."""
    kept = tmp_path / "acknowledged.json"
    first = PgOutputChangeSource(settings(legacy_db_any, names), TABLES, acknowledged_path=kept)
    try:
        run_simulation(legacy_db_any, seed=31, count=20, durable_commits=True)
        for unit in collect(first, 20):
            first.done(unit)
        acknowledged = first.commit().commit_lsn
    finally:
        first.close()
    # Kept on disk: that position, or a later one (an idle source confirms a keepalive's WAL end at once, and one
    # can arrive between the commit and the close).
    [entry] = json.loads(kept.read_text()).values()
    assert parse_lsn(entry["lsn"]) >= acknowledged, (lsn_text(acknowledged), entry)
    drop_slot(legacy_db_any, names)
    again = PgOutputChangeSource(settings(legacy_db_any, names), TABLES, acknowledged_path=kept)
    try:
        assert again.created_slot
        report = run_simulation(legacy_db_any, seed=37, count=10, durable_commits=True)
        units = collect(again, 10)
    finally:
        again.close()
    assert [u.transaction.xid for u in units] == [r.xid for r in report.transactions]
