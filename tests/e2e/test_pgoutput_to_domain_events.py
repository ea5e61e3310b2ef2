"""End to end with the direct source: legacy traffic -> PostgreSQL -> cdc-bridge (pgoutput) -> Kafka.

No Kafka Connect and no Debezium: `cdc-bridge run` streams the slot itself. The published events,
folded by the reference consumer, must equal the legacy rows exactly; with the bridge killed -9 mid-run
and restarted, nothing is lost and every repeated event is byte-identical.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from legacy_db.simulate import run_simulation
from tests.support.bridge_process import BridgeProcess
from tests.support.direct_run import DirectRun
from tests.support.event_checks import (
    assert_ordered_per_aggregate,
    assert_repeats_identical,
    assert_state_matches,
    fold,
)
from tests.support.local_stack import StackInfo


@pytest.fixture
def direct_run(stack: StackInfo, fresh_legacy_db: str, tmp_path: Path, kafka_client: str) -> Iterator[DirectRun]:
    run = DirectRun(stack.bootstrap_servers, fresh_legacy_db, tmp_path, client=kafka_client)
    try:
        yield run
    finally:
        run.drop_slot()  # a slot left behind would keep the test database from being dropped


def test_legacy_traffic_read_directly_becomes_domain_events_that_rebuild_the_legacy_state(
    direct_run: DirectRun, kafka_client: str,
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
    entries = [json.loads(line) for line in bridge.log().splitlines() if line.startswith("{")]
    [started] = [entry for entry in entries if entry.get("message") == "started"]
    assert started["sink"] == "kafka" and started["kafka_client"] == kafka_client, "the start line names the client"


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
