"""Before the direct source streams: check the server, create the publication and slot if missing, read the catalog.

    prepared = prepare(conn, settings, tables, where)   # one psycopg connection, autocommit

The publication is created first, since the slot's decoding of later WAL uses the publication as it is
then. Anything the operator must change is a ConfigurationError naming the statement that fixes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg.errors
from psycopg import sql

from bridge.errors import ConfigurationError
from bridge.settings import PgOutputSource
from bridge.sources.pgoutput.changes import PRIMARY_KEYS_SQL, primary_keys_from_rows
from bridge.sources.pgoutput.protocol import parse_lsn
from bridge.sources.pgoutput.values import USER_TYPES_SQL, UserType

log = logging.getLogger("bridge.sources.pgoutput.source")

SLOT_SQL = ("SELECT plugin, slot_type, database, confirmed_flush_lsn::text, restart_lsn::text "
            "FROM pg_replication_slots WHERE slot_name = %s")


@dataclass(frozen=True)
class Prepared:
    """What the source starts from."""

    user_types: list[UserType]
    primary_keys: dict[str, tuple[str, ...]]
    confirmed_flush_lsn: int  # where the server will resume the slot
    restart_lsn: int  # where it decodes from: nothing before it can ever be sent again
    created_slot: bool
    created_publication: bool


# Creates the missing slot on the setup connection's server; the default runs pg_create_logical_replication_slot.
SlotCreator = Callable[[psycopg.Connection[Any]], None]


def prepare(conn: psycopg.Connection[Any], settings: PgOutputSource, tables: list[str], where: str, *,
            create_slot: SlotCreator | None = None) -> Prepared:
    """`create_slot` creates the slot if it is missing (and source.create_slot allows): the initial snapshot's
    creator exports a snapshot as it does (snapshot_slot.py)."""
    wal_level = conn.execute("SHOW wal_level").fetchone()[0]  # type: ignore[index]
    if wal_level != "logical":
        raise ConfigurationError(
            f"PostgreSQL at {where} has wal_level = {wal_level}, but logical decoding needs "
            "wal_level = logical: run ALTER SYSTEM SET wal_level = logical and restart PostgreSQL")
    _require_tables(conn, settings, tables, where)
    created_publication = _ensure_publication(conn, settings, tables, where)
    created_slot = _ensure_slot(conn, settings, where, create_slot)
    row = conn.execute(SLOT_SQL, (settings.slot_name,)).fetchone()
    assert row is not None, "a slot just created or found to exist"
    return Prepared(
        user_types=[UserType.from_row(row) for row in conn.execute(USER_TYPES_SQL)],
        primary_keys=primary_keys_from_rows(conn.execute(PRIMARY_KEYS_SQL).fetchall()),
        confirmed_flush_lsn=parse_lsn(row[3]) if row[3] else 0, restart_lsn=parse_lsn(row[4]) if row[4] else 0,
        created_slot=created_slot, created_publication=created_publication)


def _require_tables(conn: psycopg.Connection[Any], settings: PgOutputSource, tables: list[str], where: str) -> None:
    schema = settings.schema_name
    found = {name for (name,) in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = ANY(%s) AND c.relkind IN ('r', 'p')", (schema, tables))}
    if missing := [t for t in tables if t not in found]:
        database = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        raise ConfigurationError(
            f"the mappings read table(s) {', '.join(f'{schema}.{t}' for t in missing)}, which database "
            f"{database!r} at {where} does not have: fix the rules' `table:`, source.schema_name, or "
            "source.dsn (is it the legacy database?)")


def _ensure_publication(conn: psycopg.Connection[Any], settings: PgOutputSource, tables: list[str],
                        where: str) -> bool:
    name, schema = settings.publication_name, settings.schema_name
    wanted = {f"{schema}.{t}" for t in tables}
    table_list = sql.SQL(", ").join(sql.Identifier(schema, t) for t in tables)
    exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)).fetchone()
    if exists is None:
        create = sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(name), table_list)
        if not settings.create_publication:
            raise ConfigurationError(
                f"publication {name!r} does not exist on {where} and source.create_publication is false: "
                f"create it with {create.as_string(conn)}")
        try:
            conn.execute(create)
            log.info("publication created", extra={"publication": name, "tables": sorted(wanted)})
            return True
        except psycopg.errors.DuplicateObject:
            pass  # another instance created it meanwhile: check it like any existing one
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ConfigurationError(
                f"cannot create publication {name!r} on {where}: {first_line(exc)}. It needs the CREATE "
                "privilege on the database and ownership of the tables (or a superuser); or have an administrator "
                f"run {create.as_string(conn)}") from exc
    if mismatch := publication_mismatch(conn, name, schema, tables):
        raise ConfigurationError(f"publication {name!r} on {where} {mismatch}")
    return False


def publication_mismatch(conn: psycopg.Connection[Any], name: str, schema: str, tables: list[str]) -> str | None:
    """How an existing publication differs from exactly the mapped tables, with the statement that fixes it;
    None when it covers exactly them."""
    present = {f"{s}.{t}" for s, t in conn.execute(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (name,))}
    wanted = {f"{schema}.{t}" for t in tables}
    if present == wanted:
        return None
    table_list = sql.SQL(", ").join(sql.Identifier(schema, t) for t in tables)
    alter = sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(sql.Identifier(name), table_list)
    return (f"does not cover exactly the mapped tables: missing {sorted(wanted - present) or 'none'}, not mapped "
            f"{sorted(present - wanted) or 'none'}. Fix: {alter.as_string(conn)}")


def _ensure_slot(conn: psycopg.Connection[Any], settings: PgOutputSource, where: str,
                 create_slot: SlotCreator | None) -> bool:
    name = settings.slot_name
    created = False
    row = conn.execute(SLOT_SQL, (name,)).fetchone()
    if row is None:
        if not settings.create_slot:
            raise ConfigurationError(
                f"replication slot {name!r} does not exist on {where} and source.create_slot is false: "
                f"create it with SELECT pg_create_logical_replication_slot('{name}', 'pgoutput')")
        try:
            if create_slot is not None:
                create_slot(conn)
            else:
                conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))
                log.info("replication slot created", extra={"slot": name})
            created = True
        except psycopg.errors.DuplicateObject:
            pass  # another instance created it meanwhile
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ConfigurationError(
                f"cannot create replication slot {name!r} on {where}: {first_line(exc)}. The user needs "
                "the REPLICATION attribute (ALTER ROLE <user> REPLICATION) or superuser") from exc
        row = conn.execute(SLOT_SQL, (name,)).fetchone()
        assert row is not None, "a slot just created or found to exist"
    plugin, kind, database = row[:3]
    current = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
    if kind != "logical" or plugin != "pgoutput" or database != current:
        raise ConfigurationError(
            f"replication slot {name!r} on {where} is a {kind} slot with plugin {plugin!r} on database "
            f"{database!r}; expected a logical pgoutput slot on {current!r}: choose another source.slot_name")
    return created


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
