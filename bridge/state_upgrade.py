"""Converts a prior-row store of older versions (pickled rows, no format mark) to tagged JSON, once.

Those versions pickled each row. Unpickling runs whatever a blob names, so a plain unpickler would run a
crafted row (a shell command). Here each blob is read by an unpickler that resolves only the classes a
row's values are made of (Decimal, date, time, datetime, timezone, timedelta, UUID, the UNKNOWN marker);
any other name (os.system, eval, ...) is refused before it can be called, and the whole conversion with
it: the file stays as it was, and the error names the table and key. Converting, rather than refusing old
stores, spares operators a rebuild, which means replaying every row from a snapshot.
"""

from __future__ import annotations

import io
import logging
import pickle
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge.errors import ConfigurationError
from bridge.rowcodec import encode_storable

# (module, name) of every global a pickled row may refer to: what pickle protocol 5 writes for the value
# types of bridge.changes (timezone is rebuilt from a timedelta, UUID from its int).
_ROW_GLOBALS = frozenset({
    ("decimal", "Decimal"),
    ("datetime", "date"), ("datetime", "time"), ("datetime", "datetime"),
    ("datetime", "timezone"), ("datetime", "timedelta"),
    ("uuid", "UUID"),
    ("bridge.changes", "UNKNOWN"),
})

_BATCH = 1000

log = logging.getLogger("bridge.state")


class _RowUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ROW_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which no row holds (refused, not run)")
        return super().find_class(module, name)


def damaged_row(path: Path, table: str, key: str, reason: str) -> ConfigurationError:
    """The error for a stored row this bridge would not have written: the file was altered."""
    return ConfigurationError(
        f"prior-row store {path}: the stored row of table {table}, key {key} is not a row cdc-bridge wrote: "
        f"{reason}. The file was altered or is not a store of cdc-bridge: move it away (keep it for inspection) "
        "and rebuild the store: start the bridge with state.path at a new file and replay the source from a "
        "snapshot (Debezium: snapshot.mode=initial, topics from the beginning), or set the tables that need "
        "old rows to REPLICA IDENTITY FULL")


def json_from_pickle(blob: bytes) -> tuple[str, list[str]]:
    """A pickled row of an old store as the JSON text of today's, and the columns it could not hold exactly
    (stored as unknown); ValueError saying why a blob is refused."""
    try:
        row = _RowUnpickler(io.BytesIO(blob)).load()
    except Exception as exc:  # any failure of a foreign blob is a refusal, never a crash
        raise ValueError(f"{exc}" if isinstance(exc, pickle.UnpicklingError) else
                         f"not a pickled row ({type(exc).__name__}: {exc})") from None
    if type(row) is not dict:
        raise ValueError(f"it holds a {type(row).__name__}, not a row")
    text, _, problems = encode_storable(row)
    return text, [str(problem) for problem in problems]


def convert_pickled_store(db: sqlite3.Connection, path: Path, create_table: Callable[[str], None],
                          format_version: int) -> int:
    """Rewrite every row of table prior_rows as JSON and mark the format, in one transaction; returns the
    number of rows. On a refused row nothing changes."""
    converted = 0
    db.execute("BEGIN IMMEDIATE")
    try:
        create_table("prior_rows_json")
        rows = db.execute("SELECT tbl, row_key, commit_lsn, change_lsn, seq, row FROM prior_rows")
        while batch := rows.fetchmany(_BATCH):
            db.executemany("INSERT INTO prior_rows_json VALUES (?, ?, ?, ?, ?, ?)",
                           [(*entry[:5], _converted(path, entry)) for entry in batch])
            converted += len(batch)
        db.execute("DROP TABLE prior_rows")
        db.execute("ALTER TABLE prior_rows_json RENAME TO prior_rows")
        db.execute(f"PRAGMA user_version = {int(format_version)}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return converted


def _converted(path: Path, entry: tuple[Any, ...]) -> str | None:
    table, key, blob = entry[0], entry[1], entry[5]
    if blob is None:  # the row was deleted
        return None
    if not isinstance(blob, bytes):
        raise damaged_row(path, table, key, f"an old store holds pickled rows, not {type(blob).__name__}")
    try:
        text, problems = json_from_pickle(blob)
    except ValueError as exc:
        raise damaged_row(path, table, key, str(exc)) from None
    for problem in problems:
        log.warning("prior-row store: a stored value cannot be kept exactly and is now unknown",
                    extra={"table": table, "key": key, "problem": problem})
    return text
