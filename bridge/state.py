"""A durable local store of last-seen rows: old values for tables under REPLICA IDENTITY DEFAULT.

Under DEFAULT, PostgreSQL logs no old row for an UPDATE and only the key for a DELETE, yet rules such
as "price changed from A to B" or "order line removed from order X" need the old row. The store keeps,
per (table, key), the rows the bridge has seen (from snapshot reads and earlier changes) stamped with
their source position, so the old row of a change at position P is the newest entry before P.

Entries newer than the last committed source position are kept as history, not overwritten: after a
crash the source replays from its committed position, and each replayed change must see the row as it
was before that change, not as a later change left it. `prune` drops history nobody can replay.

The file holds customers' personal data: it and its -wal/-shm files are owner-only (0600), and so are the
directories created for it (0700). Rows are stored as tagged JSON (bridge.rowcodec), never as pickles, so
the file holds data that cannot run; `PRAGMA user_version` marks that format (stores of older versions,
pickled, are converted once at open by bridge.state_upgrade).

Which keys may have history to prune is remembered in memory up to TOUCHED_IN_MEMORY keys (touched, and
again scheduled), beyond that in temporary tables: a transaction of millions of rows, or a backlog drained
faster than it is pruned, must not hold every key it wrote in memory.

The newest entry of up to HOT_ROWS recently written or read keys is also kept in memory (bridge.hotrows), in
front of SQLite: most old rows asked for are the newest entry of their key, written moments ago. It is only a
cache of what the buffer and the file hold, never their only copy; a crash loses it and nothing else.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bridge.changes import UNKNOWN, Op, RowChange, SourcePosition, Transaction
from bridge.errors import ConfigurationError
from bridge.hotrows import NOTHING, UNKNOWN_NEWEST, HotRows
from bridge.private_files import make_private_directories, make_private_file, restrict_file
from bridge.rowcodec import decode_row, encode_storable
from bridge.state_upgrade import convert_pickled_store, damaged_row

#: The store's format, in PRAGMA user_version: 2 = rows as tagged JSON; 0 (unmarked) = pickled rows.
FORMAT_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
    tbl        TEXT    NOT NULL,
    row_key    TEXT    NOT NULL,
    commit_lsn INTEGER NOT NULL,
    change_lsn INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    row        TEXT,               -- the row as tagged JSON (bridge.rowcodec); NULL once the row was deleted
    PRIMARY KEY (tbl, row_key, commit_lsn, change_lsn, seq)
) WITHOUT ROWID;
"""
# Prune bookkeeping that outgrew memory: keys written since the last schedule_prune, and keys scheduled.
_PRUNE_SCHEMA = """
CREATE TEMP TABLE IF NOT EXISTS touched_keys (tbl TEXT, row_key TEXT, PRIMARY KEY (tbl, row_key)) WITHOUT ROWID;
CREATE TEMP TABLE IF NOT EXISTS prune_keys (
    tbl TEXT, row_key TEXT, commit_lsn INTEGER, change_lsn INTEGER, seq INTEGER, PRIMARY KEY (tbl, row_key)
) WITHOUT ROWID;
"""
TOUCHED_IN_MEMORY = 20_000
PRUNE_PACE = 8  # prune_some(limit) prunes at least 1/PRUNE_PACE of the scheduled keys: a backlog decays
HOT_ROWS = 10_000  # keys whose newest row stays in memory (about 10 MB): the busy keys of the simulator fit
OPEN_SCAN_PAGES = 50_000  # a file up to this many pages (200 MB at 4 KiB) is read at open for its newest entry

log = logging.getLogger("bridge.state")


# Built once: json.dumps with options builds a new encoder per call. The text is the file's row_key: it must
# stay what json.dumps(key, sort_keys=True, default=str, separators=(",", ":")) writes.
_KEY_DUMPS = json.JSONEncoder(sort_keys=True, default=str, separators=(",", ":")).encode
_QUOTED: dict[str, str] = {}  # a key column's name as JSON, for the one-column keys nearly every table has


def _key_text(key: Mapping[str, Any] | None) -> str | None:
    if key is None:
        return None
    if len(key) == 1:
        [(name, value)] = key.items()
        kind = type(value)
        if kind is int or kind is str:
            quoted = _QUOTED.get(name)
            if quoted is None:
                quoted = _QUOTED[name] = _KEY_DUMPS(name)
            return f"{{{quoted}:{value if kind is int else _KEY_DUMPS(value)}}}"
    return _KEY_DUMPS(key)


class PriorRowStore:
    """SQLite-backed; writes are buffered per batch and flushed in one transaction."""

    def __init__(self, path: Path, tables: Iterable[str] | None = None, hot_rows: int | None = None) -> None:
        self._path = path
        self._db = _open(path)
        self._hot = HotRows(HOT_ROWS if hot_rows is None else hot_rows, newest_stored=self._newest_stored())
        self._tables = set(tables) if tables is not None else None  # None: keep every table
        # Unflushed writes, newest last per key, with their JSON text; read before the database.
        self._buffer: dict[tuple[str, str], list[tuple[SourcePosition, Mapping[str, Any] | None, str | None]]] = {}
        self._buffered = 0
        self._touched: set[tuple[str, str]] = set()
        # Keys whose history at or before a committed position may go, pruned a slice at a time.
        self._prunable: list[tuple[tuple[int, int, int], tuple[str, str]]] = []
        self._db.executescript(_PRUNE_SCHEMA)
        self._touched_on_disk = False  # touched_keys has rows
        self._prunable_on_disk = 0  # rows in prune_keys

    def _newest_stored(self) -> tuple[int, int, int] | None:
        """The position of the file's newest entry (None: empty), or UNKNOWN_NEWEST when finding it would read
        too much: no index orders the file by position, and opening must not read gigabytes."""
        if self._db.execute("PRAGMA page_count").fetchone()[0] > OPEN_SCAN_PAGES:
            return UNKNOWN_NEWEST  # rows are then held once read, not when first written (bridge.hotrows)
        return self._db.execute("SELECT commit_lsn, change_lsn, seq FROM prior_rows "
                                "ORDER BY commit_lsn DESC, change_lsn DESC, seq DESC LIMIT 1").fetchone()

    def keeps(self, table: str) -> bool:
        return self._tables is None or table in self._tables

    def before_image(self, change: RowChange) -> Mapping[str, Any] | None:
        """The row as it was just before `change`, or None if never seen (or deleted)."""
        # After a primary-key change the old row lives under the old key.
        key = _key_text(change.old_key if change.old_key is not None else change.key)
        if key is None:
            return None
        p = change.position
        stamp = (p.commit_lsn, p.change_lsn, p.seq)
        hot_key = (change.table, key)
        hot = self._hot.newest(hot_key)
        if hot is not None and hot[0] < stamp:  # the newest entry of the key, and older than the change
            return hot[1]
        entries = self._buffer.get(hot_key)
        if entries:
            for position, row, _ in reversed(entries):
                if position < p:
                    return row
        elif hot is None and self.keeps(change.table):
            # Not in memory: ask the file for the key's newest entry, which is the answer unless this is a
            # replay (the change is older than it), and what the next change of the key will want.
            found = self._db.execute(
                "SELECT commit_lsn, change_lsn, seq, row FROM prior_rows WHERE tbl = ? AND row_key = ? "
                "ORDER BY commit_lsn DESC, change_lsn DESC, seq DESC LIMIT 1", hot_key).fetchone()
            if found is None:
                self._hot.learn(hot_key, NOTHING, None)
                return None
            if found[:3] < stamp:
                row = None if found[3] is None else self._decoded(change.table, key, found[3])
                self._hot.learn(hot_key, found[:3], row)
                return row
        found = self._db.execute(
            "SELECT row FROM prior_rows WHERE tbl = ? AND row_key = ? AND (commit_lsn, change_lsn, seq) < (?, ?, ?) "
            "ORDER BY commit_lsn DESC, change_lsn DESC, seq DESC LIMIT 1",
            (change.table, key, *stamp),
        ).fetchone()
        return self._decoded(change.table, key, found[0]) if found and found[0] is not None else None

    def _decoded(self, table: str, key: str, text: Any) -> dict[str, Any]:
        if type(text) is not str:  # never unpickled: this format stores text only
            raise damaged_row(self._path, table, key, f"it is a {type(text).__name__}, not the JSON text of a row")
        try:
            return decode_row(text)
        except (ValueError, TypeError, ArithmeticError, RecursionError) as exc:
            raise damaged_row(self._path, table, key, f"{type(exc).__name__}: {exc}") from None

    def record(self, transaction: Transaction) -> None:
        """Remember the after-image of every change (deletes as gone), filling unknown TOAST values."""
        for change in transaction.changes:
            if not self.keeps(change.table) or change.op in (Op.TRUNCATE, Op.MESSAGE):
                continue
            key = _key_text(change.key)
            if key is None:
                continue
            if change.old_key is not None:  # primary-key change: the old key's row is gone
                self._put(change.table, _key_text(change.old_key) or "", change.position, None)
            row = None if change.op is Op.DELETE else dict(change.after or {})
            if row is not None and any(value is UNKNOWN for value in row.values()):
                previous = self.before_image(change) or {}  # the old key's row, after a key change
                row = {name: previous.get(name, UNKNOWN) if value is UNKNOWN else value for name, value in row.items()}
            self._put(change.table, key, change.position, row)

    def _put(self, table: str, key: str, position: SourcePosition, row: dict[str, Any] | None) -> None:
        # Encoded now, not at flush: a value the store cannot keep exactly is unknown from the start, so a
        # change translates the same whether its old row comes from the buffer or, after a crash, the file.
        text = None
        if row is not None:
            text, row, problems = encode_storable(row)
            for problem in problems:
                log.warning("prior-row store: a value cannot be kept exactly and is stored as unknown; a rule "
                            "that needs it as an old value will dead-letter that change",
                            extra={"table": table, "key": key, "position": str(position), "problem": str(problem)})
        self._buffer.setdefault((table, key), []).append((position, row, text))
        self._buffered += 1
        self._hot.wrote((table, key), (position.commit_lsn, position.change_lsn, position.seq), row)

    @property
    def buffered(self) -> int:
        """Entries recorded but not yet written: the pipeline flushes in small batches to keep pauses short."""
        return self._buffered

    def flush(self) -> None:
        if not self._buffer:
            return
        rows = [
            (table, key, p.commit_lsn, p.change_lsn, p.seq, text)
            for (table, key), entries in self._buffer.items()
            for p, _, text in entries
        ]
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR REPLACE INTO prior_rows VALUES (?, ?, ?, ?, ?, ?)", rows)
        self._touched.update(self._buffer)
        if len(self._touched) > TOUCHED_IN_MEMORY:
            self._db.executemany("INSERT OR IGNORE INTO touched_keys VALUES (?, ?)", self._touched)
            self._touched.clear()
            self._touched_on_disk = True
        self._db.execute("COMMIT")
        self._buffer.clear()
        self._buffered = 0

    def prune(self, committed: SourcePosition) -> None:
        """Forget history at or before `committed`, keeping each touched key's newest entry there."""
        self.schedule_prune(committed)
        self.prune_some(None)

    def schedule_prune(self, committed: SourcePosition) -> None:
        """Note that every key touched so far may lose its history at or before `committed` (a replay starts
        after it); `prune_some` does the deleting in slices, so no single call pauses the pipeline for long."""
        c = (committed.commit_lsn, committed.change_lsn, committed.seq)
        self._prunable.extend((c, key) for key in self._touched)
        self._touched.clear()
        # A backlog can touch keys faster than the loop prunes them (bench/README: 31,705 scheduled keys held
        # after 147k Debezium records): beyond TOUCHED_IN_MEMORY the oldest scheduled keys wait on disk.
        excess = len(self._prunable) - TOUCHED_IN_MEMORY
        if self._touched_on_disk or excess > 0:
            self._db.execute("BEGIN")
            if self._touched_on_disk:
                self._db.execute("INSERT OR REPLACE INTO prune_keys SELECT tbl, row_key, ?, ?, ? FROM touched_keys", c)
                self._db.execute("DELETE FROM touched_keys")
                self._touched_on_disk = False
            if excess > 0:
                # OR REPLACE may give a key an older committed position than it had: that only keeps more history.
                self._db.executemany("INSERT OR REPLACE INTO prune_keys VALUES (?, ?, ?, ?, ?)",
                                     [(table, key, *at) for at, (table, key) in self._prunable[:excess]])
                del self._prunable[:excess]
            self._db.execute("COMMIT")
            self._prunable_on_disk = self._db.execute("SELECT count(*) FROM prune_keys").fetchone()[0]

    def prune_some(self, limit: int | None) -> int:
        """Prune up to `limit` scheduled keys (all when None); returns how many remain scheduled.

        A key pruned later than scheduled, with its older committed position, only keeps more history: safe.
        """
        if not self._prunable and not self._prunable_on_disk:
            return 0
        if limit is not None:  # keep pace with a backlog: each slice takes at least an eighth of what waits
            limit = max(limit, (len(self._prunable) + self._prunable_on_disk) // PRUNE_PACE)
        count = len(self._prunable) if limit is None else min(limit, len(self._prunable))
        keep = len(self._prunable) - count
        batch, self._prunable = self._prunable[keep:], self._prunable[:keep]
        self._db.execute("BEGIN")
        if self._prunable_on_disk and (limit is None or count < limit):
            batch += self._take_prunable_from_disk(None if limit is None else limit - count)
        # One statement for the slice (prune never removes a key's newest entry: what HotRows holds stays true).
        self._db.executemany(
            "DELETE FROM prior_rows WHERE tbl = ?1 AND row_key = ?2 AND (commit_lsn, change_lsn, seq) < "
            "(SELECT commit_lsn, change_lsn, seq FROM prior_rows WHERE tbl = ?1 AND row_key = ?2 AND "
            " (commit_lsn, change_lsn, seq) <= (?3, ?4, ?5) ORDER BY commit_lsn DESC, change_lsn DESC, seq DESC LIMIT 1)",
            [(table, key, *c) for c, (table, key) in batch],
        )
        self._db.execute("COMMIT")
        return len(self._prunable) + self._prunable_on_disk

    def _take_prunable_from_disk(self, limit: int | None) -> list[tuple[tuple[int, int, int], tuple[str, str]]]:
        rows = self._db.execute("SELECT tbl, row_key, commit_lsn, change_lsn, seq FROM prune_keys LIMIT ?",
                                (-1 if limit is None else limit,)).fetchall()
        self._db.executemany("DELETE FROM prune_keys WHERE tbl = ? AND row_key = ?", [row[:2] for row in rows])
        self._prunable_on_disk -= len(rows)
        return [((c, lsn, seq), (table, key)) for table, key, c, lsn, seq in rows]

    def close(self) -> None:
        self.flush()
        self._db.close()


def _open(path: Path) -> sqlite3.Connection:
    """The store's database, owner-only, in today's format (an old pickled store is converted first)."""
    try:
        make_private_directories(path.parent)
        make_private_file(path)  # before SQLite creates it: SQLite gives -wal and -shm the same mode
        for companion in (f"{path}-wal", f"{path}-shm"):
            restrict_file(Path(companion))
    except OSError as exc:
        raise ConfigurationError(f"cannot create the prior-row store at {path} (state.path): "
                                 f"{exc.strerror or exc}; choose a path the bridge's user may write") from None
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        _ensure_format(db, path)
    except sqlite3.DatabaseError as exc:
        db.close()
        raise ConfigurationError(f"prior-row store {path} cannot be used: {exc}. If it is not a store of "
                                 "cdc-bridge or is damaged, move it away and rebuild the store") from None
    except BaseException:
        db.close()
        raise
    return db


def _ensure_format(db: sqlite3.Connection, path: Path) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > FORMAT_VERSION:
        raise ConfigurationError(f"prior-row store {path} has format {version}, written by a newer cdc-bridge; "
                                 f"this one reads format {FORMAT_VERSION}: run the newer version, or move the file away "
                                 "and rebuild the store")

    def create_table(name: str) -> None:
        db.execute(_SCHEMA.format(table=name))

    exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'prior_rows'").fetchone()
    if exists and version == 0:  # written before the format mark: pickled rows
        converted = convert_pickled_store(db, path, create_table, FORMAT_VERSION)
        log.info("prior-row store converted from pickled rows to JSON",
                 extra={"path": str(path), "rows": converted, "format": FORMAT_VERSION})
    elif not exists:
        db.execute("BEGIN IMMEDIATE")
        create_table("prior_rows")
        db.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
        db.execute("COMMIT")
