"""Parse the messages of PostgreSQL's pgoutput logical replication plugin from their bytes.

    parse_message(data, lsn=0) ->
        Begin | Commit | Origin | Relation | TypeInfo | Insert | Update | Delete | Truncate | Message

One message is what one row of `pg_logical_slot_peek_binary_changes` holds in `data`, or the payload of
one XLogData ('w') of the streaming replication protocol. The layouts are those of PostgreSQL's
"Logical Replication Message Formats" (protocol versions 1 to 4). Versions 2+ only add fields to
streamed in-progress transactions (`streaming` option) and two-phase commit (`two_phase`); the bridge
asks for neither, so those messages are refused with a DecodeError that says which option to drop,
never skipped: a skipped Stream Start would make the next changes look committed.

Column values stay as PostgreSQL wrote them in text format (str), None for SQL NULL ('n'), and
UNKNOWN for an unchanged TOASTed value ('u'): the very marker bridge.changes uses for "the stream did
not carry this value", so nothing downstream has to translate it again. Binary-format values ('b',
the `binary` option) are refused: their layout depends on the server's types and build.

Pure and fast: no I/O, no clock; struct unpacks at fixed offsets, one pass over the bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from struct import Struct
from struct import error as StructError
from typing import Any

from bridge.changes import UNKNOWN
from bridge.errors import DecodeError

_I16 = Struct("!h")
_I32 = Struct("!i")
_U32 = Struct("!I")
_U64 = Struct("!Q")
_BEGIN = Struct("!QqI")  # final LSN, commit timestamp, xid
_COMMIT = Struct("!BQQq")  # flags, commit LSN, end LSN, commit timestamp
_MESSAGE_HEAD = Struct("!BQ")  # flags, LSN
_TRUNCATE_HEAD = Struct("!iB")  # relation count, options
_COLUMN_TYPE = Struct("!Ii")  # type OID, type modifier

# PostgreSQL timestamps count microseconds from 2000-01-01 00:00 UTC.
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

REPLICA_IDENTITY = {"d": "default", "n": "nothing", "f": "full", "i": "index"}


class PgOutputDecodeError(DecodeError):
    """A pgoutput message (or a value in it) is not what PostgreSQL writes; carries its LSN for logs."""

    def __init__(self, message: str, lsn: int, relation: str | None = None, column: str | None = None) -> None:
        super().__init__(message)
        self.lsn, self.relation, self.column = lsn, relation, column


def lsn_text(lsn: int) -> str:
    """PostgreSQL's notation, e.g. 0/16B3748."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """'0/16B3748' -> int, as pg_logical_slot_peek_binary_changes and pg_current_wal_lsn() print it."""
    high, _, low = text.partition("/")
    if not low:
        raise ValueError(f"expected an LSN like 0/16B3748, got {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


def pg_timestamp(micros: int) -> datetime:
    """A protocol timestamp (µs since 2000-01-01 UTC) as an aware UTC datetime."""
    return PG_EPOCH + timedelta(0, 0, micros)  # (positional: a third cheaper than microseconds=)


# The protocol timestamps pg_timestamp can represent (years 1..9999); others raise OverflowError there.
_MIN_MICROS = (datetime.min.replace(tzinfo=UTC) - PG_EPOCH) // timedelta(microseconds=1)
_MAX_MICROS = (datetime.max.replace(tzinfo=UTC) - PG_EPOCH) // timedelta(microseconds=1)


# --- the messages -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int  # where the commit record starts (Commit.commit_lsn)
    commit_time: datetime  # aware UTC
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int  # start of the commit record
    end_lsn: int  # end of the commit record: the transaction's place in commit order
    commit_time: datetime  # aware UTC


@dataclass(frozen=True, slots=True)
class Origin:
    """The transaction was replicated into this server from `name` (its commit LSN there)."""

    origin_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class RelationColumn:
    name: str
    type_oid: int
    type_modifier: int  # -1 when the type has none; numeric(10,2) is ((10 << 16) | 2) + 4
    is_identity: bool  # part of the replica identity (every column under REPLICA IDENTITY FULL)


@dataclass(frozen=True, slots=True)
class Relation:
    """A table's shape, sent before its first change in a session and again after it changes."""

    relation_id: int  # the table's OID
    namespace: str  # schema; "" stands for pg_catalog
    name: str
    replica_identity: str  # 'd' default, 'n' nothing, 'f' full, 'i' index
    columns: tuple[RelationColumn, ...]

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace or 'pg_catalog'}.{self.name}"


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """pgoutput's 'Y' message: a non-built-in type's name, sent before a relation that uses it."""

    type_oid: int
    namespace: str
    name: str


# A tuple's values in column order: str (text format), None (NULL) or UNKNOWN (unchanged TOAST).
TupleData = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Insert:
    relation_id: int
    new: TupleData


@dataclass(frozen=True, slots=True)
class Update:
    relation_id: int
    old_kind: str | None  # 'K' (replica identity columns only), 'O' (whole old row, FULL), None (not sent)
    old: TupleData | None
    new: TupleData


@dataclass(frozen=True, slots=True)
class Delete:
    relation_id: int
    old_kind: str  # 'K' or 'O'
    old: TupleData


@dataclass(frozen=True, slots=True)
class Truncate:
    relation_ids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class Message:
    """pg_logical_emit_message(transactional, prefix, content)."""

    transactional: bool
    lsn: int  # the message record's LSN as the server reports it (the end of that record)
    prefix: str
    content: bytes


PgOutputMessage = Begin | Commit | Origin | Relation | TypeInfo | Insert | Update | Delete | Truncate | Message


# --- parsing ----------------------------------------------------------------------------------------


def parse_message(data: bytes | bytearray | memoryview, lsn: int = 0) -> PgOutputMessage:
    """Parse one pgoutput message; raise PgOutputDecodeError (naming the LSN) if it is malformed.

    `lsn` is only used in error messages: where the message was received.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    if not data:
        raise PgOutputDecodeError(f"empty pgoutput message at LSN {lsn_text(lsn)}", lsn)
    kind = data[0]
    parser = _PARSERS.get(kind)
    if parser is None:
        raise PgOutputDecodeError(f"pgoutput message at LSN {lsn_text(lsn)}: {_unsupported(kind)}", lsn)
    return _parsed(parser, data, lsn)


def parse_fields(data: bytes, lsn: int = 0) -> tuple[Any, ...]:
    """A Begin, Commit, Insert, Update or Delete message's fields as a plain tuple, without building its message
    object (the assembler's hot path: a frozen dataclass costs more than parsing it), checked exactly as
    parse_message checks it and raising the same errors:

        B -> (66, final_lsn, commit timestamp in µs, xid)      (the µs, not a datetime: nothing reads it)
        C -> (67, flags, commit_lsn, end_lsn, commit_time)
        I, U, D -> (kind, relation_id, old_kind, old, new)   (old_kind and old None for I, new None for D)

    `data` must be bytes whose first byte is one of those kinds (the caller looked): others are parse_message's.
    """
    return _parsed(_FIELDS[data[0]], data, lsn)


def _parsed(parser: Callable[[bytes], tuple[Any, int]], data: bytes, lsn: int) -> Any:
    """Run one message's parser; raise PgOutputDecodeError (naming the LSN) if the message is malformed."""
    kind = data[0]
    try:
        message, end = parser(data)
    except PgOutputDecodeError:
        raise
    except _Malformed as exc:
        raise PgOutputDecodeError(f"malformed pgoutput {chr(kind)!r} message at LSN {lsn_text(lsn)}: {exc}",
                                  lsn) from None
    except (IndexError, ValueError, UnicodeDecodeError, StructError) as exc:
        raise PgOutputDecodeError(
            f"malformed pgoutput {chr(kind)!r} message at LSN {lsn_text(lsn)}: expected the layout of protocol "
            f"version 1 without streamed transactions, the message ends early or holds bad bytes ({exc})",
            lsn) from None
    if end != len(data):
        raise PgOutputDecodeError(
            f"malformed pgoutput {chr(kind)!r} message at LSN {lsn_text(lsn)}: {len(data) - end} byte(s) after "
            "its end (a streamed-transaction xid field? start replication without 'streaming')", lsn)
    return message


class _Malformed(ValueError):
    """A layout error with a precise description (kind byte, flag) rather than a short read."""


def _unsupported(kind: int) -> str:
    name = chr(kind) if 32 <= kind < 127 else f"0x{kind:02x}"
    if kind in b"SEcA":
        return (f"message {name!r} belongs to a streamed in-progress transaction; the bridge decodes committed "
                "transactions only: start replication without the 'streaming' option")
    if kind in b"bPKrp":
        return (f"message {name!r} belongs to two-phase commit; start replication without the 'two_phase' "
                "option")
    return f"unknown message type {name!r}; expected one of B C O R Y I U D T M"


def _cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(0, pos)
    return data[pos:end].decode(), end + 1


def _begin(data: bytes) -> tuple[Begin, int]:
    final_lsn, timestamp, xid = _BEGIN.unpack_from(data, 1)
    return Begin(final_lsn, pg_timestamp(timestamp), xid), 1 + _BEGIN.size


def _begin_fields(data: bytes) -> tuple[tuple[int, int, int, int], int]:
    final_lsn, timestamp, xid = _BEGIN.unpack_from(data, 1)
    if not _MIN_MICROS <= timestamp <= _MAX_MICROS:
        pg_timestamp(timestamp)  # the OverflowError _begin raises for a time no datetime holds
    return (66, final_lsn, timestamp, xid), 1 + _BEGIN.size


def _commit(data: bytes) -> tuple[Commit, int]:
    flags, commit_lsn, end_lsn, timestamp = _COMMIT.unpack_from(data, 1)
    return Commit(flags, commit_lsn, end_lsn, pg_timestamp(timestamp)), 1 + _COMMIT.size


def _commit_fields(data: bytes) -> tuple[tuple[int, int, int, int, datetime], int]:
    flags, commit_lsn, end_lsn, timestamp = _COMMIT.unpack_from(data, 1)
    return (67, flags, commit_lsn, end_lsn, pg_timestamp(timestamp)), 1 + _COMMIT.size


def _origin(data: bytes) -> tuple[Origin, int]:
    (origin_lsn,) = _U64.unpack_from(data, 1)
    name, end = _cstring(data, 9)
    return Origin(origin_lsn, name), end


def _relation(data: bytes) -> tuple[Relation, int]:
    (relation_id,) = _U32.unpack_from(data, 1)
    namespace, pos = _cstring(data, 5)
    name, pos = _cstring(data, pos)
    identity = chr(data[pos])
    if identity not in REPLICA_IDENTITY:
        raise _Malformed(f"replica identity {identity!r}: expected one of d, n, f, i")
    (count,) = _I16.unpack_from(data, pos + 1)
    pos += 3
    columns = []
    for _ in range(count):
        flags = data[pos]
        column, pos = _cstring(data, pos + 1)
        type_oid, modifier = _COLUMN_TYPE.unpack_from(data, pos)
        pos += 8
        columns.append(RelationColumn(column, type_oid, modifier, bool(flags & 1)))
    return Relation(relation_id, namespace, name, identity, tuple(columns)), pos


def _type(data: bytes) -> tuple[TypeInfo, int]:
    (type_oid,) = _U32.unpack_from(data, 1)
    namespace, pos = _cstring(data, 5)
    name, pos = _cstring(data, pos)
    return TypeInfo(type_oid, namespace, name), pos


def _tuple(data: bytes, pos: int) -> tuple[TupleData, int]:
    """TupleData: Int16 column count, then per column 'n' | 'u' | 't' Int32 length, bytes."""
    (count,) = _I16.unpack_from(data, pos)
    pos += 2
    values: list[Any] = []
    append = values.append
    unpack_length = _I32.unpack_from
    size = len(data)
    for _ in range(count):
        kind = data[pos]
        if kind == 116:  # 't'
            start = pos + 5
            pos = start + unpack_length(data, pos + 1)[0]
            if pos > size:
                raise _Malformed(f"a text value of {pos - start} bytes runs past the end of the message")
            append(data[start:pos].decode())
        elif kind == 110:  # 'n'
            append(None)
            pos += 1
        elif kind == 117:  # 'u'
            append(UNKNOWN)
            pos += 1
        elif kind == 98:  # 'b'
            raise _Malformed("a binary-format value ('b'): start replication without the 'binary' option")
        else:
            raise _Malformed(f"column value kind {chr(kind)!r}: expected 'n', 'u' or 't'")
    return tuple(values), pos


def _expect(data: bytes, pos: int, allowed: bytes, what: str) -> str:
    kind = data[pos]
    if kind not in allowed:
        raise _Malformed(f"{what}: expected one of {', '.join(map(chr, allowed))}, got {chr(kind)!r}")
    return chr(kind)


def _insert_fields(data: bytes) -> tuple[tuple[int, int, None, None, TupleData], int]:
    (relation_id,) = _U32.unpack_from(data, 1)
    _expect(data, 5, b"N", "tuple marker")
    new, end = _tuple(data, 6)
    return (73, relation_id, None, None, new), end


def _update_fields(data: bytes) -> tuple[tuple[int, int, str | None, TupleData | None, TupleData], int]:
    (relation_id,) = _U32.unpack_from(data, 1)
    marker = _expect(data, 5, b"KON", "tuple marker")
    old_kind: str | None = None
    old: TupleData | None = None
    pos = 6
    if marker != "N":
        old_kind = marker
        old, pos = _tuple(data, pos)
        _expect(data, pos, b"N", "new tuple marker")
        pos += 1
    new, end = _tuple(data, pos)
    return (85, relation_id, old_kind, old, new), end


def _delete_fields(data: bytes) -> tuple[tuple[int, int, str, TupleData, None], int]:
    (relation_id,) = _U32.unpack_from(data, 1)
    old_kind = _expect(data, 5, b"KO", "old tuple marker")
    old, end = _tuple(data, 6)
    return (68, relation_id, old_kind, old, None), end


def _insert(data: bytes) -> tuple[Insert, int]:
    (_, relation_id, _, _, new), end = _insert_fields(data)
    return Insert(relation_id, new), end


def _update(data: bytes) -> tuple[Update, int]:
    (_, relation_id, old_kind, old, new), end = _update_fields(data)
    return Update(relation_id, old_kind, old, new), end


def _delete(data: bytes) -> tuple[Delete, int]:
    (_, relation_id, old_kind, old, _), end = _delete_fields(data)
    return Delete(relation_id, old_kind, old), end


def _truncate(data: bytes) -> tuple[Truncate, int]:
    count, options = _TRUNCATE_HEAD.unpack_from(data, 1)
    pos = 1 + _TRUNCATE_HEAD.size
    ids = Struct(f"!{count}I").unpack_from(data, pos)
    return Truncate(tuple(ids), bool(options & 1), bool(options & 2)), pos + 4 * count


def _message(data: bytes) -> tuple[Message, int]:
    flags, lsn = _MESSAGE_HEAD.unpack_from(data, 1)
    prefix, pos = _cstring(data, 1 + _MESSAGE_HEAD.size)
    (length,) = _I32.unpack_from(data, pos)
    pos += 4
    content = data[pos:pos + length]
    if len(content) != length:
        raise _Malformed(f"content of {length} bytes runs past the end of the message")
    return Message(bool(flags & 1), lsn, prefix, content), pos + length


_PARSERS: dict[int, Callable[[bytes], tuple[PgOutputMessage, int]]] = {
    ord("B"): _begin, ord("C"): _commit, ord("O"): _origin, ord("R"): _relation, ord("Y"): _type,
    ord("I"): _insert, ord("U"): _update, ord("D"): _delete, ord("T"): _truncate, ord("M"): _message,
}
_FIELDS: dict[int, Callable[[bytes], tuple[tuple[Any, ...], int]]] = {
    ord("B"): _begin_fields, ord("C"): _commit_fields, ord("I"): _insert_fields, ord("U"): _update_fields,
    ord("D"): _delete_fields,
}
