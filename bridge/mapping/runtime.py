"""What one transaction's translation shares at run time, and how a change's old row is found.

:class:`TxIndex` holds the transaction's changes by table (and hash indexes over them, for collect), the
overlay of rows it already wrote, and ``tx`` as expressions see it (:class:`TxView`). :class:`ChangeContext`
is what expressions read of one change.

Old values ("before images"): under REPLICA IDENTITY DEFAULT an update carries no before image and a
delete only the key. A rule that reads ``before`` or ``changed`` then gets the old row, lazily and only
when it actually reads it, from (1) the change itself when its before image is complete, (2) an earlier
change of the same row in this transaction (the overlay), (3) the PriorRows provider. Without any of
them the rule fails with an error saying how to fix it.

A transaction too large for memory (its changes a bridge.changes.StoredChanges, read back from disk) is
translated in slices (translate_in_slices of translate.py, which calls next_slice): the overlay then holds
only the current slice, since the slices before it are recorded in the PriorRows provider, which answers
for them at their positions; its tables are read back per table, collect indexes hold positions rather
than changes, and ``tx`` reads a table only when an expression asks for it.
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bridge.changes import UNKNOWN, Op, RowChange, StoredChanges, Transaction
from bridge.mapping.prior_rows import PriorRows, fill_unknown, has_unknown, row_key
from bridge.mapping.values import EvalError

if TYPE_CHECKING:
    from bridge.mapping.compiled import CompiledMappings

__all__ = ["ChangeContext", "TxIndex", "TxView", "missing_before_message"]

# `tx.<table>` of a stored transaction is rebuilt from disk on every read above this many changes.
_VIEW_CACHE_CHANGES = 10_000


class _MissingBefore(Exception):
    pass


_DELETED = object()
# By letter (Op._value_): an Op is a StrEnum whose hash is a Python call, its letter a plain string.
_NO_IMAGE_OPS = frozenset(op.value for op in (Op.CREATE, Op.READ, Op.TRUNCATE, Op.MESSAGE))
# The members themselves, read once: `Op.UPDATE` goes through the enum class's attribute lookup every time.
_CREATE, _UPDATE, _DELETE, _TRUNCATE = Op.CREATE, Op.UPDATE, Op.DELETE, Op.TRUNCATE


class TxIndex:
    """What one transaction's translation shares: changes by table, the overlay of rows it already wrote."""

    __slots__ = ("_by_table", "_indexes", "_stored", "_view", "mappings", "overlay", "prior", "tx")

    def __init__(self, tx: Transaction, prior: PriorRows | None, mappings: CompiledMappings) -> None:
        self.tx, self.prior, self.mappings = tx, prior, mappings
        self.overlay: dict[tuple[str, str], dict[Any, Any]] = {}
        self._stored: StoredChanges | None = None if type(tx.changes) is tuple else tx.changes  # type: ignore[assignment]
        self._by_table: dict[tuple[str, str], list[RowChange]] | None = None
        self._view: Mapping[str, tuple[Mapping[str, Any], ...]] | None = None
        # Per (schema, table, column): value -> the changes (positions in changes_of, when stored) with it.
        self._indexes: dict[tuple[str, str, str], dict[Any, Any] | None] = {}

    def context(self, change: RowChange) -> ChangeContext:
        """What expressions read of `change`. A row of a snapshot batch is a transaction of its own: no rule
        sees the other rows of its batch."""
        mark = self.tx.snapshot
        if mark is None:
            return ChangeContext(change, self)
        return ChangeContext(change, TxIndex(Transaction(
            xid=None, commit_lsn=change.position.commit_lsn, commit_time=change.commit_time, changes=(change,),
            snapshot=mark), self.prior, self.mappings))

    def lookup(self, schema: str, table: str, column: str, value: Any) -> Iterable[RowChange] | None:
        """Changes of ``table`` whose row has ``column == value``, in order; None: scan instead."""
        key = (schema, table, column)
        if key not in self._indexes:
            self._indexes[key] = self._build_index(schema, table, column)
        index = self._indexes[key]
        if index is None:
            return None
        try:
            found = index.get(value, ())
        except TypeError:  # an unhashable value (a list): let the scan compare it
            return None
        if self._stored is None or not found:
            return found
        changes = self.changes_of(schema, table)
        return (changes[i] for i in found)  # read back one by one: a match may be most of the transaction

    def _build_index(self, schema: str, table: str, column: str) -> dict[Any, Any] | None:
        index: dict[Any, Any] = {}
        stored = self._stored is not None
        for position, change in enumerate(self.changes_of(schema, table)):
            row = change.after if change.after is not None else change.before
            value = row.get(column, UNKNOWN) if row is not None else None
            if value is UNKNOWN:
                return None  # reading it must fail as it would in a scan
            try:
                hits = index.get(value)
                if hits is None:
                    hits = index[value] = array("q") if stored else []
            except TypeError:
                return None
            hits.append(position if stored else change)
        return index

    def changes_of(self, schema: str, table: str) -> Sequence[RowChange]:
        if self._stored is not None:
            return self._stored.of_table(schema, table)
        if self._by_table is None:
            self._by_table = {}
            for change in self.tx.changes:
                self._by_table.setdefault((change.schema, change.table), []).append(change)
        return self._by_table.get((schema, table), [])

    def view(self) -> Mapping[str, tuple[Mapping[str, Any], ...]]:
        if self._view is None:
            self._view = TxView(self.tx) if self._stored is None else StoredTxView(self._stored)
        return self._view

    def next_slice(self) -> None:
        """The changes translated so far were recorded in the PriorRows provider (translate_in_slices does
        that between slices): it answers for them from now on, at their positions, so the overlay can go."""
        if self.prior is not None:
            self.overlay.clear()

    def before_image(self, change: RowChange) -> Mapping[str, Any] | None:
        if change.op._value_ in _NO_IMAGE_OPS:
            return None
        before = change.before
        if before is not None and self._is_complete(change, before):
            return before
        key = change.old_key or change.key
        rows = self.overlay.get((change.schema, change.table))
        if rows is not None and key:
            earlier = rows.get(row_key(key))
            if earlier is not None:
                return None if earlier is _DELETED else earlier
        if self.prior is not None:
            image = self.prior.before_image(change)
            if image is not None:
                return image
        raise _MissingBefore()

    def _is_complete(self, change: RowChange, before: Mapping[str, Any]) -> bool:
        """Key-only images (REPLICA IDENTITY DEFAULT) are not complete; FULL images are.

        The Debezium decoder marks the non-key columns of a key-only image UNKNOWN (Debezium fills them
        with made-up nulls and empty strings), so any UNKNOWN makes the image incomplete.
        """
        if has_unknown(before):
            return False
        if not change.key or len(before) > len(change.key):
            return True
        declared = self.mappings.column_count(change.table)
        return declared is not None and len(before) >= declared

    def record(self, change: RowChange, ctx: ChangeContext | None) -> None:
        """Remember what this change wrote, for later changes of the same row in this transaction."""
        table = (change.schema, change.table)
        if table not in self.mappings.overlay_tables:
            return
        rows = self.overlay.setdefault(table, {})
        if change.op is _TRUNCATE:
            rows.clear()
        if change.old_key:
            rows[row_key(change.old_key)] = _DELETED
        if not change.key:
            return
        if change.op is _DELETE:
            rows[row_key(change.key)] = _DELETED
        elif change.after is not None:
            known_before = None
            if ctx is not None and ctx._resolved:
                known_before = ctx._before
            elif change.op is _UPDATE and has_unknown(change.after):
                # No rule read the old row, yet it fills what the stream left out, as the prior-row store
                # does when it records the change: a later slice reads this row there, and must agree.
                known_before = ctx.before_if_known() if ctx is not None else self._before_if_known(change)
            rows[row_key(change.key)] = fill_unknown(change.after, known_before)

    def _before_if_known(self, change: RowChange) -> Mapping[str, Any] | None:
        try:
            return self.before_image(change)
        except _MissingBefore:
            return None


class TxView(Mapping[str, tuple[Mapping[str, Any], ...]]):
    """``tx.<table>`` in expressions: that table's changes in this transaction as {op, before, after, key}."""

    def __init__(self, tx: Transaction) -> None:
        self._tables: dict[str, list[Mapping[str, Any]]] = {}
        for change in tx.changes:
            self._tables.setdefault(change.table, []).append(
                {"op": change.op.value, "before": change.before, "after": change.after, "key": change.key})

    def __getitem__(self, table: str) -> tuple[Mapping[str, Any], ...]:
        return tuple(self._tables.get(table, ()))

    def __iter__(self) -> Iterator[str]:
        return iter(self._tables)

    def __len__(self) -> int:
        return len(self._tables)


class StoredTxView(Mapping[str, tuple[Mapping[str, Any], ...]]):
    """``tx.<table>`` of a transaction held on disk: a table is read back only when an expression asks for it."""

    def __init__(self, changes: StoredChanges) -> None:
        self._changes = changes
        self._names = list(dict.fromkeys(table for _, table in changes.tables()))  # first-seen order, as TxView
        self._cached: dict[str, tuple[Mapping[str, Any], ...]] = {}

    def __getitem__(self, table: str) -> tuple[Mapping[str, Any], ...]:
        cached = self._cached.get(table)
        if cached is not None:
            return cached
        parts = [self._changes.of_table(schema, name) for schema, name in self._changes.tables() if name == table]
        ordered = parts[0] if len(parts) == 1 else heapq.merge(*parts, key=lambda change: change.position)
        rows = tuple({"op": change.op.value, "before": change.before, "after": change.after, "key": change.key}
                     for change in ordered)
        if len(rows) <= _VIEW_CACHE_CHANGES:
            self._cached[table] = rows
        return rows

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class ChangeContext:
    """The per-change values expressions read; `before` and `changed` are resolved only when read."""

    __slots__ = ("_before", "_changed", "_resolved", "after", "change", "key", "op", "txi")

    def __init__(self, change: RowChange, txi: TxIndex) -> None:
        self.change, self.txi = change, txi
        self.after = change.after
        self.key = change.key if change.key is not None else {}
        self.op = change.op._value_  # .value is a Python-level property of enums; the attribute is not
        self._resolved = False
        self._changed: frozenset[str] | None = None

    def before(self) -> Mapping[str, Any] | None:
        if not self._resolved:
            try:
                self._before = self.txi.before_image(self.change)
            except _MissingBefore:
                raise EvalError(missing_before_message(self.change)) from None
            self._resolved = True
        return self._before

    def before_if_known(self) -> Mapping[str, Any] | None:
        """The old row, or None when nothing has it (where ``before`` would fail)."""
        if not self._resolved:
            try:
                self._before = self.txi.before_image(self.change)
            except _MissingBefore:
                return None
            self._resolved = True
        return self._before

    def changed(self) -> frozenset[str]:
        if self._changed is None:
            after, op = self.after or {}, self.change.op
            if op is _UPDATE:
                before = self.before() or {}
                # (set comprehensions: one frame for the loop, where a generator resumes once per column)
                self._changed = frozenset({
                    column for column, value in after.items()
                    if value is not UNKNOWN and before.get(column, _DELETED) != value})
            elif op is _CREATE:
                self._changed = frozenset({column for column, value in after.items() if value is not UNKNOWN})
            else:
                self._changed = frozenset()
        return self._changed


def missing_before_message(change: RowChange) -> str:
    table = change.qualified_table
    key = ", ".join(f"{k}={v!r}" for k, v in (change.old_key or change.key or {}).items()) or "no key"
    what = "an update without a before image" if change.op is Op.UPDATE else "a delete with only the key"
    return (f"needs the old row of {table} ({key}), but the change is {what} (REPLICA IDENTITY DEFAULT) and "
            f"neither this transaction nor a prior-row store has it; fix: ALTER TABLE {table} REPLICA IDENTITY "
            "FULL, or enable the prior-row store")
