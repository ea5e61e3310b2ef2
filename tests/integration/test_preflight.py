"""`cdc-bridge check` and `run`'s preflight against the real PostgreSQL and Kafka of the session stack.

Each test breaks one thing a real deployment gets wrong (a changed column, a table without a key, a role
without REPLICATION, a publication of other tables, a foreign slot, an emptied prior-row store, an
unreachable broker) and demands the finding that names it and says what to change, with the exit code.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bridge.daemon import run_daemon
from bridge.settings import load_settings
from legacy_db.simulate import run_simulation
from tests.conftest import DebeziumCapture
from tests.support.bridge_process import REPO_ROOT, write_config
from tests.support.kafka_reading import payload, wait_for
from tests.support.local_stack import StackInfo

MAPPINGS = str(REPO_ROOT / "mappings" / "restaurant.yaml")
NEEDING_OLD_ROWS = {"customers", "customer_addresses", "menu_items", "orders", "order_items"}


def cdc_bridge(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT)


def check(config: Path) -> tuple[int, list[dict[str, Any]]]:
    done = cdc_bridge("check", "--config", str(config), "--json")
    assert done.stdout.startswith("{"), done.stderr
    report = json.loads(done.stdout)
    assert report["exit_code"] == done.returncode, done.stderr
    return done.returncode, report["findings"]


def of(findings: list[dict[str, Any]], level: str) -> dict[str, str]:
    """subject -> message of the findings at one level."""
    return {f["subject"]: f["message"] for f in findings if f["level"] == level}


@pytest.fixture
def names() -> str:
    """A slot and publication name of this test; the database (and so its slots) is dropped afterwards."""
    return f"chk_{uuid.uuid4().hex[:8]}"


def direct_config(tmp_path: Path, dsn: str, name: str, **source: Any) -> Path:
    return write_config(tmp_path / "bridge.yaml", mappings=[MAPPINGS],
                        source={"kind": "pgoutput", "dsn": dsn, "slot_name": name, "publication_name": name, **source},
                        sink={"kind": "locallog", "path": str(tmp_path / "events")},
                        state={"path": str(tmp_path / "prior-rows.sqlite")})


def test_a_ready_database_with_existing_rows_warns_that_the_store_has_not_seen_them(
        tmp_path: Path, legacy_db_any: str, names: str) -> None:
    fresh_legacy_db = legacy_db_any  # PostgreSQL 15 and 18 ([pg15], [pg18])
    config = direct_config(tmp_path, fresh_legacy_db, names)
    code, findings = check(config)
    assert code == 0, of(findings, "warning") | of(findings, "error")  # empty tables: nothing to miss
    assert "logical" in of(findings, "ok")["wal_level"]
    assert "`run` creates it" in of(findings, "ok")[f"slot {names}"]

    run_simulation(fresh_legacy_db, seed=3, count=60)
    # `run` would create the slot with the initial snapshot, which reads every existing row into the store first.
    code, findings = check(config)
    assert code == 0, of(findings, "warning") | of(findings, "error")
    assert "from its exported snapshot (source.snapshot: initial)" in of(findings, "ok")[f"slot {names}"]
    assert "`run` reads them into it with the initial snapshot" in of(findings, "ok")["public.menu_items"]

    # Without the snapshot nothing fills the store.
    config = direct_config(tmp_path, fresh_legacy_db, names, snapshot="never")
    code, findings = check(config)
    assert "rows written before are not published" in of(findings, "ok")[f"slot {names}"]
    assert code == 1
    warnings = of(findings, "warning")
    uncovered = {subject.removeprefix("public.") for subject in warnings}
    assert uncovered and uncovered <= NEEDING_OLD_ROWS
    message = warnings["public.menu_items"]
    assert "has seen 0 of about" in message and "menu_items.price_changed" in message
    assert "REPLICA IDENTITY FULL" in message and "issue 9, not built yet" in message

    # A table under REPLICA IDENTITY FULL carries its old rows in the stream: no store needed.
    with psycopg.connect(fresh_legacy_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE menu_items REPLICA IDENTITY FULL")
    _, findings = check(config)
    assert "public.menu_items" not in of(findings, "warning")
    assert of(findings, "ok")["public.menu_items"] == "REPLICA IDENTITY FULL"


def test_schema_drift_and_a_missing_key_are_errors_that_say_what_to_change(
        tmp_path: Path, fresh_legacy_db: str, names: str) -> None:
    with psycopg.connect(fresh_legacy_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE menu_items ALTER COLUMN price TYPE text")
        conn.execute("ALTER TABLE customers DROP COLUMN phone")
        conn.execute("ALTER TABLE order_items DROP CONSTRAINT order_items_pkey")
        conn.execute("ALTER TABLE menu_items ALTER COLUMN name TYPE varchar(200)")  # compatible: a warning
    code, findings = check(direct_config(tmp_path, fresh_legacy_db, names))
    assert code == 2
    assert "compatible" in of(findings, "warning")["public.menu_items.name"]
    errors = of(findings, "error")
    assert "declared numeric(10,2)" in errors["public.menu_items.price"] and "is text" in errors["public.menu_items.price"]
    assert "no such column" in errors["public.customers.phone"]
    assert "refuses the legacy app's UPDATE and DELETE" in errors["public.order_items"]
    assert "REPLICA IDENTITY FULL" in errors["public.order_items"]

    # `run` makes the same checks and does not start: one line, exit 2, every problem named.
    done = cdc_bridge("run", "--config", str(tmp_path / "bridge.yaml"), "--exit-when-idle", "1")
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("cdc-bridge: preflight found 3 problem(s)")
    assert "public.menu_items.price" in last and "public.customers.phone" in last
    with psycopg.connect(fresh_legacy_db) as conn:  # nothing was created
        assert conn.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (names,)).fetchone() == (0,)


def test_a_role_without_replication_or_ownership_is_told_what_to_grant(
        tmp_path: Path, stack: StackInfo, fresh_legacy_db: str, names: str) -> None:
    role = f"plain_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(stack.admin_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
    try:
        dsn = fresh_legacy_db.replace("://postgres@", f"://{role}@", 1)
        assert dsn != fresh_legacy_db
        code, findings = check(direct_config(tmp_path, dsn, names))
        errors, warnings = of(findings, "error"), of(findings, "warning")
        assert code == 2
        assert f"ALTER ROLE {role} REPLICATION" in errors[f"role {role}"]
        assert "lacks the CREATE privilege on the database and ownership of" in errors[f"publication {names}"]
        assert "CREATE PUBLICATION" in errors[f"publication {names}"]
        assert "GRANT SELECT ON public.orders" in warnings["public.orders"]
    finally:
        with psycopg.connect(stack.admin_dsn, autocommit=True) as admin:
            admin.execute(f"DROP ROLE {role}")


def test_a_foreign_publication_and_slot_are_errors(tmp_path: Path, fresh_legacy_db: str, names: str) -> None:
    with psycopg.connect(fresh_legacy_db, autocommit=True) as conn:
        conn.execute(f"CREATE PUBLICATION {names} FOR TABLE orders, schema_migrations WITH (publish = 'insert, update')")
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", (names,))
    code, findings = check(direct_config(tmp_path, fresh_legacy_db, names))
    assert code == 2
    errors, warnings = of(findings, "error"), of(findings, "warning")
    assert "not mapped ['public.schema_migrations']" in errors[f"publication {names}"]
    assert f"ALTER PUBLICATION \"{names}\" SET TABLE" in errors[f"publication {names}"]
    assert "does not publish delete, truncate" in warnings[f"publication {names}"]
    assert "plugin test_decoding" in errors[f"slot {names}"] and "source.slot_name" in errors[f"slot {names}"]


def test_an_unreachable_broker_and_a_refused_database_have_their_own_exit_codes(
        tmp_path: Path, fresh_legacy_db: str, names: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(tmp_path / "down.yaml", mappings=[MAPPINGS],
                          source={"kind": "debezium", "bootstrap_servers": f"127.0.0.1:{port}"},
                          sink={"kind": "locallog", "path": str(tmp_path / "events")},
                          state={"path": str(tmp_path / "prior-rows.sqlite")})
    code, findings = check(config)
    assert code == 3
    assert f"no Kafka broker answers at 127.0.0.1:{port}" in of(findings, "error")["source.bootstrap_servers"]

    missing_db = fresh_legacy_db.rsplit("/", 1)[0] + "/no_such_database"
    code, findings = check(direct_config(tmp_path, missing_db, names))
    assert code == 2
    assert "does not exist" in of(findings, "error")["source.dsn"]


def test_debezium_topics_group_and_an_emptied_store(
        tmp_path: Path, stack: StackInfo, debezium_capture: DebeziumCapture) -> None:
    group = f"chk-{uuid.uuid4().hex[:8]}"

    def config(store: Path) -> Path:
        return write_config(tmp_path / f"{store.stem}.yaml", mappings=[MAPPINGS],
                            source={"kind": "debezium", "bootstrap_servers": stack.bootstrap_servers,
                                    "topic_prefix": debezium_capture.topic_prefix, "group_id": group,
                                    "group_instance_id": None},
                            sink={"kind": "locallog", "path": str(tmp_path / "events")},
                            state={"path": str(store)}, pipeline={"commit_interval_s": 0.2})

    used, emptied = tmp_path / "used.sqlite", tmp_path / "emptied.sqlite"
    code, findings = check(config(used))
    assert code == 1  # nothing captured yet: the topics do not exist
    assert "the connector has not run" in of(findings, "warning")["table topics"]

    report = run_simulation(debezium_capture.dsn, seed=5, count=40)
    wait_for(stack.bootstrap_servers, [debezium_capture.transaction_topic],
             lambda records: sum(1 for r in records if (payload(r) or {}).get("status") == "END") >= 40,
             what="the END markers of 40 transactions")
    assert len(report.transactions) == 40
    # The bridge reads what is there (filling its prior-row store), commits, and stops once idle.
    stats = run_daemon(load_settings(config(used)), stop=threading.Event(), idle_exit_s=5)
    assert stats.transactions > 0

    code, findings = check(config(used))
    assert code == 0, of(findings, "warning")
    assert "records behind" in of(findings, "ok")[f"group {group}"]
    assert of(findings, "ok")["public.orders"] == "has rows of this table"

    # The same group with an empty store: updates of rows it never saw would dead-letter.
    code, findings = check(config(emptied))
    assert code == 1
    message = of(findings, "warning")["public.orders"]
    assert f"group {group} has read" in message and "store was emptied or replaced" in message
    assert "snapshot.mode=initial" in message
