"""The assembler's hot path (parse_fields: changes, Begin and Commit without message objects) against the general
path (parse_message): the same fields, the same refusals, the same transactions, in memory and spilled."""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bridge.changes import UNKNOWN, Transaction
from bridge.sources.pgoutput.changes import PgOutputAssembler
from bridge.sources.pgoutput.protocol import (
    Begin,
    Commit,
    Delete,
    Insert,
    PgOutputDecodeError,
    Update,
    parse_fields,
    parse_message,
    pg_timestamp,
)
from bridge.sources.pgoutput.spill import SpillPolicy
from tests.unit.test_pgoutput_changes import DEFAULT_ID, DEFAULT_TABLE, FULL_TABLE, KEYS, MOOD
from tests.unit.test_pgoutput_protocol import (
    RECORDED_BEGIN,
    RECORDED_COMMIT,
    RECORDED_INSERT,
    RECORDED_KEY_UPDATE,
    begin,
    commit,
    delete,
    insert,
    update,
)
from tests.unit.test_pgoutput_spill import mixed, stream

WHEN = datetime(2024, 2, 29, 12, 0, 0, 123456, tzinfo=UTC)


def as_fields(message: object) -> tuple[object, ...]:
    """What parse_fields should give for a parsed message."""
    if isinstance(message, Begin):
        return (66, message.final_lsn, message.commit_time, message.xid)
    if isinstance(message, Commit):
        return (67, message.flags, message.commit_lsn, message.end_lsn, message.commit_time)
    if isinstance(message, Insert):
        return (73, message.relation_id, None, None, message.new)
    if isinstance(message, Update):
        return (85, message.relation_id, message.old_kind, message.old, message.new)
    assert isinstance(message, Delete)
    return (68, message.relation_id, message.old_kind, message.old, None)


@pytest.mark.parametrize("data", [
    RECORDED_BEGIN, RECORDED_COMMIT, RECORDED_INSERT, RECORDED_KEY_UPDATE,
    begin(100, WHEN, 7), commit(100, 180, WHEN, flags=3), insert(42, ["1", None, "ünïcödé ☕", "", UNKNOWN]),
    update(42, ["1", "2.00", UNKNOWN]), update(42, ["1", "2", "x"], ["1", "1", "x"], "O"),
    update(42, ["3", "2", "x"], ["1", None, None], "K"), delete(42, ["1", None, None]),
    delete(42, ["1", "2", "x"], "O"), insert(42, []),
])
def test_parse_fields_reads_what_parse_message_reads(data: bytes) -> None:
    fields = parse_fields(data, 0x2A)
    if data[0] == ord("B"):  # the Begin's time stays µs: nothing on the hot path reads it
        fields = (*fields[:2], pg_timestamp(fields[2]), fields[3])
    assert fields == as_fields(parse_message(data, 0x2A))


@pytest.mark.parametrize("data", [
    RECORDED_BEGIN[:-2], RECORDED_BEGIN + b"\x00", RECORDED_COMMIT + b"\x00", RECORDED_COMMIT[:10],
    b"I\x00\x00\x00\x01N\x00\x01b\x00\x00\x00\x01x", b"I\x00\x00\x00\x01N\x00\x01t\x00\x00\x00\x09abc",
    b"I\x00\x00\x00\x01N\x00\x01q", b"I\x00\x00\x00\x01X\x00\x00", b"U\x00\x00\x00\x01K\x00\x00X\x00\x00",
    b"D\x00\x00\x00\x01N\x00\x00", b"I\x00\x00\x00\x01N\x00\x01t\x00\x00\x00\x01\xff", b"I\x00\x00",
    insert(1, ["a"]) + b"\x00", update(1, ["a"])[:-1], delete(1, ["a"], "O") + b"tail",
])
def test_parse_fields_refuses_what_parse_message_refuses_with_the_same_error(data: bytes) -> None:
    with pytest.raises(PgOutputDecodeError) as general:
        parse_message(data, 0x2A)
    with pytest.raises(PgOutputDecodeError) as fast:
        parse_fields(data, 0x2A)
    assert str(fast.value) == str(general.value) and fast.value.lsn == general.value.lsn == 0x2A


def test_a_begin_time_no_datetime_holds_raises_on_both_paths() -> None:
    for micros in (2**62, -(2**62)):
        data = b"B" + struct.pack("!QqI", 100, micros, 7)
        with pytest.raises(OverflowError):
            parse_message(data)
        with pytest.raises(OverflowError):
            parse_fields(data)


def assembled(spill_dir: Path | None, *, general: bool) -> list[Transaction]:
    """Two transactions of every kind of change (one past a spill limit of 5); `general`: each message parsed by
    the caller first, which takes the assembler's general path."""
    policy = None if spill_dir is None else SpillPolicy(5, spill_dir)
    assembler = PgOutputAssembler(user_types=[MOOD], primary_keys=KEYS, spill=policy)
    out = []
    frames = [(0x100, DEFAULT_TABLE), (0x100, FULL_TABLE), *stream(7, mixed(3)),
              (0x80000, DEFAULT_TABLE), *stream(8, mixed(40), start=0x90000)]  # (mixed widens the table)
    for lsn, payload in frames:
        message = parse_message(payload, lsn) if general else None
        if (tx := assembler.feed(lsn, payload, message=message)) is not None:
            out.append(tx)
    return out


@pytest.mark.parametrize("spills", [False, True])
def test_the_hot_path_assembles_what_the_general_path_assembles(tmp_path: Path, spills: bool) -> None:
    fast = assembled(tmp_path / "fast" if spills else None, general=False)
    general = assembled(tmp_path / "general" if spills else None, general=True)
    assert len(fast) == len(general) == 2
    for one, other in zip(fast, general, strict=True):
        assert (one.xid, one.commit_lsn, one.commit_time) == (other.xid, other.commit_lsn, other.commit_time)
        assert type(one.changes) is type(other.changes)
        assert list(one.changes) == list(other.changes) and len(one.changes) > 10
        assert [c.source_ref for c in one.changes] == [c.source_ref for c in other.changes]  # (not in ==)
        assert one.newest_position() == other.newest_position()
    assert (type(fast[1].changes) is not tuple) == spills  # the second went to disk when it could


def test_a_begin_inside_an_open_transaction_is_refused_on_both_paths() -> None:
    for general in (False, True):
        assembler = PgOutputAssembler(user_types=[MOOD], primary_keys=KEYS)
        assembler.feed(0x100, DEFAULT_TABLE)
        assembler.feed(0x200, begin(0x400, WHEN, 7))
        assembler.feed(0x240, insert(DEFAULT_ID, ["1", "1.00", "n", None, "happy"]))
        second = begin(0x800, WHEN, 8)
        with pytest.raises(PgOutputDecodeError, match="Begin of xid 8 .* while xid 7 is still open"):
            assembler.feed(0x280, second, message=parse_message(second) if general else None)
