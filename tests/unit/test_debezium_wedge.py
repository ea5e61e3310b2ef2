"""Undecodable Debezium records must not wedge the consumer group.

The defect: in schemaless mode with a wrong decimal_handling_mode, undecodable rows were dead-lettered
on their own and their offsets committed, while their transactions never completed; after fixing the
configuration, every restart stalled on END markers whose rows were gone. Now an undecodable row
counts toward its transaction (read leniently from its transaction block): the transaction completes
without it, marked incomplete, and the row's offset is committed with it, in commit order. For groups
an older bridge already wedged, source.skip_transactions moves past the transactions the stall names.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from kafka import TopicPartition

from bridge.settings import DebeziumSource
from bridge.sources.debezium.lenient import transaction_place
from bridge.sources.debezium.records import DecodeOptions
from bridge.sources.debezium.source import DebeziumKafkaSource, _Session
from bridge.sources.transactions import TransactionIncomplete

ORDERS, CUSTOMERS, TX = (TopicPartition("legacy.public.orders", 0), TopicPartition("legacy.public.customers", 0),
                         TopicPartition("legacy.transaction", 0))
DECLARED = {"orders": {"id": "bigint", "total": "numeric(10,2)"}, "customers": {"id": "bigint"}}


def _source(**settings: object) -> DebeziumKafkaSource:
    source = object.__new__(DebeziumKafkaSource)  # no Kafka: decoding, assembly and offsets are under test
    source._settings = DebeziumSource(**settings)
    # decimal mode "precise" while the connector writes "string": every orders row is undecodable.
    source._options = DecodeOptions(declared=DECLARED, decimal_mode="precise")
    source._session = _Session(60)
    source._owned = {ORDERS, CUSTOMERS, TX}
    source._last_safe = None
    return source


def _row(table: str, offset: int, xid: int, order: int, after: str, lsn: int = 100) -> SimpleNamespace:
    value = (b'{"before":null,"after":%s,"source":{"version":"3.6.1.Final","connector":"postgresql",'
             b'"name":"legacy","ts_ms":1700000000000,"snapshot":"false","db":"restaurant","sequence":"[null,\\"%d\\"]",'
             b'"schema":"public","table":"%s","txId":%d,"lsn":%d,"xmin":null},"op":"c","ts_ms":1700000000001,'
             b'"transaction":{"id":"%d:%d","total_order":%d,"data_collection_order":1}}'
             ) % (after.encode(), lsn, table.encode(), xid, lsn, xid, lsn, order)
    return SimpleNamespace(offset=offset, key=b'{"id":%d}' % offset, value=value, headers=[])


def _bad_order(offset: int, xid: int, order: int) -> SimpleNamespace:
    return _row("orders", offset, xid, order, '{"id":%d,"total":"12.50"}' % offset)


def _customer(offset: int, xid: int, order: int) -> SimpleNamespace:
    return _row("customers", offset, xid, order, '{"id":%d}' % offset)


def _end(xid: int, offset: int, counts: dict[str, int]) -> SimpleNamespace:
    collections = ",".join('{"data_collection":"%s","event_count":%d}' % item for item in counts.items())
    value = ('{"status":"END","id":"%d:900","ts_ms":1700000000000,"event_count":%d,"data_collections":[%s]}'
             % (xid, sum(counts.values()), collections)).encode()
    return SimpleNamespace(offset=offset, key=None, value=value, headers=[])


def test_the_transaction_block_of_an_undecodable_record_is_read_leniently() -> None:
    place = transaction_place(_bad_order(3, 700, 2).value)
    assert place is not None and (place.xid, place.total_order, place.data_collection) == (700, 2, "public.orders")
    assert place.change_lsn == 100
    assert transaction_place(b'{"op":"c","transaction":null}') is None
    assert transaction_place(b"not json") is None
    assert transaction_place(b'{"a":' * 1200 + b"1" + b"}" * 1200) is None


def test_an_undecodable_row_completes_its_transaction_marked_incomplete() -> None:
    source = _source()
    assert source._take(ORDERS, _bad_order(0, 700, 1), 0.0) == []  # waits for its transaction, not alone
    assert source._take(CUSTOMERS, _customer(0, 700, 2), 0.0) == []
    [unit] = source._take(TX, _end(700, 0, {"public.orders": 1, "public.customers": 1}), 0.0)
    assert unit.error is None and unit.incomplete
    assert [c.table for c in unit.transaction.changes] == ["customers"]
    [bad] = unit.dead_lettered
    assert bad.where == "legacy.public.orders/0/0" and bad.total_order == 1
    assert "column 'total'" in str(bad.error) and bad.raw["offset"] == 0
    tracker = source._session.tracker
    assert tracker.committable() == {ORDERS: 0, CUSTOMERS: 0, TX: 0}, "nothing committed before the unit is done"
    source.done(unit)
    assert tracker.committable() == {ORDERS: 1, CUSTOMERS: 1, TX: 1}, "the bad row's offset goes with it"


def test_an_incomplete_transaction_is_committed_in_commit_order() -> None:
    source = _source()
    source._take(ORDERS, _bad_order(0, 700, 1), 0.0)
    [first] = source._take(TX, _end(700, 0, {"public.orders": 1}), 0.0)
    source._take(CUSTOMERS, _customer(0, 701, 1), 0.0)
    [second] = source._take(TX, _end(701, 1, {"public.customers": 1}), 0.0)
    source.done(second)
    assert source._session.tracker.committable() == {ORDERS: 0, CUSTOMERS: 0, TX: 0}
    source.done(first)
    assert source._session.tracker.committable() == {ORDERS: 1, CUSTOMERS: 1, TX: 2}


def test_an_undecodable_record_without_a_transaction_block_stays_a_standalone_dead_letter() -> None:
    source = _source()
    record = SimpleNamespace(offset=5, key=None, value=b'{"op":"c","after":{"id":', headers=[])
    [unit] = source._take(ORDERS, record, 0.0)
    assert unit.transaction is None and unit.error is not None
    source.done(unit)
    assert source._session.tracker.committable() == {ORDERS: 6}


def test_a_group_wedged_by_an_older_bridge_stalls_naming_the_transaction_then_skips_it() -> None:
    """The older bridge committed the undecodable orders row of xid 700 alone: after a restart only the
    customers row and the END come again, and the END waits for a row that will never come."""
    source = _source()
    source._take(CUSTOMERS, _customer(0, 700, 2), 0.0)
    source._take(TX, _end(700, 0, {"public.orders": 1, "public.customers": 1}), 0.0)
    source._take(CUSTOMERS, _customer(1, 701, 1), 0.0)
    source._take(TX, _end(701, 1, {"public.customers": 1}), 0.0)
    with pytest.raises(TransactionIncomplete) as stalled:
        source._session.assembler.check_stalled(61.0)
    message = str(stalled.value)
    assert message.startswith("transaction xid 700 is next in commit order (END at legacy.transaction/0/0")
    assert "missing: 1 of public.orders" in message and "source.skip_transactions: [700]" in message

    source = _source(skip_transactions=[700])  # the operator's fix, then a restart
    [skipped] = source._take(CUSTOMERS, _customer(0, 700, 2), 0.0)
    assert skipped.transaction is None and "source.skip_transactions" in str(skipped.error)
    assert source._take(TX, _end(700, 0, {"public.orders": 1, "public.customers": 1}), 0.0) == []
    source.done(skipped)
    source._take(CUSTOMERS, _customer(1, 701, 1), 0.0)
    [unit] = source._take(TX, _end(701, 1, {"public.customers": 1}), 0.0)
    source.done(unit)
    assert source._session.tracker.committable() == {CUSTOMERS: 2, TX: 2}, "the group moves past xid 700"
    source._session.assembler.check_stalled(1000.0)  # nothing waits any more
