"""Snapshot reads as the pipeline's units: one batch of rows per unit, tables in order, and what was acknowledged.

A unit is one batch of rows of one table (keyset order), a Transaction marked with the snapshot
(SnapshotMark) so that each row translates as a transaction of its own with ids from its table and key. The
scan remembers, per table, the key of the last row whose batch, and every batch before it, the sink
acknowledged: a resumed scan starts after it, so nothing acknowledged is read twice and nothing unacknowledged
is skipped.

Positions: every row of a snapshot is at the snapshot's cut (commit_lsn = the consistent point, before every
change streamed after it); change_lsn orders the rows (table number << 40 | row number within the table), so
events' `sequence` grows through a snapshot and the prior-row store keeps one stamped entry per row.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bridge.changes import Op, RowChange, SnapshotMark, SourcePosition, Transaction
from bridge.errors import DecodeError
from bridge.ports import SourceUnit, UndecodableRow
from bridge.snapshot import SnapshotReader, TableShape, decode_row

_ROW_BITS = 40  # rows per table a position can number (10^12); the table's number sits above them


@dataclass(slots=True)
class TableProgress:
    """How far one table is: rows acknowledged, the key (as text) of the last of them, and whether it is done."""

    table: str
    rows: int = 0
    after: list[str] | None = None
    done: bool = False
    total: int | None = None  # rows the snapshot holds (counted once), for progress displays
    read: int = 0  # rows read so far in this scan (acknowledged or not)

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.table, "rows": self.rows, "after": self.after, "done": self.done, "total": self.total}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TableProgress:
        after = data.get("after")
        return cls(str(data["table"]), int(data.get("rows", 0)), list(after) if after is not None else None,
                   bool(data.get("done", False)), data.get("total"))


@dataclass(slots=True)
class SnapshotBatch:
    """The handle of one unit: which rows of which table it carries."""

    table: str
    rows: int
    last_key: list[str] | None  # None: the table's end, after its last batch (a batch of no rows)
    final: bool  # the table has no rows after this batch
    acknowledged: bool = False


@dataclass
class SnapshotScan:
    """Reads `shapes` in order through `reader`, `batch_size` rows per unit; `progress` says where each starts."""

    reader: SnapshotReader
    shapes: Sequence[TableShape]
    mark: SnapshotMark
    batch_size: int
    progress: dict[str, TableProgress]
    predicates: Mapping[str, str] = field(default_factory=dict)
    _table: int = 0
    _in_flight: deque[SnapshotBatch] = field(default_factory=deque)
    _resume: dict[str, list[str] | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for shape in self.shapes:
            state = self.progress.setdefault(shape.table, TableProgress(shape.table))
            state.read = state.rows
            self._resume[shape.table] = state.after

    @property
    def exhausted(self) -> bool:
        """Every row was read (not necessarily acknowledged)."""
        return self._table >= len(self.shapes)

    @property
    def finished(self) -> bool:
        """Every row was read and every batch acknowledged."""
        return self.exhausted and not self._in_flight

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def reading(self) -> TableShape | None:
        """The table the next batch comes from; None once every table was read."""
        return self.shapes[self._table] if self._table < len(self.shapes) else None

    def next_unit(self) -> SourceUnit | None:
        """The next batch, or None once every table was read to its end."""
        while self._table < len(self.shapes):
            number = self._table
            shape = self.shapes[number]
            state = self.progress[shape.table]
            if state.done:
                self._table += 1
                continue
            after = self._resume[shape.table]
            raw = self.reader.batch(shape, after=after, limit=self.batch_size, where=self.predicates.get(shape.table))
            final = len(raw) < self.batch_size
            if final:
                self._table += 1
            if not raw:
                batch = SnapshotBatch(shape.table, 0, None, final=True)
                self._in_flight.append(batch)
                return SourceUnit(Transaction(None, self.mark.cut_lsn, self.reader.started_at, (), self.mark), batch)
            last_key = [raw[-1][i] or "" for i in shape.key_indexes()]
            self._resume[shape.table] = last_key
            batch = SnapshotBatch(shape.table, len(raw), last_key, final=final)
            self._in_flight.append(batch)
            return self._unit(shape, raw, batch, first_row=state.read, table_number=number)
        return None

    def _unit(self, shape: TableShape, raw: list[tuple[str | None, ...]], batch: SnapshotBatch, *, first_row: int,
              table_number: int) -> SourceUnit:
        changes: list[RowChange] = []
        append = changes.append
        undecodable: list[UndecodableRow] = []
        key_indexes = shape.key_indexes()
        commit_time, cut = self.reader.started_at, self.mark.cut_lsn
        base = (table_number << _ROW_BITS) + first_row
        schema, table, key_columns = shape.schema, shape.table, shape.key
        single_key = key_columns[0] if len(key_columns) == 1 else None
        source_ref = f"snapshot {self.mark.label} {table}"
        for number, values in enumerate(raw, start=1):
            try:
                row = decode_row(shape, values)
            except DecodeError as exc:
                key_text = {shape.key[i]: values[index] for i, index in enumerate(key_indexes)}
                undecodable.append(UndecodableRow(
                    where=f"{shape.qualified} key {key_text}", error=exc, total_order=number - 1,
                    raw={"source": "snapshot", "table": shape.qualified, "key": key_text, "cut": self.mark.cut_text,
                         "row": dict(zip(shape.columns, values, strict=True))}))
                continue
            key = {single_key: row[single_key]} if single_key is not None else {k: row[k] for k in key_columns}
            append(RowChange(Op.READ, schema, table, key, None, row, SourcePosition(cut, base + number, 0),
                             commit_time, None, source_ref=source_ref))
        self.progress[shape.table].read += len(raw)
        transaction = Transaction(None, cut, commit_time, tuple(changes), self.mark)
        return SourceUnit(transaction, batch, dead_lettered=tuple(undecodable))

    def done(self, unit: SourceUnit) -> None:
        batch = unit.handle
        assert isinstance(batch, SnapshotBatch)
        batch.acknowledged = True

    def advance(self) -> bool:
        """Move each table's progress past the batches acknowledged in order; True when anything moved."""
        moved = False
        while self._in_flight and self._in_flight[0].acknowledged:
            batch = self._in_flight.popleft()
            state = self.progress[batch.table]
            state.rows += batch.rows
            if batch.last_key is not None:
                state.after = batch.last_key
            state.done = state.done or batch.final
            moved = True
        return moved
