"""Parsing pgoutput messages: bytes recorded from PostgreSQL 15, every message type, every refusal.

The small encoder below writes the layouts of PostgreSQL's "Logical Replication Message Formats"; the
assembler's tests build their streams with it. The recorded messages keep it honest: they are what
pg_logical_slot_peek_binary_changes returned on the real server (proto_version 1, messages on).
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bridge.changes import UNKNOWN
from bridge.errors import DecodeError
from bridge.sources.pgoutput.protocol import (
    PG_EPOCH,
    Begin,
    Commit,
    Delete,
    Insert,
    Message,
    Origin,
    PgOutputDecodeError,
    Relation,
    RelationColumn,
    Truncate,
    TypeInfo,
    Update,
    lsn_text,
    parse_lsn,
    parse_message,
)

# --- an encoder for tests -------------------------------------------------------------------------


def micros(moment: datetime) -> int:
    return (moment - PG_EPOCH) // timedelta(microseconds=1)


def _cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def begin(final_lsn: int, when: datetime, xid: int) -> bytes:
    return b"B" + struct.pack("!QqI", final_lsn, micros(when), xid)


def commit(commit_lsn: int, end_lsn: int, when: datetime, flags: int = 0) -> bytes:
    return b"C" + struct.pack("!BQQq", flags, commit_lsn, end_lsn, micros(when))


def origin(origin_lsn: int, name: str) -> bytes:
    return b"O" + struct.pack("!Q", origin_lsn) + _cstr(name)


def relation(relation_id: int, namespace: str, name: str, identity: str,
             columns: list[tuple[str, int, int, bool]]) -> bytes:
    """columns: (name, type OID, type modifier, part of the replica identity)."""
    out = b"R" + struct.pack("!I", relation_id) + _cstr(namespace) + _cstr(name) + identity.encode()
    out += struct.pack("!h", len(columns))
    for column, type_oid, modifier, is_identity in columns:
        out += bytes([1 if is_identity else 0]) + _cstr(column) + struct.pack("!Ii", type_oid, modifier)
    return out


def type_message(type_oid: int, namespace: str, name: str) -> bytes:
    return b"Y" + struct.pack("!I", type_oid) + _cstr(namespace) + _cstr(name)


def tuple_data(values: list[Any]) -> bytes:
    """str -> 't' text, None -> 'n', UNKNOWN -> 'u'."""
    out = struct.pack("!h", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value is UNKNOWN:
            out += b"u"
        else:
            raw = value.encode()
            out += b"t" + struct.pack("!i", len(raw)) + raw
    return out


def insert(relation_id: int, new: list[Any]) -> bytes:
    return b"I" + struct.pack("!I", relation_id) + b"N" + tuple_data(new)


def update(relation_id: int, new: list[Any], old: list[Any] | None = None, kind: str = "K") -> bytes:
    out = b"U" + struct.pack("!I", relation_id)
    if old is not None:
        out += kind.encode() + tuple_data(old)
    return out + b"N" + tuple_data(new)


def delete(relation_id: int, old: list[Any], kind: str = "K") -> bytes:
    return b"D" + struct.pack("!I", relation_id) + kind.encode() + tuple_data(old)


def truncate(relation_ids: list[int], options: int = 0) -> bytes:
    return b"T" + struct.pack("!iB", len(relation_ids), options) + struct.pack(f"!{len(relation_ids)}I", *relation_ids)


def message(prefix: str, content: bytes, *, transactional: bool = True, lsn: int = 0) -> bytes:
    return b"M" + struct.pack("!BQ", 1 if transactional else 0, lsn) + _cstr(prefix) + struct.pack(
        "!i", len(content)) + content


# --- recorded from PostgreSQL 15.18 ---------------------------------------------------------------

RECORDED_BEGIN = b"B\x00\x00\x00\x00\x01\xd4A\xf8\x00\x03\x04\x1a\x8c\xd5\x00\xdb\x00\x00\x02\xd8"
RECORDED_MESSAGE = b"M\x01\x00\x00\x00\x00\x01\xd4?\xd8pfx\x00\x00\x00\x00\x05hello"
RECORDED_RELATION = (b"R\x00\x00@\x02public\x00t\x00d\x00\x03\x01id\x00\x00\x00\x00\x17\xff\xff\xff\xff\x00v\x00\x00"
                     b"\x00\x00\x19\xff\xff\xff\xff\x00n\x00\x00\x00\x06\xa4\xff\xff\xff\xff")
RECORDED_INSERT = b"I\x00\x00@\x02N\x00\x03t\x00\x00\x00\x011t\x00\x00\x00\x01at\x00\x00\x00\x041.50"
RECORDED_KEY_UPDATE = (b"U\x00\x00@\x02K\x00\x03t\x00\x00\x00\x011nnN\x00\x03t\x00\x00\x00\x013t\x00\x00\x00\x01at"
                       b"\x00\x00\x00\x041.50")
RECORDED_COMMIT = b"C\x00\x00\x00\x00\x00\x01\xd4A\xf8\x00\x00\x00\x00\x01\xd4B(\x00\x03\x04\x1a\x8c\xd5\x00\xdb"
RECORDED_TRUNCATE = b"T\x00\x00\x00\x01\x00\x00\x00@\x02"


def test_recorded_transaction_parses_exactly() -> None:
    opened = parse_message(RECORDED_BEGIN)
    closed = parse_message(RECORDED_COMMIT)
    assert isinstance(opened, Begin) and isinstance(closed, Commit)
    assert (opened.xid, opened.final_lsn) == (728, parse_lsn("0/1D441F8"))
    assert (closed.flags, closed.commit_lsn, closed.end_lsn) == (0, opened.final_lsn, parse_lsn("0/1D44228"))
    assert opened.commit_time == closed.commit_time == datetime(2026, 11, 25, 15, 50, 8, 562395, tzinfo=UTC)
    assert closed.commit_time.tzinfo is UTC

    assert parse_message(RECORDED_RELATION) == Relation(16386, "public", "t", "d", (
        RelationColumn("id", 23, -1, True), RelationColumn("v", 25, -1, False), RelationColumn("n", 1700, -1, False)))
    assert parse_message(RECORDED_INSERT) == Insert(16386, ("1", "a", "1.50"))
    assert parse_message(RECORDED_KEY_UPDATE) == Update(16386, "K", ("1", None, None), ("3", "a", "1.50"))
    assert parse_message(RECORDED_MESSAGE) == Message(True, parse_lsn("0/1D43FD8"), "pfx", b"hello")
    assert parse_message(RECORDED_TRUNCATE) == Truncate((16386,), cascade=False, restart_identity=False)


def test_every_message_type_round_trips_through_the_encoder() -> None:
    when = datetime(2024, 2, 29, 12, 0, 0, 123456, tzinfo=UTC)
    columns = [("id", 20, -1, True), ("price", 1700, (10 << 16 | 2) + 4, False), ("note", 25, -1, False)]
    assert parse_message(begin(100, when, 7)) == Begin(100, when, 7)
    assert parse_message(commit(100, 180, when)) == Commit(0, 100, 180, when)
    assert parse_message(origin(55, "upstream")) == Origin(55, "upstream")
    parsed = parse_message(relation(42, "", "orders", "f", columns))
    assert isinstance(parsed, Relation) and parsed.qualified_name == "pg_catalog.orders"
    assert parsed.columns[1] == RelationColumn("price", 1700, 655366, False) and parsed.replica_identity == "f"
    assert parse_message(type_message(16500, "legacy", "mood")) == TypeInfo(16500, "legacy", "mood")
    assert parse_message(insert(42, ["1", None, "ünïcödé ☕"])) == Insert(42, ("1", None, "ünïcödé ☕"))
    assert parse_message(update(42, ["1", "2.00", UNKNOWN])) == Update(42, None, None, ("1", "2.00", UNKNOWN))
    assert parse_message(update(42, ["1", "2", "x"], ["1", "1", "x"], "O")) == Update(
        42, "O", ("1", "1", "x"), ("1", "2", "x"))
    assert parse_message(delete(42, ["1", None, None])) == Delete(42, "K", ("1", None, None))
    assert parse_message(truncate([1, 2, 3], options=3)) == Truncate((1, 2, 3), cascade=True, restart_identity=True)
    assert parse_message(message("p", b"\x00\xff", transactional=False, lsn=9)) == Message(False, 9, "p", b"\x00\xff")
    assert parse_message(memoryview(insert(1, [""]))) == Insert(1, ("",))  # psycopg may hand out memoryviews


def test_an_empty_text_value_is_not_null_and_unchanged_toast_is_unknown() -> None:
    parsed = parse_message(insert(1, ["", None, UNKNOWN]))
    assert isinstance(parsed, Insert)
    assert parsed.new[0] == "" and parsed.new[1] is None and parsed.new[2] is UNKNOWN


@pytest.mark.parametrize(("data", "says"), [
    (b"", "empty"),
    (b"S\x00\x00\x00\x01\x01", "streaming"),
    (b"c\x00\x00\x00\x01", "streaming"),
    (b"P" + bytes(20), "two_phase"),
    (b"Z", "unknown message type 'Z'"),
    (RECORDED_BEGIN[:-2], "ends early"),
    (RECORDED_COMMIT + b"\x00", "byte(s) after its end"),
    (b"I\x00\x00\x00\x01N\x00\x01b\x00\x00\x00\x01x", "'binary' option"),
    (b"I\x00\x00\x00\x01N\x00\x01t\x00\x00\x00\x09abc", "runs past the end"),
    (b"I\x00\x00\x00\x01N\x00\x01q", "column value kind 'q'"),
    (b"I\x00\x00\x00\x01X\x00\x00", "tuple marker"),
    (b"U\x00\x00\x00\x01K\x00\x00X\x00\x00", "new tuple marker"),
    (b"D\x00\x00\x00\x01N\x00\x00", "old tuple marker"),
    (relation(1, "s", "t", "x", []), "replica identity 'x'"),
    (b"R\x00\x00\x00\x01no-terminator", "ends early"),
    (b"I\x00\x00\x00\x01N\x00\x01t\x00\x00\x00\x01\xff", "bad bytes"),
])
def test_malformed_messages_raise_decode_errors_naming_the_lsn(data: bytes, says: str) -> None:
    with pytest.raises(PgOutputDecodeError, match="0/2A") as caught:
        parse_message(data, lsn=0x2A)
    assert says in str(caught.value)
    assert isinstance(caught.value, DecodeError) and caught.value.lsn == 0x2A


def test_lsn_notation_round_trips() -> None:
    for lsn in (0, 0x16B3748, (0x1A << 32) | 0xFFFFFFFF):
        assert parse_lsn(lsn_text(lsn)) == lsn
    assert lsn_text(0x16B3748) == "0/16B3748"
    with pytest.raises(ValueError, match="expected an LSN"):
        parse_lsn("16B3748")
