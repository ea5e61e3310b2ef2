"""Consistent snapshots of the legacy tables: a slot's exported snapshot, read in primary-key order through COPY.

    exported = export_snapshot(dsn, slot, temporary=True, where=...)   # a slot and its snapshot, held open
    reader = SnapshotReader.open(dsn, exported.snapshot_name, where=...)  # REPEATABLE READ, READ ONLY
    shapes = reader.describe(schema, tables)
    rows = reader.batch(shapes["orders"], after=None, limit=1000, where=None)

A logical slot created with `SNAPSHOT 'export'` names a snapshot that sees exactly the transactions committed
before the slot's consistent point, and the slot streams exactly those committed after it: rows read inside
that snapshot and changes streamed from that slot neither overlap nor leave a gap, by construction. The
exporting replication connection must stay open, and idle, until the reading transaction has imported the
snapshot; after that the reading transaction keeps it to its end.

Rows are read in primary-key order, a batch at a time (keyset pagination: `WHERE (key) > (last key)`), as
COPY text, and decoded by the very decoders that decode pgoutput's text (bridge.sources.pgoutput.values), so
a row read here has exactly the Python values a streamed insert of it would have. Columns are those
pgoutput publishes: every column but generated ones. Nothing here takes a lock beyond a plain SELECT's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from bridge.errors import ConfigurationError, DecodeError, ServiceUnavailable
from bridge.pg_connect import connect_error
from bridge.sources.pgoutput.changes import PRIMARY_KEYS_SQL, primary_keys_from_rows
from bridge.sources.pgoutput.protocol import lsn_text
from bridge.sources.pgoutput.stream import ReplicationStream, connect_timeout
from bridge.sources.pgoutput.values import SESSION_SETTINGS, USER_TYPES_SQL, UserType, column_decoder

log = logging.getLogger(__name__)

_COLUMNS_SQL = """
SELECT a.attname::text, a.atttypid::int, format_type(a.atttypid, NULL)
FROM pg_attribute a
WHERE a.attrelid = (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p'))
  AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
ORDER BY a.attnum
"""


@dataclass(frozen=True, slots=True)
class ExportedSnapshot:
    """A slot just created with an exported snapshot; `stream` holds the snapshot until it is closed."""

    slot: str
    cut_lsn: int  # the slot's consistent point: streaming from the slot starts exactly after the snapshot
    snapshot_name: str
    stream: ReplicationStream

    def release(self) -> None:
        """Let go of the exporting connection (a temporary slot goes with it); import the snapshot first."""
        self.stream.close()


def export_snapshot(dsn: str, slot: str, *, temporary: bool, where: str, connect_timeout_s: float = 10.0,
                    application_name: str = "cdc-bridge-snapshot",
                    before_create: Callable[[ReplicationStream], None] | None = None) -> ExportedSnapshot:
    """Create logical slot `slot` (pgoutput) with an exported snapshot over a replication connection.

    A temporary slot is dropped by the server when the connection closes: a backfill uses one only for its
    snapshot. The caller must import the snapshot (SnapshotReader.open) before `release`. `before_create` is
    given the connection before the slot is created (IDENTIFY_SYSTEM may run on it; no transaction may).
    """
    stream = ReplicationStream(dsn, where=where, session_options=SESSION_SETTINGS, application_name=application_name,
                               connect_timeout_s=connect_timeout_s)
    try:
        if before_create is not None:
            before_create(stream)
        cut, name = stream.create_slot(slot, temporary=temporary)
    except BaseException:
        stream.close()
        raise
    log.info("snapshot exported", extra={"slot": slot, "temporary": temporary, "cut": lsn_text(cut)})
    return ExportedSnapshot(slot, cut, name, stream)


@dataclass(frozen=True, slots=True)
class TableShape:
    """One table as a snapshot reads it: its published columns, their decoders, its primary key."""

    schema: str
    table: str
    columns: tuple[str, ...]
    decoders: tuple[Callable[[str], Any] | None, ...]
    key: tuple[str, ...]
    key_types: tuple[str, ...]  # format_type of each key column, for the keyset comparison's casts
    # (index, column, decoder) of the columns whose text is not already the value: what decode_row calls
    converters: tuple[tuple[int, str, Callable[[str], Any]], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "converters", tuple(
            (index, name, decode) for index, (name, decode) in enumerate(zip(self.columns, self.decoders, strict=True))
            if decode is not None))

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    def key_indexes(self) -> tuple[int, ...]:
        return tuple(self.columns.index(column) for column in self.key)


class SnapshotReader:
    """One READ ONLY, REPEATABLE READ transaction: the exported snapshot (or, without one, a snapshot of its own)."""

    def __init__(self, conn: psycopg.Connection[Any], where: str) -> None:
        self._conn = conn
        self._where = where
        self.started_at: datetime = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        self._user_types = {t.oid: t for t in (UserType.from_row(row) for row in conn.execute(USER_TYPES_SQL))}
        self._keys = primary_keys_from_rows(conn.execute(PRIMARY_KEYS_SQL).fetchall())

    @classmethod
    def open(cls, dsn: str, snapshot_name: str | None, *, where: str, connect_timeout_s: float = 10.0,
             application_name: str = "cdc-bridge-snapshot") -> SnapshotReader:
        try:
            conn = psycopg.connect(dsn, options=SESSION_SETTINGS, application_name=application_name,
                                   connect_timeout=connect_timeout(connect_timeout_s))
        except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:
            raise connect_error(exc, where=where, setting="the database DSN") from exc
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            if snapshot_name is not None:
                conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name)))
            return cls(conn, where)
        except psycopg.Error as exc:
            conn.close()
            raise ServiceUnavailable(f"cannot open the snapshot {snapshot_name or ''} on {where}: {exc}".strip()) from exc

    @property
    def connection(self) -> psycopg.Connection[Any]:
        return self._conn

    def describe(self, schema: str, tables: Sequence[str]) -> dict[str, TableShape]:
        """Each table's shape; a table that is missing or has no primary key is a ConfigurationError."""
        shapes: dict[str, TableShape] = {}
        for table in tables:
            rows = self._conn.execute(_COLUMNS_SQL, (schema, table)).fetchall()
            if not rows:
                raise ConfigurationError(f"table {schema}.{table} does not exist on {self._where}: check the "
                                         "mappings' tables and the source's schema_name")
            key = self._keys.get(f"{schema}.{table}")
            if not key:
                raise ConfigurationError(
                    f"table {schema}.{table} has no primary key: a snapshot reads rows in key order and names "
                    f"events by key. Add one (ALTER TABLE {schema}.{table} ADD PRIMARY KEY (...)) or leave the "
                    "table out")
            columns = tuple(name for name, _, _ in rows)
            types = {name: type_name for name, _, type_name in rows}
            decoders = tuple(column_decoder(oid, self._user_types).decode for _, oid, _ in rows)
            shapes[table] = TableShape(schema, table, columns, decoders, tuple(key), tuple(types[k] for k in key))
        return shapes

    def count(self, shape: TableShape, where: str | None) -> int:
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(shape.schema, shape.table))
        if where:
            query = sql.SQL("{} WHERE ({})").format(query, sql.SQL(where))  # type: ignore[arg-type]
        return int(self._conn.execute(query).fetchone()[0])  # type: ignore[index]

    def check_predicate(self, shape: TableShape, where: str) -> None:
        """Plan `where` against the table without reading it: a syntax error or unknown column fails here."""
        query = sql.SQL("EXPLAIN SELECT 1 FROM {} WHERE ({})").format(
            sql.Identifier(shape.schema, shape.table), sql.SQL(where))  # type: ignore[arg-type]
        self._conn.execute("SAVEPOINT check_predicate")
        try:
            self._conn.execute(query)
        except psycopg.Error as exc:
            self._conn.execute("ROLLBACK TO SAVEPOINT check_predicate")
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigurationError(f"--where \"{shape.table}={where}\" fails on {shape.qualified}: {detail}: fix "
                                     "the predicate (it is SQL, run in the table's WHERE clause)") from None
        self._conn.execute("RELEASE SAVEPOINT check_predicate")

    def batch(self, shape: TableShape, *, after: Sequence[str] | None, limit: int,
              where: str | None = None) -> list[tuple[str | None, ...]]:
        """The next `limit` rows after key `after` (key columns' text, None: from the start), as COPY text."""
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in shape.columns)
        key = sql.SQL(", ").join(sql.Identifier(c) for c in shape.key)
        conditions: list[sql.Composable] = []
        if after is not None:
            bound = sql.SQL(", ").join(sql.SQL("{}::{}").format(sql.Literal(text), sql.SQL(type_name))  # type: ignore[arg-type]
                                       for text, type_name in zip(after, shape.key_types, strict=True))
            conditions.append(sql.SQL("({}) > ({})").format(key, bound) if len(shape.key) > 1 else
                              sql.SQL("{} > {}").format(key, bound))
        if where:
            conditions.append(sql.SQL("({})").format(sql.SQL(where)))  # type: ignore[arg-type]
        query = sql.SQL("SELECT {} FROM {}").format(columns, sql.Identifier(shape.schema, shape.table))
        if conditions:
            query = sql.SQL("{} WHERE {}").format(query, sql.SQL(" AND ").join(conditions))
        query = sql.SQL("COPY ({} ORDER BY {} LIMIT {}) TO STDOUT").format(query, key, sql.Literal(limit))
        with self._conn.cursor() as cursor, cursor.copy(query) as copy:
            return list(copy.rows())

    def close(self) -> None:
        try:
            self._conn.rollback()
        except psycopg.Error:
            pass
        self._conn.close()


def decode_row(shape: TableShape, values: tuple[str | None, ...]) -> dict[str, Any]:
    """A COPY row as {column: exact value}; a value that cannot be decoded is a DecodeError naming the column.

    The text of text-like columns is the value: only the others are decoded (as the pgoutput decoder does,
    RelationPlan.row), and a failure is looked for again, column by column, off the hot path."""
    if len(values) != len(shape.columns):
        raise ValueError(f"{shape.qualified}: a COPY row of {len(values)} values for {len(shape.columns)} columns")
    row = dict(zip(shape.columns, values))
    try:
        for index, name, decode in shape.converters:
            text = values[index]
            if text is not None:
                row[name] = decode(text)
    except Exception:  # noqa: BLE001 (any decoder's failure: name the column)
        _raise_for(shape, values)
    return row


def _raise_for(shape: TableShape, values: tuple[str | None, ...]) -> None:
    for index, name, decode in shape.converters:
        text = values[index]
        if text is None:
            continue
        try:
            decode(text)
        except Exception as exc:  # noqa: BLE001 (any decoder's failure names the column)
            raise DecodeError(f"{shape.qualified}.{name}: cannot decode {text[:80]!r}: {exc}") from exc
    raise AssertionError("a decoder failed once but not twice")


__all__ = ["ExportedSnapshot", "SnapshotReader", "TableShape", "decode_row", "export_snapshot"]
