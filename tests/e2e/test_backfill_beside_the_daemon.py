"""Backfill while the legacy app writes and the daemon streams (direct source, and Debezium): the backfill, then the
live events committed after its cut, rebuild every aggregate exactly once (the recipe in the README's Backfill
section)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.backfill import BackfillOptions, run_backfill
from bridge.settings import load_settings
from legacy_db.simulate import run_simulation
from tests.conftest import DebeziumCapture
from tests.e2e.test_debezium_to_domain_events import Run as DebeziumRun
from tests.support.bridge_process import wait_caught_up
from tests.support.direct_run import AGGREGATES, DirectRun
from tests.support.event_checks import assert_state_matches
from tests.support.kafka_reading import read_all
from tests.support.local_stack import StackInfo
from tests.support.restaurant_fold import FoldingConsumer


@pytest.fixture
def direct_run(stack: StackInfo, fresh_legacy_db: str, tmp_path: Path) -> Iterator[DirectRun]:
    run_simulation(fresh_legacy_db, seed=3, count=500)  # the past: rows that exist before anything runs
    run = DirectRun(stack.bootstrap_servers, fresh_legacy_db, tmp_path)
    try:
        yield run
    finally:
        run.drop_slot()


def _header(record: Any, name: str) -> str:
    return dict(record.headers)[name].decode()


def test_backfill_then_live_events_after_the_cut_rebuild_the_legacy_state_while_traffic_flows(
        direct_run: DirectRun) -> None:
    traffic: dict[str, Any] = {}
    writer = threading.Thread(target=lambda: traffic.update(report=run_simulation(
        direct_run.dsn, seed=4, count=1500, rate=150)))
    daemon = direct_run.bridge()
    try:
        direct_run.wait_for_slot(daemon)
        writer.start()
        time.sleep(2)  # the app is busy: updates, checkouts and deletes of rows the backfill is about to read
        result = run_backfill(load_settings(direct_run.config), BackfillOptions(batch_size=40, rate=800))
        assert result.complete and result.dead_letters == 0
        assert writer.is_alive(), "the traffic must still flow after the backfill: make the backfill faster or the traffic longer"
        writer.join(timeout=120)
        assert "report" in traffic
        direct_run.wait_caught_up(daemon)
    finally:
        exit_code = daemon.stop()
    assert exit_code == 0, daemon.log()[-3000:]
    assert result.manifest is not None

    backfill = read_all(direct_run.bootstrap_servers, [f"{direct_run.out}.{a}.backfill" for a in AGGREGATES])
    assert len(backfill) == sum(result.events.values()) > 0
    assert {_header(r, "ce_backfillcut") for r in backfill} == {result.cut}
    live = read_all(direct_run.bootstrap_servers, [f"{direct_run.out}.{a}" for a in AGGREGATES])
    assert_backfill_and_live_after_cut_rebuild(backfill, live, result.manifest["cut_sequence"], direct_run.dsn)


def assert_backfill_and_live_after_cut_rebuild(backfill: list[Any], live: list[Any], cut: str, dsn: str) -> None:
    after_cut = sorted((r for r in live if _header(r, "ce_sequence")[:16] > cut), key=lambda r: _header(r, "ce_sequence"))
    assert after_cut and len(after_cut) < len(live), "the cut falls inside the live stream"
    consumer = FoldingConsumer()
    for record in [*backfill, *after_cut]:
        consumer.apply(_header(record, "ce_type"), json.loads(record.value))
    assert_state_matches(consumer, dsn)


def test_a_backfill_beside_a_debezium_sourced_daemon_reads_the_database_directly_and_folds_with_its_live_events(
        stack: StackInfo, debezium_capture: DebeziumCapture, tmp_path: Path) -> None:
    run = DebeziumRun(stack, debezium_capture, tmp_path)
    dsn = debezium_capture.dsn
    traffic: dict[str, Any] = {}
    writer = threading.Thread(target=lambda: traffic.update(report=run_simulation(dsn, seed=8, count=1500, rate=150)))
    daemon = run.bridge()
    try:
        writer.start()
        time.sleep(3)
        result = run_backfill(load_settings(run.config), BackfillOptions(dsn=dsn, batch_size=40, rate=800))
        assert result.complete and result.dead_letters == 0 and result.manifest is not None
        assert writer.is_alive(), "the traffic must still flow after the backfill"
        writer.join(timeout=120)
        run.wait_for_debezium({tx.xid for tx in traffic["report"].transactions})
        wait_caught_up(daemon, stack.bootstrap_servers, run.group, run.source_topics)
    finally:
        exit_code = daemon.stop()
    assert exit_code == 0, daemon.log()[-3000:]
    backfill = read_all(stack.bootstrap_servers, [f"{run.out}.{a}.backfill" for a in AGGREGATES])
    assert len(backfill) == sum(result.events.values()) > 0
    assert_backfill_and_live_after_cut_rebuild(backfill, run.events(), result.manifest["cut_sequence"], dsn)
