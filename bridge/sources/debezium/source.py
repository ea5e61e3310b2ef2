"""Debezium change events on Kafka as a ChangeSource: consume, decode, reassemble transactions, and
commit offsets only for records whose every derived event has been acknowledged.

A record that cannot be decoded is dead-lettered as part of its transaction when its transaction block
can be read (see debezium.lenient), alone otherwise. Transactions listed in source.skip_transactions
(named by a stall message, for rows an older bridge committed without them) are not assembled: their
markers are passed over and their rows dead-lettered one by one.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.errors import KafkaConfigurationError, KafkaError
from kafka.structs import OffsetAndMetadata

from bridge.changes import SourcePosition, Transaction
from bridge.errors import ChangeError, ConfigurationError, DecodeError, ServiceUnavailable
from bridge.kafka_client import CLIENT_BACKOFF, broker_unreachable, require_resolvable
from bridge.ports import SourceUnit, UndecodableRow
from bridge.settings import DebeziumSource
from bridge.sources.debezium.join_watch import JoinWatch
from bridge.sources.debezium.lenient import transaction_place
from bridge.sources.debezium.offsets import OffsetTracker
from bridge.sources.debezium.read_ahead import ReadAhead
from bridge.sources.debezium.records import (
    ChangeRecord,
    DecodeOptions,
    Heartbeat,
    Tombstone,
    TransactionMarker,
    decode_record,
)
from bridge.sources.transactions import (
    END_MARKER,
    AssembledTransaction,
    RecordRef,
    TransactionAssembler,
    TransactionPlace,
)

log = logging.getLogger(__name__)


class SkippedTransaction(ChangeError):
    """A row of a transaction listed in source.skip_transactions: dead-lettered, not translated."""

    dead_letter_kind = "skipped_transaction"


class _Rebalances(ConsumerRebalanceListener):
    def __init__(self, source: DebeziumKafkaSource) -> None:
        self._source = source

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        pass  # the assignment that follows tells what was really lost

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._source.partitions_assigned(assigned)
        log.info("partitions assigned", extra={"partitions": [f"{tp.topic}/{tp.partition}" for tp in assigned]})


class DebeziumKafkaSource:
    """Reads the table topics of the mapped tables plus the transaction topic, as one consumer group."""

    def __init__(self, settings: DebeziumSource, tables: Iterable[str],
                 declared_types: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self._settings = settings
        self._topics = sorted({f"{settings.topic_prefix}.{settings.schema_name}.{t}" for t in tables}
                              | {settings.resolved_transaction_topic()})
        # What each topic's records count under in an END marker, for the read-ahead bound.
        self._collections = {topic: topic[len(settings.topic_prefix) + 1:] for topic in self._topics}
        self._collections[settings.resolved_transaction_topic()] = END_MARKER
        self._read_ahead = ReadAhead()
        self._options = DecodeOptions(
            declared=declared_types or {},
            decimal_mode=settings.decimal_handling_mode,
            time_mode=settings.time_precision_mode,
            placeholder=settings.unavailable_value_placeholder,
            replica_identity_full=settings.full_identity_tables(),
        )
        self._session = _Session(settings.transaction_wait_s)
        self._owned: set[TopicPartition] = set()
        self._last_safe: SourcePosition | None = None

        require_resolvable(settings.bootstrap_servers, "source.bootstrap_servers")
        try:
            self._consumer = KafkaConsumer(
                bootstrap_servers=settings.bootstrap_servers.split(","),
                group_id=settings.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=settings.poll_max_records,
                metadata_max_age_ms=5000,  # notice topics Debezium creates after we start
                bootstrap_timeout_ms=int(settings.bootstrap_timeout_s * 1000),
                client_id="cdc-bridge",
                # Eager rebalancing with a full assignment each time, which `partitions_assigned` relies on.
                partition_assignment_strategy=(RangePartitionAssignor,),
                # Static membership: a restarted bridge takes its partitions back at once instead of
                # waiting out the dead instance's session; a second instance with the same id is fenced.
                group_instance_id=settings.group_instance_id,
                **CLIENT_BACKOFF,
            )
        except KafkaConfigurationError as exc:
            raise ConfigurationError(f"the Kafka consumer refuses the source settings: {exc}") from exc
        except KafkaError as exc:  # kafka-python 3 raises KafkaTimeoutError when bootstrap fails
            raise broker_unreachable(settings.bootstrap_servers, "source.bootstrap_servers", exc) from exc
        self._consumer.subscribe(topics=self._topics, listener=_Rebalances(self))
        self._join_watch = JoinWatch()

    @property
    def topics(self) -> list[str]:
        return list(self._topics)

    def poll(self, timeout_s: float) -> list[SourceUnit]:
        _unpark_resumed(self._consumer)
        try:
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=self._settings.poll_max_records)
        except KafkaError as exc:
            raise ServiceUnavailable(f"reading Debezium topics failed: {exc}") from exc
        now = time.monotonic()
        if not batches:
            self._retry_lost_join(now)
        units: list[SourceUnit] = []
        for tp, records in batches.items():
            for record in records:
                units.extend(self._take(tp, record, now))
        self._session.assembler.check_stalled(now)
        self._bound_read_ahead()
        return units

    def _bound_read_ahead(self) -> None:
        """Pause partitions read far ahead of the transaction next in commit order, resume them when it
        catches up (see read_ahead.py): without it a backlog's fast topics fill memory."""
        consumer = self._consumer
        assigned = consumer.assignment()
        if not assigned:
            return
        tracker = self._session.tracker
        missing = self._session.assembler.head_missing()
        needed = None if missing is None else {tp for tp in assigned if self._collections.get(tp.topic) in missing}
        decision = self._read_ahead.decide({tp: tracker.ahead(tp) for tp in assigned}, needed, consumer.paused())
        if decision.pause:
            consumer.pause(*decision.pause)
        if decision.resume:
            consumer.resume(*decision.resume)

    def _retry_lost_join(self, now: float) -> None:
        """Ask for a new group join when kafka-python lost the end of one (see join_watch.py)."""
        consumer = self._consumer
        cluster = consumer._client.cluster  # kafka-python keeps no public non-blocking metadata view
        topics_exist = any(cluster.partitions_for_topic(topic) for topic in self._topics)
        if self._join_watch.should_rejoin(now, assigned=bool(consumer.assignment()), topics_exist=topics_exist):
            log.warning("no partitions assigned although the topics exist: asking the group coordinator to "
                        "join again (a group join whose end kafka-python lost)", extra={"group": self._settings.group_id})
            consumer._coordinator.request_rejoin()

    def _take(self, tp: TopicPartition, record: Any, now: float) -> list[SourceUnit]:
        ref = (tp, record.offset)
        session = self._session
        session.tracker.consumed(tp, record.offset)
        try:
            decoded = decode_record(tp.topic, tp.partition, record.offset, record.key, record.value,
                                    record.headers or [], options=self._options)
        except DecodeError as exc:
            return self._undecodable(tp, record, exc, transaction_place(record.value), now)
        if isinstance(decoded, (Heartbeat, Tombstone)):
            session.tracker.done([ref])
            return []
        if isinstance(decoded, TransactionMarker) and decoded.xid in self._settings.skip_transactions:
            session.tracker.done([ref])
            if decoded.status == "END":
                log.warning("transaction skipped (source.skip_transactions): its rows are dead-lettered, not "
                            "translated", extra={"xid": decoded.xid, "counts": dict(decoded.per_table_counts)})
            return []
        if isinstance(decoded, ChangeRecord):
            place = _place_of(decoded)
            if decoded.undeclared_columns:
                return self._undecodable(tp, record, _undeclared(tp, record, decoded), place, now)
            if place is not None and place.xid in self._settings.skip_transactions:
                return self._alone(tp, record, _skipped(place))
        return self._units(session.assembler.add(ref, decoded, now))

    def _undecodable(self, tp: TopicPartition, record: Any, error: ChangeError, place: TransactionPlace | None,
                     now: float) -> list[SourceUnit]:
        """Dead-letter a record as part of its transaction when its place in it is known, else alone."""
        if place is None or place.xid in self._settings.skip_transactions:
            return self._alone(tp, record, error)
        row = UndecodableRow(where=f"{tp.topic}/{tp.partition}/{record.offset}", error=error, raw=_raw(tp, record),
                             total_order=place.total_order)
        return self._units(self._session.assembler.add_undecodable((tp, record.offset), place, row, now))

    def _alone(self, tp: TopicPartition, record: Any, error: ChangeError) -> list[SourceUnit]:
        """A dead letter of one record, which nothing waits for: done as soon as it is published."""
        return [SourceUnit(None, _Released(self._session, ((tp, record.offset),)), error=error, raw=_raw(tp, record))]

    def _units(self, items: list[AssembledTransaction]) -> list[SourceUnit]:
        session = self._session
        units = []
        for item in items:
            handle = _Released(session, item.records, item)
            session.released.append(handle)
            units.append(SourceUnit(item.transaction, handle, dead_lettered=item.dead_lettered))
        return units

    def done(self, unit: SourceUnit) -> None:
        handle: _Released = unit.handle
        if handle.session is not self._session:
            return  # from before a rebalance: its records are being read again
        handle.done = True
        session = self._session
        if handle.item is None:  # an undecodable record: one record, nothing ordered after it
            session.tracker.done(handle.records)
            return
        # Transactions are released to the sink in commit order but acknowledged in any order (their
        # events go to different partitions). Their records count as done only in commit order: were a
        # later transaction's END committed before an earlier one's, a restart would read that END again
        # without its rows (committed already) and wait for them forever.
        while session.released and session.released[0].done:
            finished = session.released.popleft()
            session.tracker.done(finished.records)
            session.finished.append(finished)

    def pending(self) -> int:
        return self._session.tracker.pending_count()

    def keep_alive(self) -> None:
        """Nothing to do: kafka-python's heartbeat thread keeps the group membership while the pipeline is
        busy, for up to max.poll.interval.ms (5 minutes) between polls."""

    def commit(self) -> SourcePosition | None:
        session = self._session
        offsets = session.tracker.committable()
        if offsets:
            try:
                self._consumer.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()})
            except KafkaError as exc:
                raise ServiceUnavailable(f"committing Debezium offsets failed: {exc}") from exc
        # A finished transaction whose records all lie below the committed offsets can never be replayed:
        # those (in commit order) bound what the prior-row store may forget.
        while session.finished and all(offset < offsets.get(tp, -1) for tp, offset in session.finished[0].records):
            transaction = session.finished.popleft().transaction
            if transaction.changes:
                self._last_safe = transaction.newest_position()
        return self._last_safe

    def consumer_lag(self) -> dict[str, int]:
        """Per topic, records beyond this consumer's position (from the last fetch's high watermarks: no
        request to the broker). For the lag metric."""
        lag: dict[str, int] = {}
        for tp in self._owned:
            high = self._consumer.highwater(tp)
            if high is not None:
                lag[tp.topic] = lag.get(tp.topic, 0) + max(0, high - self._consumer.position(tp))
        return lag

    def partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        """Keep reading as before unless a partition went to another member.

        Runs on kafka-python's I/O thread, where nothing may block. kafka-python keeps the position of a
        partition that stays assigned, so when nothing was lost (the usual case: a topic Debezium just
        created joins the assignment) the assembly simply goes on. When a partition was lost, its half-
        assembled transactions cannot complete here: assembly restarts, and the partitions we keep are
        rewound to their oldest record not yet done, so nothing held in the old assembler is skipped.
        """
        new = set(assigned)
        lost = self._owned - new
        if lost:
            rewind = self._session.tracker.committable()
            self._session = _Session(self._settings.transaction_wait_s)
            for tp in self._owned & new:
                if tp in rewind:
                    self._consumer.seek(tp, rewind[tp])
        self._owned = new

    def close(self) -> None:
        self._consumer.close(autocommit=False)


class _Session:
    """Reading state until a rebalance takes a partition away. Handles from an older session are ignored."""

    def __init__(self, transaction_wait_s: float) -> None:
        self.tracker = OffsetTracker()
        self.assembler = TransactionAssembler(max_wait_s=transaction_wait_s)
        self.released: deque[_Released] = deque()  # handed to the pipeline, in commit order, not yet finished
        self.finished: deque[_Released] = deque()  # done in commit order, offsets maybe not yet committed


@dataclass(slots=True)
class _Released:
    session: _Session
    records: tuple[RecordRef, ...]
    item: AssembledTransaction | None = None
    done: bool = False

    @property
    def transaction(self) -> Transaction:
        assert self.item is not None, "only released transactions are kept in Session.released"
        return self.item.transaction


def _unpark_resumed(consumer: Any) -> None:
    """Work around kafka-python 3.0.12 starving a resumed partition for good.

    When a partition is paused while part of its fetched records are in line, the fetcher parks them
    (`_paused_partition_records`) and fetches nothing more for it until they are handed back. It hands them
    back only while `_next_partition_records is None`, but once the first batch has been read that slot
    holds a drained, falsy PartitionRecords instead of None, so the resumed partition is never read again
    (tests/integration/test_debezium_read_ahead.py stalls without this). A drained slot and None mean the
    same to the fetcher everywhere else, so the slot is emptied while records are parked.
    """
    fetcher = getattr(consumer, "_fetcher", None)  # absent (a later kafka-python, a test's consumer): nothing to do
    if getattr(fetcher, "_paused_partition_records", None) and not fetcher._next_partition_records:
        fetcher._next_partition_records = None


def _place_of(decoded: ChangeRecord) -> TransactionPlace | None:
    if decoded.xid is None or decoded.total_order is None:
        return None
    return TransactionPlace(decoded.xid, decoded.total_order, decoded.data_collection, decoded.change_lsn)


def _skipped(place: TransactionPlace) -> SkippedTransaction:
    return SkippedTransaction(
        f"row {place.total_order} of transaction xid {place.xid} ({place.data_collection}): the transaction is "
        "listed in source.skip_transactions, so its rows are dead-lettered instead of translated")


def _undeclared(tp: TopicPartition, record: Any, decoded: ChangeRecord) -> DecodeError:
    """Schemaless JSON loses how a column was encoded (a base64 decimal has no scale): never guess."""
    columns = ", ".join(sorted(decoded.undeclared_columns))
    if len(columns) > 500:  # crafted field names can be megabytes long
        columns = f"{columns[:500]}... ({len(decoded.undeclared_columns)} columns)"
    return DecodeError(
        f"topic {tp.topic!r} (partition {tp.partition}, offset {record.offset}) arrived without a schema "
        f"(value.converter.schemas.enable=false) and column(s) {columns} of {decoded.schema}.{decoded.table} have "
        "no declared type, so their values cannot be decoded exactly. Fix: declare them in the mapping under "
        f"tables.{decoded.table}.columns (e.g. price: numeric(10,2)), or set value.converter.schemas.enable=true "
        "on the connector")


def _raw(tp: TopicPartition, record: Any) -> dict[str, Any]:
    """The record as its dead letter keeps it: the bytes, which the dead letter bounds and shows as text."""
    return {"topic": tp.topic, "partition": tp.partition, "offset": record.offset,
            "key": record.key, "value": record.value, "headers": dict(record.headers or [])}
