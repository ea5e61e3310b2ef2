"""Preflight of the direct source: the server, the role, the slot, the publication and the mapped tables.

Catalog queries only (pg_settings, pg_roles, pg_replication_slots, pg_publication*, pg_class, pg_attribute),
plus a count of at most ROW_COUNT_LIMIT rows of a small table; see bridge/preflight.py for the report.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from bridge.errors import ConfigurationError
from bridge.mapping.spec import canonical_pg_type
from bridge.pg_connect import connect_error
from bridge.preflight import Report, stored_row_counts
from bridge.sources.pgoutput.drift import declared_type
from bridge.sources.pgoutput.setup import publication_mismatch

# Tables the statistics call smaller than this are counted (exactly, cheaply); bigger ones use reltuples.
ROW_COUNT_LIMIT = 10_000
# A store that has seen fewer than this share of a big table's estimated rows is reported.
COVERAGE_TOLERANCE = 0.9

_IDENTITY = {"d": "DEFAULT", "f": "FULL", "i": "USING INDEX", "n": "NOTHING"}

_SERVER_SQL = """
SELECT current_setting('wal_level'), current_setting('max_replication_slots')::int,
       current_setting('max_wal_senders')::int, current_database(), current_user,
       r.rolsuper, r.rolreplication,
       has_database_privilege(current_database(), 'CREATE'),
       (SELECT count(*) FROM pg_replication_slots),
       (SELECT count(*) FROM pg_stat_replication)
FROM pg_roles r WHERE r.rolname = current_user
"""
_SLOT_SQL = """
SELECT plugin, slot_type, database, active, active_pid, wal_status,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,
       pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
FROM pg_replication_slots WHERE slot_name = %s
"""
_TABLES_SQL = """
SELECT c.relname, c.oid, c.relreplident, c.reltuples::bigint,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
       pg_has_role(c.relowner, 'MEMBER'), has_table_privilege(c.oid, 'SELECT')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = ANY(%s) AND c.relkind IN ('r', 'p')
"""
# Enums count as text (they decode as their labels); a domain is compared by its base type.
_COLUMNS_SQL = """
SELECT a.attname,
       CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod)
            ELSE format_type(a.atttypid, a.atttypmod) END,
       t.typtype = 'e'
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
"""


def check_direct_source(report: Report, settings: Any, mappings: Any) -> None:
    from bridge.redact import redacted_dsn as redacted

    source = settings.source
    where = redacted(source.dsn)
    try:
        conn = psycopg.connect(source.dsn, autocommit=True, connect_timeout=5, application_name="cdc-bridge check")
    except psycopg.Error as exc:
        # The same judgement as the source's own connect (bridge/pg_connect.py): a setting to fix, or a server to
        # wait for.
        error = connect_error(exc, where=where, setting="source.dsn")
        if isinstance(error, ConfigurationError):
            report.error("source", "source.dsn", str(error))
        else:
            report.unreachable("source", "source.dsn", str(error))
        return
    with conn:
        server = conn.execute(_SERVER_SQL).fetchone()
        if server is None:  # a role that pg_roles does not show: nothing else can be told
            report.error("source", "role", f"cannot read the connecting role's attributes at {where}")
            return
        slot_exists = _check_server(report, conn, source, server)
        _check_publication(report, conn, source, mappings, server)
        # A slot `run` creates comes with the initial snapshot, which reads every existing row into the store.
        _check_tables(report, conn, settings, mappings, snapshot_first=not slot_exists and source.snapshot == "initial")


def _check_server(report: Report, conn: psycopg.Connection[Any], source: Any, server: tuple[Any, ...]) -> bool:
    """The server, the role and the slot; whether the slot exists."""
    wal_level, max_slots, max_senders, database, user, superuser, replication, _create, slots, senders = server
    if wal_level == "logical":
        report.ok("source", "wal_level", "logical")
    else:
        report.error("source", "wal_level", f"is {wal_level}, logical decoding needs logical: run ALTER SYSTEM SET "
                                            "wal_level = logical and restart PostgreSQL")
    if superuser or replication:
        report.ok("source", f"role {user}", "superuser" if superuser else "has REPLICATION")
    else:
        report.error("source", f"role {user}", f"has neither REPLICATION nor superuser, so it cannot stream: "
                                               f"ALTER ROLE {user} REPLICATION")
    slot = conn.execute(_SLOT_SQL, (source.slot_name,)).fetchone()
    subject = f"slot {source.slot_name}"
    if slot is None:
        if not source.create_slot:
            report.error("source", subject, f"does not exist and source.create_slot is false: run SELECT "
                                            f"pg_create_logical_replication_slot('{source.slot_name}', 'pgoutput')")
        elif slots >= max_slots:
            report.error("source", subject, f"must be created, but all {max_slots} replication slots are taken "
                                            "(max_replication_slots): drop an unused slot or raise the setting "
                                            "and restart PostgreSQL")
        elif source.snapshot == "initial":
            report.ok("source", subject, "does not exist yet: `run` creates it and first publishes the rows of every "
                                         "mapped table from its exported snapshot (source.snapshot: initial)")
        else:
            report.ok("source", subject, "does not exist yet: `run` creates it (it starts at the current WAL "
                                         "position: rows written before are not published, source.snapshot: never)")
    else:
        _check_slot(report, subject, slot, database, source.snapshot)
    # The bridge needs one walsender; a restart whose predecessor's walsender still lingers needs two.
    free = max_senders - senders
    if free <= 0:
        report.error("source", "max_wal_senders", f"all {max_senders} walsenders are busy: raise max_wal_senders "
                                                  "(and restart PostgreSQL) or stop an unused replication client")
    elif free == 1:
        report.warn("source", "max_wal_senders", f"1 of {max_senders} walsenders free: a quick restart of the bridge "
                                                 "may find none while the old connection closes; raise max_wal_senders")
    else:
        report.ok("source", "max_wal_senders", f"{free} of {max_senders} free; replication slots {slots} of {max_slots}")
    # By name: PostgreSQL 17 added a fourth argument (flush), so a signature would not resolve everywhere.
    emit = conn.execute("SELECT coalesce(bool_or(has_function_privilege(oid, 'EXECUTE')), false) FROM pg_proc "
                        "WHERE proname = 'pg_logical_emit_message' AND pronamespace = 'pg_catalog'::regnamespace"
                        ).fetchone()
    if not (emit and emit[0]):
        report.warn("source", "heartbeats", f"role {user} may not run pg_logical_emit_message, so a quiet database's "
                                            "slot cannot advance and keeps WAL: GRANT EXECUTE ON FUNCTION "
                                            f"pg_logical_emit_message(boolean, text, text) TO {user}")
    return slot is not None


def _check_slot(report: Report, subject: str, slot: tuple[Any, ...], database: str, snapshot: str) -> None:
    plugin, kind, slot_db, active, active_pid, wal_status, retained, unconfirmed = slot
    if kind != "logical" or plugin != "pgoutput" or slot_db != database:
        report.error("source", subject, f"is a {kind} slot with plugin {plugin} on database {slot_db}; the bridge "
                                        f"needs a logical pgoutput slot on {database}: choose another source.slot_name")
        return
    if wal_status == "lost":
        recover = ("with source.snapshot: initial it first publishes every row as it is now (events of op r)"
                   if snapshot == "initial" else "and recover the gap with a backfill (issue 9, not built yet), or "
                   "set source.snapshot: initial to publish every row as it is now first")
        report.error("source", subject, "is invalidated (wal_status lost): the WAL it needed was removed, so changes "
                                        "were lost. Drop it (SELECT pg_drop_replication_slot(...)) and let `run` "
                                        f"create a new one: {recover}")
        return
    held = f"holds {_size(retained)} of WAL ({_size(unconfirmed)} not yet confirmed by the bridge)"
    if wal_status in ("extended", "unreserved"):
        report.warn("source", subject, f"{held}, beyond max_wal_size (wal_status {wal_status}): "
                                       + ("it may be invalidated soon; " if wal_status == "unreserved" else "")
                                       + "start the bridge so it catches up, or watch the disk")
    else:
        report.ok("source", subject, held)
    if active:
        report.warn("source", subject, f"is in use by server process {active_pid} (another bridge, or one that just "
                                       "died): `run` waits source.slot_busy_wait_s for it, then stops")


def _size(n: int | None) -> str:
    n = int(n or 0)
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _check_publication(report: Report, conn: psycopg.Connection[Any], source: Any, mappings: Any,
                       server: tuple[Any, ...]) -> None:
    name, schema = source.publication_name, source.schema_name
    subject = f"publication {name}"
    tables = mappings.tables()
    table_list = sql.SQL(", ").join(sql.Identifier(schema, t) for t in tables).as_string(conn)
    row = conn.execute("SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = %s",
                       (name,)).fetchone()
    if row is None:
        create = f"CREATE PUBLICATION {sql.Identifier(name).as_string(conn)} FOR TABLE {table_list}"
        superuser, can_create = server[5], server[7]
        owned = {t for (t, owner) in conn.execute(
            "SELECT c.relname, pg_has_role(c.relowner, 'MEMBER') FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = ANY(%s)", (schema, tables)) if owner}
        if not source.create_publication:
            report.error("source", subject, f"does not exist and source.create_publication is false: run {create}")
        elif not superuser and (not can_create or set(tables) - owned):
            why = [] if can_create else ["the CREATE privilege on the database"]
            if not_owned := sorted(set(tables) - owned):
                why.append(f"ownership of {', '.join(not_owned)}")
            report.error("source", subject, f"does not exist and `run` cannot create it: role {server[4]} lacks "
                                            f"{' and '.join(why)}. Have an administrator run {create}, or grant them")
        else:
            report.ok("source", subject, "does not exist yet: `run` creates it for exactly the mapped tables")
        return
    if mismatch := publication_mismatch(conn, name, schema, tables):
        report.error("source", subject, mismatch)
    else:
        report.ok("source", subject, f"covers exactly the {len(tables)} mapped tables")
    skipped = [op for op, published in zip(("insert", "update", "delete", "truncate"), row) if not published]
    if skipped:
        report.warn("source", subject, (
            f"does not publish {', '.join(skipped)}: those changes never reach the bridge. Fix: ALTER PUBLICATION "
            f"{sql.Identifier(name).as_string(conn)} SET (publish = 'insert, update, delete, truncate')"))


def _check_tables(report: Report, conn: psycopg.Connection[Any], settings: Any, mappings: Any, *,
                  snapshot_first: bool) -> None:
    schema = settings.source.schema_name
    tables = mappings.tables()
    found = {row[0]: row[1:] for row in conn.execute(_TABLES_SQL, (schema, tables))}
    needing = mappings.needs_before()
    declared = mappings.declared_types()
    estimates: dict[str, int] = {}
    for table in tables:
        qualified = f"{schema}.{table}"
        if table not in found:
            report.error("tables", qualified, "does not exist: fix the rules' `table:`, source.schema_name or source.dsn")
            continue
        oid, identity, reltuples, has_pk, _owned, can_select = found[table]
        _check_identity(report, qualified, identity, has_pk, needing.get(table), settings.state.path is not None)
        if not can_select:
            report.warn("tables", qualified, f"role may not SELECT it: streaming does not need it, but this check's row "
                                             f"count and a backfill do: GRANT SELECT ON {qualified} TO <bridge role>")
        _check_columns(report, conn, qualified, oid, declared.get(table) or {})
        if table in needing and identity != "f":
            estimates[table] = _row_estimate(conn, schema, table, reltuples, can_select)
    if estimates and settings.state.path is not None:
        _check_coverage(report, settings, needing, estimates, snapshot_first=snapshot_first)


def _check_identity(report: Report, qualified: str, identity: str, has_pk: bool, rules: tuple[str, ...] | None,
                    store: bool) -> None:
    name = _IDENTITY.get(identity, identity)
    if identity == "n" or (identity == "d" and not has_pk):
        why = "REPLICA IDENTITY NOTHING" if identity == "n" else "no primary key under REPLICA IDENTITY DEFAULT"
        report.error("tables", qualified, (
            f"has {why}: once it is published, PostgreSQL refuses the legacy app's UPDATE and DELETE on it. "
            f"Fix: add a primary key, or ALTER TABLE {qualified} REPLICA IDENTITY FULL"))
    elif rules and identity != "f" and not store:
        report.error("tables", qualified, (
            f"rules {', '.join(rules)} read old values, but REPLICA IDENTITY is {name} and the prior-row store is "
            f"disabled: ALTER TABLE {qualified} REPLICA IDENTITY FULL, or set state.path"))
    elif rules and identity != "f":
        report.ok("tables", qualified, f"REPLICA IDENTITY {name}: old values for rules {', '.join(rules)} come from "
                                       "the prior-row store")
    else:
        report.ok("tables", qualified, f"REPLICA IDENTITY {name}")


def _check_columns(report: Report, conn: psycopg.Connection[Any], qualified: str, oid: int,
                   declared: dict[str, str]) -> None:
    live = {name: (pg_type, is_enum) for name, pg_type, is_enum in conn.execute(_COLUMNS_SQL, (oid,))}
    for column, wanted in sorted(declared.items()):
        subject = f"{qualified}.{column}"
        if column not in live:
            report.error("tables", subject, f"is declared {wanted} in the mappings, but the table has no such column: "
                                            "fix the mapping's `columns:` (and the rules reading it) or the schema")
            continue
        actual, is_enum = live[column]
        expected = canonical_pg_type(wanted)
        if expected == actual:
            continue
        # The direct source's rule (bridge/sources/pgoutput/drift.py): compatible when every value decodes to
        # what the declaration promises (a longer varchar, integer -> bigint, an enum for a text column).
        if declared_type(expected).kind == ("text" if is_enum else declared_type(actual).kind):
            report.warn("tables", subject, f"is declared {wanted} in the mappings and is {actual} in the database: "
                                           "compatible (the values are the same), but update the declaration")
            continue
        report.error("tables", subject, f"is declared {wanted} in the mappings but is {actual} in the database: the "
                                        "schema changed or the declaration is wrong; fix the declaration (and the "
                                        "rules reading the column) before running")


def _row_estimate(conn: psycopg.Connection[Any], schema: str, table: str, reltuples: int, can_select: bool) -> int:
    """Exact for small tables (the statistics of a table just filled may say 0), the statistics for big ones."""
    if reltuples >= ROW_COUNT_LIMIT or not can_select:
        return max(reltuples, 0)
    query = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} LIMIT %s) s").format(sql.Identifier(schema, table))
    return int(conn.execute(query, (ROW_COUNT_LIMIT,)).fetchone()[0])  # type: ignore[index]


def _check_coverage(report: Report, settings: Any, needing: dict[str, tuple[str, ...]],
                    estimates: dict[str, int], *, snapshot_first: bool) -> None:
    seen = stored_row_counts(settings.state.path, estimates, estimates)
    if isinstance(seen, str):
        report.error("prior-row store", "state.path", seen)
        return
    schema = settings.source.schema_name
    for table, rows in sorted(estimates.items()):
        qualified, held = f"{schema}.{table}", seen.get(table, 0)
        if rows == 0 or held >= rows * (1.0 if rows < ROW_COUNT_LIMIT else COVERAGE_TOLERANCE):
            report.ok("prior-row store", qualified, f"has seen {held} rows of about {rows}")
            continue
        if snapshot_first:
            report.ok("prior-row store", qualified, f"has seen {held} rows of about {rows}: `run` reads them into it "
                                                    "with the initial snapshot, before streaming")
            continue
        report.warn("prior-row store", qualified, (
            f"has seen {held} of about {rows} existing rows: an update or delete of a row it has not seen gets no "
            f"old values, and rules {', '.join(needing[table])} dead-letter it. Fix: ALTER TABLE {qualified} REPLICA "
            "IDENTITY FULL (the stream then carries old rows; the legacy WAL grows), or fill the store with a "
            "backfill (issue 9, not built yet)"))
