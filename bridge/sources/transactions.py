"""Reassemble legacy transactions from Debezium's per-table topics and its transaction topic.

Debezium writes each row change to its table's topic and BEGIN/END markers to `<prefix>.transaction`;
a consumer sees them interleaved. A transaction is complete when its END has arrived and every row it
counts is in hand. Completed transactions are released in the order of their END markers, which
Debezium writes in commit order on a single-partition topic: that is the commit order (raw LSNs are
not ordered across transactions, and `source.sequence[0]` names the previous commit).

A record that cannot be decoded still counts toward its transaction when its transaction block could
be read (`add_undecodable`): the transaction completes, is translated without that row, and carries
it in `dead_lettered`, so its dead letter and its offset go with the transaction, in commit order.
Otherwise one bad row would hold its transaction's END, and every transaction after it, forever.

Pure state machine: the caller supplies the records and the current monotonic time.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from bridge.changes import Op, RowChange, SourcePosition, Transaction
from bridge.errors import ChangeError
from bridge.sources.debezium.records import ChangeRecord, DecodedRecord, TransactionMarker

RecordRef = tuple[Hashable, int]  # (topic partition, offset)
# What head_missing names when no END waits: the next transaction to release needs its END marker first.
END_MARKER = "<END marker>"


class TransactionIncomplete(ChangeError):
    """A transaction's rows did not all arrive in time; later transactions cannot be released."""


@dataclass(frozen=True, slots=True)
class TransactionPlace:
    """Where an undecodable row sits in its transaction, read leniently from its transaction block."""

    xid: int
    total_order: int
    data_collection: str  # "schema.table" as END markers count it, or "" when unknown
    change_lsn: int | None  # source.lsn, which keeps its neighbours' ordinals (and event ids) stable


@dataclass(frozen=True, slots=True)
class _Undecodable:
    place: TransactionPlace
    payload: Any  # the caller's, handed back in AssembledTransaction.dead_lettered

    @property
    def data_collection(self) -> str:
        return self.place.data_collection or "<undecodable>"


@dataclass(frozen=True, slots=True)
class AssembledTransaction:
    transaction: Transaction
    records: tuple[RecordRef, ...]  # every Kafka record it was built from, markers included
    dead_lettered: tuple[Any, ...] = ()  # payloads of its undecodable rows, in transaction order: incomplete


@dataclass(slots=True)
class _Pending:
    xid: int
    rows: dict[int, tuple[ChangeRecord | _Undecodable, RecordRef]] = field(default_factory=dict)  # by total_order
    end: TransactionMarker | None = None
    markers: list[RecordRef] = field(default_factory=list)
    # Undecodable records whose place a decoded row holds: dead-lettered with the transaction, not counted.
    outranked: list[tuple[_Undecodable, RecordRef]] = field(default_factory=list)
    first_seen: float = 0.0
    end_seen: float = 0.0


class TransactionAssembler:
    """Feed decoded records in; take complete transactions out, in commit order."""

    def __init__(self, *, max_wait_s: float = 60.0) -> None:
        self._pending: dict[int, _Pending] = {}
        self._end_order: OrderedDict[int, None] = OrderedDict()  # xids whose END arrived, in arrival order
        self._max_wait_s = max_wait_s
        self._last_release: float | None = None  # when a transaction was last released

    def add(self, ref: RecordRef, record: DecodedRecord, now: float) -> list[AssembledTransaction]:
        """Take one record; return the transactions it completes (possibly none)."""
        if isinstance(record, TransactionMarker):
            pending = self._pending_for(record.xid, now)
            pending.markers.append(ref)
            if record.status == "END" and pending.end is None:
                pending.end = record
                pending.end_seen = now
                self._end_order[record.xid] = None
            return self._release(now)
        if isinstance(record, ChangeRecord):
            if record.total_order is None or record.xid is None:
                # No transaction block: a snapshot read, or a connector without transaction metadata.
                return [_standalone(record, ref)]
            pending = self._pending_for(record.xid, now)
            previous = pending.rows.get(record.total_order)
            if previous is not None and isinstance(previous[0], _Undecodable):
                pending.outranked.append(previous)  # type: ignore[arg-type]
            pending.rows[record.total_order] = (record, ref)  # a re-sent row replaces its first copy
            return self._release(now) if record.xid in self._end_order else []
        raise TypeError(f"not a change or transaction marker: {record!r}")

    def add_undecodable(self, ref: RecordRef, place: TransactionPlace, payload: Any, now: float
                        ) -> list[AssembledTransaction]:
        """Take a row that could not be decoded: it counts toward its transaction, which is then released
        without it, carrying `payload` in `dead_lettered`. It never replaces a decoded row."""
        pending = self._pending_for(place.xid, now)
        previous = pending.rows.get(place.total_order)
        if previous is not None and isinstance(previous[0], ChangeRecord):
            # Two records claim one place: keep the one that decoded, dead-letter this one with the transaction.
            pending.outranked.append((_Undecodable(place, payload), ref))
        else:
            pending.rows[place.total_order] = (_Undecodable(place, payload), ref)
        return self._release(now) if place.xid in self._end_order else []

    def _pending_for(self, xid: int, now: float) -> _Pending:
        pending = self._pending.get(xid)
        if pending is None:
            pending = self._pending[xid] = _Pending(xid=xid, first_seen=now)
        return pending

    def _release(self, now: float) -> list[AssembledTransaction]:
        released = []
        while self._end_order:
            xid = next(iter(self._end_order))
            pending = self._pending[xid]
            assert pending.end is not None
            if len(pending.rows) < (pending.end.event_count or 0):
                break
            del self._end_order[xid]
            del self._pending[xid]
            released.append(_assemble(pending))
        if released:
            self._last_release = now
        return released

    def check_stalled(self, now: float) -> None:
        """Raise if transactions wait and none has completed for longer than allowed.

        Waiting alone is not stalling: while a backlog is drained, Kafka may hand out one topic's
        records long before another's, so a transaction can wait minutes for its END or its rows while
        others keep completing. The bridge gives up only when nothing completes at all.
        """
        # Entries are kept in the order they were first seen, so the first one is the oldest.
        oldest = next(iter(self._pending.values()), None)
        if oldest is None:
            return
        since = max(oldest.first_seen, self._last_release or oldest.first_seen)
        if now - since <= self._max_wait_s:
            return
        if not self._end_order:
            raise TransactionIncomplete(_no_end_message(oldest, now - oldest.first_seen))
        # What blocks is the first END received that cannot be released, whichever rows came first.
        head, *behind = (self._pending[xid] for xid in self._end_order)
        incomplete_behind = [p.xid for p in behind if not _complete(p)]
        raise TransactionIncomplete(_stall_message(head, now - head.end_seen, len(behind) - len(incomplete_behind),
                                                   incomplete_behind))

    def open_transactions(self) -> int:
        return len(self._pending)

    def head_missing(self) -> frozenset[str] | None:
        """What the transaction next in commit order still lacks: {END_MARKER} while no END waits, else
        the data collections ("schema.table") whose rows its END counts and which have not all arrived;
        None when its END's counts cannot tell (they do not add up to its event count)."""
        if not self._end_order:
            return frozenset((END_MARKER,))
        head = self._pending[next(iter(self._end_order))]
        assert head.end is not None
        counts = head.end.per_table_counts
        if not counts or sum(counts.values()) != head.end.event_count:
            return None
        have = Counter(record.data_collection for record, _ref in head.rows.values())
        missing = frozenset(collection for collection, count in counts.items() if have[collection] < count)
        return missing or None  # incomplete, yet every table counted arrived: rows sit under other names


def _complete(pending: _Pending) -> bool:
    return pending.end is not None and len(pending.rows) >= (pending.end.event_count or 0)


def _no_end_message(pending: _Pending, waited: float) -> str:
    have = _sorted_counts(record.data_collection for record, _ref in pending.rows.values())
    return (f"transaction xid {pending.xid}: {len(pending.rows)} row(s) arrived {have} but no END marker in "
            f"{waited:.0f}s, and no transaction has an END waiting. Is the transaction topic subscribed, and "
            "provide.transaction.metadata=true on the connector? If this END will never come (rows copied "
            f"from elsewhere), set source.skip_transactions: [{pending.xid}] and restart: its rows are then "
            "dead-lettered, not translated.")


def _stall_message(head: _Pending, waited: float, complete_behind: int, incomplete_behind: list[int]) -> str:
    """Exactly what blocks: the head's END counts and what arrived, per table, what is missing, what to do."""
    end = head.end
    assert end is not None
    have = _sorted_counts(record.data_collection for record, _ref in head.rows.values())
    undecodable = sum(isinstance(record, _Undecodable) for record, _ref in head.rows.values())
    expected = dict(sorted(end.per_table_counts.items()))
    missing = [f"{count - have.get(table, 0)} of {table}" for table, count in expected.items()
               if count > have.get(table, 0)]
    if not missing:  # the END names no tables, or its per-table counts do not add up
        missing = [f"{(end.event_count or 0) - len(head.rows)} change(s)"]
    skip = [head.xid, *incomplete_behind]
    return (
        f"transaction xid {head.xid} is next in commit order (END at {end.source_ref}, commit LSN "
        f"{_lsn_text(end.lsn)}) and incomplete after {waited:.0f}s: END counts {end.event_count} change(s) "
        f"{expected}, {len(head.rows)} arrived {have}"
        + (f" ({undecodable} of them undecodable, dead-lettered with the transaction)" if undecodable else "")
        + f"; missing: {', '.join(missing)}. {complete_behind} complete transaction(s) wait behind it"
        + (f"; also incomplete behind it: xid(s) {', '.join(map(str, incomplete_behind))}" if incomplete_behind else "")
        + ". Nothing of it was published and offsets stay uncommitted. Causes: a table whose topic the bridge "
        "does not read (it reads the topics of mapped tables only), an SMT that dropped rows (Debezium counts "
        "before SMTs run), or rows whose offsets were committed without them: dead-lettered as undecodable by "
        "an older cdc-bridge (look for them in the dead-letter topic). Fix the cause and restart; if the "
        f"missing rows will never come, move past these transactions: set source.skip_transactions: {skip}, "
        "restart (their rows are dead-lettered, not translated), then remove the setting.")


def _sorted_counts(names: Any) -> dict[str, int]:
    return dict(sorted(Counter(names).items()))


def _lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def _assemble(pending: _Pending) -> AssembledTransaction:
    assert pending.end is not None
    ordered = [pending.rows[order] for order in sorted(pending.rows)]
    items = [record for record, _ref in ordered]
    decoded = [record for record in items if isinstance(record, ChangeRecord)]
    changes = _to_changes(_merge_key_changes(items), pending.end.lsn)
    commit_time = pending.end.commit_time if pending.end.commit_time else (
        decoded[0].commit_time if decoded else None)
    transaction = Transaction(xid=pending.xid, commit_lsn=pending.end.lsn, commit_time=commit_time,
                              changes=tuple(changes))
    refs = [ref for _record, ref in ordered] + pending.markers + [ref for _record, ref in pending.outranked]
    dead_lettered = [record.payload for record in items if isinstance(record, _Undecodable)]
    dead_lettered += [record.payload for record, _ref in pending.outranked]
    return AssembledTransaction(transaction, tuple(sorted(refs, key=lambda r: (str(r[0]), r[1]))),
                                tuple(dead_lettered))


_Item = ChangeRecord | tuple[ChangeRecord, ChangeRecord] | _Undecodable


def _merge_key_changes(records: list[ChangeRecord | _Undecodable]) -> list[_Item]:
    """A primary-key change arrives as DELETE(newkey header) then CREATE(oldkey header): make it one change."""
    result: list[_Item] = []
    for record in records:
        previous = result[-1] if result else None
        if (isinstance(record, ChangeRecord) and record.op is Op.CREATE and record.old_key is not None and isinstance(previous, ChangeRecord)
                and previous.op is Op.DELETE and previous.new_key is not None and previous.table == record.table):
            result[-1] = (previous, record)
        else:
            result.append(record)
    return result


def _to_changes(items: list[_Item], commit_lsn: int) -> list[RowChange]:
    changes = []
    same_lsn: Counter[int] = Counter()
    for item in items:
        if isinstance(item, _Undecodable):  # no change, but it holds its ordinal among rows of its LSN
            if item.place.change_lsn is not None:
                same_lsn[item.place.change_lsn] += 1
            continue
        if isinstance(item, tuple):
            deleted, created = item
            change = _row_change(created, commit_lsn, same_lsn, op=Op.UPDATE, before=deleted.before,
                                 old_key=deleted.key)
        else:
            change = _row_change(item, commit_lsn, same_lsn)
        changes.append(change)
    return changes


def _row_change(record: ChangeRecord, commit_lsn: int, same_lsn: Counter[int], *, op: Op | None = None,
                before: object = ..., old_key: object = None) -> RowChange:
    seq = same_lsn[record.change_lsn]
    same_lsn[record.change_lsn] += 1
    return RowChange(
        op=op or record.op,
        schema=record.schema,
        table=record.table,
        key=record.key,
        before=record.before if before is ... else before,  # type: ignore[arg-type]
        after=record.after,
        position=SourcePosition(commit_lsn, record.change_lsn, seq),
        commit_time=record.commit_time,
        xid=record.xid,
        old_key=old_key,  # type: ignore[arg-type]
        message=record.message,
        source_ref=record.source_ref,
    )


def _standalone(record: ChangeRecord, ref: RecordRef) -> AssembledTransaction:
    """A row outside any transaction block forms a transaction of its own."""
    if record.op is Op.READ:
        # Every row of a snapshot shares one LSN; a stable hash of table and key tells them apart, so a
        # replay of the same snapshot gives the same event ids.
        digest = hashlib.blake2b(json.dumps([record.table, record.key], sort_keys=True, default=str).encode(),
                                 digest_size=7).digest()
        position = SourcePosition(record.change_lsn, record.change_lsn, int.from_bytes(digest, "big"))
    else:
        # Without transaction metadata the commit LSN is unknown; the change's own LSN stands in.
        position = SourcePosition(record.change_lsn, record.change_lsn, 0)
    change = RowChange(op=record.op, schema=record.schema, table=record.table, key=record.key,
                       before=record.before, after=record.after, position=position,
                       commit_time=record.commit_time, xid=record.xid, message=record.message,
                       source_ref=record.source_ref)
    transaction = Transaction(xid=record.xid, commit_lsn=position.commit_lsn, commit_time=record.commit_time,
                              changes=(change,))
    return AssembledTransaction(transaction, (ref,))
