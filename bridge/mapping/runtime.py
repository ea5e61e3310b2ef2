"""What one transaction's translation shares at run time, and how a change's old row is found.

:class:`TxIndex` holds the transaction's changes by table (and hash indexes over them, for collect), the
overlay of rows it already wrote, and ``tx`` as expressions see it (:class:`TxView`). :class:`ChangeContext`
is what expressions read of one change.

Old values ("before images"): under REPLICA IDENTITY DEFAULT an update carries no before image and a
delete only the key. A rule that reads ``before`` or ``changed`` then gets the old row, lazily and only
when it actually reads it, from (1) the change itself when its before image is complete, (2) an earlier
change of the same row in this transaction (the overlay), (3) the PriorRows provider. Without any of
them the rule fails with an error saying how to fix it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from bridge.changes import UNKNOWN, Op, RowChange, Transaction
from bridge.mapping.values import EvalError

if TYPE_CHECKING:
    from bridge.mapping.compiled import CompiledMappings
    from bridge.mapping.translate import PriorRows


def row_key(key: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A hashable identity of a row's primary key, independent of the key columns' order."""
    items = tuple(key.items())
    return items if len(items) < 2 else tuple(sorted(items, key=lambda item: item[0]))


def fill_unknown(after: Mapping[str, Any], before: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """``after`` with each UNKNOWN replaced by the old value (an unchanged TOAST value did not change)."""
    if before is None or not any(value is UNKNOWN for value in after.values()):
        return after
    return {column: before.get(column, UNKNOWN) if value is UNKNOWN else value for column, value in after.items()}


class _MissingBefore(Exception):
    pass


_DELETED = object()
_NO_IMAGE_OPS = frozenset({Op.CREATE, Op.READ, Op.TRUNCATE, Op.MESSAGE})


class TxIndex:
    """What one transaction's translation shares: changes by table, the overlay of rows it already wrote."""

    __slots__ = ("_by_table", "_indexes", "_view", "mappings", "overlay", "prior", "tx")

    def __init__(self, tx: Transaction, prior: PriorRows | None, mappings: CompiledMappings) -> None:
        self.tx, self.prior, self.mappings = tx, prior, mappings
        self.overlay: dict[tuple[str, str], dict[Any, Any]] = {}
        self._by_table: dict[tuple[str, str], list[RowChange]] | None = None
        self._view: TxView | None = None
        self._indexes: dict[tuple[str, str, str], dict[Any, list[RowChange]] | None] = {}

    def lookup(self, schema: str, table: str, column: str, value: Any) -> list[RowChange] | None:
        """Changes of ``table`` whose row has ``column == value``, in order; None: scan instead."""
        key = (schema, table, column)
        if key not in self._indexes:
            self._indexes[key] = self._build_index(schema, table, column)
        index = self._indexes[key]
        if index is None:
            return None
        try:
            return index.get(value, [])
        except TypeError:  # an unhashable value (a list): let the scan compare it
            return None

    def _build_index(self, schema: str, table: str, column: str) -> dict[Any, list[RowChange]] | None:
        index: dict[Any, list[RowChange]] = {}
        for change in self.changes_of(schema, table):
            row = change.after if change.after is not None else change.before
            value = row.get(column, UNKNOWN) if row is not None else None
            if value is UNKNOWN:
                return None  # reading it must fail as it would in a scan
            try:
                index.setdefault(value, []).append(change)
            except TypeError:
                return None
        return index

    def changes_of(self, schema: str, table: str) -> list[RowChange]:
        if self._by_table is None:
            self._by_table = {}
            for change in self.tx.changes:
                self._by_table.setdefault((change.schema, change.table), []).append(change)
        return self._by_table.get((schema, table), [])

    def view(self) -> TxView:
        if self._view is None:
            self._view = TxView(self.tx)
        return self._view

    def before_image(self, change: RowChange) -> Mapping[str, Any] | None:
        if change.op in _NO_IMAGE_OPS:
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
        if any(value is UNKNOWN for value in before.values()):
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
        if change.op is Op.TRUNCATE:
            rows.clear()
        if change.old_key:
            rows[row_key(change.old_key)] = _DELETED
        if not change.key:
            return
        if change.op is Op.DELETE:
            rows[row_key(change.key)] = _DELETED
        elif change.after is not None:
            known_before = ctx.resolved_before() if ctx is not None else None
            rows[row_key(change.key)] = fill_unknown(change.after, known_before)


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


class ChangeContext:
    """The per-change values expressions read; `before` and `changed` are resolved only when read."""

    __slots__ = ("_before", "_changed", "_resolved", "after", "change", "key", "op", "txi")

    def __init__(self, change: RowChange, txi: TxIndex) -> None:
        self.change, self.txi = change, txi
        self.after = change.after
        self.key = change.key if change.key is not None else {}
        self.op = change.op.value
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

    def resolved_before(self) -> Mapping[str, Any] | None:
        return self._before if self._resolved else None

    def changed(self) -> frozenset[str]:
        if self._changed is None:
            after, op = self.after or {}, self.change.op
            if op is Op.UPDATE:
                before = self.before() or {}
                self._changed = frozenset(
                    column for column, value in after.items()
                    if value is not UNKNOWN and before.get(column, _DELETED) != value)
            elif op is Op.CREATE:
                self._changed = frozenset(column for column, value in after.items() if value is not UNKNOWN)
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
