"""Reassembling transactions from interleaved table topics and the transaction topic."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from bridge.changes import Op
from bridge.sources.debezium.records import ChangeRecord, TransactionMarker
from bridge.sources.debezium.offsets import OffsetTracker
from bridge.sources.transactions import TransactionAssembler, TransactionIncomplete

T = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
TX_TOPIC = ("legacy.transaction", 0)


def row(xid: int | None, order: int | None, table: str = "orders", lsn: int = 0, op: Op = Op.CREATE,
        key: int = 1, new_key: dict | None = None, old_key: dict | None = None) -> ChangeRecord:
    return ChangeRecord(op=op, schema="public", table=table, key={"id": key}, before=None,
                        after=None if op is Op.DELETE else {"id": key}, change_lsn=lsn or 1000 + (order or 0),
                        xid=xid, total_order=order, data_collection_order=order, commit_time=T,
                        snapshot="true" if op is Op.READ else None, sequence=(None, lsn), new_key=new_key,
                        old_key=old_key, message=None, source_ref=f"{table}/0/{order}")


def marker(status: str, xid: int, lsn: int, count: int | None = None, per_table: dict | None = None):
    return TransactionMarker(status=status, xid=xid, lsn=lsn, event_count=count,
                             per_table_counts=per_table or {}, commit_time=T, source_ref=f"tx/{xid}/{status}")


def test_a_transaction_is_released_when_its_end_and_all_rows_are_in_hand() -> None:
    assembler = TransactionAssembler()
    assert assembler.add((("legacy.public.order_items", 0), 0), row(7, 2, "order_items"), 0) == []  # before BEGIN
    assert assembler.add((TX_TOPIC, 0), marker("BEGIN", 7, 900), 0) == []
    assert assembler.add((TX_TOPIC, 1), marker("END", 7, 1100, 3, {"public.orders": 1, "public.order_items": 2}), 0) == []
    assert assembler.add((("legacy.public.orders", 0), 0), row(7, 1), 0) == []
    [done] = assembler.add((("legacy.public.order_items", 0), 1), row(7, 3, "order_items"), 0)
    tx = done.transaction
    assert tx.xid == 7 and tx.commit_lsn == 1100
    assert [c.table for c in tx.changes] == ["orders", "order_items", "order_items"]  # total_order, not arrival
    assert {c.position.commit_lsn for c in tx.changes} == {1100}
    assert len(done.records) == 5  # three rows and both markers: all may be committed once delivered


def test_transactions_come_out_in_commit_order_even_when_a_later_one_completes_first() -> None:
    assembler = TransactionAssembler()
    assembler.add((TX_TOPIC, 0), marker("END", 1, 100, 1), 0)
    assembler.add((TX_TOPIC, 1), marker("END", 2, 200, 1), 0)
    assert assembler.add((("legacy.public.orders", 0), 5), row(2, 1), 0) == []  # tx 2 is ready but waits for tx 1
    released = assembler.add((("legacy.public.customers", 0), 3), row(1, 1, "customers"), 0)
    assert [item.transaction.xid for item in released] == [1, 2]


def test_empty_transactions_and_resent_rows() -> None:
    assembler = TransactionAssembler()
    assembler.add((TX_TOPIC, 0), marker("BEGIN", 5, 10), 0)
    [empty] = assembler.add((TX_TOPIC, 1), marker("END", 5, 20, 0), 0)
    assert empty.transaction.changes == () and len(empty.records) == 2
    assembler.add((("t", 0), 0), row(6, 1), 0)
    assembler.add((("t", 0), 1), row(6, 1), 0)  # the same row again (an upstream restart re-sent it)
    [tx] = assembler.add((TX_TOPIC, 2), marker("END", 6, 30, 1), 0)
    assert len(tx.transaction.changes) == 1


def test_a_primary_key_change_becomes_one_update() -> None:
    assembler = TransactionAssembler()
    assembler.add((("t", 0), 0), row(9, 1, op=Op.DELETE, key=1, lsn=500, new_key={"id": 2}), 0)
    assembler.add((("t", 0), 2), row(9, 2, op=Op.CREATE, key=2, lsn=500, old_key={"id": 1}), 0)
    [done] = assembler.add((TX_TOPIC, 0), marker("END", 9, 600, 2), 0)
    [change] = done.transaction.changes
    assert change.op is Op.UPDATE and change.key == {"id": 2} and change.old_key == {"id": 1}
    assert change.position.change_lsn == 500 and change.position.seq == 0


def test_rows_sharing_one_wal_record_get_distinct_positions() -> None:
    assembler = TransactionAssembler()
    for order in (1, 2, 3):  # a multi-row INSERT: one WAL record
        assembler.add((("t", 0), order), row(4, order, lsn=700, key=order), 0)
    [done] = assembler.add((TX_TOPIC, 0), marker("END", 4, 800, 3), 0)
    assert [c.position.seq for c in done.transaction.changes] == [0, 1, 2]


def test_rows_without_transaction_metadata_stand_alone() -> None:
    assembler = TransactionAssembler()
    [snap] = assembler.add((("t", 0), 0), row(None, None, op=Op.READ, lsn=50, key=1), 0)
    [other] = assembler.add((("t", 0), 1), row(None, None, op=Op.READ, lsn=50, key=2), 0)
    assert snap.transaction.changes[0].position != other.transaction.changes[0].position


def test_an_incomplete_transaction_stops_with_what_is_missing() -> None:
    assembler = TransactionAssembler(max_wait_s=30)
    assembler.add((TX_TOPIC, 0), marker("END", 11, 100, 2, {"public.orders": 1, "public.order_items": 1}), 0.0)
    assembler.add((("t", 0), 0), row(11, 1), 1.0)
    assembler.check_stalled(20.0)
    with pytest.raises(TransactionIncomplete, match=r"xid 11 .*END counts 2 .*1 arrived \{'public.orders': 1\}; "
                                                    r"missing: 1 of public.order_items"):
        assembler.check_stalled(31.0)


def test_offsets_are_committable_only_below_the_oldest_unfinished_record() -> None:
    tracker = OffsetTracker()
    for offset in range(5):
        tracker.consumed("p", offset)
    tracker.done([("p", 1), ("p", 2)])
    assert tracker.committable() == {"p": 0}
    tracker.done([("p", 0)])
    assert tracker.committable() == {"p": 3}
    tracker.done([("p", 3), ("p", 4)])
    assert tracker.committable() == {"p": 5} and tracker.pending_count() == 0


def test_waiting_while_other_transactions_complete_is_not_a_stall() -> None:
    assembler = TransactionAssembler(max_wait_s=30)
    assembler.add((("t", 0), 0), row(50, 1), 0.0)  # its END is far behind on the transaction topic
    for step, xid in enumerate(range(40, 50), start=1):  # meanwhile older transactions keep completing
        assembler.add((("c", 0), step), row(xid, 1, "customers"), step * 10.0)
        assembler.add((TX_TOPIC, step), marker("END", xid, 100 + step, 1), step * 10.0)
    assembler.check_stalled(100.0)  # waited 100 s, but the last release was at 100 s
    with pytest.raises(TransactionIncomplete, match="xid 50"):
        assembler.check_stalled(131.0)


# --- undecodable rows count toward their transaction -------------------------------------------------

def undecodable(xid: int, order: int, table: str = "public.orders", lsn: int | None = None):
    from bridge.sources.transactions import TransactionPlace

    return TransactionPlace(xid=xid, total_order=order, data_collection=table,
                            change_lsn=lsn if lsn is not None else 1000 + order)


def test_an_undecodable_row_completes_its_transaction_which_is_released_without_it() -> None:
    assembler = TransactionAssembler()
    assembler.add((("legacy.public.orders", 0), 0), row(7, 1), 0)
    assert assembler.add_undecodable((("legacy.public.order_items", 0), 4), undecodable(7, 2, "public.order_items"),
                                     "the bad row", 0) == []
    [done] = assembler.add((TX_TOPIC, 1), marker("END", 7, 1100, 2, {"public.orders": 1, "public.order_items": 1}), 0)
    assert [c.table for c in done.transaction.changes] == ["orders"]
    assert done.dead_lettered == ("the bad row",)
    assert (("legacy.public.order_items", 0), 4) in done.records, "the bad row's offset is committed with it"
    assert len(done.records) == 3


def test_an_undecodable_row_keeps_its_place_among_rows_of_one_wal_record() -> None:
    """Event ids come from (change LSN, ordinal among rows of that LSN): a row that could not be decoded
    still takes its ordinal, so its neighbours get the same ids as when it decodes."""
    assembler = TransactionAssembler()
    assembler.add((("t", 0), 1), row(4, 1, lsn=700, key=1), 0)
    assembler.add_undecodable((("t", 0), 2), undecodable(4, 2, lsn=700), "bad", 0)
    assembler.add((("t", 0), 3), row(4, 3, lsn=700, key=3), 0)
    [done] = assembler.add((TX_TOPIC, 0), marker("END", 4, 800, 3), 0)
    assert [(c.key["id"], c.position.seq) for c in done.transaction.changes] == [(1, 0), (3, 2)]


def test_a_placeholder_never_replaces_a_decoded_row() -> None:
    assembler = TransactionAssembler()
    assembler.add((("t", 0), 1), row(4, 1), 0)
    assembler.add_undecodable((("t", 0), 2), undecodable(4, 1), "a crafted record claiming row 1", 0)
    [done] = assembler.add((TX_TOPIC, 0), marker("END", 4, 800, 1), 0)
    assert len(done.transaction.changes) == 1 and done.dead_lettered == ("a crafted record claiming row 1",)
    assert (("t", 0), 2) in done.records


def test_the_stall_message_names_the_head_of_the_commit_order_exactly() -> None:
    """The END that blocks is the first one received that cannot be released, not the oldest pending
    transaction: here xid 20's rows arrived first, but xid 10 commits first and lacks a row."""
    assembler = TransactionAssembler(max_wait_s=30)
    assembler.add((("legacy.public.orders", 0), 0), row(20, 1), 0.0)  # oldest pending: complete, blocked
    assembler.add((("legacy.public.orders", 0), 1), row(10, 1), 1.0)
    assembler.add((TX_TOPIC, 5), marker("END", 10, 100, 3, {"public.orders": 1, "public.order_items": 2}), 2.0)
    assembler.add((TX_TOPIC, 6), marker("END", 20, 200, 1, {"public.orders": 1}), 2.0)
    assembler.add((("legacy.public.order_items", 0), 0), row(10, 2, "order_items"), 3.0)
    with pytest.raises(TransactionIncomplete) as stalled:
        assembler.check_stalled(40.0)
    message = str(stalled.value)
    assert message.startswith("transaction xid 10 ")
    assert "xid 20" not in message.split(".")[0]
    assert "END counts 3 change(s) {'public.order_items': 2, 'public.orders': 1}" in message
    assert "2 arrived {'public.order_items': 1, 'public.orders': 1}" in message
    assert "missing: 1 of public.order_items" in message
    assert "1 complete transaction(s) wait behind it" in message
    assert "source.skip_transactions" in message and "[10]" in message
    assert "only 1 arrived" not in message


def test_the_stall_message_lists_every_incomplete_transaction_behind_the_head() -> None:
    assembler = TransactionAssembler(max_wait_s=30)
    assembler.add((TX_TOPIC, 1), marker("END", 31, 100, 1, {"public.orders": 1}), 0.0)
    assembler.add((TX_TOPIC, 2), marker("END", 32, 200, 1, {"public.orders": 1}), 0.0)
    assembler.add((TX_TOPIC, 3), marker("END", 33, 300, 1, {"public.orders": 1}), 0.0)
    assembler.add((("legacy.public.orders", 0), 0), row(32, 1), 0.0)
    with pytest.raises(TransactionIncomplete, match=r"skip_transactions: \[31, 33\]") as stalled:
        assembler.check_stalled(31.0)
    assert "transaction xid 31 " in str(stalled.value) and "0 arrived {}" in str(stalled.value)


def test_undecodable_rows_are_counted_as_arrived_in_the_stall_message() -> None:
    assembler = TransactionAssembler(max_wait_s=30)
    assembler.add_undecodable((("legacy.public.orders", 0), 0), undecodable(12, 1), "bad", 0.0)
    assembler.add((TX_TOPIC, 1), marker("END", 12, 100, 2, {"public.orders": 2}), 0.0)
    with pytest.raises(TransactionIncomplete, match=r"1 arrived \{'public.orders': 1\} \(1 of them undecodable"):
        assembler.check_stalled(31.0)
