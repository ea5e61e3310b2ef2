"""Preflight against Kafka: the Debezium source's topics, consumer group and lag, and the sink's topics.

Metadata requests only (topic list, partition offsets, the group's committed offsets and state); see
bridge/preflight.py for the report.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import OffsetSpec
from kafka.errors import CoordinatorNotAvailableError, KafkaError

from bridge.errors import ConfigurationError
from bridge.kafka_client import require_resolvable
from bridge.preflight import Report, stored_row_counts

BOOTSTRAP_TIMEOUT_MS = 5000


@contextmanager
def _admin(report: Report, area: str, setting: str, bootstrap: str) -> Iterator[KafkaAdminClient | None]:
    """An admin client, or None after reporting the address wrong or the broker unreachable (once per address:
    the source's and the sink's broker are often the same, and each try waits BOOTSTRAP_TIMEOUT_MS)."""
    if any(bootstrap in f.message for f in report.errors):
        yield None
        return
    try:
        require_resolvable(bootstrap, setting)
    except ConfigurationError as exc:  # an unknown host: a typo to fix, not a broker to wait for
        report.error(area, setting, str(exc))
        yield None
        return
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id="cdc-bridge-check",
                                 request_timeout_ms=BOOTSTRAP_TIMEOUT_MS, bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS)
    except KafkaError as exc:
        report.unreachable(area, setting, f"no Kafka broker answers at {bootstrap} ({type(exc).__name__}): check "
                                          "the address and that the broker is up")
        yield None
        return
    try:
        yield admin
    except KafkaError as exc:
        report.unreachable(area, setting, f"Kafka at {bootstrap} failed a metadata request: {exc}")
    finally:
        admin.close()


def check_kafka_sink(report: Report, sink: Any, mappings: Any) -> None:
    if sink.client == "confluent":
        from bridge.sinks.kafka_confluent import librdkafka_servers, require_library

        try:
            require_library()
            librdkafka_servers(sink.bootstrap_servers)
        except ConfigurationError as exc:
            report.error("sink", "sink.client", str(exc))
    with _admin(report, "sink", "sink.bootstrap_servers", sink.bootstrap_servers) as admin:
        if admin is None:
            return
        existing = set(admin.list_topics())
        wanted = {sink.topic_for(ns, agg) for ns, agg in mappings.aggregates()} | {sink.dead_letter_topic}
        missing = sorted(wanted - existing)
        if not missing:
            report.ok("sink", "topics", f"the {len(wanted)} event and dead-letter topics exist at {sink.bootstrap_servers}")
        elif sink.create_topics:
            report.ok("sink", "topics", f"{', '.join(missing)} missing: `run` creates them "
                                        f"({sink.partitions} partitions, replication {sink.replication_factor})")
        else:
            report.error("sink", "topics", f"{', '.join(missing)} missing and sink.create_topics is false: create "
                                           "them, or set sink.create_topics: true")


def check_debezium_source(report: Report, settings: Any, mappings: Any) -> None:
    source = settings.source
    with _admin(report, "source", "source.bootstrap_servers", source.bootstrap_servers) as admin:
        if admin is None:
            return
        existing = set(admin.list_topics())
        table_topics = {t: f"{source.topic_prefix}.{source.schema_name}.{t}" for t in mappings.tables()}
        transaction_topic = source.resolved_transaction_topic()
        missing = sorted(topic for topic in table_topics.values() if topic not in existing)
        if missing:
            report.warn("source", "table topics", (
                f"{', '.join(missing)} do not exist yet: the connector has not run, or has not seen a change of those "
                "tables yet, or its topic.prefix / table.include.list differ from source.topic_prefix and the "
                "mappings (`stack.py connector add` derives the table list from the mappings)"))
        else:
            report.ok("source", "table topics", f"all {len(table_topics)} exist")
        if transaction_topic not in existing:
            report.warn("source", transaction_topic, (
                "does not exist: the connector has not run yet, or provide.transaction.metadata is off (the bridge "
                "needs it to group rows by transaction)"))
        else:
            report.ok("source", transaction_topic, "exists")
        present = sorted({*table_topics.values(), transaction_topic} & existing)
        offsets = _group_offsets(report, admin, source.group_id, present)
        _check_coverage(report, settings, mappings, table_topics, offsets)


def _committed(admin: KafkaAdminClient, group: str) -> dict[TopicPartition, Any]:
    """The group's committed offsets. A broker that never had a consumer group creates its offsets topic on
    the first request and answers "coordinator not available" meanwhile: ask again for a few seconds."""
    deadline = time.monotonic() + 5
    while True:
        try:
            return admin.list_group_offsets({group: None}).get(group, {})
        except CoordinatorNotAvailableError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


class _Offsets:
    """Per topic: earliest and latest offsets, and what the group committed, summed over its partitions."""

    def __init__(self) -> None:
        self.earliest: dict[str, int] = {}
        self.latest: dict[str, int] = {}
        self.committed: dict[str, int] = {}


def _group_offsets(report: Report, admin: KafkaAdminClient, group: str, topics: list[str]) -> _Offsets:
    result = _Offsets()
    if not topics:
        return result
    partitions = [TopicPartition(t["name"], p["partition_index"]) for t in admin.describe_topics(topics)
                  for p in t["partitions"]]
    earliest = admin.list_partition_offsets({tp: OffsetSpec.EARLIEST for tp in partitions})
    latest = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in partitions})
    committed = _committed(admin, group)
    lag = 0
    for tp in partitions:
        result.earliest[tp.topic] = result.earliest.get(tp.topic, 0) + earliest[tp].offset
        result.latest[tp.topic] = result.latest.get(tp.topic, 0) + latest[tp].offset
        if tp in committed and committed[tp].offset >= 0:
            result.committed[tp.topic] = result.committed.get(tp.topic, 0) + committed[tp].offset
            lag += latest[tp].offset - committed[tp].offset
        else:
            lag += latest[tp].offset - earliest[tp].offset
    description = admin.describe_groups([group]).get(group, {})
    members = len(description.get("members", []) or [])
    state = description.get("group_state") or description.get("state") or "unknown"
    if members:
        report.warn("source", f"group {group}", (
            f"is {state} with {members} member(s): another bridge with this source.group_id is reading (or one that "
            "just stopped, until its session times out); two bridges on one group split the topics between them"))
    if result.committed:
        report.ok("source", f"group {group}", f"{lag} records behind the end of the topics")
    else:
        report.ok("source", f"group {group}", f"has committed nothing yet: starts from the beginning ({lag} records)")
    return result


def _check_coverage(report: Report, settings: Any, mappings: Any, table_topics: dict[str, str],
                    offsets: _Offsets) -> None:
    """The store must have seen a row before an update of it: through the connector's snapshot, read from the
    beginning of the topic. What the topics and the group say tells whether it could."""
    if settings.state.path is None:
        return
    full = settings.source.full_identity_tables()
    schema = settings.source.schema_name
    needing = {t: rules for t, rules in mappings.needs_before().items()
               if t not in full and f"{schema}.{t}" not in full}
    if not needing:
        return
    seen = stored_row_counts(settings.state.path, needing, {t: 0 for t in needing})
    if isinstance(seen, str):
        report.error("prior-row store", "state.path", seen)
        return
    fix = ("start the connector with snapshot.mode=initial (a new connector name, or its offsets reset: `stack.py "
           "connector add --reset-offsets`) and the bridge from the beginning of the topics with an empty store "
           "(a new source.group_id), or ALTER TABLE ... REPLICA IDENTITY FULL and list the table in "
           "source.replica_identity_full")
    for table, rules in sorted(needing.items()):
        topic = table_topics[table]
        subject = f"{schema}.{table}"
        if seen.get(table):
            report.ok("prior-row store", subject, "has rows of this table")
        elif offsets.committed.get(topic):
            report.warn("prior-row store", subject, (
                f"has no rows of this table, yet group {settings.source.group_id} has read {topic} up to offset "
                f"{offsets.committed[topic]}: the store was emptied or replaced, so updates and deletes of existing "
                f"rows dead-letter rules {', '.join(rules)}. Fix: {fix}"))
        elif offsets.earliest.get(topic):
            report.warn("prior-row store", subject, (
                f"is empty and {topic} no longer starts at offset 0 (retention removed records, possibly the "
                f"snapshot): rows whose last record is gone get no old values, and rules {', '.join(rules)} "
                f"dead-letter their updates and deletes. Fix: {fix}"))
        else:
            report.ok("prior-row store", subject, "is empty; the bridge reads the topic from its beginning, "
                                                  "snapshot included, and fills it")
