"""The legacy database and its simulator against a real PostgreSQL 15 (wal_level=logical).

Uses ``fresh_legacy_db`` (tests/conftest.py): the DSN of a new, migrated, empty database.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import UniqueConstraint, create_engine, inspect
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url

from legacy_db.migrate import apply_migrations, available_migrations
from legacy_db.simulate import run_simulation
from legacy_db.tables import CLOCK_COLUMNS, TABLE_NAMES, metadata
from tests.support.databases import create_legacy_database, drop_database

pytestmark = pytest.mark.integration


def _query(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def _contents_without_clocks(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    contents = {}
    for table in metadata.sorted_tables:
        columns = [c.name for c in table.columns if c.name not in CLOCK_COLUMNS[table.name]]
        contents[table.name] = _query(dsn, f"SELECT {', '.join(columns)} FROM {table.name} ORDER BY id")
    return contents


@pytest.fixture
def twin_legacy_db(fresh_legacy_db: str) -> Iterator[str]:
    """A second fresh, migrated database on the same server, for comparing two runs."""
    name = f"legacy_twin_{uuid.uuid4().hex[:10]}"
    dsn = create_legacy_database(fresh_legacy_db, name)
    try:
        yield dsn
    finally:
        drop_database(fresh_legacy_db, name)


def test_migrations_are_recorded_and_idempotent(fresh_legacy_db: str) -> None:
    versions = [m.version for m in available_migrations()]
    assert apply_migrations(fresh_legacy_db) == []  # the fixture already migrated
    assert apply_migrations(fresh_legacy_db) == []
    recorded = [r[0] for r in _query(fresh_legacy_db, "SELECT version FROM schema_migrations ORDER BY version")]
    assert recorded == versions and versions[0].startswith("0001_")


def test_legacy_traits_are_in_place(fresh_legacy_db: str) -> None:
    storage = _query(
        fresh_legacy_db,
        "SELECT attstorage FROM pg_attribute WHERE attrelid = 'menu_items'::regclass AND attname = 'description'",
    )
    assert storage == [("e",)], "description must be STORAGE EXTERNAL"
    identities = dict(_query(
        fresh_legacy_db, "SELECT relname, relreplident FROM pg_class WHERE relname = ANY(%s)", (list(TABLE_NAMES),)
    ))
    assert identities == {t: "d" for t in TABLE_NAMES}, "REPLICA IDENTITY stays DEFAULT"
    fks = _query(fresh_legacy_db, """
        SELECT c.conrelid::regclass::text, a.attname, c.confdeltype FROM pg_constraint c
          JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
         WHERE c.contype = 'f'""")
    assert {(t, col) for t, col, _ in fks} == {
        ("customer_addresses", "customer_id"), ("orders", "customer_id"), ("orders", "delivery_address_id"),
        ("order_items", "order_id"),
    }, "exactly these foreign keys; in particular order_items.menu_item_id has none"
    assert all(action == "a" for *_, action in fks), "no ON DELETE CASCADE"


def test_sqlalchemy_tables_match_the_database(fresh_legacy_db: str) -> None:
    engine = create_engine(make_url(fresh_legacy_db).set(drivername="postgresql+psycopg"))
    dialect = postgresql.dialect()
    try:
        inspector = inspect(engine)
        assert set(inspector.get_table_names()) == set(metadata.tables) | {"schema_migrations"}
        for table in metadata.sorted_tables:
            reflected = inspector.get_columns(table.name)
            assert [c["name"] for c in reflected] == [c.name for c in table.columns], table.name
            for mine, theirs in zip(table.columns, reflected, strict=True):
                where = f"{table.name}.{mine.name}"
                assert mine.type.compile(dialect) == theirs["type"].compile(dialect), where
                assert mine.nullable == theirs["nullable"], where
                if mine.primary_key:
                    assert str(theirs["default"]).startswith("nextval("), f"{where} is a serial"
                else:
                    mine_default = None if mine.server_default is None else mine.server_default.arg.text
                    assert mine_default == theirs["default"], where
            pk = inspector.get_pk_constraint(table.name)["constrained_columns"]
            assert pk == [c.name for c in table.primary_key.columns], table.name
            fks = {(f["constrained_columns"][0], f["referred_table"]) for f in inspector.get_foreign_keys(table.name)}
            assert fks == {(fk.parent.name, fk.column.table.name) for fk in table.foreign_keys}, table.name
            uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints(table.name)}
            mine_uniques = {
                tuple(c.name for c in u.columns) for u in table.constraints if isinstance(u, UniqueConstraint)
            }
            assert uniques == mine_uniques, table.name
    finally:
        engine.dispose()


def test_same_seed_gives_identical_contents_on_two_fresh_databases(fresh_legacy_db: str, twin_legacy_db: str) -> None:
    first = run_simulation(fresh_legacy_db, seed=11, count=1500)
    second = run_simulation(twin_legacy_db, seed=11, count=1500)
    assert first.actions == second.actions and first.row_changes == second.row_changes
    one, two = _contents_without_clocks(fresh_legacy_db), _contents_without_clocks(twin_legacy_db)
    assert all(one[t] for t in TABLE_NAMES), "every table got rows"
    for table in TABLE_NAMES:
        assert one[table] == two[table], f"{table} differs between two runs of seed 11"
    different = run_simulation(twin_legacy_db, seed=12, count=10)
    assert different.namespace != "", "a database with customers gets a fresh e-mail namespace"


def test_report_row_changes_match_the_tables(fresh_legacy_db: str) -> None:
    report = run_simulation(fresh_legacy_db, seed=3, count=2000)
    assert report.transaction_count == len(report.transactions) == 2000
    assert sum((t.changes for t in report.transactions), Counter()) == report.row_changes
    assert Counter(t.action for t in report.transactions) == report.actions
    net = report.net_rows()
    for table in TABLE_NAMES:
        assert _query(fresh_legacy_db, f"SELECT count(*) FROM {table}")[0][0] == net.get(table, 0), table
    # The server's own statistics count every insert, update and delete; they must agree with the report.
    expected = {(t, op): report.row_changes.get((t, op), 0) for t in TABLE_NAMES for op in "cud"}
    seen: dict[tuple[str, str], int] = {}
    deadline = time.monotonic() + 15  # statistics are flushed asynchronously
    while time.monotonic() < deadline:
        seen = {}
        for table, ins, upd, dele in _query(
            fresh_legacy_db,
            "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables WHERE relname = ANY(%s)",
            (list(TABLE_NAMES),),
        ):
            seen.update({(table, "c"): ins, (table, "u"): upd, (table, "d"): dele})
        if seen == expected:
            break
        time.sleep(0.3)
    assert seen == expected
    # Business rules the legacy app keeps.
    assert _query(fresh_legacy_db, """
        SELECT count(*) FROM orders o WHERE o.status = 'PLACED'
           AND (o.placed_at IS NULL OR NOT EXISTS (SELECT 1 FROM order_items i WHERE i.order_id = o.id))""") == [(0,)]
    assert _query(fresh_legacy_db, "SELECT DISTINCT status FROM orders ORDER BY 1") == [
        ("CANCELLED",), ("OPEN",), ("PLACED",)
    ]


def test_a_second_run_on_a_used_database_touches_only_its_own_rows(fresh_legacy_db: str) -> None:
    first = run_simulation(fresh_legacy_db, seed=5, count=400)
    before = _contents_without_clocks(fresh_legacy_db)
    second = run_simulation(fresh_legacy_db, seed=5, count=400)  # same seed: same e-mails but for the namespace
    assert second.namespace and not first.namespace
    for table in TABLE_NAMES:
        count = _query(fresh_legacy_db, f"SELECT count(*) FROM {table}")[0][0]
        assert count == first.net_rows().get(table, 0) + second.net_rows().get(table, 0), table
    after = _contents_without_clocks(fresh_legacy_db)
    # The first run's customers are as the first run left them (the second run only appended its own).
    assert after["customers"][: len(before["customers"])] == before["customers"]


def test_long_descriptions_live_in_toast_and_survive_a_reprice_untouched(fresh_legacy_db: str) -> None:
    run_simulation(fresh_legacy_db, seed=42, count=1)  # the bootstrap: a menu, some of it long
    toast = _query(fresh_legacy_db, "SELECT reltoastrelid::regclass::text FROM pg_class WHERE relname = 'menu_items'")
    toast_table = toast[0][0]
    long_items = _query(fresh_legacy_db, "SELECT id FROM menu_items WHERE octet_length(description) > 3000 ORDER BY id")
    assert long_items, "the bootstrap menu has long descriptions"
    chunks_before = _query(fresh_legacy_db, f"SELECT DISTINCT chunk_id FROM {toast_table} ORDER BY 1")
    assert len(chunks_before) == len(long_items), "each long description is one out-of-line value"

    item = long_items[0][0]
    slot = f"legacy_toast_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(fresh_legacy_db, autocommit=True) as conn:
        try:
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", (slot,))
        except psycopg.errors.UndefinedFile:
            pytest.skip("this PostgreSQL has no test_decoding plugin (contrib) to show the WAL")
        try:
            # The statement the simulator issues for a reprice.
            conn.execute(
                "UPDATE menu_items SET price = price + 1, updated_on = localtimestamp WHERE id = %s", (item,)
            )
            decoded = [r[0] for r in conn.execute(
                "SELECT data FROM pg_logical_slot_get_changes(%s, NULL, NULL)", (slot,)
            )]
        finally:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    update = next(line for line in decoded if line.startswith("table public.menu_items: UPDATE:"))
    assert "description[text]:unchanged-toast-datum" in update, update
    assert _query(fresh_legacy_db, f"SELECT DISTINCT chunk_id FROM {toast_table} ORDER BY 1") == chunks_before


def test_transaction_xids_are_distinct_and_real(fresh_legacy_db: str) -> None:
    report = run_simulation(fresh_legacy_db, seed=9, count=500)
    xids = [t.xid for t in report.transactions]
    assert len(set(xids)) == len(xids)
    assert xids == sorted(xids), "one session commits one transaction after the other"
    statuses = _query(
        fresh_legacy_db, "SELECT DISTINCT pg_xact_status(x::text::xid8) FROM unnest(%s::bigint[]) AS x", (xids,)
    )
    assert statuses == [("committed",)]
    # Every row version in the tables was written by one of the reported transactions.
    writers = {x & 0xFFFFFFFF for x in xids}
    for table in TABLE_NAMES:
        xmins = {r[0] for r in _query(fresh_legacy_db, f"SELECT DISTINCT xmin::text::bigint FROM {table}")}
        assert xmins and xmins <= writers, table


def test_paced_run_keeps_to_its_rate(fresh_legacy_db: str) -> None:
    report = run_simulation(fresh_legacy_db, seed=1, duration=1.0, rate=100)
    assert report.stop_reason == "duration"
    assert 60 <= report.transaction_count <= 101  # a steady schedule never runs ahead of itself
