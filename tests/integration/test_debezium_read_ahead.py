"""The read-ahead bound through kafka-python's own pause and resume, on a real broker: a backlog whose
customers topic runs far ahead of its order items is read with no partition more than the bound ahead,
and every transaction comes out once, in commit order (an earlier attempt at pausing lost a row)."""

from __future__ import annotations

import time
import uuid

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from bridge.settings import DebeziumSource
from bridge.sources.debezium.read_ahead import ReadAhead
from bridge.sources.debezium.source import DebeziumKafkaSource
from tests.support.debezium_backlog import DECLARED, backlog
from tests.support.local_stack import StackInfo

TRANSACTIONS = 1500
LIMIT, POLL_RECORDS = 100, 50


def test_a_skewed_backlog_is_read_within_the_bound_through_pause_and_resume(stack: StackInfo) -> None:
    prefix = f"ra{uuid.uuid4().hex[:8]}"
    logs = backlog(prefix, TRANSACTIONS)
    admin = KafkaAdminClient(bootstrap_servers=stack.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(tp.topic, 1, 1) for tp in logs])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=stack.bootstrap_servers, acks="all")
    for tp, records in logs.items():
        for record in records:
            producer.send(tp.topic, key=record.key, value=record.value, partition=0)
    producer.flush()
    producer.close()

    settings = DebeziumSource(bootstrap_servers=stack.bootstrap_servers, topic_prefix=prefix, group_id=f"ra-{prefix}",
                              group_instance_id=None, poll_max_records=POLL_RECORDS)
    source = DebeziumKafkaSource(settings, tables=["customers", "order_items"], declared_types=DECLARED)
    source._read_ahead = ReadAhead(LIMIT)
    xids: list[int] = []
    most_ahead = polls_with_a_pause = 0
    try:
        deadline = time.monotonic() + 120
        while len(xids) < TRANSACTIONS and time.monotonic() < deadline:
            units = source.poll(0.2)
            tracker = source._session.tracker
            most_ahead = max([most_ahead, *(tracker.ahead(tp) for tp in logs)])
            polls_with_a_pause += bool(source._consumer.paused())
            for unit in units:
                xids.append(unit.transaction.xid)
                source.done(unit)
        assert xids == list(range(1, TRANSACTIONS + 1))  # none lost, none twice, commit order
        assert polls_with_a_pause > 0, "the backlog never made the source pause: the test proves nothing"
        assert most_ahead <= LIMIT + POLL_RECORDS
        assert source._session.tracker.committable() == {tp: len(records) for tp, records in logs.items()}
    finally:
        source.close()
