"""End to end with the direct source: legacy traffic -> PostgreSQL -> cdc-bridge (pgoutput) -> Kafka.

No Kafka Connect and no Debezium: `cdc-bridge run` streams the slot itself. The published events,
folded by the reference consumer, must equal the legacy rows exactly; with the bridge killed -9 mid-run
and restarted, nothing is lost and every repeated event is byte-identical.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from bridge.sources.pgoutput.protocol import parse_lsn
from legacy_db.simulate import run_simulation
from tests.support.bridge_process import BridgeProcess, write_e2e_config
from tests.support.event_checks import (
    assert_ordered_per_aggregate,
    assert_repeats_identical,
    assert_state_matches,
    fold,
)
from tests.support.kafka_reading import read_all
from tests.support.local_stack import StackInfo

AGGREGATES = ("customer", "menu_item", "order")


class DirectRun:
    """`cdc-bridge run` with source.kind pgoutput on one test database, publishing to its own topics."""

    def __init__(self, stack: StackInfo, dsn: str, tmp_path: Path) -> None:
        suffix = uuid.uuid4().hex[:6]
        self.stack, self.dsn = stack, dsn
        self.slot = f"e2e_{suffix}"
        self.out = f"direct{suffix}"
        self.config = write_e2e_config(
            tmp_path,
            source={"kind": "pgoutput", "dsn": dsn, "slot_name": self.slot, "publication_name": self.slot,
                    "heartbeat_interval_s": 1.0},
            sink={"bootstrap_servers": stack.bootstrap_servers, "topic_template": self.out + ".{aggregate_type}",
                  "dead_letter_topic": f"{self.out}.dead-letters"})
        self.log = tmp_path / "bridge.log"

    def bridge(self) -> BridgeProcess:
        return BridgeProcess(self.config, self.log).start()

    def _confirmed_flush(self) -> int | None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                               (self.slot,)).fetchone()
        return None if row is None or row[0] is None else parse_lsn(row[0])

    def wait_for_slot(self, bridge: BridgeProcess, timeout_s: float = 60) -> None:
        """The bridge created its slot: traffic from now on is captured."""
        deadline = time.monotonic() + timeout_s
        while self._confirmed_flush() is None:
            assert bridge.alive(), bridge.log()[-3000:]
            assert time.monotonic() < deadline, f"no slot {self.slot} after {timeout_s}s:\n{bridge.log()[-3000:]}"
            time.sleep(0.2)

    def wait_caught_up(self, bridge: BridgeProcess, timeout_s: float = 180) -> None:
        """The slot is confirmed past everything written so far: every event is acknowledged by Kafka."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            target = parse_lsn(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
        deadline = time.monotonic() + timeout_s
        while (flushed := self._confirmed_flush() or 0) < target:
            assert bridge.alive(), f"the bridge exited early:\n{bridge.log()[-4000:]}"
            assert time.monotonic() < deadline, f"not caught up within {timeout_s}s:\n{bridge.log()[-4000:]}"
            time.sleep(0.3)
        assert flushed >= target

    def events(self) -> list:
        return read_all(self.stack.bootstrap_servers, [f"{self.out}.{a}" for a in AGGREGATES])

    def dead_letters(self) -> list:
        return read_all(self.stack.bootstrap_servers, [f"{self.out}.dead-letters"])

    def drop_slot(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 10
            while conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND active",
                               (self.slot,)).fetchone() and time.monotonic() < deadline:
                time.sleep(0.1)
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                         (self.slot,))


@pytest.fixture
def direct_run(stack: StackInfo, fresh_legacy_db: str, tmp_path: Path) -> Iterator[DirectRun]:
    run = DirectRun(stack, fresh_legacy_db, tmp_path)
    try:
        yield run
    finally:
        run.drop_slot()  # a slot left behind would keep the test database from being dropped


def test_legacy_traffic_read_directly_becomes_domain_events_that_rebuild_the_legacy_state(
    direct_run: DirectRun,
) -> None:
    bridge = direct_run.bridge()
    try:
        direct_run.wait_for_slot(bridge)
        report = run_simulation(direct_run.dsn, seed=13, count=1200)  # while the bridge runs
        direct_run.wait_caught_up(bridge)
    finally:
        exit_code = bridge.stop()
    assert exit_code == 0, bridge.log()[-3000:]
    records = direct_run.events()
    assert len(records) > len(report.transactions), "the workload produces events"
    assert len(assert_repeats_identical(records)) == len(records), "a clean run publishes each event once"
    assert direct_run.dead_letters() == []
    assert_ordered_per_aggregate(records)
    assert_state_matches(fold(records), direct_run.dsn)


def test_kill_9_of_the_direct_bridge_loses_nothing_and_repeats_only_identical_events(direct_run: DirectRun) -> None:
    result: dict = {}
    traffic = threading.Thread(target=lambda: result.update(report=run_simulation(
        direct_run.dsn, seed=29, count=2000, rate=250)))
    first = direct_run.bridge()
    second: BridgeProcess | None = None
    try:
        direct_run.wait_for_slot(first)
        traffic.start()
        deadline = time.monotonic() + 90
        while len(direct_run.events()) < 300:
            assert first.alive() and time.monotonic() < deadline, first.log()[-3000:]
            time.sleep(0.3)
        first.kill()  # kill -9: no drain, no final status to the server
        second = direct_run.bridge()  # the slot may still be held by the dead one's walsender: it waits
        traffic.join(timeout=120)
        assert "report" in result, "the simulated traffic did not finish"
        direct_run.wait_caught_up(second)
        assert second.stop() == 0, second.log()[-3000:]
    finally:
        for process in (first, second):
            if process is not None and process.alive():
                process.kill()
    records = direct_run.events()
    unique = assert_repeats_identical(records)
    assert direct_run.dead_letters() == []
    assert_ordered_per_aggregate(records)
    assert_state_matches(fold(unique), direct_run.dsn)
