"""Apply the legacy schema's plain-SQL migrations, once each, in version order.

Migrations live in ``legacy_db/migrations/NNNN_name.sql``; the version recorded in ``schema_migrations`` is the
file name without ``.sql``. Each file runs in its own transaction together with its bookkeeping row, so a
failed migration leaves neither half-applied DDL nor a record claiming it succeeded. A session advisory lock
serialises concurrent migrators (two test workers, a daemon and a CLI) on the same database.

Usage: ``python -m legacy_db.migrate --dsn postgresql://...``
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import click
import psycopg
from psycopg.conninfo import conninfo_to_dict

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

# Arbitrary but fixed: every migrator of this schema must agree on it.
_ADVISORY_LOCK_KEY = 0x1E6AC7_DB

_CREATE_TRACKING_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(Exception):
    """A migration file is malformed or failed to apply; the message names the file."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    sql: str


def available_migrations() -> list[Migration]:
    """Every migration shipped with the package, sorted by version (the numeric prefix)."""
    found: list[Migration] = []
    seen_numbers: dict[str, str] = {}
    for entry in resources.files("legacy_db").joinpath("migrations").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _MIGRATION_NAME.match(entry.name)
        if match is None:
            raise MigrationError(
                f"migration file {entry.name!r} is misnamed: expected NNNN_lowercase_name.sql"
            )
        number = match.group(1)
        if number in seen_numbers:
            raise MigrationError(
                f"migrations {seen_numbers[number]!r} and {entry.name!r} share the number {number}"
            )
        seen_numbers[number] = entry.name
        found.append(Migration(version=entry.name[: -len(".sql")], sql=entry.read_text("utf-8")))
    return sorted(found, key=lambda m: m.version)


def apply_migrations(dsn: str) -> list[str]:
    """Apply every migration not yet recorded; return the versions applied now (empty if up to date)."""
    migrations = available_migrations()
    applied_now: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_ADVISORY_LOCK_KEY,))
        try:
            conn.execute(_CREATE_TRACKING_TABLE)
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for migration in migrations:
                if migration.version in done:
                    continue
                try:
                    with conn.transaction():
                        # No parameters: psycopg sends the file as one simple query, several statements.
                        conn.execute(migration.sql.encode("utf-8"))
                        conn.execute(
                            "INSERT INTO schema_migrations (version) VALUES (%s)", (migration.version,)
                        )
                except psycopg.Error as exc:
                    raise MigrationError(f"migration {migration.version}.sql failed: {exc}") from exc
                applied_now.append(migration.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_ADVISORY_LOCK_KEY,))
    return applied_now


def require_parseable_dsn(dsn: str) -> None:
    """Refuse a DSN libpq cannot parse without showing libpq's reason: it quotes the string, password too."""
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise click.BadParameter("not a PostgreSQL connection string (expected postgresql://user:password@host:"
                                 "port/database or key=value pairs)", param_hint="'--dsn'") from None


@click.command()
@click.option("--dsn", required=True, help="PostgreSQL connection string of the legacy database.")
def main(dsn: str) -> None:
    """Bring the legacy restaurant schema up to date."""
    require_parseable_dsn(dsn)
    try:
        applied = apply_migrations(dsn)
    except (MigrationError, psycopg.OperationalError) as exc:
        raise click.ClickException(str(exc).strip().splitlines()[0]) from exc
    if applied:
        click.echo("applied: " + ", ".join(applied))
    else:
        click.echo("schema up to date")


if __name__ == "__main__":
    main()
