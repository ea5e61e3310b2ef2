"""Spill a large pgoutput transaction to disk: its raw messages in a temporary file, decoded again when read.

A transaction with more changes than the policy's limit is not held in memory. From that point the
assembler writes each raw pgoutput message of it (with the LSN it arrived at and the ordinal of its first
change at that LSN) to a temporary file, and decodes it only to check it: a value that cannot be decoded
still fails the whole transaction at its Commit, as in memory. At the Commit the transaction's changes are a
:class:`SpilledChanges`: iterating it decodes the messages again, in order, each with the Relation message
in force where it was written, so it yields exactly the RowChanges the in-memory path builds. No row codec
is involved: what is stored is what PostgreSQL sent.

The file is owner-only and unlinked from the start (O_TMPFILE, or created and removed at once): no crash,
not even kill -9, leaves it behind, and its space is freed when the transaction is closed. What stays in
memory per change is 12 bytes: its record's offset and its ordinal in its table's list.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bridge.changes import Op, RowChange, SourcePosition
from bridge.errors import BridgeError, ConfigurationError
from bridge.private_files import make_private_directories
from bridge.sources.pgoutput.changes import PgOutputAssembler, RelationPlan, row_changes_of
from bridge.sources.pgoutput.protocol import (
    Commit,
    Delete,
    Insert,
    Message,
    PgOutputDecodeError,
    PgOutputMessage,
    Relation,
    Truncate,
    Update,
    lsn_text,
    parse_message,
)
from bridge.sources.pgoutput.values import UserType

log = logging.getLogger(__name__)

_RECORD = struct.Struct("!QIi")  # LSN, ordinal of the message's first change at that LSN, payload length
_READ_BLOCK = 1 << 20
_GUESS = 1024  # a random read fetches this much first: most records fit, one read instead of two
_CACHED_CHANGES = 1024  # changes read back at random kept decoded (a collect probing one row many times)


@dataclass(frozen=True, slots=True)
class SpillPolicy:
    """Hold a transaction on disk once it has more than `changes` changes, in a file under `directory`."""

    changes: int
    directory: Path

    def prepare(self) -> None:
        """Create the directory and try a spill file there, so a wrong path stops the start, not a transaction."""
        try:
            SpillFile(self.directory).close()
        except SpillFailed as exc:
            raise ConfigurationError(f"{exc.reason}: choose a directory the bridge's user may write "
                                     "(pipeline.spill_path)") from None

    def spool(self, xid: int, relations: dict[int, Relation], user_types: Mapping[int, UserType],
              primary_keys: Mapping[str, Sequence[str]] | None) -> TransactionSpool:
        """What the assembler keeps for one open transaction (it calls this at the transaction's first message)."""
        return TransactionSpool(self, xid, relations, user_types, primary_keys)


class SpillFailed(BridgeError):
    """The spill file of a large transaction could not be created or written (a full or unwritable disk)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"{reason}. Free space there or point pipeline.spill_path at a writable directory with room")
        self.reason = reason


class SpillFile:
    """Records (lsn, seq, payload) appended to an unnamed owner-only temporary file, read back by offset."""

    def __init__(self, directory: Path) -> None:
        self._where = directory
        try:
            make_private_directories(directory)
            self._file = tempfile.TemporaryFile(dir=directory)  # mode 0600, and no name: nothing to leave behind
        except OSError as exc:
            raise self._failed("create", exc) from exc
        self._fd = self._file.fileno()
        self.size = 0

    def append(self, lsn: int, seq: int, payload: bytes) -> int:
        """Write one record; returns its offset."""
        offset = self.size
        try:
            self._file.write(_RECORD.pack(lsn, seq, len(payload)))
            self._file.write(payload)
        except OSError as exc:
            raise self._failed("write", exc) from exc
        self.size += _RECORD.size + len(payload)
        return offset

    def finish(self) -> None:
        """Make everything appended readable."""
        try:
            self._file.flush()
        except OSError as exc:
            raise self._failed("write", exc) from exc

    def read_at(self, offset: int) -> tuple[int, int, bytes]:
        data = os.pread(self._fd, _GUESS, offset)
        lsn, seq, size = _RECORD.unpack_from(data)
        end = _RECORD.size + size
        if end > len(data):
            data = os.pread(self._fd, end, offset)
        return lsn, seq, data[_RECORD.size:end]

    def records(self) -> Iterator[tuple[int, int, int, bytes]]:
        """Every record in order as (offset, lsn, seq, payload), read a block at a time."""
        offset = 0
        while offset < self.size:
            data = os.pread(self._fd, max(_READ_BLOCK, _RECORD.size), offset)
            pos = 0
            while pos + _RECORD.size <= len(data):
                lsn, seq, size = _RECORD.unpack_from(data, pos)
                end = pos + _RECORD.size + size
                if end > len(data):
                    if pos == 0:  # one record larger than a block: read exactly it
                        data = os.pread(self._fd, end, offset)
                        continue
                    break
                yield offset + pos, lsn, seq, data[pos + _RECORD.size:end]
                pos = end
            offset += pos

    def close(self) -> None:
        self._file.close()

    def _failed(self, what: str, exc: OSError) -> SpillFailed:
        return SpillFailed(f"cannot {what} the spill file of a large transaction in {self._where}: "
                           f"{exc.strerror or exc}")


# An assembled change before it becomes a RowChange (see changes.py):
# (op, plan or message, key, before, after, old_key, change_lsn, seq)
Item = tuple[Any, ...]


class _Replayer:
    """Decodes spilled messages again, each with the Relation message in force at its offset."""

    def __init__(self, relations: Mapping[int, Relation], user_types: Mapping[int, UserType],
                 primary_keys: Mapping[str, Sequence[str]] | None) -> None:
        self._versions: dict[int, tuple[list[int], list[Relation]]] = {
            relation_id: ([-1], [relation]) for relation_id, relation in relations.items()}
        self._user_types, self._primary_keys = user_types, primary_keys
        self._plans: dict[tuple[int, int], RelationPlan] = {}

    def note_relation(self, offset: int, relation: Relation) -> None:
        offsets, relations = self._versions.setdefault(relation.relation_id, ([], []))
        offsets.append(offset)
        relations.append(relation)

    def items(self, offset: int, lsn: int, seq: int, payload: bytes) -> list[Item]:
        message = parse_message(payload, lsn)
        if isinstance(message, (Insert, Update, Delete)):
            return [PgOutputAssembler._row_change(self._plan(message.relation_id, offset, lsn), lsn, message, seq)]
        if isinstance(message, Truncate):
            return [(Op.TRUNCATE, self._plan(relation_id, offset, lsn), None, None, None, None, lsn, seq + k)
                    for k, relation_id in enumerate(message.relation_ids)]
        if isinstance(message, Message):
            return [(Op.MESSAGE, message, {"prefix": message.prefix}, None, None, None, lsn, seq)]
        return []  # Relation (already noted by offset), Type, Origin: no change

    def _plan(self, relation_id: int, offset: int, lsn: int) -> RelationPlan:
        offsets, relations = self._versions[relation_id]  # it decoded on arrival, so its Relation is known
        version = bisect_left(offsets, offset) - 1
        plan = self._plans.get((relation_id, version))
        if plan is None:
            plan = self._plans[(relation_id, version)] = RelationPlan(
                relations[version], self._user_types, self._primary_keys, lsn)
        return plan


class TransactionSpool:
    """One open transaction's raw messages in a SpillFile, once it has more changes than the policy's limit.

    Up to the limit the assembler keeps the raw messages itself (a list append per message); then it hands them
    to :meth:`spill`, calls :meth:`before` and :meth:`after` around each further message of the transaction it
    applies, and :meth:`finish` at its Commit.
    """

    __slots__ = ("_by_table", "_file", "_last_lsn", "_newest", "_offsets", "_policy", "_primary_keys",
                 "_relations", "_replayer", "_user_types", "_xid")

    def __init__(self, policy: SpillPolicy, xid: int, relations: dict[int, Relation],
                 user_types: Mapping[int, UserType], primary_keys: Mapping[str, Sequence[str]] | None) -> None:
        self._policy, self._xid = policy, xid
        self._relations = relations  # the assembler's own
        self._user_types, self._primary_keys = user_types, primary_keys
        self._file: SpillFile | None = None

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def before(self, lsn: int, payload: bytes, message: PgOutputMessage, seen: dict[int, int]) -> None:
        """Before the assembler applies `message`: bound the ordinal counts (and check the LSN order)."""
        if isinstance(message, Commit) or (isinstance(message, Message) and not message.transactional):
            return
        if lsn != self._last_lsn:
            if lsn < self._last_lsn:
                raise PgOutputDecodeError(
                    f"message at LSN {lsn_text(lsn)} after one at {lsn_text(self._last_lsn)} in transaction xid "
                    f"{self._xid}: expected a transaction's changes in LSN order, as PostgreSQL decodes them", lsn)
            # Changes arrive in LSN order, so an earlier LSN's count is never needed again; without this the
            # counts alone would grow with the transaction.
            seen.clear()
            self._last_lsn = lsn

    def after(self, lsn: int, payload: bytes, message: PgOutputMessage, items: list[Item]) -> None:
        """After the assembler applied `message`; `items` holds the open transaction's decoded changes."""
        self._write(lsn, payload, message if isinstance(message, Relation) else None, items)
        items.clear()

    def spill(self, raw: list[tuple[int, bytes]], relations_at_begin: dict[int, Relation] | None,
              items: list[Item]) -> None:
        """Go to disk: `raw` holds (lsn, payload) of every message of the transaction so far, `items` the changes
        decoded from them; `relations_at_begin` the relations before a Relation message among them changed one
        (None: none did)."""
        self._file = SpillFile(self._policy.directory)
        self._replayer = _Replayer(relations_at_begin or self._relations, self._user_types, self._primary_keys)
        self._offsets = array("q")  # per change: the offset of the record it was decoded from
        self._by_table: dict[tuple[str, str], array[int]] = {}  # (schema, table) -> ordinals of its changes
        self._newest = (0, 0)  # (change_lsn, seq) of the newest change
        first = 0
        for lsn, payload in raw:
            produced = _changes_in(payload)
            relation = parse_message(payload, lsn) if payload[0] == 0x52 else None
            self._write(lsn, payload, relation, items[first:first + produced])  # type: ignore[arg-type]
            first += produced
        assert first == len(items), f"{first} changes in the raw messages, {len(items)} decoded"
        items.clear()
        self._last_lsn = raw[-1][0]
        log.info("large transaction spilled to disk", extra={
            "xid": self._xid, "changes": len(self._offsets), "directory": str(self._policy.directory)})

    def _write(self, lsn: int, payload: bytes, relation: Relation | None, items: list[Item]) -> None:
        assert self._file is not None
        offset = self._file.append(lsn, items[0][7] if items else 0, payload)
        if relation is not None:
            self._replayer.note_relation(offset, relation)
        for item in items:
            ordinal = len(self._offsets)
            self._offsets.append(offset)
            table = ("", "") if item[0] is Op.MESSAGE else (item[1].schema, item[1].table)
            ordinals = self._by_table.get(table)
            if ordinals is None:
                ordinals = self._by_table[table] = array("I")
            ordinals.append(ordinal)
            if (item[6], item[7]) > self._newest:
                self._newest = (item[6], item[7])

    def finish(self, commit_lsn: int, commit_time: datetime, xid: int) -> SpilledChanges:
        assert self._file is not None
        self._file.finish()
        log.info("large transaction committed", extra={
            "xid": xid, "changes": len(self._offsets), "spilled_bytes": self._file.size})
        newest = SourcePosition(commit_lsn, *self._newest)
        return SpilledChanges(self._file, self._replayer, self._offsets, self._by_table, newest, commit_time, xid)

    def close(self) -> None:
        """The transaction is abandoned (a decode error, a dropped connection): free its file."""
        if self._file is not None:
            self._file.close()


def _changes_in(payload: bytes) -> int:
    """How many changes the assembler made of a message of the open transaction (it decoded without error)."""
    kind = payload[0]
    if kind in b"IUDM":  # a Message reaching the spool is transactional
        return 1
    if kind == 0x54:  # 'T': one per table
        return int.from_bytes(payload[1:5], "big")
    return 0  # Relation, Type, Origin


class SpilledChanges(Sequence[RowChange]):
    """A committed transaction's changes on disk (a bridge.changes.StoredChanges): read back when iterated.

    Iteration decodes every record once, in order. Indexing (``changes[i]``) and :meth:`of_table` read single
    changes back; the last few read that way stay decoded, so a collect probing one row many times is cheap.
    """

    def __init__(self, file: SpillFile, replayer: _Replayer, offsets: array[int],
                 by_table: dict[tuple[str, str], array[int]], newest_position: SourcePosition,
                 commit_time: datetime, xid: int) -> None:
        self._file, self._replayer, self._offsets, self._by_table = file, replayer, offsets, by_table
        self.newest_position = newest_position
        self._commit_lsn, self._commit_time, self._xid = newest_position.commit_lsn, commit_time, xid
        self._cache: OrderedDict[int, RowChange] = OrderedDict()

    def __len__(self) -> int:
        return len(self._offsets)

    def __iter__(self) -> Iterator[RowChange]:
        for offset, lsn, seq, payload in self._file.records():
            yield from row_changes_of(self._replayer.items(offset, lsn, seq, payload), self._commit_lsn,
                                      self._commit_time, self._xid)

    def __getitem__(self, ordinal: int) -> RowChange:  # type: ignore[override]  (no slices)
        if isinstance(ordinal, slice):
            raise TypeError("spilled changes are read back one at a time or in order (iterate them), not sliced")
        if ordinal < 0:
            ordinal += len(self._offsets)
        cached = self._cache.get(ordinal)
        if cached is not None:
            self._cache.move_to_end(ordinal)
            return cached
        offset = self._offsets[ordinal]  # IndexError past the end, as a sequence should
        lsn, seq, payload = self._file.read_at(offset)
        within = ordinal - bisect_left(self._offsets, offset)  # a Truncate of several tables is one record
        change = row_changes_of(self._replayer.items(offset, lsn, seq, payload), self._commit_lsn,
                                self._commit_time, self._xid)[within]
        self._cache[ordinal] = change
        if len(self._cache) > _CACHED_CHANGES:
            self._cache.popitem(last=False)
        return change

    def tables(self) -> list[tuple[str, str]]:
        return list(self._by_table)

    def of_table(self, schema: str, table: str) -> Sequence[RowChange]:
        return _TableChanges(self, self._by_table.get((schema, table), array("I")))

    def close(self) -> None:
        self._cache.clear()
        self._file.close()

    def __repr__(self) -> str:
        return f"SpilledChanges(xid={self._xid}, changes={len(self)}, bytes={self._file.size})"


class _TableChanges(Sequence[RowChange]):
    """One table's changes of a spilled transaction, read back on demand."""

    def __init__(self, changes: SpilledChanges, ordinals: array[int]) -> None:
        self._changes, self._ordinals = changes, ordinals

    def __len__(self) -> int:
        return len(self._ordinals)

    def __getitem__(self, index: int) -> RowChange:  # type: ignore[override]  (no slices)
        return self._changes[self._ordinals[index]]

    def __iter__(self) -> Iterator[RowChange]:
        changes = self._changes
        for ordinal in self._ordinals:
            yield changes[ordinal]
