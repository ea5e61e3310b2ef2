"""`cdc-bridge backfill` on the real stack: existing rows become events that rebuild the legacy state, from one
consistent snapshot, with deterministic ids, resumable after kill -9, and every bad input refused before anything
is published."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bridge.backfill import BackfillOptions, run_backfill
from bridge.events import format_time
from bridge.settings import load_settings
from bridge.sinks.process import SinkProcess
from bridge.sinks.locallog_reader import EventLogReader
from legacy_db.simulate import run_simulation
from tests.support.bridge_process import REPO_ROOT, write_config
from tests.support.event_checks import assert_state_matches
from tests.support.kafka_reading import read_all
from tests.support.local_stack import StackInfo
from tests.support.restaurant_fold import FoldingConsumer

MAPPINGS = str(REPO_ROOT / "mappings" / "restaurant.yaml")


@pytest.fixture
def seeded_db(fresh_legacy_db: str) -> str:
    run_simulation(fresh_legacy_db, seed=7, count=400)
    return fresh_legacy_db


def _config(tmp_path: Path, dsn: str, *, sink: dict[str, Any] | None = None, mappings: str = MAPPINGS) -> Path:
    return write_config(tmp_path / "bridge.yaml", source_id="legacy-restaurant", mappings=[mappings],
                        source={"kind": "pgoutput", "dsn": dsn},
                        sink=sink or {"kind": "locallog", "path": str(tmp_path / "live-events")},
                        state={"path": str(tmp_path / "state" / "prior-rows.sqlite")},
                        pipeline={"commit_interval_s": 0.2}, logging={"format": "text"})


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge.cli", "backfill", *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _log_records(directory: Path) -> list[Any]:
    return list(EventLogReader(directory).read())


def _fold_log(records: list[Any]) -> FoldingConsumer:
    consumer = FoldingConsumer()
    for record in records:
        consumer.apply(record.type, record.data())
    return consumer


def test_a_backfill_to_a_local_log_rebuilds_the_legacy_state_with_ids_that_a_second_run_repeats(
        seeded_db: str, tmp_path: Path) -> None:
    settings = load_settings(_config(tmp_path, seeded_db))
    first = run_backfill(settings, BackfillOptions(to=f"log:{tmp_path / 'first'}", batch_size=37))
    assert first.complete and first.dead_letters == 0
    records = _log_records(tmp_path / "first")
    assert len(records) == sum(first.events.values()) > 0
    assert_state_matches(_fold_log(records), seeded_db)

    # Marked as a backfill, with the cut; its time is the row's own where the mapping says so.
    with psycopg.connect(seeded_db) as conn:
        created = {row[0]: row[1] for row in conn.execute("SELECT id, created_at FROM orders")}
        placed = {row[0]: row[1] for row in conn.execute("SELECT id, placed_at FROM orders WHERE placed_at IS NOT NULL")}
    opened = [r for r in records if r.type == "restaurant.order.OrderOpened.v1"]
    assert len(opened) == len(created)
    for record in opened:
        assert record.header("ce_backfill") == first.run_id and record.header("ce_backfillcut") == first.cut
        assert record.time == format_time(created[record.data()["id"]])
    for record in (r for r in records if r.type == "restaurant.order.OrderPlaced.v1"):
        assert record.time == format_time(placed[record.data()["orderId"]])

    # The manifest says where everything went and what the cut is.
    manifest = json.loads((first.run_dir / "manifest.json").read_text())
    assert manifest["cut"] == first.cut and manifest["resumed"] == 0
    assert manifest["output"]["offsets"] == {"first": 0, "next": len(records)}
    assert {t: v["rows"] for t, v in manifest["tables"].items()} == _row_counts(seeded_db)

    second = run_backfill(settings, BackfillOptions(to=f"log:{tmp_path / 'second'}", batch_size=500))
    assert second.run_id != first.run_id
    assert [r.id for r in _log_records(tmp_path / "second")] == [r.id for r in records], \
        "the same rows give the same ids, whatever the batch size or run"


def _row_counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
                for t in ("customers", "customer_addresses", "menu_items", "orders", "order_items")}


def test_where_and_tables_choose_the_rows_and_a_dry_run_publishes_nothing(seeded_db: str, tmp_path: Path) -> None:
    config = _config(tmp_path, seeded_db)
    done = _cli("--config", str(config), "--tables", "orders", "--where", "orders=status = 'PLACED'",
                "--to", f"log:{tmp_path / 'placed'}")
    assert done.returncode == 0, done.stderr
    records = _log_records(tmp_path / "placed")
    with psycopg.connect(seeded_db) as conn:
        placed = {row[0] for row in conn.execute("SELECT id FROM orders WHERE status = 'PLACED'")}
    assert {r.data()["orderId"] for r in records if r.type.endswith("OrderPlaced.v1")} == placed
    assert {r.data()["id"] for r in records if r.type.endswith("OrderOpened.v1")} == placed
    assert not any(r.type.endswith("ItemAddedToOrder.v1") for r in records), "order_items was not asked for"

    dry = _cli("--config", str(config), "--dry-run", "--to", f"log:{tmp_path / 'dry'}")
    assert dry.returncode == 0, dry.stderr
    assert "dry run, nothing published" in dry.stdout and "restaurant.order.OrderOpened.v1" in dry.stdout
    assert not (tmp_path / "dry").exists()


@pytest.mark.parametrize(("args", "expected"), [
    (["--tables", "dishes"], "--tables dishes: no mapping rule reads a table of that name"),
    (["--where", "orders=no_such_column > 1"], "no_such_column"),
    (["--where", "orders=status = = 'x'"], "--where \"orders=status = = 'x'\" fails on public.orders: syntax error"),
    (["--where", "dishes=id > 1"], "dishes is not among the tables"),
    (["--to", "kafka"], "expected topics[:SUFFIX], log[:DIR] or live"),
    (["--to", "log:/proc/cannot-write-here"], "cannot open the local event log"),
    (["--resume", "20990101T000000Z-abcdef"], "no backfill run of that id"),
])
def test_bad_input_is_one_line_with_exit_code_2_before_anything_is_published(
        seeded_db: str, tmp_path: Path, args: list[str], expected: str) -> None:
    done = _cli("--config", str(_config(tmp_path, seeded_db)), "--to", f"log:{tmp_path / 'out'}", *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    error = [line for line in done.stderr.splitlines() if not line.startswith(("INFO", "WARNING"))]
    assert len(error) == 1 and error[0].startswith("cdc-bridge:") and expected in error[0], done.stderr
    assert not (tmp_path / "out").exists() or not _log_records(tmp_path / "out")
    assert not list((tmp_path / "state" / "backfills").glob("*/state.json")), "no run is left to resume"
    assert not [p for p in (tmp_path / "state" / "backfills").glob("*") if "20990101" not in p.name]


def test_a_table_without_primary_key_or_without_a_rule_for_existing_rows_is_refused(
        seeded_db: str, tmp_path: Path) -> None:
    with psycopg.connect(seeded_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE audit_notes (note text, written_at timestamptz)")
        conn.execute("INSERT INTO audit_notes VALUES ('x', now())")
    mapping = tmp_path / "notes.yaml"
    mapping.write_text(
        "version: 1\nnamespace: legacy\ntables:\n  audit_notes: {key: [note], columns: {note: text, written_at: timestamptz}}\n"
        "  customers: {key: [id], columns: {id: bigint, email: varchar(255)}}\n"
        "rules:\n"
        "  - {id: notes.read, table: audit_notes, ops: [c, r], emit: [{event: NoteWritten, aggregate: {type: note, id: after.note}, data: {note: after.note}}]}\n"
        "  - {id: customers.new, table: customers, ops: [c], emit: [{event: CustomerNew, aggregate: {type: customer, id: after.id}, data: {id: after.id}}]}\n")
    config = _config(tmp_path, seeded_db, mappings=str(mapping))
    no_key = _cli("--config", str(config), "--to", f"log:{tmp_path / 'out'}")
    assert no_key.returncode == 2 and "table public.audit_notes has no primary key" in no_key.stderr, no_key.stderr
    no_meaning = _cli("--config", str(config), "--tables", "customers", "--to", f"log:{tmp_path / 'out'}")
    assert no_meaning.returncode == 2, no_meaning.stderr
    assert "no rule says what an existing row of customers means" in no_meaning.stderr


def test_a_role_with_select_and_replication_is_enough_and_one_without_replication_is_told_what_it_lacks(
        seeded_db: str, stack: StackInfo, tmp_path: Path) -> None:
    reader, plain = f"bf_reader_{uuid.uuid4().hex[:6]}", f"bf_plain_{uuid.uuid4().hex[:6]}"
    database = seeded_db.rsplit("/", 1)[1]
    with psycopg.connect(seeded_db, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {reader} LOGIN REPLICATION")
        conn.execute(f"CREATE ROLE {plain} LOGIN")
        for role in (reader, plain):
            conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    try:
        settings = load_settings(_config(tmp_path, seeded_db))
        reader_dsn = seeded_db.replace("postgres@", f"{reader}@", 1)
        result = run_backfill(settings, BackfillOptions(to=f"log:{tmp_path / 'ro'}", dsn=reader_dsn))
        assert result.complete
        assert_state_matches(_fold_log(_log_records(tmp_path / "ro")), seeded_db)
        refused = _cli("--config", str(_config(tmp_path, seeded_db)), "--to", f"log:{tmp_path / 'plain'}",
                       "--dsn", seeded_db.replace("postgres@", f"{plain}@", 1))
        assert refused.returncode == 2 and "REPLICATION" in refused.stderr, refused.stderr
    finally:
        with psycopg.connect(stack.admin_dsn.rsplit("/", 1)[0] + f"/{database}", autocommit=True) as conn:
            for role in (reader, plain):
                conn.execute(f"DROP OWNED BY {role}")
                conn.execute(f"DROP ROLE {role}")


def test_a_backfill_killed_mid_run_resumes_after_its_last_acknowledged_batch_and_loses_and_doubles_nothing(
        seeded_db: str, stack: StackInfo, tmp_path: Path) -> None:
    out = f"bf{uuid.uuid4().hex[:6]}"
    sink = {"kind": "kafka", "bootstrap_servers": stack.bootstrap_servers, "topic_template": out + ".{aggregate_type}",
            "dead_letter_topic": f"{out}.dead-letters"}
    config = _config(tmp_path, seeded_db, sink=sink)
    runs = tmp_path / "runs"
    args = ["--config", str(config), "--runs-dir", str(runs), "--to", "topics:.killed", "--batch-size", "10"]
    child = subprocess.Popen([sys.executable, "-m", "bridge.cli", "backfill", *args, "--rate", "60"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 90
        while not _acknowledged_rows(runs) >= 60:
            assert child.poll() is None, child.stdout.read().decode() if child.stdout else ""
            assert time.monotonic() < deadline, "the backfill made no progress"
            time.sleep(0.1)
        child.kill()  # kill -9: no drain, no last checkpoint
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    (run_dir,) = runs.iterdir()
    state = json.loads((run_dir / "state.json").read_text())
    assert not state["complete"]
    total = sum(_row_counts(seeded_db).values())
    assert 60 <= sum(p["rows"] for p in state["progress"].values()) < total

    resumed = _cli(*args[:4], "--resume", run_dir.name)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"backfill {run_dir.name}: complete" in resumed.stdout

    killed_topics = [f"{out}.{a}.killed" for a in ("customer", "menu_item", "order")]
    records = read_all(stack.bootstrap_servers, killed_topics)
    by_id: dict[str, list[bytes]] = {}
    for record in records:
        by_id.setdefault(dict(record.headers)["ce_id"].decode(), []).append(record.value)
    # Each repeat is the same event (same id, same bytes): only batches in flight at the kill were sent again.
    assert all(len(set(values)) == 1 for values in by_id.values())
    repeated = sum(len(values) - 1 for values in by_id.values())
    # Repeated: only what was sent but not yet acknowledged at the kill (a checkpoint interval of 0.2 s at 60 rows/s,
    # and the batches in flight), never what the run's state had as acknowledged.
    assert repeated <= 4 * 40 < len(by_id) / 2, f"{repeated} of {len(by_id)} events repeated"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["cuts"][1]["from"] == {t: p["after"] for t, p in state["progress"].items() if not p["done"]}

    # Nothing lost: exactly the events of an uninterrupted backfill of the same rows.
    whole = run_backfill(load_settings(config), BackfillOptions(to=f"log:{tmp_path / 'whole'}"))
    assert set(by_id) == {r.id for r in _log_records(tmp_path / "whole")}
    assert manifest["resumed"] == 1 and len(manifest["cuts"]) == 2
    assert sum(t["rows"] for t in manifest["tables"].values()) == total == sum(p.rows for p in whole.tables.values())
    assert sum(v["count"] for parts in manifest["output"]["topics"].values() for v in parts.values()) > 0
    counts = Counter(dict(r.headers)["ce_backfill"].decode() for r in records)
    assert counts == Counter({run_dir.name: len(records)})


def _acknowledged_rows(runs: Path) -> int:
    for state_file in runs.glob("*/state.json"):
        try:
            return sum(p["rows"] for p in json.loads(state_file.read_text())["progress"].values())
        except (ValueError, KeyError):
            return 0
    return 0


def test_a_backfill_with_the_sink_in_a_separate_process_publishes_and_records_what_one_process_does(
        seeded_db: str, stack: StackInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sink.separate_process holds for a backfill too: the same events, and a manifest that says where they went
    (each Kafka partition's first and last offset and count; the log's offsets), as the sink in one process."""
    started: list[SinkProcess] = []
    open_process = SinkProcess.open.__func__  # type: ignore[attr-defined]

    def opened(cls: type[SinkProcess], *args: Any, **kwargs: Any) -> SinkProcess:
        started.append(open_process(cls, *args, **kwargs))
        return started[-1]

    monkeypatch.setattr(SinkProcess, "open", classmethod(opened))
    out = f"bfp{uuid.uuid4().hex[:6]}"
    sink = {"kind": "kafka", "bootstrap_servers": stack.bootstrap_servers, "topic_template": out + ".{aggregate_type}",
            "dead_letter_topic": f"{out}.dead-letters"}
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
    alone = load_settings(_config(tmp_path / "one", seeded_db, sink=sink))
    split = load_settings(_config(tmp_path / "two", seeded_db, sink={**sink, "separate_process": True}))
    here = run_backfill(alone, BackfillOptions(to="topics:.one", runs_dir=tmp_path / "one" / "runs"))
    there = run_backfill(split, BackfillOptions(to="topics:.two", runs_dir=tmp_path / "two" / "runs"))
    assert here.complete and there.complete and there.events == here.events and sum(here.events.values()) > 0

    def published(suffix: str) -> dict[str, bytes]:
        topics = [f"{out}.{a}.{suffix}" for a in ("customer", "menu_item", "order")]
        return {dict(r.headers)["ce_id"].decode(): r.value for r in read_all(stack.bootstrap_servers, topics)}

    assert published("two") == published("one"), "the same events, byte for byte"

    def placements(result: Any, suffix: str) -> dict[str, Any]:
        output = json.loads((result.run_dir / "manifest.json").read_text())["output"]
        return {topic.removesuffix(suffix): parts for topic, parts in output["topics"].items()}

    noted = placements(there, ".two")
    assert noted == placements(here, ".one")  # one partition per topic here: the same offsets, first to last
    assert sum(p["count"] for parts in noted.values() for p in parts.values()) == sum(there.events.values())

    logged = run_backfill(split, BackfillOptions(to=f"log:{tmp_path / 'log'}", runs_dir=tmp_path / "two" / "runs"))
    offsets = json.loads((logged.run_dir / "manifest.json").read_text())["output"]["offsets"]
    assert offsets == {"first": 0, "next": len(_log_records(tmp_path / "log"))} and offsets["next"] > 0
    assert len(started) == 2 and all(sink.pid for sink in started), "both ran their sink in a second process"
