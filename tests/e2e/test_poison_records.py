"""Poison records on the real stack: each is dead-lettered, bounded, the stream goes on, and a restart
does not stop on it again (issue 8: every one of these used to stop the bridge at every restart).

- Debezium source: records produced onto the table topic the bridge reads: a value nested 1,200 deep
  (was an uncaught RecursionError), a 600 KB undecodable value (its dead letter was too large for
  Kafka), and a whole crafted transaction whose row carries 10^40 in an integer column (was published).
- Direct source: a 1.5 MB TOAST description makes an event larger than Kafka takes (was
  MessageSizeTooLarge, exit 3); it ends as a bounded dead letter and the slot moves past it, also
  when the bridge is killed -9 just after publishing it (a repeat is byte-identical).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import psycopg
from kafka import KafkaProducer

from tests.conftest import DebeziumCapture
from tests.e2e.test_debezium_to_domain_events import Run
from tests.e2e.test_pgoutput_to_domain_events import direct_run  # noqa: F401 (fixture)
from tests.support.direct_run import DirectRun
from tests.support.bridge_process import BridgeProcess, wait_caught_up
from tests.support.kafka_reading import wait_for
from tests.support.local_stack import StackInfo

FAKE_XID = 987_654_321


def _menu_item_events(records: list[Any]) -> dict[int, list[str]]:
    added: dict[int, list[str]] = {}
    for record in records:
        kind = dict(record.headers)["ce_type"].decode().split(".")[2]
        added.setdefault(json.loads(record.value)["menuItemId"], []).append(kind)
    return added


def _insert_menu_item(dsn: str, item_id: int, description: str = "fine") -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO menu_items (id, name, description, price) VALUES (%s, %s, %s, 2)",
                     (item_id, f"item {item_id}", description))


def _wait_for_item(run: Run | DirectRun, bridge: BridgeProcess, item_id: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while item_id not in _menu_item_events([r for r in run.events() if r.topic.endswith("menu_item")]):
        assert bridge.alive(), f"the bridge stopped:\n{bridge.log()[-4000:]}"
        assert time.monotonic() < deadline, f"no event of menu item {item_id}:\n{bridge.log()[-4000:]}"
        time.sleep(0.5)


def _letters(run: Run | DirectRun) -> list[dict[str, Any]]:
    return [json.loads(record.value) for record in run.dead_letters()]


def test_poison_debezium_records_are_dead_lettered_and_a_restart_does_not_stop_on_them(
    stack: StackInfo, debezium_capture: DebeziumCapture, tmp_path: Any
) -> None:
    run = Run(stack, debezium_capture, tmp_path)
    topic = debezium_capture.table_topic("menu_items")
    bridge = run.bridge()
    try:
        _insert_menu_item(debezium_capture.dsn, 1)
        _wait_for_item(run, bridge, 1)
        [template] = [r for r in wait_for(stack.bootstrap_servers, [topic], lambda rs: len(rs) >= 1) if r.value]
        producer = KafkaProducer(bootstrap_servers=stack.bootstrap_servers, max_request_size=4 * 1024 * 1024)
        try:
            producer.send(topic, key=template.key, value=b'{"a":' * 1200 + b"1" + b"}" * 1200)
            huge = b'{"op":"c","junk":"' + b"\\" * 600_000  # not JSON (never closed); as JSON text, twice the size
            producer.send(topic, key=template.key, value=huge)
            document = json.loads(template.value)
            document["payload"]["after"]["id"] = 10**40  # menu_items.id is integer: int32
            lsn = document["payload"]["source"]["lsn"]
            document["payload"]["transaction"] = {"id": f"{FAKE_XID}:{lsn}", "total_order": 1,
                                                  "data_collection_order": 1}
            producer.send(topic, key=template.key, value=json.dumps(document).encode())
            end = {"status": "END", "id": f"{FAKE_XID}:{lsn + 8}", "ts_ms": 1_700_000_000_000, "event_count": 1,
                   "data_collections": [{"data_collection": "public.menu_items", "event_count": 1}]}
            producer.send(debezium_capture.transaction_topic, value=json.dumps(end).encode())
            producer.flush()
        finally:
            producer.close()
        _insert_menu_item(debezium_capture.dsn, 5)  # the stream goes on past the poison
        _wait_for_item(run, bridge, 5)
        wait_caught_up(bridge, stack.bootstrap_servers, run.group, run.source_topics)
    finally:
        exit_code = bridge.stop()
    assert exit_code == 0, bridge.log()[-3000:]
    assert "Traceback" not in bridge.log()

    letters = _letters(run)
    assert len(letters) == 3, letters
    deep, big, crafted = sorted(letters, key=lambda letter: letter["record"]["offset"])
    assert deep["kind"] == "undecodable" and "nested deeper than" in deep["error"]
    assert big["record"]["value_bytes"] == len(huge) and big["record"]["value_sha256"] == hashlib.sha256(huge).hexdigest()
    assert len(json.dumps(big)) < 250_000
    assert crafted["kind"] == "undecodable" and "'id'" in crafted["error"] and "out of range for int32" in crafted["error"]
    assert crafted["transaction"]["xid"] == FAKE_XID and crafted["transaction"]["incomplete"] is True
    assert set(_menu_item_events(run.events())) == {1, 5}, "10^40 was not published"

    second = run.bridge()  # a restart reads none of it again: the offsets are past every poison record
    try:
        _insert_menu_item(debezium_capture.dsn, 6)
        _wait_for_item(run, second, 6)
        wait_caught_up(second, stack.bootstrap_servers, run.group, run.source_topics)
    finally:
        exit_code = second.stop()
    assert exit_code == 0, second.log()[-3000:]
    assert len(_letters(run)) == 3


def test_a_row_too_large_for_kafka_becomes_a_bounded_dead_letter_and_the_slot_moves_on(
    direct_run: DirectRun,  # noqa: F811
) -> None:
    _a_row_too_large_becomes_a_bounded_dead_letter(direct_run)


def test_a_row_too_large_is_refused_alike_with_the_sink_in_a_separate_process(
    stack: StackInfo, fresh_legacy_db: str, tmp_path: Path,
) -> None:
    """RecordTooLarge crosses from the sink process with its size, limit and where: the same bounded dead letter."""
    run = DirectRun(stack.bootstrap_servers, fresh_legacy_db, tmp_path, separate_process=True)
    try:
        _a_row_too_large_becomes_a_bounded_dead_letter(run)
    finally:
        run.drop_slot()


def _a_row_too_large_becomes_a_bounded_dead_letter(run: DirectRun) -> None:
    first = run.bridge()
    second: BridgeProcess | None = None
    try:
        run.wait_for_slot(first)
        with psycopg.connect(run.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO menu_items (id,name,description,price) VALUES (2,'Big',repeat('x',1500000),2)")
        deadline = time.monotonic() + 120
        while not run.dead_letters():
            assert first.alive(), f"the bridge stopped:\n{first.log()[-4000:]}"
            assert time.monotonic() < deadline, first.log()[-4000:]
            time.sleep(0.2)
        first.kill()  # kill -9 right after the dead letter: its change may be read and dead-lettered again
        second = run.bridge()
        _insert_menu_item(run.dsn, 3)  # later changes are published
        _wait_for_item(run, second, 3)
        run.wait_caught_up(second)  # the slot is confirmed past the big row
        assert second.stop() == 0, second.log()[-3000:]
    finally:
        for process in (first, second):
            if process is not None and process.alive():
                process.kill()
    assert "MessageSizeTooLarge" not in run.log.read_text()
    assert "MSG_SIZE_TOO_LARGE" not in run.log.read_text()  # the confluent client's name for it

    copies = run.dead_letters()
    assert len({(r.key, r.value, tuple(r.headers)) for r in copies}) == 1, "a repeated dead letter is byte-identical"
    letter = json.loads(copies[0].value)
    assert len(copies[0].value) < 20_000
    assert letter["kind"] == "too_large" and letter["rule"] == "menu_items.added"
    assert letter["size"] > 1_500_000 and letter["limit"] <= 1_048_588
    assert letter["change"]["table"] == "public.menu_items" and letter["change"]["key"] == {"id": 2}
    assert letter["event"]["type"] == "restaurant.menu_item.MenuItemAdded.v1"
    assert letter["payload"]["prefix"].startswith('{"menuItemId":2,"name":"Big","description":"xxxx')
    assert set(_menu_item_events(run.events())) == {3}


def _reported(outcomes: list[Any], count: int, timeout_s: float = 30) -> list[Any]:
    """`outcomes` once `count` delivery reports are in: after a flush, the last callback may still be running on
    the client's thread (confluent-kafka's poll thread)."""
    deadline = time.monotonic() + timeout_s
    while len(outcomes) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return outcomes


def test_the_kafka_sink_takes_the_smaller_limit_of_its_setting_and_its_topics(stack: StackInfo,
                                                                             kafka_client: str) -> None:
    """A topic's max.message.bytes below sink.max_message_bytes wins: the broker would refuse more. A limit lowered
    after the sink opened is the broker's refusal: a retryable DeliveryError (the next run reads the new limit)."""
    from kafka import KafkaAdminClient, KafkaConsumer
    from kafka.admin import ConfigResource, NewTopic
    from kafka.partitioner.default import murmur2

    from bridge.errors import DeliveryError, RecordTooLarge
    from bridge.settings import KafkaSink
    from bridge.sinks.kafka import sink_class

    suffix = hashlib.sha1(str(time.time()).encode()).hexdigest()[:6]
    settings = KafkaSink(bootstrap_servers=stack.bootstrap_servers, topic_template=f"limit{suffix}.{{aggregate_type}}",
                         dead_letter_topic=f"limit{suffix}.dead-letters", client=kafka_client)
    admin = KafkaAdminClient(bootstrap_servers=stack.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(f"limit{suffix}.order", 1, 1, topic_configs={"max.message.bytes": "50000"})])
        sink = sink_class(settings).open(settings, [("restaurant", "order")])
        try:
            assert sink.max_message_bytes == 50_000
            outcomes: list[Any] = []
            sink.publish_dead_letter({"kind": "test", "junk": "x" * 60_000}, None, outcomes.append)
            sink.publish_dead_letter({"kind": "test", "junk": "x" * 40_000}, None, outcomes.append)
            sink.flush(30)
            _reported(outcomes, 2)
            assert isinstance(outcomes[0], RecordTooLarge) and outcomes[0].limit == 50_000
            assert "max.message.bytes of topic limit" in str(outcomes[0])
            assert outcomes[1:] == [None], "a record within the limit is acknowledged"

            # Both clients put a key on the same partition (kafka-python's murmur2): order per aggregate holds
            # across a change of sink.client.
            keys = [f"order-{n}".encode() for n in range(30)]
            acknowledged: list[Any] = []
            for key in keys:
                sink.publish_dead_letter({"kind": "test"}, key, acknowledged.append)
            sink.flush(30)
            assert _reported(acknowledged, len(keys)) == [None] * len(keys), "every keyed record acknowledged"
            consumer = KafkaConsumer(f"limit{suffix}.dead-letters", bootstrap_servers=stack.bootstrap_servers,
                                     auto_offset_reset="earliest", consumer_timeout_ms=5000)
            try:
                found = {record.key: record.partition for record in consumer if record.key in keys}
            finally:
                consumer.close()
            partitions = settings.partitions
            assert partitions > 1
            assert found == {key: (murmur2(key) & 0x7FFFFFFF) % partitions for key in keys}

            admin.alter_configs([ConfigResource("TOPIC", f"limit{suffix}.dead-letters",
                                                {"max.message.bytes": "20000"})])
            time.sleep(1)  # the broker applies a topic's new config asynchronously
            refused: list[Any] = []
            sink.publish_dead_letter({"kind": "test", "junk": "x" * 30_000}, None, refused.append)
            sink.flush(30)
            [error] = _reported(refused, 1)
            assert isinstance(error, DeliveryError) and error.retryable, error
            assert "as too large" in str(error) and "reopening it reads the new limit" in str(error)
        finally:
            sink.close()
    finally:
        admin.close()
