"""The direct source across PostgreSQL restarts, on a server of this module's own (tests/support/private_postgres).

Before PostgreSQL 17 a logical slot's confirmed_flush_lsn is written to disk only when its restart_lsn or
catalog_xmin moves too (17 also writes it at the shutdown checkpoint: postgres commit e0b2eed), so after a
restart the slot can be back at an older position and the server resends transactions the bridge has
already published. The tests hold a transaction open while the bridge works, so neither restart_lsn nor
catalog_xmin can move and the slot is certainly not saved: the slot moving back is then certain, not luck.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bridge.errors import ServiceUnavailable
from bridge.sources.pgoutput.protocol import parse_lsn
from bridge.sources.pgoutput.source import PgOutputChangeSource
from legacy_db.simulate import run_simulation
from tests.support.databases import create_legacy_database
from tests.support.direct_bridge import confirmed_flush, direct_settings, log_records, run_until_caught_up
from tests.support.pgoutput_source import TABLES, receive_and_acknowledge, source_settings
from tests.support.private_postgres import PrivatePostgres, private_postgres



@pytest.fixture(scope="module")
def server() -> Iterator[PrivatePostgres]:
    with private_postgres() as pg:
        yield pg


@pytest.fixture
def legacy_dsn(server: PrivatePostgres) -> str:
    return create_legacy_database(server.admin_dsn, f"legacy_{uuid.uuid4().hex[:8]}")


class SlotPin:
    """A transaction with an xid, held open: the slot's restart_lsn and catalog_xmin cannot pass it."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn)
        self.conn.execute("SELECT pg_current_xact_id()")

    def close(self) -> None:
        self.conn.close()


def slot_restart_lsn(dsn: str, slot: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                           (slot,)).fetchone()
    assert row is not None
    return parse_lsn(row[0])


def history_then_pinned_updates(dsn: str, slot: str, pins: list[SlotPin], *, seed: int) -> None:
    """Rows are created, the slot is saved after them (a checkpoint's running-xacts record moves restart_lsn
    once the bridge confirms past it), then, pinned, the rows are updated: a restart replays the updates,
    whose old rows the bridge took from its prior-row store the first time."""
    run_simulation(dsn, seed=seed, count=200)
    saved_at = slot_restart_lsn(dsn, slot)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    deadline = time.monotonic() + 60
    while slot_restart_lsn(dsn, slot) == saved_at:
        assert time.monotonic() < deadline, "the slot's restart_lsn never moved: no save to go back to"
        time.sleep(0.2)
    pins.append(SlotPin(dsn))
    with psycopg.connect(dsn, autocommit=True) as conn:
        items = [row[0] for row in conn.execute("SELECT id FROM menu_items ORDER BY id")]
        for item in items:
            conn.execute("UPDATE menu_items SET price = price + 1, updated_on = now() WHERE id = %s", (item,))
        conn.execute("UPDATE orders SET status = 'CANCELLED', updated_on = now() WHERE status = 'OPEN'")
    assert items, "the simulated history has no menu items to reprice"
    time.sleep(2.0)  # the bridge prunes its store past what it acknowledged meanwhile


def restart_moving_the_slot_back(server: PrivatePostgres, dsn: str, slot: str, pins: list[SlotPin]) -> int:
    """Restart PostgreSQL (a clean, fast shutdown); returns how far the slot moved back, in bytes."""
    acknowledged = confirmed_flush(dsn, slot)
    assert acknowledged is not None
    server.restart("fast")
    for pin in pins:
        pin.close()  # its connection died with the server
    after = confirmed_flush(dsn, slot)
    assert after is not None
    if server.major < 17:
        assert after < acknowledged, "the restart did not move the slot back: the test proves nothing"
    return acknowledged - after


def test_after_a_restart_moves_the_slot_back_nothing_is_published_twice(server: PrivatePostgres, legacy_dsn: str,
                                                                         tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    slot = f"rs_{uuid.uuid4().hex[:8]}"
    settings = direct_settings(legacy_dsn, slot, tmp_path)
    pins: list[SlotPin] = []
    first = run_until_caught_up(settings, legacy_dsn,
                                during=lambda: history_then_pinned_updates(legacy_dsn, slot, pins, seed=5))
    assert first.transactions >= 200 and first.dead_letters == 0
    published = log_records(settings)
    moved_back = restart_moving_the_slot_back(server, legacy_dsn, slot, pins)

    second = run_until_caught_up(settings, legacy_dsn)

    assert second.dead_letters == 0 and log_records(settings, dead_letters=True) == []
    assert second.transactions == 0 and second.events == 0, "transactions already published came again"
    assert log_records(settings) == published
    if moved_back:
        assert any("moved back" in r.getMessage() and str(moved_back) in str(r.__dict__) for r in caplog.records)


def test_a_replay_after_the_slot_moved_back_translates_exactly_as_the_first_time(
        server: PrivatePostgres, legacy_dsn: str, tmp_path: Path) -> None:
    """Without the bridge's own record of what it acknowledged (lost, or another timeline), the server's
    replay must give the same events: the prior-row store kept history back to the slot's restart_lsn."""
    slot = f"rr_{uuid.uuid4().hex[:8]}"
    settings = direct_settings(legacy_dsn, slot, tmp_path, events="first")
    pins: list[SlotPin] = []
    first_stats = run_until_caught_up(settings, legacy_dsn,
                                      during=lambda: history_then_pinned_updates(legacy_dsn, slot, pins, seed=11))
    assert first_stats.dead_letters == 0
    first = {record.id: record for record in log_records(settings)}
    restart_moving_the_slot_back(server, legacy_dsn, slot, pins)
    for kept in tmp_path.glob("*acknowledged*"):
        kept.unlink()

    replay_settings = direct_settings(legacy_dsn, slot, tmp_path, events="replay")
    replay = run_until_caught_up(replay_settings, legacy_dsn)

    assert replay.transactions > 0, "nothing was replayed: the test proves nothing"
    assert replay.dead_letters == 0 and log_records(replay_settings, dead_letters=True) == []
    again = log_records(replay_settings)
    assert again, "the replayed transactions gave no events"
    for record in again:
        assert record.id in first, f"replayed event {record.type} {record.id} was not published the first time"
        original = first[record.id]
        assert (record.value, record.headers, record.key) == (original.value, original.headers, original.key)


# --- the stream when the server goes away ---------------------------------------------------------------


def poll_until_broken(source: PgOutputChangeSource, timeout_s: float = 60) -> ServiceUnavailable:
    """Poll as the pipeline does (what arrives is not acknowledged here) until the source gives up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            source.poll(0.2)
            source.commit()
        except ServiceUnavailable as exc:
            return exc
    raise AssertionError(f"the source did not notice the server going away within {timeout_s}s")


class InBackground(threading.Thread):
    """Run a call in a thread (a blocking `pg_ctl stop` while the source keeps being polled)."""

    def __init__(self, call: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.call, self.error = call, None

    def run(self) -> None:
        try:
            self.call()
        except BaseException as exc:  # noqa: BLE001 (reported by finish)
            self.error = exc

    def finish(self, timeout_s: float = 120) -> None:
        self.join(timeout_s)
        assert not self.is_alive(), f"still running after {timeout_s}s"
        if self.error is not None:
            raise self.error


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_server_restart_is_service_unavailable_and_a_new_source_resumes_without_loss(
        server: PrivatePostgres, legacy_dsn: str, mode: str) -> None:
    slot = f"sr_{uuid.uuid4().hex[:8]}"
    settings = source_settings(legacy_dsn, slot)
    source = PgOutputChangeSource(settings, TABLES)
    try:
        report = run_simulation(legacy_dsn, seed=17, count=60, durable_commits=True)
        receive_and_acknowledge(source, 20, acknowledge=20)
        # PostgreSQL's shutdown waits for its walsenders' clients to confirm all they were sent, which a
        # bridge with transactions in flight cannot: the source must notice and let go of the stream.
        stopping = InBackground(lambda: server.stop(mode))
        stopping.start()
        try:
            broken = poll_until_broken(source)
        finally:
            source.close()  # what the daemon does with a source that failed
            stopping.finish()
            server.start()
    finally:
        source.close()
    # fast: the source lets go when the server refuses connections for shutting down; immediate: the stream dies
    assert ("shutting down" if mode == "fast" else "replication stream") in str(broken), broken
    expected = [r.xid for r in report.transactions]
    again = PgOutputChangeSource(settings, TABLES)
    try:
        xids: list[int] = []
        deadline = time.monotonic() + 30
        while not set(expected[20:]) <= set(xids) and time.monotonic() < deadline:
            xids.extend(u.transaction.xid for u in again.poll(0.3) if not u.heartbeat)
    finally:
        again.close()
    assert set(expected[20:]) <= set(xids), "a transaction not acknowledged before the restart was lost"
    assert xids == expected[len(expected) - len(xids):], "resumed at a transaction boundary, in commit order"


def test_a_source_started_while_the_server_is_down_is_service_unavailable(server: PrivatePostgres,
                                                                          legacy_dsn: str) -> None:
    server.stop()
    try:
        with pytest.raises(ServiceUnavailable) as caught:
            PgOutputChangeSource(source_settings(legacy_dsn, "unused"), TABLES)
    finally:
        server.start()
    assert "cannot connect" in str(caught.value)
