"""Assembling pgoutput messages into Transactions: keys, before-images, TOAST, positions, errors.

Streams are written with the encoder of test_pgoutput_protocol; the expected RowChanges follow the
Debezium path's conventions (see bridge/sources/pgoutput/changes.py), which the integration test
checks against real Debezium output.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from bridge.changes import UNKNOWN, LogicalMessage, Op, SourcePosition, Transaction
from bridge.sources.pgoutput.changes import (
    PgOutputAssembler,
    TransactionDecodeError,
    primary_keys_from_rows,
)
from bridge.sources.pgoutput.protocol import PgOutputDecodeError
from bridge.sources.pgoutput.values import UserType
from tests.unit.test_pgoutput_protocol import (
    begin,
    commit,
    delete,
    insert,
    message,
    origin,
    relation,
    truncate,
    type_message,
    update,
)

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
MOOD = UserType(16400, "legacy", "mood", "e", category="E")
DEFAULT_ID, FULL_ID = 100, 200
COLUMNS = [("id", 23, -1), ("price", 1700, 655366), ("note", 25, -1), ("blob", 25, -1), ("mood", MOOD.oid, -1)]
DEFAULT_TABLE = relation(DEFAULT_ID, "legacy", "items", "d", [(n, t, m, n == "id") for n, t, m in COLUMNS])
FULL_TABLE = relation(FULL_ID, "legacy", "items_full", "f", [(n, t, m, True) for n, t, m in COLUMNS])
KEYS = primary_keys_from_rows([("legacy", "items", ["id"]), ("legacy", "items_full", ["id"])])
ROW = ["1", "12.30", "hello", "x" * 50, "happy"]
DECODED = {"id": 1, "price": Decimal("12.30"), "note": "hello", "blob": "x" * 50, "mood": "happy"}


class Stream:
    """Feeds messages at increasing LSNs (or at an LSN given explicitly) and collects Transactions."""

    def __init__(self, assembler: PgOutputAssembler | None = None) -> None:
        self.assembler = assembler or PgOutputAssembler(user_types=[MOOD], primary_keys=KEYS)
        self.lsn = 0x1000
        self.out: list[Transaction] = []

    def send(self, data: bytes, lsn: int | None = None, **kwargs: Any) -> Transaction | None:
        if lsn is None:
            self.lsn += 0x40
            lsn = self.lsn
        result = self.assembler.feed(lsn, data, **kwargs)
        if result is not None:
            self.out.append(result)
        return result

    def transaction(self, xid: int, *messages: bytes, when: datetime = T0) -> Transaction:
        final = self.lsn + 0x40 * (len(messages) + 2)
        self.send(begin(final, when, xid))
        for data in messages:
            self.send(data)
        done = self.send(commit(final, final + 0x30, when), lsn=final + 0x30)
        assert done is not None
        self.lsn = final + 0x30
        return done


@pytest.fixture
def stream() -> Stream:
    s = Stream()
    s.send(type_message(MOOD.oid, "legacy", "mood"))
    s.send(DEFAULT_TABLE)
    s.send(FULL_TABLE)
    return s


def test_insert_update_delete_under_replica_identity_default(stream: Stream) -> None:
    tx = stream.transaction(7, insert(DEFAULT_ID, ROW),
                           update(DEFAULT_ID, ["1", "45.60", "updated", UNKNOWN, "ok"]),
                           delete(DEFAULT_ID, ["1", None, None, None, None]))
    assert (tx.xid, tx.commit_time) == (7, T0) and tx.commit_lsn == stream.lsn
    created, updated, deleted = tx.changes
    assert (created.op, created.schema, created.table, created.key) == (Op.CREATE, "legacy", "items", {"id": 1})
    assert created.before is None and created.after == DECODED
    assert updated.op is Op.UPDATE and updated.before is None and updated.old_key is None
    assert updated.after == {"id": 1, "price": Decimal("45.60"), "note": "updated", "blob": UNKNOWN, "mood": "ok"}
    assert deleted.op is Op.DELETE and deleted.after is None and deleted.key == {"id": 1}
    assert deleted.before == {"id": 1, "price": UNKNOWN, "note": UNKNOWN, "blob": UNKNOWN, "mood": UNKNOWN}
    assert [c.position.commit_lsn for c in tx.changes] == [tx.commit_lsn] * 3
    assert [c.position.seq for c in tx.changes] == [0, 0, 0]
    assert len({c.position.change_lsn for c in tx.changes}) == 3
    assert all(c.commit_time == T0 and c.xid == 7 for c in tx.changes)
    assert created.source_ref == f"pgoutput 0/{created.position.change_lsn:X}"


def test_a_primary_key_change_is_one_update_with_old_key_and_a_key_only_before(stream: Stream) -> None:
    tx = stream.transaction(8, update(DEFAULT_ID, ["20", "12.30", "hello", UNKNOWN, "happy"],
                                      old=["1", None, None, None, None]))
    (change,) = tx.changes
    assert change.op is Op.UPDATE and change.key == {"id": 20} and change.old_key == {"id": 1}
    assert change.before == {"id": 1, "price": UNKNOWN, "note": UNKNOWN, "blob": UNKNOWN, "mood": UNKNOWN}
    assert change.after == {**DECODED, "id": 20, "blob": UNKNOWN}


def test_an_old_key_equal_to_the_new_one_is_no_key_change(stream: Stream) -> None:
    """PostgreSQL also sends 'K' when a key column is TOASTed; Debezium then reports a plain update."""
    (change,) = stream.transaction(9, update(DEFAULT_ID, ROW, old=["1", None, None, None, None])).changes
    assert change.old_key is None and change.key == {"id": 1}
    assert change.before == {"id": 1, "price": UNKNOWN, "note": UNKNOWN, "blob": UNKNOWN, "mood": UNKNOWN}


def test_replica_identity_full_gives_whole_old_rows_and_fills_unchanged_toast(stream: Stream) -> None:
    old_row = ["1", "12.30", "hello", "x" * 50, "happy"]
    tx = stream.transaction(10, update(FULL_ID, ["1", "45.60", "hello", UNKNOWN, "happy"], old=old_row, kind="O"),
                            update(FULL_ID, ["2", "45.60", "hello", UNKNOWN, "happy"],
                                   old=["1", "45.60", "hello", "x" * 50, "happy"], kind="O"),
                            delete(FULL_ID, ["2", "45.60", "hello", "x" * 50, "happy"], kind="O"))
    updated, key_changed, deleted = tx.changes
    assert updated.key == {"id": 1} and updated.old_key is None and updated.before == DECODED
    assert updated.after == {**DECODED, "price": Decimal("45.60")}  # blob: from the old row, not UNKNOWN
    assert key_changed.key == {"id": 2} and key_changed.old_key == {"id": 1}
    assert key_changed.after is not None and key_changed.after["blob"] == "x" * 50
    assert deleted.key == {"id": 2} and deleted.before == {**DECODED, "id": 2, "price": Decimal("45.60")}


def test_full_tables_need_their_primary_keys_from_the_catalog() -> None:
    stream = Stream(PgOutputAssembler(user_types=[MOOD]))
    stream.send(FULL_TABLE)
    stream.send(begin(0x9000, T0, 11))
    with pytest.raises(PgOutputDecodeError, match="legacy.items_full .* REPLICA IDENTITY FULL.*PRIMARY_KEYS_SQL"):
        stream.send(insert(FULL_ID, ROW))
    keyless = Stream(PgOutputAssembler(user_types=[MOOD], primary_keys={}))  # catalog read: no primary key
    keyless.send(FULL_TABLE)
    (change,) = keyless.transaction(12, insert(FULL_ID, ROW)).changes
    assert change.key is None and change.after == DECODED


def test_a_primary_key_outside_the_published_columns_is_refused() -> None:
    stream = Stream(PgOutputAssembler(user_types=[MOOD], primary_keys={"legacy.items_full": ["uid"]}))
    stream.send(FULL_TABLE)
    stream.send(begin(0x9000, T0, 13))
    with pytest.raises(PgOutputDecodeError, match=r"\['uid'\] are not among the published columns"):
        stream.send(insert(FULL_ID, ROW))


def test_truncate_gives_one_change_per_table_at_one_lsn(stream: Stream) -> None:
    tx = stream.transaction(14, truncate([DEFAULT_ID, FULL_ID]))
    assert [(c.op, c.table, c.key, c.before, c.after) for c in tx.changes] == [
        (Op.TRUNCATE, "items", None, None, None), (Op.TRUNCATE, "items_full", None, None, None)]
    first, second = (c.position for c in tx.changes)
    assert first.change_lsn == second.change_lsn and (first.seq, second.seq) == (0, 1)


def test_changes_received_at_one_lsn_are_numbered_within_the_transaction(stream: Stream) -> None:
    """COPY writes one WAL record for many rows; a logical message shares its LSN with the next change."""
    stream.send(begin(0x9000, T0, 15))
    stream.send(message("outbox", b'{"e":1}', lsn=0x8000), lsn=0x8000)
    for row_id in ("1", "2", "3"):
        stream.send(insert(DEFAULT_ID, [row_id, None, None, None, None]), lsn=0x8000)
    stream.send(insert(DEFAULT_ID, ["4", None, None, None, None]), lsn=0x8040)
    tx = stream.send(commit(0x9000, 0x9030, T0), lsn=0x9030)
    assert tx is not None
    assert [(c.op, c.position) for c in tx.changes] == [
        (Op.MESSAGE, SourcePosition(0x9030, 0x8000, 0)), (Op.CREATE, SourcePosition(0x9030, 0x8000, 1)),
        (Op.CREATE, SourcePosition(0x9030, 0x8000, 2)), (Op.CREATE, SourcePosition(0x9030, 0x8000, 3)),
        (Op.CREATE, SourcePosition(0x9030, 0x8040, 0))]
    note = tx.changes[0]
    assert (note.schema, note.table, note.key, note.before, note.after) == ("", "", {"prefix": "outbox"}, None, None)
    assert note.message == LogicalMessage("outbox", b'{"e":1}', True) and note.xid == 15
    again = stream.transaction(16, insert(DEFAULT_ID, ["5", None, None, None, None]))
    assert again.changes[0].position.seq == 0  # numbering is per transaction


def test_a_non_transactional_message_is_a_transaction_of_its_own() -> None:
    stream = Stream()
    received = datetime(2024, 5, 1, 13, 0, tzinfo=UTC)
    loose = stream.send(message("beat", b"", transactional=False), lsn=0x5000, received_at=received)
    assert loose is not None and (loose.xid, loose.commit_lsn, loose.commit_time) == (None, 0x5000, received)
    (change,) = loose.changes
    assert change.position == SourcePosition(0x5000, 0x5000, 0) and change.message == LogicalMessage("beat", b"", False)
    stream.send(DEFAULT_TABLE)
    stream.transaction(17, insert(DEFAULT_ID, ROW), when=T0)
    later = stream.send(message("beat", b"", transactional=False), received_at=received)
    assert later is not None and later.commit_time == T0  # Debezium reports its last commit time for it
    with pytest.raises(PgOutputDecodeError, match="expected received_at"):
        Stream().send(message("beat", b"", transactional=False))


def test_a_bad_value_reports_the_whole_transaction_at_commit_and_the_stream_goes_on(stream: Stream) -> None:
    stream.send(begin(0x9000, T0, 18))
    stream.send(insert(DEFAULT_ID, ROW))
    stream.send(insert(DEFAULT_ID, ["2", "not-a-number", None, None, None]), lsn=0x8888)
    stream.send(insert(DEFAULT_ID, ["3", None, None, None, None]))
    with pytest.raises(TransactionDecodeError) as caught:
        stream.send(commit(0x9000, 0x9030, T0), lsn=0x9030)
    error = caught.value
    assert (error.xid, error.commit_lsn, error.commit_time, error.lsn) == (18, 0x9030, T0, 0x8888)
    assert (error.relation, error.column) == ("legacy.items", "price")
    assert "column 'price' of legacy.items at LSN 0/8888: expected a numeric, got 'not-a-number'" in str(error)
    assert not stream.assembler.in_transaction
    assert stream.transaction(19, insert(DEFAULT_ID, ROW)).changes[0].after == DECODED


@pytest.mark.parametrize(("messages", "says"), [
    ([insert(DEFAULT_ID, ROW)], "Insert at LSN .* outside a transaction"),
    ([begin(1, T0, 1), insert(999, ["1"])], "relation OID 999 .* before any Relation message"),
    ([begin(1, T0, 1), begin(2, T0, 2)], "Begin of xid 2 .* while xid 1 is still open"),
    ([commit(1, 2, T0)], "Commit at LSN .* outside a transaction"),
    ([begin(1, T0, 1), commit(5, 6, T0)], "commit record 0/5, but the open transaction xid 1 announced 0/1"),
    ([begin(1, T0, 1), insert(DEFAULT_ID, ["1", "2"])], "expected 5 column values .* got 2"),
    ([truncate([DEFAULT_ID])], "Truncate at LSN .* outside a transaction"),
    ([message("p", b"x")], "transactional Message at LSN .* outside a transaction"),
])
def test_a_broken_stream_raises_at_once(stream: Stream, messages: list[bytes], says: str) -> None:
    with pytest.raises(PgOutputDecodeError, match=says):
        for data in messages:
            stream.send(data)


def test_reset_forgets_an_open_transaction_but_keeps_relations(stream: Stream) -> None:
    stream.send(begin(0x9000, T0, 20))
    stream.send(insert(DEFAULT_ID, ROW))
    stream.assembler.reset()
    assert not stream.assembler.in_transaction
    assert stream.transaction(21, insert(DEFAULT_ID, ROW)).changes[0].key == {"id": 1}


def test_a_new_relation_message_replaces_the_plan(stream: Stream) -> None:
    stream.send(relation(DEFAULT_ID, "legacy", "items", "d", [("id", 23, -1, True), ("extra", 20, -1, False)]))
    (change,) = stream.transaction(22, insert(DEFAULT_ID, ["1", "99"])).changes
    assert change.after == {"id": 1, "extra": 99}


def test_types_learned_later_apply_to_the_next_change() -> None:
    stream = Stream(PgOutputAssembler())
    stream.send(type_message(MOOD.oid, "legacy", "mood"))
    stream.send(DEFAULT_TABLE)
    assert MOOD.oid in stream.assembler.announced_types
    with pytest.raises(TransactionDecodeError, match="load USER_TYPES_SQL"):
        stream.transaction(23, insert(DEFAULT_ID, ROW))
    stream.assembler.learn_types({MOOD.oid: MOOD})
    assert stream.transaction(24, insert(DEFAULT_ID, ROW)).changes[0].after == DECODED


def test_origin_and_empty_transactions(stream: Stream) -> None:
    stream.send(begin(0x9000, T0, 25))
    stream.send(origin(0x77, "upstream"))
    assert stream.assembler.origin is not None and stream.assembler.origin.name == "upstream"
    tx = stream.send(commit(0x9000, 0x9030, T0 + timedelta(seconds=1)), lsn=0x9030)
    assert tx == Transaction(xid=25, commit_lsn=0x9030, commit_time=T0 + timedelta(seconds=1), changes=())
    assert stream.assembler.origin is None
