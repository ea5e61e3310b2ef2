"""`stack.py connector add|remove` against the session's real Kafka Connect: the table list comes from the
mappings, and a connector added again under a used name is refused, resumed or started afresh, by choice,
never silently resumed from offsets its replication slot may no longer hold."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import psycopg

from legacy_db.simulate import run_simulation
from tests.conftest import CONNECTOR_DEFINITION, connectors
from tests.support.local_stack import StackInfo, run_stack


def _add(stack: StackInfo, name: str, prefix: str, *extra: str) -> tuple[int, str]:
    assert stack.state_dir is not None
    done = run_stack(stack.state_dir, "connector", "add", str(CONNECTOR_DEFINITION), "--set", f"name={name}",
                     "--set", f"topic.prefix={prefix}", "--set", f"slot.name={name}",
                     "--set", f"publication.name={name}", *extra, check=False)
    return done.returncode, done.stdout + done.stderr


def _wait_for_offsets(stack: StackInfo, name: str, timeout: float = 90) -> list[dict]:
    deadline = time.monotonic() + timeout
    while not (stored := connectors.stored_offsets(stack.connect_url, name)):
        assert time.monotonic() < deadline, f"connector {name} stored no offsets within {timeout}s"
        time.sleep(0.5)
    return stored


def _drop_slot(dsn: str, slot: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        deadline = time.monotonic() + 30
        while conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone() == (True,):
            assert time.monotonic() < deadline, "the deleted connector's slot stayed active"
            time.sleep(0.3)
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                     (slot,))


def test_re_adding_a_removed_connector_needs_a_choice_about_its_offsets(
        stack: StackInfo, fresh_legacy_db: str, tmp_path: Path) -> None:
    assert stack.state_dir is not None
    name, prefix = f"readd_{uuid.uuid4().hex[:8]}", f"ra{uuid.uuid4().hex[:6]}"
    database = ("--set", f"database.dbname={fresh_legacy_db.rsplit('/', 1)[1]}")
    # Only the tables the mappings read are captured.
    mapping = tmp_path / "orders.yaml"
    mapping.write_text("version: 1\nnamespace: shop\nrules:\n  - id: orders.seen\n    table: orders\n    ops: [c]\n"
                       "    emit:\n      - event: OrderSeen\n        aggregate: {type: order, id: after.id}\n"
                       "        data: {id: after.id}\n")
    code, output = _add(stack, name, prefix, *database, "--mappings", str(mapping))
    try:
        assert code == 0, output
        assert "tables public.orders" in output
        status, config = connectors._request("GET", f"{stack.connect_url}/connectors/{name}/config")
        assert status == 200 and config["table.include.list"] == "public.orders"
        run_simulation(fresh_legacy_db, seed=2, count=10)
        stored = _wait_for_offsets(stack, name)

        # Removed, then added again: refused, saying what would happen and how to choose; nothing is left running.
        assert connectors.remove(stack.connect_url, name)
        code, output = _add(stack, name, prefix, *database)
        assert code == 1
        assert "kept its offsets" in output and "--keep-offsets" in output and "--reset-offsets" in output
        assert f"replication slot {name!r}" in output
        assert connectors._request("GET", f"{stack.connect_url}/connectors/{name}")[0] == 404

        # The slot is gone (a clean-up, a new server): --reset-offsets starts afresh and runs.
        _drop_slot(fresh_legacy_db, name)
        code, output = _add(stack, name, prefix, *database, "--reset-offsets")
        assert code == 0, output
        assert connectors._request("GET", f"{stack.connect_url}/connectors/{name}/status")[1]["connector"]["state"] \
            == "RUNNING"
        run_simulation(fresh_legacy_db, seed=4, count=5)
        newer = _wait_for_offsets(stack, name)
        assert newer != stored

        # --keep-offsets resumes from what the connector stored (its slot exists this time).
        assert connectors.remove(stack.connect_url, name)
        code, output = _add(stack, name, prefix, *database, "--keep-offsets")
        assert code == 0, output
        assert connectors.stored_offsets(stack.connect_url, name)[0]["offset"]["lsn"] >= newer[0]["offset"]["lsn"]
    finally:
        done = run_stack(stack.state_dir, "connector", "remove", name, "--reset-offsets", check=False)
        assert done.returncode == 0, done.stderr
    # Removed with its offsets: the name is free again, with no choice to make.
    code, output = _add(stack, name, prefix, *database, "--mappings", str(mapping))
    assert code == 0, output
    connectors.remove(stack.connect_url, name, reset_offsets=True)
