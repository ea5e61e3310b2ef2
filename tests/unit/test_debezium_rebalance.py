"""What the Debezium source does when its partitions change (kafka-python keeps the positions of
partitions that stay assigned): nothing half-assembled may be dropped or skipped."""

from __future__ import annotations

from types import SimpleNamespace

from kafka import TopicPartition

from bridge.settings import DebeziumSource
from bridge.sources.debezium import DebeziumKafkaSource, _Session
from bridge.sources.debezium_records import DecodeOptions

ORDERS, ITEMS, TX = (TopicPartition("legacy.public.orders", 0), TopicPartition("legacy.public.order_items", 0),
                     TopicPartition("legacy.transaction", 0))


class RecordingConsumer:
    def __init__(self) -> None:
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.paused: set[TopicPartition] = set()

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)


def _source() -> DebeziumKafkaSource:
    source = object.__new__(DebeziumKafkaSource)  # no Kafka: only the rebalance bookkeeping is under test
    source._settings = DebeziumSource()
    source._options = DecodeOptions(declared={"orders": {"id": "bigint"}})
    source._session = _Session(60)
    source._owned = set()
    source._last_safe = None
    source._consumer = RecordingConsumer()
    source._transaction_topic = TX.topic
    source._in_step_limit = 20
    source._last_xid = {}
    source._paused = set()
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


def test_a_table_running_ahead_of_the_transaction_topic_is_paused_until_it_catches_up() -> None:
    source = _source()
    source.partitions_assigned([ORDERS, TX])
    for offset in range(25):  # 25 transactions' rows, none of their END markers read yet
        source._take(ORDERS, _order_row(offset, xid=1000 + offset), 0.0)
    source._keep_in_step()
    assert source._consumer.paused == {ORDERS}  # ahead: paused; the transaction topic keeps moving
    released = [unit for offset in range(20) for unit in source._take(TX, _end(1000 + offset, offset), 0.0)]
    assert len(released) == 20
    source._keep_in_step()
    assert source._consumer.paused == set()


def test_a_paused_table_is_resumed_once_the_transaction_topic_has_passed_it() -> None:
    source = _source()
    source.partitions_assigned([ORDERS, ITEMS, TX])
    for offset in range(25):  # orders runs ahead by 25 transactions
        source._take(ORDERS, _order_row(offset, xid=2000 + offset), 0.0)
    source._keep_in_step()
    assert source._consumer.paused == {ORDERS}
    # Another table is ahead too, so the backlog stays large; but once the transaction topic has read
    # the END of orders' last row, orders must move again (ENDs may be waiting for its rows).
    for offset in range(25):
        source._take(ITEMS, _order_row(offset, xid=3000 + offset), 0.0)
    source._last_xid[ORDERS] = 2024
    source._session.assembler.add((TX, 99), _end_marker(2024), 0.0)
    source._keep_in_step()
    assert ORDERS not in source._consumer.paused and ITEMS in source._consumer.paused


def _end_marker(xid: int):
    from bridge.sources.debezium_records import decode_record

    return decode_record(TX.topic, 0, 99, None, _end(xid, 99).value, [])
