"""Large pgoutput transactions spilled to disk: read back exactly as in memory, in bounded memory, owner-only,
and never left behind.

The same messages go through an assembler without a spill policy and one with a small limit; the spilled
transaction must give the very RowChanges (fields, positions, source refs) the in-memory one has.
"""

from __future__ import annotations

import os
import stat
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.changes import UNKNOWN, Transaction
from bridge.errors import ConfigurationError
from bridge.sources.pgoutput.changes import PgOutputAssembler, TransactionDecodeError
from bridge.sources.pgoutput.spill import SpillPolicy
from tests.unit.test_pgoutput_changes import COLUMNS, DEFAULT_ID, DEFAULT_TABLE, FULL_ID, FULL_TABLE, KEYS, MOOD, ROW, T0
from tests.support.restaurant_pgoutput import frames
from tests.unit.test_pgoutput_protocol import delete, insert, message, relation, truncate, update

WIDER_TABLE = relation(DEFAULT_ID, "legacy", "items", "d",
                       [(n, t, m, n == "id") for n, t, m in COLUMNS] + [("extra", 25, -1, False)])


def stream(xid: int, bodies: list[bytes | tuple[int, bytes]], start: int = 0x10000) -> Iterator[tuple[int, bytes]]:
    return frames(xid, bodies, start=start, when=T0)


def mixed(rows: int) -> list[bytes | tuple[int, bytes]]:
    """Every kind of change, several at one LSN, and a Relation message that changes a table midway."""
    bodies: list[bytes | tuple[int, bytes]] = [insert(DEFAULT_ID, [str(i), f"{i}.50", "n", "b", "happy"])
                                               for i in range(1, rows + 1)]
    bodies += [
        (0, insert(DEFAULT_ID, ["900", "1.00", "same lsn", None, None])),  # COPY: two changes at one LSN
        update(DEFAULT_ID, ["2", "3.00", UNKNOWN, UNKNOWN, "sad"]),
        update(DEFAULT_ID, ["22", "3.00", "moved", "b", "sad"], old=["2", None, None, None, None], kind="K"),
        insert(FULL_ID, ROW),
        update(FULL_ID, ["1", "13.00", "bye", UNKNOWN, "sad"], old=ROW, kind="O"),
        delete(DEFAULT_ID, ["3", None, None, None, None]),
        message("audit", b"checkout"),
        truncate([DEFAULT_ID, FULL_ID]),
        WIDER_TABLE,
        insert(DEFAULT_ID, ["901", "9.00", "wider", None, "happy", "new column"]),
        (0, insert(DEFAULT_ID, ["902", "9.00", "wider", None, "happy", None])),
    ]
    return bodies


def assembler(spill_dir: Path | None = None, limit: int = 5) -> PgOutputAssembler:
    policy = None if spill_dir is None else SpillPolicy(limit, spill_dir)
    built = PgOutputAssembler(user_types=[MOOD], primary_keys=KEYS, spill=policy)
    built.feed(0x100, DEFAULT_TABLE)
    built.feed(0x100, FULL_TABLE)
    return built


def feed(assembler: PgOutputAssembler, frames: Iterator[tuple[int, bytes]]) -> Transaction:
    [tx] = [tx for lsn, payload in frames if (tx := assembler.feed(lsn, payload)) is not None]
    return tx


def open_files_under(directory: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)):
            found.append(fd)
    return found


def test_a_spilled_transaction_reads_back_exactly_as_the_in_memory_one(tmp_path: Path) -> None:
    in_memory = feed(assembler(), stream(7, mixed(40)))
    spilled = feed(assembler(tmp_path / "spill"), stream(7, mixed(40)))
    assert type(in_memory.changes) is tuple and type(spilled.changes) is not tuple
    expected = list(in_memory.changes)
    assert len(spilled.changes) == len(expected) == 51
    assert list(spilled.changes) == expected and list(spilled.changes) == expected  # twice: re-readable
    assert [c.source_ref for c in spilled.changes] == [c.source_ref for c in expected]  # (not in ==)
    assert [spilled.changes[i] for i in reversed(range(len(expected)))] == expected[::-1]  # random access
    assert spilled.changes[-1] == expected[-1]
    assert (spilled.xid, spilled.commit_lsn, spilled.commit_time) == (in_memory.xid, in_memory.commit_lsn, T0)
    assert spilled.newest_position() == in_memory.newest_position() == max(c.position for c in expected)
    assert spilled.tables() == in_memory.tables() == {"items", "items_full", ""}
    for schema, table in [("legacy", "items"), ("legacy", "items_full"), ("", ""), ("legacy", "nothing")]:
        assert list(spilled.changes.of_table(schema, table)) == [
            c for c in expected if (c.schema, c.table) == (schema, table)]
    # What the test is about: the seq numbering, the key change, TOAST and the wider relation all survived.
    assert [c.position.seq for c in expected if c.after and c.after.get("id") in (40, 900)] == [0, 1]
    assert expected[-2].after["extra"] == "new column" and "extra" not in expected[0].after
    spilled.changes.close()


def test_the_spill_file_is_owner_only_nameless_and_freed(tmp_path: Path) -> None:
    spill_dir = tmp_path / "spill"
    built = assembler(spill_dir)
    frames = list(stream(7, mixed(40)))
    for lsn, payload in frames[:-1]:
        assert built.feed(lsn, payload) is None
    [fd] = open_files_under(spill_dir)
    assert stat.S_IMODE(os.stat(f"/proc/self/fd/{fd}").st_mode) == 0o600
    assert stat.S_IMODE(spill_dir.stat().st_mode) == 0o700
    assert list(spill_dir.iterdir()) == []  # no name: a crash, even kill -9, leaves nothing behind
    tx = built.feed(*frames[-1])
    assert tx is not None and len(open_files_under(spill_dir)) == 1
    tx.changes.close()  # type: ignore[union-attr]
    assert open_files_under(spill_dir) == []


def test_small_transactions_stay_in_memory(tmp_path: Path) -> None:
    tx = feed(assembler(tmp_path / "spill", limit=40), stream(7, mixed(1)))  # 14 changes
    assert type(tx.changes) is tuple and open_files_under(tmp_path) == []


def test_a_bad_value_in_the_spilled_part_fails_the_whole_transaction_and_frees_the_file(tmp_path: Path) -> None:
    built = assembler(tmp_path / "spill")
    bad = mixed(40) + [insert(DEFAULT_ID, ["77", "not a number", "n", None, None, None])]
    with pytest.raises(TransactionDecodeError, match="xid 7 .*cannot decode column 'price'"):
        feed(built, stream(7, bad))
    assert open_files_under(tmp_path) == []
    after = feed(built, stream(8, [DEFAULT_TABLE, *mixed(40)], start=0x90000))  # the stream goes on
    assert len(after.changes) == 51
    after.changes.close()  # type: ignore[union-attr]


def test_a_connection_reset_mid_transaction_frees_the_file(tmp_path: Path) -> None:
    built = assembler(tmp_path / "spill")
    for lsn, payload in list(stream(7, mixed(40)))[:-1]:
        built.feed(lsn, payload)
    assert len(open_files_under(tmp_path)) == 1
    built.reset()
    assert open_files_under(tmp_path) == []


def _traced_growth(spill_dir: Path, rows: int) -> tuple[int, Any]:
    built = assembler(spill_dir, limit=500)
    frames = stream(9, [insert(DEFAULT_ID, [str(i), "1.50", "note", "b", "happy"]) for i in range(rows)])
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tx = feed(built, frames)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return grown, tx


def test_memory_does_not_grow_with_the_size_of_a_spilled_transaction(tmp_path: Path) -> None:
    small, small_tx = _traced_growth(tmp_path / "a", 2_000)
    large, large_tx = _traced_growth(tmp_path / "b", 20_000)
    assert len(large_tx.changes) == 20_000
    # In memory each of these changes costs about 1 KB; spilled, 12 bytes of index (offset, table ordinal).
    assert (large - small) / 18_000 < 64, f"{small} -> {large} bytes traced"
    small_tx.changes.close()
    large_tx.changes.close()


def test_a_spill_directory_that_cannot_be_made_stops_the_start_naming_the_setting(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigurationError, match=r"cannot create the spill file .*a-file/spill: Not a directory: "
                                                 r"choose a directory .*\(pipeline.spill_path\)"):
        SpillPolicy(10, tmp_path / "a-file" / "spill").prepare()
    SpillPolicy(10, tmp_path / "fine" / "spill").prepare()
    assert stat.S_IMODE((tmp_path / "fine").stat().st_mode) == 0o700 and open_files_under(tmp_path) == []
