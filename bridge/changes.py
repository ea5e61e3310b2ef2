"""The one internal shape every source produces: RowChange, grouped into Transaction.

Everything downstream of a source (mappings, events, sinks) sees only these types, so the same legacy
change yields the same domain events whichever source carried it (Debezium on Kafka, pgoutput read
directly, or a backfill snapshot).

Values in `before`, `after` and `key` are exact Python values: Decimal for numeric (never float),
int, str, bool, bytes, uuid.UUID, datetime.date, datetime.time, datetime.datetime (aware in UTC for
timestamptz, naive for timestamp without time zone), parsed JSON (dict/list/str/...) for json/jsonb,
lists for arrays. A value the source could not see (an unchanged TOAST column) is UNKNOWN, never a
placeholder string.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, Protocol


class Op(StrEnum):
    """Debezium's operation letters, used for every source."""

    READ = "r"  # snapshot read: state, not intent
    CREATE = "c"
    UPDATE = "u"
    DELETE = "d"
    TRUNCATE = "t"
    MESSAGE = "m"  # pg_logical_emit_message


class _Unknown:
    """A column value the change stream did not carry (unchanged TOAST, or absent from a key-only image)."""

    _instance: _Unknown | None = None

    def __new__(cls) -> _Unknown:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNKNOWN"

    def __reduce__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Final = _Unknown()


@dataclass(frozen=True, slots=True, order=True)
class SourcePosition:
    """Where a change sits in the legacy database's history; orders changes across transactions.

    commit_lsn: the end LSN of the transaction's commit record, its place in commit order (raw change
    LSNs are not ordered across transactions). Debezium carries it in the transaction topic's END marker
    ("<xid>:<lsn>"), pgoutput in Commit's end_lsn; note that Debezium's source.sequence[0] is the
    *previous* transaction's commit, so it is not used. 0 when the source has no transaction metadata.
    change_lsn: the start LSN of the change's WAL record, unique per record across the whole WAL.
    seq: the change's ordinal among changes of its transaction that share one WAL record (multi-row
    INSERT, COPY). (change_lsn, seq) identifies a change; both sources compute it identically.
    """

    commit_lsn: int
    change_lsn: int
    seq: int = 0

    def __str__(self) -> str:
        return f"{_lsn_text(self.commit_lsn)}/{_lsn_text(self.change_lsn)}#{self.seq}"


def _lsn_text(lsn: int) -> str:
    """PostgreSQL's notation, e.g. 0/16B3748."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """A pg_logical_emit_message payload (op 'm')."""

    prefix: str
    content: bytes
    transactional: bool


@dataclass(frozen=True, slots=True)
class RowChange:
    """One row-level change of one legacy table (or a truncate or logical message)."""

    op: Op
    schema: str
    table: str
    key: Mapping[str, Any] | None  # primary-key columns; None for truncates, messages, key-less tables
    before: Mapping[str, Any] | None  # full row only under REPLICA IDENTITY FULL; key-only or None otherwise
    after: Mapping[str, Any] | None
    position: SourcePosition
    commit_time: datetime  # aware, UTC; for snapshot reads, when the row was read
    xid: int | None
    old_key: Mapping[str, Any] | None = None  # set when an UPDATE changed the primary key
    message: LogicalMessage | None = None
    source_ref: str = field(default="", compare=False)  # where it came from (topic/partition/offset), for logs

    @property
    def qualified_table(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def is_snapshot(self) -> bool:
        return self.op is Op.READ


class StoredChanges(Protocol):
    """A large transaction's changes held outside memory (spilled to disk), read back when iterated.

    Iterating reads them in order in bounded memory; ``len`` is known without reading. Whoever takes such a
    transaction must not gather its changes into one list (translate it in slices) and must `close` it
    when done with it.
    """

    newest_position: SourcePosition  # the greatest change position, known without reading the changes back

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[RowChange]: ...

    def __getitem__(self, ordinal: int) -> RowChange: ...

    def tables(self) -> Collection[tuple[str, str]]:
        """(schema, table) of every table with changes in the transaction."""

    def of_table(self, schema: str, table: str) -> Sequence[RowChange]:
        """That table's changes, in order, read back on demand (an empty sequence when it has none)."""

    def close(self) -> None:
        """Release the storage; the changes cannot be read afterwards."""


@dataclass(frozen=True, slots=True)
class SnapshotMark:
    """Where a batch of snapshot reads (op r) came from: one consistent snapshot of the legacy tables.

    label: "initial" for the direct source's first snapshot, else the backfill run's id.
    cut_lsn: the snapshot's consistent point; live changes committed after it are not in it, all before are.
    epoch: 0, or the attempt number of a redone initial snapshot; part of the event ids, so that a redo's
    events never share an id with an interrupted attempt's (whose rows may have changed since).
    """

    label: str
    cut_lsn: int
    epoch: int = 0

    @property
    def cut_text(self) -> str:
        return _lsn_text(self.cut_lsn)


@dataclass(frozen=True, slots=True)
class Transaction:
    """All changes of one committed legacy transaction, in the order they were made.

    A snapshot read or a change without transaction metadata forms a transaction of its own. `changes` is a
    tuple, or for a transaction too large to hold in memory a :class:`StoredChanges` (pgoutput spills those
    to disk): iterate it, never gather it.

    `snapshot` is set for a batch of rows read from one consistent snapshot (backfill, the initial snapshot):
    each of its changes is translated as a transaction of its own, with ids from table and key (events.py).
    """

    xid: int | None
    commit_lsn: int
    commit_time: datetime
    changes: tuple[RowChange, ...] | StoredChanges
    snapshot: SnapshotMark | None = None

    def tables(self) -> set[str]:
        stored = getattr(self.changes, "tables", None)
        if stored is not None:
            return {table for _, table in stored()}
        return {change.table for change in self.changes}

    def newest_position(self) -> SourcePosition:
        """The greatest change position (the commit's own when there are no changes): where a source may
        acknowledge up to once the transaction is done. Never reads stored changes back."""
        changes = self.changes
        if type(changes) is tuple:  # (asked once per transaction: no getattr that fails on a tuple)
            if len(changes) == 1:
                return changes[0].position
        else:
            known = getattr(changes, "newest_position", None)
            if known is not None:
                return known
        if changes:
            return max(change.position for change in changes)
        return SourcePosition(self.commit_lsn, self.commit_lsn)
