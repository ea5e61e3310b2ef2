"""Debezium change events on Kafka as a ChangeSource: consume, decode, reassemble transactions, and
commit offsets only for records whose every derived event has been acknowledged."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from bridge.changes import SourcePosition
from bridge.errors import DecodeError, ServiceUnavailable
from bridge.ports import SourceUnit
from bridge.settings import DebeziumSource
from bridge.sources.debezium_records import DecodeOptions, Heartbeat, Tombstone, decode_record
from bridge.sources.offsets import OffsetTracker
from bridge.sources.transactions import TransactionAssembler

log = logging.getLogger(__name__)


class _Revocations(ConsumerRebalanceListener):
    def __init__(self, source: DebeziumKafkaSource) -> None:
        self._source = source

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self._source.partitions_revoked(revoked)

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"partitions": [f"{tp.topic}/{tp.partition}" for tp in assigned]})


class DebeziumKafkaSource:
    """Reads the table topics of the mapped tables plus the transaction topic, as one consumer group."""

    def __init__(self, settings: DebeziumSource, tables: Iterable[str],
                 declared_types: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self._settings = settings
        self._topics = sorted({f"{settings.topic_prefix}.{settings.schema_name}.{t}" for t in tables}
                              | {settings.resolved_transaction_topic()})
        self._options = DecodeOptions(
            declared=declared_types or {},
            decimal_mode=settings.decimal_handling_mode,
            time_mode=settings.time_precision_mode,
            placeholder=settings.unavailable_value_placeholder,
            replica_identity_full=settings.full_identity_tables(),
        )
        self._tracker = OffsetTracker()
        self._assembler = TransactionAssembler(max_wait_s=settings.transaction_wait_s)
        self._last_safe: SourcePosition | None = None
        # Released transactions in release (commit) order, each [transaction, done?]: the done prefix is safe.
        self._released: deque[list[Any]] = deque()
        try:
            self._consumer = KafkaConsumer(
                bootstrap_servers=settings.bootstrap_servers.split(","),
                group_id=settings.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=settings.poll_max_records,
                metadata_max_age_ms=5000,  # notice topics Debezium creates after we start
                fetch_max_bytes=64 * 1024 * 1024,
                max_partition_fetch_bytes=16 * 1024 * 1024,
                client_id="cdc-bridge",
            )
        except KafkaError as exc:  # kafka-python 3 raises KafkaTimeoutError when bootstrap fails
            raise ServiceUnavailable(
                f"no Kafka broker answers at {settings.bootstrap_servers} (source.bootstrap_servers); "
                "check the address and that the broker is up") from exc
        self._consumer.subscribe(topics=self._topics, listener=_Revocations(self))

    @property
    def topics(self) -> list[str]:
        return list(self._topics)

    def poll(self, timeout_s: float) -> list[SourceUnit]:
        try:
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=self._settings.poll_max_records)
        except KafkaError as exc:
            raise ServiceUnavailable(f"reading Debezium topics failed: {exc}") from exc
        now = time.monotonic()
        units: list[SourceUnit] = []
        for tp, records in batches.items():
            for record in records:
                units.extend(self._take(tp, record, now))
        self._assembler.check_stalled(now)
        return units

    def _take(self, tp: TopicPartition, record: Any, now: float) -> list[SourceUnit]:
        ref = (tp, record.offset)
        self._tracker.consumed(tp, record.offset)
        try:
            decoded = decode_record(tp.topic, tp.partition, record.offset, record.key, record.value,
                                    record.headers or [], options=self._options)
        except DecodeError as exc:
            return [SourceUnit(None, [ref], error=exc, raw=_raw(tp, record))]
        if isinstance(decoded, (Heartbeat, Tombstone)):
            self._tracker.done([ref])
            return []
        assembled = self._assembler.add(ref, decoded, now)
        units = []
        for item in assembled:
            entry = [item, False]
            self._released.append(entry)
            units.append(SourceUnit(item.transaction, entry))
        return units

    def done(self, unit: SourceUnit) -> None:
        if unit.transaction is None:
            self._tracker.done(unit.handle)
            return
        entry = unit.handle
        entry[1] = True
        self._tracker.done(entry[0].records)

    def commit(self) -> SourcePosition | None:
        offsets = self._tracker.committable()
        if offsets:
            try:
                from kafka.structs import OffsetAndMetadata

                self._consumer.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()})
            except KafkaError as exc:
                raise ServiceUnavailable(f"committing Debezium offsets failed: {exc}") from exc
        # Everything released and done, in commit order, is safe: no replay can reach before it.
        while self._released and self._released[0][1]:
            item, _ = self._released.popleft()
            changes = item.transaction.changes
            if changes:
                self._last_safe = max(c.position for c in changes)
        return self._last_safe

    def partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Called on kafka-python's I/O thread, where no blocking call (such as a commit) is allowed.
        # Transactions span partitions, so a revocation restarts assembly: whatever was not committed is
        # read again (same event ids) by whoever owns the partitions next. The daemon commits on a
        # graceful stop before closing, so a plain shutdown repeats nothing.
        self._tracker.forget(revoked)
        self._assembler = TransactionAssembler(max_wait_s=self._settings.transaction_wait_s)
        self._released.clear()

    def close(self) -> None:
        self._consumer.close(autocommit=False)


def _raw(tp: TopicPartition, record: Any) -> dict[str, Any]:
    def text(value: bytes | None) -> str | None:
        return None if value is None else value.decode("utf-8", errors="replace")

    return {"topic": tp.topic, "partition": tp.partition, "offset": record.offset,
            "key": text(record.key), "value": text(record.value),
            "headers": {k: text(v) for k, v in (record.headers or [])}}
