"""What the Debezium source does when its partitions change (kafka-python keeps the positions of
partitions that stay assigned): nothing half-assembled may be dropped or skipped."""

from __future__ import annotations

from types import SimpleNamespace

from kafka import TopicPartition

from bridge.settings import DebeziumSource
from bridge.sources.debezium.source import DebeziumKafkaSource, _Session
from bridge.sources.debezium.records import DecodeOptions

ORDERS, ITEMS, TX = (TopicPartition("legacy.public.orders", 0), TopicPartition("legacy.public.order_items", 0),
                     TopicPartition("legacy.transaction", 0))


class RecordingConsumer:
    def __init__(self) -> None:
        self.seeks: list[tuple[TopicPartition, int]] = []

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


def _source() -> DebeziumKafkaSource:
    source = object.__new__(DebeziumKafkaSource)  # no Kafka: only the rebalance bookkeeping is under test
    source._settings = DebeziumSource()
    source._options = DecodeOptions(declared={"orders": {"id": "bigint"}})
    source._session = _Session(60)
    source._owned = set()
    source._last_safe = None
    source._consumer = RecordingConsumer()
    return source


def _order_row(offset: int, xid: int = 700) -> SimpleNamespace:
    value = (b'{"before":null,"after":{"id":%d},"source":{"version":"3.6.1.Final","connector":"postgresql",'
             b'"name":"legacy","ts_ms":1700000000000,"snapshot":"false","db":"restaurant","sequence":"[null,\\"100\\"]",'
             b'"schema":"public","table":"orders","txId":%d,"lsn":100,"xmin":null},"op":"c","ts_ms":1700000000001,'
             b'"transaction":{"id":"%d:100","total_order":1,"data_collection_order":1}}') % (offset, xid, xid)
    return SimpleNamespace(offset=offset, key=b'{"id":%d}' % offset, value=value, headers=[])


def test_a_topic_joining_the_assignment_keeps_what_is_half_assembled() -> None:
    source = _source()
    source.partitions_assigned([ORDERS, TX])
    session = source._session
    assert source._take(ORDERS, _order_row(0), 0.0) == []  # waiting for its END
    source.partitions_assigned([ORDERS, TX, ITEMS])  # Debezium created the order_items topic
    assert source._session is session and source._consumer.seeks == []
    assert session.assembler.open_transactions() == 1


def test_losing_a_partition_restarts_assembly_and_rewinds_the_kept_ones() -> None:
    source = _source()
    source.partitions_assigned([ORDERS, TX, ITEMS])
    source._take(ORDERS, _order_row(0), 0.0)
    source._take(ORDERS, _order_row(1), 0.0)
    source.partitions_assigned([ORDERS, TX])  # another member took order_items
    assert source._session.assembler.open_transactions() == 0
    assert source._consumer.seeks == [(ORDERS, 0)]  # read again from the oldest record not done



def _end(xid: int, offset: int) -> SimpleNamespace:
    value = b'{"status":"END","id":"%d:200","ts_ms":1700000000000,"event_count":1,' \
            b'"data_collections":[{"data_collection":"public.orders","event_count":1}]}' % xid
    return SimpleNamespace(offset=offset, key=b'{"id":"%d:200"}' % xid, value=value, headers=[])


def test_offsets_move_only_past_transactions_finished_in_commit_order() -> None:
    """Acks arrive in any order; were the later END committed first, a restart would re-read it
    without its (committed) rows and wait forever."""
    source = _source()
    source.partitions_assigned([ORDERS, TX])
    units = []
    for offset, xid in enumerate((10, 11)):
        source._take(ORDERS, _order_row(offset, xid=xid), 0.0)
        units += source._take(TX, _end(xid, offset), 0.0)
    first, second = units
    source.done(second)
    assert source._session.tracker.committable() == {ORDERS: 0, TX: 0}
    source.done(first)
    assert source._session.tracker.committable() == {ORDERS: 2, TX: 2}
