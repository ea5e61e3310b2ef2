"""End to end on the real stack: legacy traffic -> PostgreSQL -> Debezium -> Kafka -> cdc-bridge -> Kafka.

A reference consumer folds the published domain events into per-customer, per-menu-item and per-order
state, which must equal the legacy database's rows exactly; then the same with the bridge killed -9
mid-run and restarted: nothing lost, and whatever was sent twice carries the same id and bytes.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from legacy_db.simulate import run_simulation
from tests.conftest import DebeziumCapture
from tests.support.bridge_process import BridgeProcess, wait_caught_up, write_e2e_config
from tests.support.event_checks import (
    TABLES,
    assert_ordered_per_aggregate,
    assert_repeats_identical,
    assert_state_matches,
    fold,
)
from tests.support.kafka_reading import payload, read_all, wait_for
from tests.support.local_stack import StackInfo
from tests.support.restaurant_fold import FoldingConsumer

AGGREGATES = ("customer", "menu_item", "order")


class Run:
    """One bridge configuration against one test database, with its topics and consumer group."""

    def __init__(self, stack: StackInfo, capture: DebeziumCapture, tmp_path: Path, sink: dict | None = None,
                 client: str = "kafka-python", separate_process: bool = False) -> None:
        suffix = uuid.uuid4().hex[:6]
        self.stack, self.capture = stack, capture
        self.group = f"bridge-{suffix}"
        self.out = f"e2e{suffix}"
        self.source_topics = [capture.table_topic(t) for t in TABLES] + [capture.transaction_topic]
        self.config = write_e2e_config(
            tmp_path,
            source={"bootstrap_servers": stack.bootstrap_servers, "topic_prefix": capture.topic_prefix,
                    "group_id": self.group, "transaction_wait_s": 60},
            sink=sink or {"bootstrap_servers": stack.bootstrap_servers, "topic_template": self.out + ".{aggregate_type}",
                          "dead_letter_topic": f"{self.out}.dead-letters", "client": client,
                          "separate_process": separate_process})
        self.log = tmp_path / "bridge.log"

    def bridge(self) -> BridgeProcess:
        return BridgeProcess(self.config, self.log).start()

    def wait_for_debezium(self, xids: set[int]) -> None:
        """Every simulated transaction's END marker is on Kafka: Debezium has published everything."""
        wait_for(self.stack.bootstrap_servers, [self.capture.transaction_topic],
                 lambda records: {int(p["id"].split(":")[0]) for p in map(payload, records)
                                  if p and p["status"] == "END"} >= xids,
                 what=f"END markers of {len(xids)} transactions")

    def events(self) -> list:
        return read_all(self.stack.bootstrap_servers, [f"{self.out}.{a}" for a in AGGREGATES])

    def dead_letters(self) -> list:
        return read_all(self.stack.bootstrap_servers, [f"{self.out}.dead-letters"])


def test_legacy_traffic_becomes_domain_events_that_rebuild_the_legacy_state(
    stack: StackInfo, debezium_capture: DebeziumCapture, tmp_path: Path, kafka_client: str
) -> None:
    run = Run(stack, debezium_capture, tmp_path, client=kafka_client)
    bridge = run.bridge()
    try:
        report = run_simulation(debezium_capture.dsn, seed=11, count=1200)  # while the bridge runs
        run.wait_for_debezium({tx.xid for tx in report.transactions})
        wait_caught_up(bridge, stack.bootstrap_servers, run.group, run.source_topics)
    finally:
        exit_code = bridge.stop()
    assert exit_code == 0, bridge.log()[-3000:]

    records = run.events()
    ids = Counter(dict(r.headers)["ce_id"] for r in records)
    assert len(records) > len(report.transactions), "the workload produces events"
    assert max(ids.values()) == 1, "a clean run publishes each event once"
    assert run.dead_letters() == []
    assert_ordered_per_aggregate(records)
    assert_state_matches(fold(records), debezium_capture.dsn)
    types = Counter(dict(r.headers)["ce_type"].decode().split(".")[2] for r in records)
    for expected in ("OrderPlaced", "ItemAddedToOrder", "MenuItemPriceChanged", "CustomerSignedUp",
                     "ItemRemovedFromOrder", "DeliveryAddressAddedToOrder", "OrderCanceled"):
        assert types[expected] > 0, f"no {expected} in {types}"
    stopped = [json.loads(line) for line in bridge.log().splitlines() if line.startswith("{")]
    assert any(entry.get("message") == "stopped" for entry in stopped), "SIGTERM drains and logs a summary"


def test_kill_9_mid_run_loses_nothing_and_repeats_only_identical_events(
    stack: StackInfo, debezium_capture: DebeziumCapture, tmp_path: Path, kafka_client: str
) -> None:
    run = Run(stack, debezium_capture, tmp_path, client=kafka_client)
    result: dict = {}
    traffic = threading.Thread(target=lambda: result.update(report=run_simulation(
        debezium_capture.dsn, seed=23, count=2000, rate=250)))
    first = run.bridge()
    traffic.start()
    try:
        _wait_for_progress(run, first, minimum_events=300)
        first.kill()  # kill -9: no drain, no commit
        second = run.bridge()
        traffic.join(timeout=120)
        report = result["report"]
        run.wait_for_debezium({tx.xid for tx in report.transactions})
        wait_caught_up(second, stack.bootstrap_servers, run.group, run.source_topics)
        assert second.stop() == 0, second.log()[-3000:]
    finally:
        for process in (first, locals().get("second")):
            if process is not None and process.alive():
                process.kill()

    records = run.events()
    unique = assert_repeats_identical(records)
    assert run.dead_letters() == []
    assert_ordered_per_aggregate(records)
    assert_state_matches(fold(unique), debezium_capture.dsn)


def _wait_for_progress(run: Run, bridge: BridgeProcess, minimum_events: int, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert bridge.alive(), bridge.log()[-3000:]
        if len(run.events()) >= minimum_events:
            return
        time.sleep(0.3)
    raise AssertionError(f"the bridge published fewer than {minimum_events} events in {timeout_s}s")


def test_the_local_event_log_sink_carries_the_same_events_durably(
    stack: StackInfo, debezium_capture: DebeziumCapture, tmp_path: Path
) -> None:
    from bridge.sinks.locallog_reader import EventLogReader

    log_dir = tmp_path / "events"
    run = Run(stack, debezium_capture, tmp_path, sink={"kind": "locallog", "path": str(log_dir)})
    bridge = run.bridge()
    try:
        report = run_simulation(debezium_capture.dsn, seed=5, count=600)
        run.wait_for_debezium({tx.xid for tx in report.transactions})
        wait_caught_up(bridge, stack.bootstrap_servers, run.group, run.source_topics)
    finally:
        exit_code = bridge.stop()
    assert exit_code == 0, bridge.log()[-3000:]
    records = list(EventLogReader(log_dir).read())
    assert len({r.id for r in records}) == len(records) > len(report.transactions)
    consumer = FoldingConsumer()
    for record in records:
        consumer.apply(record.type, json.loads(record.value))
    assert_state_matches(consumer, debezium_capture.dsn)
