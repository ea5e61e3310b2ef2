"""Reassemble legacy transactions from Debezium's per-table topics and its transaction topic.

Debezium writes each row change to its table's topic and BEGIN/END markers to `<prefix>.transaction`;
a consumer sees them interleaved. A transaction is complete when its END has arrived and every row it
counts is in hand. Completed transactions are released in the order of their END markers, which
Debezium writes in commit order on a single-partition topic: that is the commit order (raw LSNs are
not ordered across transactions, and `source.sequence[0]` names the previous commit).

Pure state machine: the caller supplies the records and the current monotonic time.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

from bridge.changes import Op, RowChange, SourcePosition, Transaction
from bridge.errors import ChangeError
from bridge.sources.debezium.records import ChangeRecord, DecodedRecord, TransactionMarker

RecordRef = tuple[Hashable, int]  # (topic partition, offset)


class TransactionIncomplete(ChangeError):
    """A transaction's rows did not all arrive in time; later transactions cannot be released."""


@dataclass(frozen=True, slots=True)
class AssembledTransaction:
    transaction: Transaction
    records: tuple[RecordRef, ...]  # every Kafka record it was built from, markers included


@dataclass(slots=True)
class _Pending:
    xid: int
    rows: dict[int, tuple[ChangeRecord, RecordRef]] = field(default_factory=dict)  # by total_order
    end: TransactionMarker | None = None
    markers: list[RecordRef] = field(default_factory=list)
    first_seen: float = 0.0


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
                self._end_order[record.xid] = None
            return self._release(now)
        if isinstance(record, ChangeRecord):
            if record.total_order is None or record.xid is None:
                # No transaction block: a snapshot read, or a connector without transaction metadata.
                return [_standalone(record, ref)]
            pending = self._pending_for(record.xid, now)
            pending.rows[record.total_order] = (record, ref)  # a re-sent row replaces its first copy
            return self._release(now) if record.xid in self._end_order else []
        raise TypeError(f"not a change or transaction marker: {record!r}")

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
        if now - since > self._max_wait_s:
            raise TransactionIncomplete(_stall_message(oldest, now - oldest.first_seen))

    def open_transactions(self) -> int:
        return len(self._pending)


def _stall_message(pending: _Pending, waited: float) -> str:
    have = Counter(record.data_collection for record, _ref in pending.rows.values())
    if pending.end is None:
        return (f"transaction xid {pending.xid}: {len(pending.rows)} row(s) arrived ({dict(have)}) but no END "
                f"marker in {waited:.0f}s. Is the transaction topic subscribed, and "
                "provide.transaction.metadata=true on the connector?")
    expected = pending.end.per_table_counts
    return (f"transaction xid {pending.xid}: END counts {pending.end.event_count} event(s) {expected}, "
            f"only {len(pending.rows)} arrived {dict(have)} after {waited:.0f}s. A table topic may not be "
            "subscribed, or an SMT upstream filtered rows (Debezium counts before SMTs run). "
            "Nothing was published for it and offsets stay uncommitted; fix the cause and restart.")


def _assemble(pending: _Pending) -> AssembledTransaction:
    assert pending.end is not None
    ordered = [pending.rows[order] for order in sorted(pending.rows)]
    records = [record for record, _ref in ordered]
    changes = _to_changes(_merge_key_changes(records), pending.end.lsn)
    commit_time = pending.end.commit_time if pending.end.commit_time else (
        records[0].commit_time if records else None)
    transaction = Transaction(xid=pending.xid, commit_lsn=pending.end.lsn, commit_time=commit_time,
                              changes=tuple(changes))
    refs = tuple(sorted([ref for _record, ref in ordered] + pending.markers, key=lambda r: (str(r[0]), r[1])))
    return AssembledTransaction(transaction, refs)


def _merge_key_changes(records: list[ChangeRecord]) -> list[ChangeRecord | tuple[ChangeRecord, ChangeRecord]]:
    """A primary-key change arrives as DELETE(newkey header) then CREATE(oldkey header): make it one change."""
    result: list[ChangeRecord | tuple[ChangeRecord, ChangeRecord]] = []
    for record in records:
        previous = result[-1] if result else None
        if (record.op is Op.CREATE and record.old_key is not None and isinstance(previous, ChangeRecord)
                and previous.op is Op.DELETE and previous.new_key is not None and previous.table == record.table):
            result[-1] = (previous, record)
        else:
            result.append(record)
    return result


def _to_changes(items: list[ChangeRecord | tuple[ChangeRecord, ChangeRecord]], commit_lsn: int) -> list[RowChange]:
    changes = []
    same_lsn: Counter[int] = Counter()
    for item in items:
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
