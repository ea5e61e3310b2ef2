"""The prior-row store's rows in memory (bridge.hotrows) answer exactly what SQLite answers: after crashes and
replays, evictions, deletes, key changes and for tables not kept; and rows are encoded as before, byte for byte."""

from __future__ import annotations

import random
import uuid
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bridge.changes import UNKNOWN, Op, RowChange, SourcePosition, Transaction
from bridge.rowcodec import UnstorableValue, _encode, encode_row
from bridge.state import PriorRowStore

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _change(op: Op, lsn: int, after: dict | None, key: dict | None = None, old_key: dict | None = None,
            table: str = "menu_items", seq: int = 0) -> RowChange:
    key = key or ({"id": after["id"]} if after else None)
    return RowChange(op=op, schema="public", table=table, key=key, before=None, after=after,
                     position=SourcePosition(lsn + 1, lsn, seq), commit_time=T0, xid=lsn, old_key=old_key)


def _tx(*changes: RowChange) -> Transaction:
    return Transaction(xid=changes[0].xid, commit_lsn=changes[-1].position.commit_lsn, commit_time=T0,
                       changes=changes)


def _statements(store: PriorRowStore) -> list[str]:
    seen: list[str] = []
    store._db.set_trace_callback(seen.append)
    return seen


# -- the store with rows in memory agrees with the file ------------------------------------------------------------

def _history(r: random.Random, transactions: int) -> list[Transaction]:
    """Random transactions over a few keys of two tables: inserts, updates (some with unchanged TOAST values),
    deletes and primary-key changes, at growing positions."""
    live: dict[str, set[int]] = {"menu_items": set(), "orders": set()}
    history = []
    lsn = 1000
    for _ in range(transactions):
        changes = []
        for _ in range(r.randint(1, 4)):
            table = r.choice(list(live))
            lsn += 10
            ids = live[table]
            pick = r.random()
            if not ids or pick < 0.3:
                row_id = r.randint(1, 12)
                ids.add(row_id)
                changes.append(_change(Op.CREATE, lsn, {"id": row_id, "v": r.randint(0, 99), "t": "x" * r.randint(0, 3)},
                                       table=table))
            elif pick < 0.75:
                row_id = r.choice(sorted(ids))
                changes.append(_change(Op.UPDATE, lsn, {"id": row_id, "v": r.randint(0, 99),
                                                        "t": UNKNOWN if r.random() < 0.4 else "y"}, table=table))
            elif pick < 0.9:
                row_id = r.choice(sorted(ids))
                ids.discard(row_id)
                changes.append(_change(Op.DELETE, lsn, None, key={"id": row_id}, table=table))
            else:
                old = r.choice(sorted(ids))
                new = r.randint(13, 20)
                ids.discard(old)
                ids.add(new)
                changes.append(_change(Op.UPDATE, lsn, {"id": new, "v": 1, "t": UNKNOWN}, old_key={"id": old},
                                       table=table))
        history.append(Transaction(xid=lsn, commit_lsn=lsn + 5, commit_time=T0, changes=tuple(changes)))
    return history


@pytest.mark.parametrize("seed", range(12))
def test_rows_in_memory_answer_as_the_file_does_through_crashes_replays_and_evictions(
        tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import bridge.state

    r = random.Random(seed)
    if seed % 3 == 0:  # a store too large to look for its newest entry at open
        monkeypatch.setattr(bridge.state, "OPEN_SCAN_PAGES", 0)
    history = _history(r, 160)
    hot_rows = r.choice([0, 1, 3, 8, 10_000])  # 0: every answer from the buffer and SQLite (the reference)
    kept = r.choice([None, ["menu_items"]])
    paths = {"hot": tmp_path / "hot.sqlite", "cold": tmp_path / "cold.sqlite"}

    def open_both() -> dict[str, PriorRowStore]:
        return {"hot": PriorRowStore(paths["hot"], tables=kept, hot_rows=hot_rows),
                "cold": PriorRowStore(paths["cold"], tables=kept, hot_rows=0)}

    stores = open_both()
    committed = -1  # index of the last transaction whose position was acknowledged
    flushed = -1
    index = 0
    crashes = 0
    while index < len(history):
        tx = history[index]
        for change in tx.changes:
            answers = {name: store.before_image(change) for name, store in stores.items()}
            assert answers["hot"] == answers["cold"], (seed, index, change)
        for store in stores.values():
            store.record(tx)
        action = r.random()
        if action < 0.15:
            for store in stores.values():
                store.flush()
            flushed = index
        if action < 0.1 and index > 3:  # a checkpoint: flush, acknowledge, prune up to there
            committed = r.randint(max(committed, 0), flushed)
            done = history[committed].changes[-1].position
            limit = r.choice([1, 5, None])
            for store in stores.values():
                store.schedule_prune(done)
                store.prune_some(limit)
        elif action > 0.97 and crashes < 3:  # kill -9: unflushed entries are lost, replay after `committed`
            crashes += 1
            for store in stores.values():
                store._db.close()
            stores = open_both()
            index = committed + 1
            continue
        elif action > 0.93:  # the source reconnects in process and replays from the acknowledged position
            index = committed + 1
            continue
        index += 1
    for store in stores.values():
        store.close()
    # Both files hold the same history.
    rows = "SELECT tbl, row_key, commit_lsn, change_lsn, seq, row FROM prior_rows ORDER BY 1, 2, 3, 4, 5"
    assert PriorRowStore(paths["hot"])._db.execute(rows).fetchall() == \
        PriorRowStore(paths["cold"])._db.execute(rows).fetchall()


def test_a_hot_row_is_answered_without_a_statement_and_a_replay_after_a_crash_reads_history(tmp_path: Path) -> None:
    store = PriorRowStore(tmp_path / "s.sqlite")
    store.record(_tx(_change(Op.CREATE, 100, {"id": 1, "price": Decimal("9.50")})))
    store.record(_tx(_change(Op.UPDATE, 200, {"id": 1, "price": Decimal("11.00")})))
    store.flush()
    statements = _statements(store)
    assert store.before_image(_change(Op.UPDATE, 300, {"id": 1}))["price"] == Decimal("11.00")
    assert statements == []  # from memory
    # In the same process, a replay of the change at 200 (the source reconnected) reads the history.
    assert store.before_image(_change(Op.UPDATE, 200, {"id": 1}))["price"] == Decimal("9.50")
    assert statements
    store._db.close()  # a crash: nothing more is written

    reopened = PriorRowStore(tmp_path / "s.sqlite")
    statements = _statements(reopened)
    # The replay after the crash asks for the old row of the change at 200 again, then records it again.
    assert reopened.before_image(_change(Op.UPDATE, 200, {"id": 1}))["price"] == Decimal("9.50")
    reopened.record(_tx(_change(Op.UPDATE, 200, {"id": 1, "price": Decimal("11.00")})))
    assert reopened.before_image(_change(Op.UPDATE, 150, {"id": 1}))["price"] == Decimal("9.50")
    assert reopened.before_image(_change(Op.UPDATE, 300, {"id": 1}))["price"] == Decimal("11.00")
    assert statements


def test_a_replayed_write_older_than_the_file_is_not_taken_for_the_newest(tmp_path: Path) -> None:
    store = PriorRowStore(tmp_path / "s.sqlite")
    for lsn, price in [(100, "1.00"), (200, "2.00"), (300, "3.00")]:
        store.record(_tx(_change(Op.UPDATE, lsn, {"id": 1, "price": Decimal(price)})))
    store.close()
    reopened = PriorRowStore(tmp_path / "s.sqlite")
    # The replay starts after 100: it records the change at 200 again. The key's newest entry is still 300.
    reopened.record(_tx(_change(Op.UPDATE, 200, {"id": 1, "price": Decimal("2.00")})))
    reopened.flush()  # (an unflushed entry is read before the file, newer or not: the replay re-records 300 next)
    assert reopened.before_image(_change(Op.UPDATE, 400, {"id": 1}))["price"] == Decimal("3.00")
    assert reopened.before_image(_change(Op.UPDATE, 250, {"id": 1}))["price"] == Decimal("2.00")
    # Past the file's newest entry, writes are the newest of their keys again and are answered from memory.
    reopened.record(_tx(_change(Op.UPDATE, 500, {"id": 2, "price": Decimal("5.00")})))
    reopened.flush()
    statements = _statements(reopened)
    assert reopened.before_image(_change(Op.UPDATE, 600, {"id": 2}))["price"] == Decimal("5.00")
    assert statements == []


def test_evicted_rows_come_back_from_the_file_and_memory_stays_bounded(tmp_path: Path) -> None:
    store = PriorRowStore(tmp_path / "s.sqlite", hot_rows=3)
    for row_id in range(1, 11):
        store.record(_tx(_change(Op.CREATE, 100 + row_id, {"id": row_id, "name": f"dish {row_id}"})))
    store.flush()
    assert len(store._hot) == 3
    for row_id in range(1, 11):
        assert store.before_image(_change(Op.UPDATE, 500 + row_id, {"id": row_id}))["name"] == f"dish {row_id}"
        assert len(store._hot) <= 3
    statements = _statements(store)
    assert store.before_image(_change(Op.UPDATE, 600, {"id": 10}))["name"] == "dish 10"  # read back: hot again
    assert statements == []


def test_deletes_and_key_changes_are_remembered_as_gone(tmp_path: Path) -> None:
    store = PriorRowStore(tmp_path / "s.sqlite")
    store.record(_tx(_change(Op.CREATE, 100, {"id": 1, "name": "soup"}), _change(Op.CREATE, 101, {"id": 2, "name": "tea"})))
    store.record(_tx(_change(Op.DELETE, 200, None, key={"id": 1})))
    store.record(_tx(_change(Op.UPDATE, 300, {"id": 3, "name": "tea"}, old_key={"id": 2})))
    store.flush()
    statements = _statements(store)
    assert store.before_image(_change(Op.DELETE, 400, None, key={"id": 1})) is None
    assert store.before_image(_change(Op.CREATE, 400, {"id": 2, "name": "new"})) is None
    assert store.before_image(_change(Op.UPDATE, 400, {"id": 3})) == {"id": 3, "name": "tea"}
    assert statements == []
    # A key never seen is asked of the file once, then known to have no row.
    assert store.before_image(_change(Op.UPDATE, 400, {"id": 9})) is None
    assert len(statements) == 1
    assert store.before_image(_change(Op.UPDATE, 401, {"id": 9})) is None
    assert len(statements) == 1


def test_tables_not_kept_are_neither_recorded_nor_held(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    everything = PriorRowStore(path)  # an earlier configuration kept menu_items
    everything.record(_tx(_change(Op.CREATE, 100, {"id": 1, "name": "soup"})))
    everything.close()
    store = PriorRowStore(path, tables=["orders"])
    store.record(_tx(_change(Op.UPDATE, 200, {"id": 1, "name": "broth"})))
    assert store.buffered == 0 and len(store._hot) == 0
    # What the file says, as before this cache: the row the earlier configuration kept.
    assert store.before_image(_change(Op.UPDATE, 300, {"id": 1})) == {"id": 1, "name": "soup"}
    assert len(store._hot) == 0


def test_keys_are_written_as_before(tmp_path: Path) -> None:
    import json

    from bridge.state import _key_text

    keys: list[dict[str, Any]] = [{"id": 7}, {"id": -2**70}, {"id": "a\u00e9\"\\"}, {"b": 1, "a": "x"},
                                  {"id": Decimal("1.5")}, {"id": True}, {"id": uuid.UUID(int=5)}, {"\u00e9": 1}]
    for key in keys:
        assert _key_text(key) == json.dumps(key, sort_keys=True, default=str, separators=(",", ":"))


# -- the row codec's one-pass encoding writes what the long way wrote ----------------------------------------------

def _reference_encode_row(row: dict[str, Any]) -> str:
    """encode_row as it was before the one-pass encoding (every value through _encode)."""
    import json

    encoded = {}
    for column, value in row.items():
        name = "$" + column if column[:1] == "$" else column
        try:
            encoded[name] = _encode(value, 0)
        except (TypeError, ValueError) as exc:
            raise UnstorableValue(column, str(exc)) from None
    return json.JSONEncoder(ensure_ascii=True, check_circular=False, allow_nan=False,
                            separators=(",", ":")).encode(encoded)


def _random_value(r: random.Random, depth: int = 0) -> Any:
    kind = r.randrange(22 if depth < 3 else 17)
    return [
        lambda: r.choice(["", "plain", "Cr\u00e8me \u2603", "\ud800 lone", "quote\" back\\slash\n", "$x"]),
        lambda: r.randint(-2**63 + 1, 2**63 - 1),
        lambda: r.choice([2**63, -2**63, 2**63 - 1, -(2**63) + 1, 10**30, 0, -1]),
        lambda: r.choice([0.1, -0.0, 1e300, 3.0, float("nan"), float("inf"), float("-inf"), 5e-324]),
        lambda: r.choice([True, False, None]),
        lambda: r.choice([Decimal("1.50"), Decimal("-0.000"), Decimal("NaN"), Decimal("1E+3"), Decimal("Infinity")]),
        lambda: uuid.UUID(int=r.getrandbits(128)),
        lambda: bytes(r.getrandbits(8) for _ in range(r.randint(0, 5))),
        lambda: date(r.randint(1, 9999), r.randint(1, 12), r.randint(1, 28)),
        lambda: time(r.randint(0, 23), r.randint(0, 59), r.randint(0, 59), r.choice([0, 1, 999999])),
        lambda: time(9, 0, tzinfo=timezone(timedelta(hours=r.randint(-12, 12)))),
        lambda: datetime(r.randint(1, 9999), 1, 2, 3, 4, 5, r.randint(0, 999999)),
        lambda: datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(minutes=r.randint(-600, 600)))),
        lambda: UNKNOWN,
        lambda: [r.choice(["a", "b", "\u00e9"]) for _ in range(r.randint(0, 3))],  # text[]
        lambda: [],
        lambda: timedelta(days=1),  # a type no row holds: UnstorableValue from both
        lambda: [_random_value(r, depth + 1) for _ in range(r.randint(0, 3))],
        lambda: {r.choice(["k", "$tag", "$$x", "\u00e9"]): _random_value(r, depth + 1) for _ in range(r.randint(0, 3))},
        lambda: tuple(_random_value(r, depth + 1) for _ in range(r.randint(0, 3))),
        lambda: {1: "not a string key"},
        lambda: [[[["deep"]]]],
    ][kind]()


def test_one_pass_encoding_writes_the_same_text_as_before_on_random_rows() -> None:
    r = random.Random(11)
    plain_rows = 0
    for _ in range(6000):
        names = r.sample(["id", "name", "price", "$weird", "$$more", "tags", "\u00e9t\u00e9", "at", "x"], r.randint(0, 6))
        row = {name: _random_value(r) for name in names}
        try:
            expected: Any = _reference_encode_row(row)
        except UnstorableValue as exc:
            expected = (exc.column, exc.reason)
        try:
            got: Any = encode_row(row)
        except UnstorableValue as exc:
            got = (exc.column, exc.reason)
        assert got == expected, row
        plain_rows += isinstance(expected, str)
    assert plain_rows > 1000  # both kinds of rows were compared


def test_rows_as_the_sources_give_them_take_the_one_pass_and_the_same_text() -> None:
    row = {"id": 7, "name": "Soup", "price": Decimal("9.50"), "tags": ["hot", "vegan"], "is_available": True,
           "created_at": T0, "updated_on": datetime(2026, 1, 1), "description": UNKNOWN, "notes": None,
           "ratio": 0.5, "public_id": uuid.UUID(int=1), "picture": b"\x00"}
    assert encode_row(row) == _reference_encode_row(row)


def test_a_store_too_large_to_read_at_open_holds_rows_once_read(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import bridge.state

    store = PriorRowStore(tmp_path / "s.sqlite")
    for lsn, price in [(100, "1.00"), (300, "3.00")]:
        store.record(_tx(_change(Op.UPDATE, lsn, {"id": 1, "price": Decimal(price)})))
    store.close()
    monkeypatch.setattr(bridge.state, "OPEN_SCAN_PAGES", 0)  # the file's newest entry is not looked for
    reopened = PriorRowStore(tmp_path / "s.sqlite")
    # Whether this replayed write is the newest of its key cannot be known without the file: not held.
    reopened.record(_tx(_change(Op.UPDATE, 200, {"id": 1, "price": Decimal("2.00")})))
    reopened.record(_tx(_change(Op.CREATE, 400, {"id": 2, "price": Decimal("4.00")})))
    reopened.flush()
    assert len(reopened._hot) == 0
    statements = _statements(reopened)
    assert reopened.before_image(_change(Op.UPDATE, 500, {"id": 1}))["price"] == Decimal("3.00")
    assert reopened.before_image(_change(Op.UPDATE, 500, {"id": 2}))["price"] == Decimal("4.00")
    assert len(statements) == 2
    reopened.record(_tx(_change(Op.UPDATE, 500, {"id": 2, "price": Decimal("5.00")})))  # read once: now held
    reopened.flush()
    assert reopened.before_image(_change(Op.UPDATE, 600, {"id": 2}))["price"] == Decimal("5.00")
    assert len([s for s in statements if s.startswith("SELECT")]) == 2


def test_a_row_that_is_not_a_dict_is_written_the_long_way_with_the_same_text() -> None:
    from types import MappingProxyType

    row = {"id": 1, "price": Decimal("2.50"), "at": T0}
    assert encode_row(MappingProxyType(row)) == encode_row(row) == _reference_encode_row(row)
