"""Where translation finds a row's old values: the PriorRows protocol, and rows kept in memory for tests.

The daemon's durable provider is bridge.state.PriorRowStore (SQLite, position-stamped history); both keep
rows by primary key (:func:`row_key`) and fill a value the stream did not carry (:func:`fill_unknown`) from
the row they already had.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from bridge.changes import UNKNOWN, Op, RowChange, Transaction


def row_key(key: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A hashable identity of a row's primary key, independent of the key columns' order."""
    items = tuple(key.items())
    return items if len(items) < 2 else tuple(sorted(items, key=lambda item: item[0]))


def has_unknown(row: Mapping[str, Any]) -> bool:
    """Whether a value of `row` is UNKNOWN (a plain loop: any() over a generator costs three times more)."""
    for value in row.values():
        if value is UNKNOWN:
            return True
    return False


def fill_unknown(after: Mapping[str, Any], before: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """``after`` with each UNKNOWN replaced by the old value (an unchanged TOAST value did not change)."""
    if before is None or not has_unknown(after):
        return after
    return {column: before.get(column, UNKNOWN) if value is UNKNOWN else value for column, value in after.items()}


class PriorRows(Protocol):
    """Where the bridge finds a row's old values when the change stream did not carry them."""

    def before_image(self, change: RowChange) -> Mapping[str, Any] | None:
        """The row as it was before ``change`` (looked up by ``change.old_key or change.key``), or None."""


class RecordingPriorRows(PriorRows, Protocol):
    """A provider that also learns rows: what a transaction translated in slices writes its slices to."""

    def record(self, transaction: Transaction) -> None:
        """Remember the rows ``transaction`` wrote (its after images; deletes as gone)."""


class InMemoryPriorRows:
    """Last-seen rows in a dict: for tests and short runs. The daemon's durable store has the same protocol.

    Filled by :meth:`remember` / :meth:`remember_transaction` after each translated transaction (snapshot
    reads and changes alike). An UNKNOWN (unchanged TOAST) value never overwrites a known one.
    """

    def __init__(self) -> None:
        self._tables: dict[tuple[str, str], dict[tuple[tuple[str, Any], ...], Mapping[str, Any]]] = {}

    def before_image(self, change: RowChange) -> Mapping[str, Any] | None:
        key = change.old_key or change.key
        rows = self._tables.get((change.schema, change.table))
        return None if rows is None or not key else rows.get(row_key(key))

    def put(self, schema: str, table: str, key: Mapping[str, Any], row: Mapping[str, Any]) -> None:
        self._tables.setdefault((schema, table), {})[row_key(key)] = dict(row)

    def remember(self, change: RowChange) -> None:
        rows = self._tables.setdefault((change.schema, change.table), {})
        if change.op is Op.TRUNCATE:
            rows.clear()
        if change.old_key:
            rows.pop(row_key(change.old_key), None)
        if not change.key:
            return
        identity = row_key(change.key)
        if change.op is Op.DELETE:
            rows.pop(identity, None)
        elif change.after is not None and change.op in (Op.CREATE, Op.UPDATE, Op.READ):
            rows[identity] = fill_unknown(change.after, rows.get(identity))

    def remember_transaction(self, tx: Transaction) -> None:
        for change in tx.changes:
            self.remember(change)

    record = remember_transaction  # the name the pipeline's durable store (bridge.state) uses

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._tables.values())
