"""Snapshot reads (backfill, initial snapshot): ids from table and key, each row its own transaction, the row's own
time, the envelope's backfill marks; and the scan's per-table progress, which only moves over acknowledged batches."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.changes import Op, RowChange, SnapshotMark, SourcePosition, Transaction
from bridge.errors import MappingError
from bridge.events import event_id, snapshot_event_id
from bridge.mapping.loader import load_mappings
from bridge.mapping.spec import CompiledMappings
from bridge.mapping.translate import translate
from bridge.snapshot import TableShape
from bridge.snapshot_scan import SnapshotScan, TableProgress

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
HEADER = """\
namespace: shop
tables:
  items: {columns: {id: integer, name: text, created_at: timestamptz, updated_on: timestamp}}
rules:
"""
MARK = SnapshotMark("run-1", 0x1234_5678)


def mappings(tmp_path: Path, rules: str) -> CompiledMappings:
    path = tmp_path / "shop.yaml"
    path.write_text(HEADER + textwrap.indent(textwrap.dedent(rules), "  "))
    return load_mappings([path])


def read(item_id: int, ordinal: int, **row: Any) -> RowChange:
    after = {"id": item_id, "name": f"item {item_id}", "created_at": datetime(2020, 1, item_id, tzinfo=UTC),
             "updated_on": None, **row}
    return RowChange(Op.READ, "public", "items", {"id": item_id}, None, after, SourcePosition(MARK.cut_lsn, ordinal),
                     T0, None)


def batch(*changes: RowChange, mark: SnapshotMark | None = MARK) -> Transaction:
    return Transaction(None, MARK.cut_lsn, T0, changes, mark)


ADDED = """\
- id: items.added
  table: items
  ops: [c, r]
  let:
    others: {collect: {table: items, ops: [c, r], value: row.id}}
  emit:
    - event: ItemAdded
      aggregate: {type: item, id: after.id}
      snapshot_time: after.created_at
      data: {id: after.id, seen: others}
"""


def test_each_row_of_a_batch_is_its_own_transaction_with_ids_from_table_and_key(tmp_path: Path) -> None:
    m = mappings(tmp_path, ADDED)
    result = translate(batch(read(1, 1), read(2, 2)), m, source_id="src")
    assert [event.data["seen"] for event in result.events] == [[1], [2]], "a collect sees only its own row"
    first = result.events[0]
    assert first.id == snapshot_event_id("src", "public", "items", {"id": 1}, "items.added", 1, 0)
    # Where it was read plays no part: another batch, size or position gives the same id.
    again = translate(batch(read(1, 77)), m, source_id="src").events[0]
    assert again.id == first.id and again.sequence != first.sequence
    assert snapshot_event_id("src", "public", "items", {"id": 1}, "items.added", 1, 0, epoch=2) != first.id
    assert snapshot_event_id("src", "public", "items", {"id": 2}, "items.added", 1, 0) == result.events[1].id


def test_snapshot_events_carry_the_rows_own_time_and_the_backfill_marks(tmp_path: Path) -> None:
    m = mappings(tmp_path, ADDED)
    event = translate(batch(read(3, 1)), m, source_id="src").events[0]
    assert event.time == datetime(2020, 1, 3, tzinfo=UTC)
    headers = dict(event.headers())
    assert headers["ce_backfill"] == b"run-1" and headers["ce_backfillcut"] == b"0/12345678"
    undated = translate(batch(read(4, 1, created_at=None)), m, source_id="src").events[0]
    assert undated.time == T0, "no time in the row: the time the snapshot was taken"


def test_live_changes_keep_their_commit_time_position_ids_and_no_marks(tmp_path: Path) -> None:
    m = mappings(tmp_path, ADDED)
    insert = RowChange(Op.CREATE, "public", "items", {"id": 5}, None, read(5, 1).after, SourcePosition(900, 10), T0, 7)
    event = translate(Transaction(7, 900, T0, (insert,)), m, source_id="src").events[0]
    assert event.time == T0 and event.id == event_id("src", SourcePosition(900, 10), "items.added", 1, 0)
    assert "ce_backfill" not in dict(event.headers())


def test_a_naive_snapshot_time_is_a_dead_letter_naming_the_fix(tmp_path: Path) -> None:
    m = mappings(tmp_path, ADDED.replace("after.created_at", "after.updated_on"))
    result = translate(batch(read(6, 1, updated_on=datetime(2024, 1, 1))), m, source_id="src")
    assert not result.events
    (letter,) = result.dead_letters
    assert "snapshot_time" in letter.error and "timestamptz" in letter.error and "as_utc" in letter.error
    fixed = mappings(tmp_path, ADDED.replace("after.created_at", "as_utc(after.updated_on)"))
    event = translate(batch(read(6, 1, updated_on=datetime(2024, 1, 1))), fixed, source_id="src").events[0]
    assert event.time == datetime(2024, 1, 1, tzinfo=UTC)


def test_snapshot_time_on_a_rule_that_never_sees_snapshot_reads_is_a_mapping_error(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match=r"shop.yaml:\d+.*snapshot_time applies to snapshot reads only"):
        mappings(tmp_path, ADDED.replace("ops: [c, r]", "ops: [c]", 1))


# -- the scan -------------------------------------------------------------------------------------------------

SHAPE = TableShape("public", "items", ("id", "name"), (int, None), ("id",), ("integer",))


class Rows:
    """A table of `count` rows served in key order, as SnapshotReader.batch does (pure: no database)."""

    def __init__(self, count: int, bad: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.rows = [(str(i), f"n{i}") if i not in bad else (f"x{i}", "bad") for i in range(1, count + 1)]
        self.started_at = T0

    def batch(self, shape: TableShape, *, after: list[str] | None, limit: int, where: str | None = None) -> list[Any]:
        start = 0 if after is None else next(i for i, row in enumerate(self.rows) if row[0] == after[0]) + 1
        return self.rows[start:start + limit]


def scan_of(rows: Rows, progress: dict[str, TableProgress] | None = None) -> SnapshotScan:
    return SnapshotScan(rows, [SHAPE], MARK, 4, progress if progress is not None else {})  # type: ignore[arg-type]


def test_progress_moves_only_over_batches_acknowledged_in_order_and_a_resume_starts_after_them() -> None:
    scan = scan_of(Rows(10))
    units = [scan.next_unit() for _ in range(3)]
    assert scan.next_unit() is None and scan.exhausted and not scan.finished
    assert [len(u.transaction.changes) for u in units] == [4, 4, 2]  # type: ignore[union-attr]
    scan.done(units[1])
    assert not scan.advance() and scan.progress["items"].rows == 0, "batch 2 waits for batch 1"
    scan.done(units[0])
    assert scan.advance()
    assert scan.progress["items"].as_dict() == {"table": "items", "rows": 8, "after": ["8"], "done": False, "total": None}

    resumed = scan_of(Rows(10), {"items": TableProgress.from_dict(scan.progress["items"].as_dict())})
    rest = resumed.next_unit()
    assert [c.key for c in rest.transaction.changes] == [{"id": 9}, {"id": 10}]  # type: ignore[union-attr]
    resumed.done(rest)  # type: ignore[arg-type]
    resumed.advance()
    assert resumed.finished and resumed.progress["items"].done and resumed.progress["items"].rows == 10


def test_rows_are_snapshot_reads_at_the_cut_with_rising_positions_and_undecodable_ones_are_dead_lettered() -> None:
    scan = scan_of(Rows(5, bad={2}))
    first = scan.next_unit()
    assert first is not None and first.transaction is not None
    changes = first.transaction.changes
    assert [c.key for c in changes] == [{"id": 1}, {"id": 3}, {"id": 4}]
    assert all(c.op is Op.READ and c.position.commit_lsn == MARK.cut_lsn for c in changes)
    assert [c.position.change_lsn for c in changes] == sorted(c.position.change_lsn for c in changes)
    assert first.transaction.snapshot == MARK
    (bad,) = first.dead_lettered
    assert "public.items.id" in str(bad.error) and bad.raw["key"] == {"id": "x2"}
    second = scan.next_unit()
    assert second is not None and second.transaction is not None
    assert second.transaction.changes[0].position.change_lsn > changes[-1].position.change_lsn


def test_an_empty_table_ends_with_one_empty_batch_that_marks_it_done() -> None:
    scan = scan_of(Rows(0))
    unit = scan.next_unit()
    assert unit is not None and unit.transaction is not None and unit.transaction.changes == ()
    scan.done(unit)
    scan.advance()
    assert scan.finished and scan.progress["items"].done


def test_the_fast_uuid5_and_key_text_are_exactly_the_standard_ones() -> None:
    import json
    import random
    import uuid

    from bridge.events import EVENT_ID_NAMESPACE, key_text, to_json_value, uuid5_text

    rng = random.Random(5)
    for _ in range(2000):
        name = "".join(chr(rng.choice([rng.randint(32, 126), rng.randint(160, 0x2FFF)])) for _ in range(rng.randint(0, 80)))
        assert uuid5_text(name) == str(uuid.uuid5(EVENT_ID_NAMESPACE, name))
    for key in ({"id": 1}, {"id": -(2**70)}, {'we"ird': 3}, {"é": 7}, {"b": 1, "a": "x"}, {"id": True}, {"id": "7"}):
        assert key_text(key) == json.dumps(to_json_value(key), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
