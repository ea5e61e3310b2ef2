"""The prior-row store's file: rows as tagged JSON that round-trip exactly and cannot execute, a format
version, old pickled stores converted without ever running what they hold, and owner-only file modes."""

from __future__ import annotations

import os
import pickle
import sqlite3
import stat
import uuid
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bridge.changes import UNKNOWN, Op, RowChange, SourcePosition, Transaction
from bridge.errors import ConfigurationError
from bridge.state import PriorRowStore

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
FORMAT_VERSION = 2  # rows as tagged JSON (1, unmarked: pickled rows)

# Every value type a row can hold, with the edge cases that lose exactness in naive JSON.
EVERY_TYPE: dict[str, Any] = {
    "id": 7,
    "price": Decimal("1.50"),
    "scaled": Decimal("1.500E+3"),
    "tiny": Decimal("-0.000"),
    "nan": Decimal("NaN"),
    "snan": Decimal("-sNaN12"),
    "inf": Decimal("Infinity"),
    "ninf": Decimal("-Infinity"),
    "huge": 10**5000,  # beyond Python's int-to-str limit
    "negative_huge": -(2**200),
    "int64": 2**63 - 1,
    "ratio": 0.1,
    "float_whole": 3.0,
    "float_nan": float("nan"),
    "float_inf": float("-inf"),
    "name": "Crème brûlée \u2603 \ud800",  # a lone surrogate too (JSON from Debezium may carry one)
    "empty": "",
    "active": True,
    "deleted": False,
    "note": None,
    "picture": b"\x00\xff binary",
    "public_id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "born": date(1990, 2, 28),
    "far": date.max,
    "opens": time(11, 30),
    "opens_micro": time(11, 30, 0, 1),
    "opens_utc": time(9, 0, 5, tzinfo=timezone.utc),
    "opens_offset": time(9, 0, tzinfo=timezone(timedelta(hours=2))),
    "created_at": datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc),
    "updated_on": datetime(2024, 1, 2, 3, 4, 5),
    "ts_infinity": datetime.max.replace(tzinfo=timezone.utc),
    "ts_minus_infinity": datetime.min,
    "tags": ["vegan", None, "spicy"],
    "matrix": [[1, 2], [3, 4]],
    "pair": (1, "a"),
    "description": UNKNOWN,
    "preferences": {  # a jsonb value whose keys look like the codec's own tags
        "$decimal": "1.5", "$$int": "ff", "$": 1, "": 2, "nested": [{"$uuid": "not a uuid"}, {"$tuple": []}],
        "plain": {"a": 1.25, "b": [True, None]}, "big": 2**80,
    },
    "json_tag_only": {"$bytes": "AAAA"},
    "json_array": [{"$unknown": None}, "$decimal"],
    "$column": "a column whose name starts with $",
}


def assert_same(expected: Any, actual: Any, where: str = "row") -> None:
    """Equal in type and value, recursively; NaN equals NaN, Decimal keeps its digits and exponent."""
    assert type(actual) is type(expected), f"{where}: {type(actual).__name__} instead of {type(expected).__name__}"
    if isinstance(expected, dict):
        assert list(actual) == list(expected), f"{where}: keys {list(actual)}"
        for key in expected:
            assert_same(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_same(e, a, f"{where}[{i}]")
    elif isinstance(expected, Decimal):
        assert actual.as_tuple() == expected.as_tuple() and str(actual) == str(expected), f"{where}: {actual!r}"
    elif isinstance(expected, float) and expected != expected:
        assert actual != actual, where
    elif isinstance(expected, (time, datetime)):
        assert actual == expected and actual.tzinfo == expected.tzinfo, f"{where}: {actual!r}"
        assert actual.isoformat() == expected.isoformat(), where
    else:
        assert actual == expected or actual is expected, f"{where}: {actual!r} != {expected!r}"


def _change(op: Op, lsn: int, after: dict | None, key: dict | None = None) -> RowChange:
    key = key or ({"id": after["id"]} if after else None)
    return RowChange(op=op, schema="public", table="menu_items", key=key, before=None, after=after,
                     position=SourcePosition(lsn + 1, lsn, 0), commit_time=T0, xid=lsn)


def _tx(*changes: RowChange) -> Transaction:
    return Transaction(xid=changes[0].xid, commit_lsn=changes[-1].position.commit_lsn, commit_time=T0,
                       changes=changes)


# -- the JSON format --------------------------------------------------------------------------------------------

def test_every_value_type_round_trips_exactly_through_the_codec() -> None:
    from bridge.rowcodec import decode_row, encode_row

    assert_same(EVERY_TYPE, decode_row(encode_row(EVERY_TYPE)))
    assert decode_row(encode_row(EVERY_TYPE))["description"] is UNKNOWN
    assert decode_row(encode_row(EVERY_TYPE))["opens_utc"].tzinfo is timezone.utc


@pytest.mark.parametrize("text", [
    '[1]', '{"a":{"$eval":"x"}}', '{"a":{"$decimal":5}}', '{"a":{"$unknown":1}}', '{"a":{"$bytes":"!!"}}',
    '{"a":{"$tuple":{"b":1}}}', '{"a":{"$datetime":"yesterday"}}', '{"a":',
])
def test_tampered_json_is_refused_by_the_codec(text: str) -> None:
    from bridge.rowcodec import decode_row

    with pytest.raises((ValueError, TypeError)):
        decode_row(text)


def test_every_value_type_round_trips_exactly_through_the_store_file(tmp_path: Path) -> None:
    store = PriorRowStore(tmp_path / "s.sqlite")
    store.record(_tx(_change(Op.CREATE, 100, EVERY_TYPE)))
    store.close()
    reopened = PriorRowStore(tmp_path / "s.sqlite")
    # A row with UNKNOWN in it is stored with UNKNOWN when the store never saw the value before.
    assert_same(EVERY_TYPE, reopened.before_image(_change(Op.UPDATE, 200, {"id": 7})))
    stored = reopened._db.execute("SELECT row FROM prior_rows").fetchone()[0]
    assert isinstance(stored, str) and stored.startswith("{")  # JSON text, not a pickle
    reopened.close()


def test_the_store_file_says_its_format_version(tmp_path: Path) -> None:
    PriorRowStore(tmp_path / "s.sqlite").close()
    with sqlite3.connect(tmp_path / "s.sqlite") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == FORMAT_VERSION


def test_a_store_of_a_newer_format_is_refused(tmp_path: Path) -> None:
    PriorRowStore(tmp_path / "s.sqlite").close()
    with sqlite3.connect(tmp_path / "s.sqlite") as db:
        db.execute("PRAGMA user_version = 9")
    with pytest.raises(ConfigurationError, match=r"s\.sqlite.*format 9.*newer cdc-bridge"):
        PriorRowStore(tmp_path / "s.sqlite")


def test_a_value_the_store_cannot_keep_exactly_is_stored_as_unknown_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    deep: Any = "bottom"
    for _ in range(300):  # deeper than the codec nests (a stack overflow on every restart otherwise)
        deep = [deep]
    store = PriorRowStore(tmp_path / "s.sqlite")
    with caplog.at_level("WARNING", logger="bridge.state"):
        store.record(_tx(_change(Op.CREATE, 100, {"id": 1, "span": timedelta(days=1), "deep": deep, "name": "a"})))
    stored = {"id": 1, "span": UNKNOWN, "deep": UNKNOWN, "name": "a"}
    # The same old row from the buffer and, after a crash, from the file: a replay translates the same.
    assert store.before_image(_change(Op.UPDATE, 200, {"id": 1})) == stored
    store.close()
    assert PriorRowStore(tmp_path / "s.sqlite").before_image(_change(Op.UPDATE, 200, {"id": 1})) == stored
    problems = [(r.table, r.key, r.problem) for r in caplog.records]
    assert [p[:2] for p in problems] == [("menu_items", '{"id":1}')] * 2, problems
    assert "'span' holds a timedelta" in problems[0][2] and "'deep' holds a value nested more than" in problems[1][2]


def test_a_file_that_is_not_a_store_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "s.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(ConfigurationError, match=r"prior-row store .*s\.sqlite cannot be used: file is not a database"):
        PriorRowStore(tmp_path / "s.sqlite")


# -- old stores: pickled rows -------------------------------------------------------------------------------------

_OLD_SCHEMA = """
CREATE TABLE prior_rows (
    tbl TEXT NOT NULL, row_key TEXT NOT NULL, commit_lsn INTEGER NOT NULL, change_lsn INTEGER NOT NULL,
    seq INTEGER NOT NULL, row BLOB, PRIMARY KEY (tbl, row_key, commit_lsn, change_lsn, seq)
) WITHOUT ROWID;
"""


def _old_store(path: Path, rows: list[tuple[str, str, int, int, int, bytes | None]]) -> None:
    """A store as versions before the format mark wrote it: pickled rows, no user_version."""
    with sqlite3.connect(path) as db:
        db.executescript(_OLD_SCHEMA)
        db.executemany("INSERT INTO prior_rows VALUES (?, ?, ?, ?, ?, ?)", rows)
    os.chmod(path, 0o644)


def test_an_old_pickled_store_is_converted_once_keeping_history_and_exact_values(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    legacy_row = dict(EVERY_TYPE)
    _old_store(path, [
        ("menu_items", '{"id":7}', 101, 100, 0, pickle.dumps({**legacy_row, "price": Decimal("1.00")}, protocol=5)),
        ("menu_items", '{"id":7}', 201, 200, 0, pickle.dumps(legacy_row, protocol=5)),
        ("menu_items", '{"id":8}', 301, 300, 0, None),  # deleted
    ])
    store = PriorRowStore(path)
    assert_same({**legacy_row, "price": Decimal("1.00")}, store.before_image(_change(Op.UPDATE, 200, {"id": 7})))
    assert_same(legacy_row, store.before_image(_change(Op.UPDATE, 400, {"id": 7})))
    assert store.before_image(_change(Op.UPDATE, 400, {"id": 8})) is None
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == FORMAT_VERSION
        kinds = db.execute("SELECT typeof(row), count(*) FROM prior_rows GROUP BY 1 ORDER BY 1").fetchall()
        assert kinds == [("null", 1), ("text", 2)]  # no blob (pickle) left
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


class _Exploit:
    """What an attacker plants: unpickling it runs a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (self.command,)


class _ExploitViaEval:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return eval, (f"__import__('os').system({self.command!r})",)


@pytest.mark.parametrize("exploit", [_Exploit, _ExploitViaEval])
def test_a_crafted_pickle_in_an_old_store_is_refused_and_never_runs(tmp_path: Path, exploit: type) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "old.sqlite"
    _old_store(path, [
        ("menu_items", '{"id":1}', 101, 100, 0, pickle.dumps({"id": 1, "name": "soup"}, protocol=5)),
        ("menu_items", '{"id":2}', 101, 100, 1,
         pickle.dumps({"id": 2, "name": exploit(f"touch {marker}")}, protocol=5)),
    ])
    with pytest.raises(ConfigurationError) as refused:
        store = PriorRowStore(path)
        store.before_image(_change(Op.UPDATE, 200, {"id": 2, "name": "x"}))  # the old code ran it here
    message = str(refused.value)
    assert "old.sqlite" in message and "menu_items" in message and '{"id":2}' in message, message
    assert "system" in message or "eval" in message, message
    assert "rebuild" in message or "move it away" in message, message
    assert not marker.exists(), "the crafted row was executed"
    with sqlite3.connect(path) as db:  # refused before anything changed: the evidence is kept
        assert db.execute("PRAGMA user_version").fetchone()[0] == 0


def test_a_pickle_planted_in_a_current_store_is_an_error_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "s.sqlite"
    PriorRowStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO prior_rows VALUES ('menu_items', '{\"id\":3}', 101, 100, 0, ?)",
                   (pickle.dumps({"id": 3, "name": _Exploit(f"touch {marker}")}, protocol=5),))
    store = PriorRowStore(path)
    with pytest.raises(ConfigurationError, match=r"s\.sqlite.*menu_items.*\{\"id\":3\}"):
        store.before_image(_change(Op.UPDATE, 200, {"id": 3, "name": "x"}))
    assert not marker.exists()


# -- file modes ---------------------------------------------------------------------------------------------------

@pytest.fixture
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0o022)  # the usual default, under which files came out 0644
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_store_and_its_wal_files_are_owner_only_and_so_are_new_directories(tmp_path: Path,
                                                                              permissive_umask: None) -> None:
    path = tmp_path / "state" / "bridge" / "prior-rows.sqlite"
    store = PriorRowStore(path)
    store.record(_tx(_change(Op.CREATE, 100, {"id": 1, "email": "ann@example.com"})))
    store.flush()
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        assert file.exists() and _mode(file) == 0o600, (file, oct(_mode(file)))
    assert _mode(tmp_path / "state") == 0o700 and _mode(tmp_path / "state" / "bridge") == 0o700
    store.close()


def test_an_existing_store_written_world_readable_is_made_owner_only(tmp_path: Path, permissive_umask: None) -> None:
    path = tmp_path / "prior-rows.sqlite"
    os.chmod(tmp_path, 0o755)
    PriorRowStore(path).close()
    os.chmod(path, 0o644)
    for leftover in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        leftover.touch(mode=0o644)
    store = PriorRowStore(path)
    store.flush()
    assert [_mode(f) for f in (path, Path(f"{path}-wal"), Path(f"{path}-shm"))] == [0o600] * 3
    assert _mode(tmp_path) == 0o755  # a directory the bridge did not create is the operator's: left alone
    store.close()
