"""Read Kafka topics back in tests with kafka-python, without consumer groups.

Partitions are assigned explicitly and read from the beginning, so there is no rebalance delay and no
5-minute wait for pattern subscriptions to notice topics that Debezium creates on the fly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord


def read_all(bootstrap_servers: str, topics: Iterable[str]) -> list[ConsumerRecord]:
    """Every record currently in `topics` (topics that do not exist yet count as empty)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False, group_id=None)
    try:
        existing = consumer.topics()
        partitions = [
            TopicPartition(topic, p)
            for topic in topics if topic in existing
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return []
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {partitions} to their end offsets {end} within 60s")
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def wait_for(
    bootstrap_servers: str,
    topics: Iterable[str],
    done: Callable[[list[ConsumerRecord]], bool],
    *,
    timeout: float = 120,
    what: str = "records",
) -> list[ConsumerRecord]:
    """Re-read `topics` until `done(records)` holds; fail with a count if it never does."""
    topics = list(topics)
    deadline = time.monotonic() + timeout
    records: list[ConsumerRecord] = []
    while time.monotonic() < deadline:
        records = read_all(bootstrap_servers, topics)
        if done(records):
            return records
        time.sleep(1)
    raise TimeoutError(f"waited {timeout:.0f}s for {what}; have {len(records)} records from {topics}")


def payload(record: ConsumerRecord) -> Any:
    """The payload of a JSON-converter record, with or without the {schema, payload} envelope."""
    if record.value is None:
        return None
    document = json.loads(record.value)
    if isinstance(document, dict) and set(document) == {"schema", "payload"}:
        return document["payload"]
    return document
