"""The Debezium source's read-ahead bound: a backlog whose topics are fetched at different paces in
transactions must not pile its fast topics' rows up in memory, and pausing must never hold back the
transaction next in commit order nor lose or reorder anything."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from kafka import TopicPartition

from bridge.settings import DebeziumSource
from bridge.sources.debezium.read_ahead import ReadAhead
from bridge.sources.debezium.records import DecodeOptions, TransactionMarker
from bridge.sources.debezium.source import DebeziumKafkaSource, _Session
from bridge.sources.transactions import END_MARKER, TransactionAssembler
from tests.support.debezium_backlog import DECLARED, backlog, partitions

A, B, C = "a", "b", "c"


# --- the decision ------------------------------------------------------------------------------------


def test_a_partition_far_ahead_is_paused_unless_the_head_needs_it() -> None:
    bound = ReadAhead(100)
    decision = bound.decide({A: 100, B: 500, C: 99}, needed={B}, paused=set())
    assert decision.pause == {A} and decision.resume == set()  # B is needed, C is below the limit


def test_a_paused_partition_resumes_at_half_the_limit_or_when_the_head_needs_it() -> None:
    bound = ReadAhead(100)
    assert bound.decide({A: 51, B: 400}, needed=set(), paused={A, B}).resume == set()
    assert bound.decide({A: 50, B: 400}, needed=set(), paused={A, B}).resume == {A}
    assert bound.decide({A: 51, B: 400}, needed={B}, paused={A, B}).resume == {B}


def test_nothing_is_paused_when_what_the_head_needs_is_unknown() -> None:
    decision = ReadAhead(100).decide({A: 1000, B: 1000}, needed=None, paused={A})
    assert decision.pause == set() and decision.resume == {A}


def test_a_paused_partition_no_longer_assigned_is_resumed() -> None:
    assert ReadAhead(100).decide({A: 0}, needed=set(), paused={B}).resume == {B}


def test_a_limit_below_two_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        ReadAhead(1)


# --- what the head needs ------------------------------------------------------------------------------

T = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)


def _marker(xid: int, count: int, per_table: dict[str, int]) -> TransactionMarker:
    return TransactionMarker(status="END", xid=xid, lsn=100 * xid, event_count=count, per_table_counts=per_table,
                             commit_time=T, source_ref=f"tx/{xid}")


def test_the_head_needs_its_end_marker_then_the_tables_still_short_of_rows() -> None:
    assembler = TransactionAssembler()
    assert assembler.head_missing() == {END_MARKER}
    assembler.add(("tx", 0), _marker(1, 3, {"public.orders": 1, "public.order_items": 2}), 0)
    assert assembler.head_missing() == {"public.orders", "public.order_items"}


def test_the_head_needs_every_partition_when_its_end_counts_do_not_add_up() -> None:
    assembler = TransactionAssembler()
    assembler.add(("tx", 0), _marker(1, 3, {"public.orders": 1}), 0)
    assert assembler.head_missing() is None


# --- the source on a skewed backlog -------------------------------------------------------------------

PREFIX = "legacy"
TX, CUSTOMERS, ITEMS = partitions(PREFIX)


class BacklogConsumer:
    """Hands out each unpaused partition's next `fetch` records per poll, as a drained backlog does: the
    same number of records per topic, however many transactions they span. Honours pause and resume."""

    def __init__(self, logs: dict[TopicPartition, list[SimpleNamespace]], fetch: int) -> None:
        self.logs, self.fetch = logs, fetch
        self.position = dict.fromkeys(logs, 0)
        self._paused: set[TopicPartition] = set()

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[SimpleNamespace]]:
        batches = {}
        for tp, log in self.logs.items():
            if tp not in self._paused and self.position[tp] < len(log):
                batches[tp] = log[self.position[tp]:self.position[tp] + self.fetch]
                self.position[tp] += len(batches[tp])
        return batches

    def assignment(self) -> set[TopicPartition]:
        return set(self.logs)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def pause(self, *tps: TopicPartition) -> None:
        self._paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self._paused.difference_update(tps)

    def drained(self) -> bool:
        return all(self.position[tp] == len(log) for tp, log in self.logs.items())


def _source(consumer: BacklogConsumer, limit: int | None) -> DebeziumKafkaSource:
    source = object.__new__(DebeziumKafkaSource)  # no Kafka: the consumer above stands in for the broker
    settings = DebeziumSource(topic_prefix=PREFIX)
    source._settings = settings
    source._options = DecodeOptions(declared=DECLARED)
    source._session = _Session(60)
    source._owned = set(consumer.logs)
    source._last_safe = None
    source._consumer = consumer
    source._collections = {CUSTOMERS.topic: "public.customers", ITEMS.topic: "public.order_items", TX.topic: END_MARKER}
    source._read_ahead = ReadAhead(limit) if limit is not None else ReadAhead(10**9)
    source._retry_lost_join = lambda now: None  # empty polls: the group-join watch is tested on its own
    return source


def _drain(source: DebeziumKafkaSource, consumer: BacklogConsumer) -> tuple[list[int], int]:
    """Poll until drained, acknowledging every unit at once; the released xids and the most records of
    one partition ever read and not done."""
    xids, most_ahead = [], 0
    for _ in range(10_000):
        units = source.poll(0.0)
        tracker = source._session.tracker
        most_ahead = max([most_ahead, *(tracker.ahead(tp) for tp in consumer.logs)])
        for unit in units:
            xids.append(unit.transaction.xid)
            source.done(unit)
        if consumer.drained() and not units and source.pending() == 0:
            return xids, most_ahead
    raise AssertionError("the backlog was not drained: the read-ahead bound held the head back")


def test_a_skewed_backlog_is_read_within_the_bound_in_commit_order_and_complete() -> None:
    logs = backlog(PREFIX, 3000)
    consumer = BacklogConsumer(logs, fetch=100)
    source = _source(consumer, limit=400)
    xids, most_ahead = _drain(source, consumer)
    assert xids == list(range(1, 3001))  # every transaction once, in commit order
    assert most_ahead <= 400 + 100  # the limit plus one fetch taken before the pause
    assert source._session.tracker.committable() == {tp: len(log) for tp, log in logs.items()}


def test_without_the_bound_the_fast_topic_is_read_to_its_end() -> None:
    """The growth the bound prevents: the customers topic (one row per 10 transactions) is read whole
    while the order items of its transactions are still to come."""
    logs = backlog(PREFIX, 3000)
    consumer = BacklogConsumer(logs, fetch=100)
    _xids, most_ahead = _drain(_source(consumer, limit=None), consumer)
    assert most_ahead >= len(logs[CUSTOMERS])
