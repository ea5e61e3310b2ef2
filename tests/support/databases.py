"""Per-test databases on the stack's PostgreSQL: create one with the legacy schema, drop it again."""

from __future__ import annotations

import time

import psycopg

from legacy_db.migrate import apply_migrations


def database_dsn(server_dsn: str, name: str) -> str:
    """The DSN of database `name` on the server that `server_dsn` points at."""
    return server_dsn.rsplit("/", 1)[0] + f"/{name}"


def create_legacy_database(server_dsn: str, name: str) -> str:
    """A new database holding the migrated, empty legacy schema; returns its DSN."""
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = database_dsn(server_dsn, name)
    apply_migrations(dsn)
    return dsn


def drop_database(server_dsn: str, name: str) -> None:
    """Drop the database and any replication slot on it (a slot would keep it alive)."""
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        deadline = time.monotonic() + 30
        while slots := admin.execute(
            "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = %s", (name,)
        ).fetchall():
            for slot_name, active_pid in slots:
                if active_pid is not None:
                    admin.execute("SELECT pg_terminate_backend(%s)", (active_pid,))
                else:
                    admin.execute("SELECT pg_drop_replication_slot(%s)", (slot_name,))
            if time.monotonic() > deadline:
                raise RuntimeError(f"replication slots on {name} stayed active: {slots}")
            time.sleep(0.2)
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
