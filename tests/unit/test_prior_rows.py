"""The prior-row store gives each change the row as it was just before it, also on replay after a crash."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from bridge.changes import UNKNOWN, Op, RowChange, SourcePosition, Transaction
from bridge.state import PriorRowStore

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _change(op: Op, lsn: int, after: dict | None, key: dict | None = None, old_key: dict | None = None) -> RowChange:
    key = key or ({"id": after["id"]} if after else None)
    return RowChange(op=op, schema="public", table="menu_items", key=key, before=None, after=after,
                     position=SourcePosition(lsn + 1, lsn, 0), commit_time=T0, xid=lsn, old_key=old_key)


def _tx(*changes: RowChange) -> Transaction:
    return Transaction(xid=changes[0].xid, commit_lsn=changes[-1].position.commit_lsn, commit_time=T0,
                       changes=changes)


def test_old_row_is_the_newest_before_the_change_also_when_replayed(tmp_path: Path) -> None:
    store = PriorRowStore(tmp_path / "s.sqlite")
    insert = _change(Op.CREATE, 100, {"id": 1, "price": Decimal("9.50")})
    reprice = _change(Op.UPDATE, 200, {"id": 1, "price": Decimal("11.00")})
    assert store.before_image(insert) is None
    store.record(_tx(insert))
    assert store.before_image(reprice) == {"id": 1, "price": Decimal("9.50")}  # from the unflushed buffer
    store.record(_tx(reprice))
    store.flush()
    store.close()

    reopened = PriorRowStore(tmp_path / "s.sqlite")
    # A replay of the reprice after a crash still sees the price before it, not its own result.
    assert reopened.before_image(reprice) == {"id": 1, "price": Decimal("9.50")}
    later = _change(Op.UPDATE, 300, {"id": 1, "price": Decimal("12.00")})
    assert reopened.before_image(later)["price"] == Decimal("11.00")


def test_deleted_rows_are_gone_and_unknown_toast_values_are_filled_from_state(tmp_path: Path) -> None:
    store = PriorRowStore(tmp_path / "s.sqlite")
    store.record(_tx(_change(Op.CREATE, 100, {"id": 1, "description": "long text", "price": Decimal("1.00")})))
    store.record(_tx(_change(Op.UPDATE, 200, {"id": 1, "description": UNKNOWN, "price": Decimal("2.00")})))
    store.flush()
    after_update = _change(Op.DELETE, 300, None, key={"id": 1})
    assert store.before_image(after_update) == {"id": 1, "description": "long text", "price": Decimal("2.00")}
    store.record(_tx(after_update))
    assert store.before_image(_change(Op.CREATE, 400, {"id": 1, "price": Decimal("3.00")})) is None


def test_a_primary_key_change_moves_the_row(tmp_path: Path) -> None:
    store = PriorRowStore(tmp_path / "s.sqlite")
    store.record(_tx(_change(Op.CREATE, 100, {"id": 1, "name": "soup"})))
    moved = _change(Op.UPDATE, 200, {"id": 2, "name": "soup"}, old_key={"id": 1})
    assert store.before_image(moved) == {"id": 1, "name": "soup"}
    store.record(_tx(moved))
    assert store.before_image(_change(Op.UPDATE, 300, {"id": 2, "name": "broth"}))["id"] == 2
    assert store.before_image(_change(Op.CREATE, 300, {"id": 1, "name": "new"})) is None


def test_prune_keeps_only_what_a_replay_can_ask_for(tmp_path: Path) -> None:
    store = PriorRowStore(tmp_path / "s.sqlite")
    for lsn, price in [(100, "1.00"), (200, "2.00"), (300, "3.00")]:
        store.record(_tx(_change(Op.CREATE if lsn == 100 else Op.UPDATE, lsn, {"id": 1, "price": Decimal(price)})))
    store.flush()
    store.prune(SourcePosition(201, 200, 0))  # committed up to the second change
    count = store._db.execute("SELECT count(*) FROM prior_rows").fetchone()[0]
    assert count == 2  # the newest entry at or before the commit point, and the newer history
    assert store.before_image(_change(Op.UPDATE, 300, {"id": 1}))["price"] == Decimal("2.00")
    assert store.before_image(_change(Op.UPDATE, 400, {"id": 1}))["price"] == Decimal("3.00")


def test_pruning_in_slices_ends_where_pruning_at_once_does(tmp_path: Path) -> None:
    stores = [PriorRowStore(tmp_path / f"{name}.sqlite") for name in ("whole", "sliced")]
    for store in stores:
        for row_id in range(1, 6):
            for lsn in (100, 200, 300):
                op = Op.CREATE if lsn == 100 else Op.UPDATE
                store.record(_tx(_change(op, lsn + row_id, {"id": row_id, "price": Decimal(lsn)})))
        store.flush()
    whole, sliced = stores
    whole.prune(SourcePosition(260, 260, 0))
    sliced.schedule_prune(SourcePosition(260, 260, 0))
    assert [sliced.prune_some(2), sliced.prune_some(2), sliced.prune_some(2), sliced.prune_some(2)] == [3, 1, 0, 0]
    rows = "SELECT tbl, row_key, commit_lsn FROM prior_rows ORDER BY 1, 2, 3"
    assert sliced._db.execute(rows).fetchall() == whole._db.execute(rows).fetchall()
    assert len(whole._db.execute(rows).fetchall()) == 10  # per key: the newest at or before 260, and 30x


def test_the_buffer_count_says_when_to_flush(tmp_path: Path) -> None:
    store = PriorRowStore(tmp_path / "s.sqlite")
    store.record(_tx(_change(Op.CREATE, 100, {"id": 1}), _change(Op.CREATE, 101, {"id": 2})))
    assert store.buffered == 2
    store.flush()
    assert store.buffered == 0


def test_prune_bookkeeping_beyond_its_memory_bound_goes_to_disk_and_prunes_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bridge.state

    def fill(store: PriorRowStore) -> None:
        for lsn in (100, 200, 300):
            for row_id in range(1, 11):
                op = Op.CREATE if lsn == 100 else Op.UPDATE
                store.record(_tx(_change(op, lsn + row_id, {"id": row_id, "price": Decimal(lsn)})))
            store.flush()

    whole = PriorRowStore(tmp_path / "whole.sqlite")
    fill(whole)
    monkeypatch.setattr(bridge.state, "TOUCHED_IN_MEMORY", 3)
    bounded = PriorRowStore(tmp_path / "bounded.sqlite")
    fill(bounded)
    assert len(bounded._touched) <= 3  # a large transaction's keys do not pile up in memory
    whole.prune(SourcePosition(260, 260, 0))
    bounded.schedule_prune(SourcePosition(260, 260, 0))
    remaining = [bounded.prune_some(4) for _ in range(4)]
    assert remaining == sorted(remaining, reverse=True) and remaining[-1] == 0
    rows = "SELECT tbl, row_key, commit_lsn FROM prior_rows ORDER BY 1, 2, 3"
    assert bounded._db.execute(rows).fetchall() == whole._db.execute(rows).fetchall()
    assert len(whole._db.execute(rows).fetchall()) == 20  # per key: the newest at or before 260, and 30x


def test_scheduled_keys_beyond_the_memory_bound_wait_on_disk_and_a_backlog_is_pruned_at_its_pace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bridge.state

    monkeypatch.setattr(bridge.state, "TOUCHED_IN_MEMORY", 50)
    whole, paced = PriorRowStore(tmp_path / "whole.sqlite"), PriorRowStore(tmp_path / "paced.sqlite")
    for store in (whole, paced):
        for interval in range(4):  # each checkpoint interval touches 40 keys, more than one slice prunes
            for row_id in range(interval * 40, interval * 40 + 40):
                store.record(_tx(_change(Op.CREATE, 1000 * interval + row_id, {"id": row_id, "price": Decimal(1)})))
                store.record(_tx(_change(Op.UPDATE, 1000 * interval + row_id + 500, {"id": row_id, "price": Decimal(2)})))
            store.flush()
            if store is paced:
                store.schedule_prune(SourcePosition(1000 * interval + 999, 1000 * interval + 999, 0))
                assert len(store._prunable) <= 50  # the rest waits in prune_keys, not in memory
                store.prune_some(2)
    whole.prune(SourcePosition(3999, 3999, 0))
    slices = 0
    while paced.prune_some(2):
        slices += 1
    assert slices < 40  # 150-odd keys waiting, 2 per slice would take 75: each slice took an eighth at least
    rows = "SELECT tbl, row_key, commit_lsn FROM prior_rows ORDER BY 1, 2, 3"
    assert paced._db.execute(rows).fetchall() == whole._db.execute(rows).fetchall()
    assert len(whole._db.execute(rows).fetchall()) == 160  # one entry per key: history up to the commit is gone
