"""`cdc-bridge backfill`'s input: tables, --where, --to, and the run's state on disk (pure parts, no database)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from bridge.backfill import choose_tables
from bridge.backfill_command import _tables, _where_pairs
from bridge.backfill_state import RunLock, RunState
from bridge.backfill_target import Target
from bridge.errors import ConfigurationError
from bridge.mapping.loader import load_mappings
from bridge.settings import KafkaSink, LocalLogSink, Settings
from bridge.snapshot_scan import TableProgress

RESTAURANT = Path(__file__).resolve().parents[2] / "mappings" / "restaurant.yaml"


def kafka_settings() -> Settings:
    return Settings(sink=KafkaSink(topic_template="shop.{aggregate_type}", topics={"order": "orders-v1"},
                                   dead_letter_topic="shop.dlq"))


def test_targets_default_to_topics_beside_the_live_ones_or_a_log_in_the_run_directory(tmp_path: Path) -> None:
    settings = kafka_settings()
    target = Target.parse(None, settings)
    assert target == Target("topics", ".backfill")
    moved = target.sink_settings(settings, tmp_path)
    assert isinstance(moved, KafkaSink)
    assert moved.topic_for("shop", "customer") == "shop.customer.backfill"
    assert moved.topic_for("shop", "order") == "orders-v1.backfill"
    assert moved.dead_letter_topic == "shop.dlq.backfill"
    assert Target.parse("topics:-bf1", settings).sink_settings(settings, tmp_path).topic_for("shop", "x") == "shop.x-bf1"

    log_settings = Settings(sink=LocalLogSink(path=tmp_path / "live"))
    in_run = Target.parse(None, log_settings)
    assert in_run.kind == "log" and in_run.sink_settings(log_settings, tmp_path / "run").path == tmp_path / "run" / "events"
    assert Target.parse(f"log:{tmp_path / 'x'}", settings).sink_settings(settings, tmp_path).path == tmp_path / "x"
    assert Target.parse("live", settings).sink_settings(settings, tmp_path) is settings.sink


@pytest.mark.parametrize("text", ["kafka", "live:x", "topics:bad/suffix", "topics: x"])
def test_a_target_that_is_not_understood_is_refused(text: str) -> None:
    with pytest.raises(ConfigurationError, match=r"--to"):
        Target.parse(text, kafka_settings())


def test_tables_are_read_parents_first_and_tables_without_a_meaning_for_existing_rows_are_named(tmp_path: Path) -> None:
    mappings = load_mappings([RESTAURANT])
    order, skipped = choose_tables(mappings, None)
    assert [t for _, t in order] == ["customers", "customer_addresses", "menu_items", "orders", "order_items"]
    assert skipped == {}
    assert choose_tables(mappings, ["order_items", "orders"])[0] == [("public", "orders"), ("public", "order_items")]
    with pytest.raises(ConfigurationError, match="--tables dishes: no mapping rule reads a table of that name"):
        choose_tables(mappings, ["dishes"])

    path = tmp_path / "m.yaml"
    path.write_text("namespace: shop\ntables: {a: {columns: {id: integer}}, b: {columns: {id: integer}}}\nrules:\n"
                    "  - {id: a.new, table: a, ops: [c, r], emit: [{event: A, aggregate: {type: a, id: after.id}}]}\n"
                    "  - {id: b.new, table: b, ops: [c], emit: [{event: B, aggregate: {type: b, id: after.id}}]}\n")
    partial = load_mappings([path])
    assert choose_tables(partial, None) == ([("public", "a")], {"b": "no rule for existing rows (op r)"})
    with pytest.raises(ConfigurationError, match="no rule says what an existing row of b means: add r"):
        choose_tables(partial, ["b"])


def test_where_and_tables_options_parse_or_say_what_is_expected() -> None:
    assert _where_pairs(("orders=status = 'PLACED'", " customers = id > 10 ")) == {
        "orders": "status = 'PLACED'", "customers": "id > 10"}
    for bad in ("orders", "=x", "orders="):
        with pytest.raises(ConfigurationError, match="expected TABLE=PREDICATE"):
            _where_pairs((bad,))
    with pytest.raises(ConfigurationError, match="given twice"):
        _where_pairs(("orders=a", "orders=b"))
    assert _tables(("orders,order_items", "customers")) == ["orders", "order_items", "customers"]
    assert _tables(()) is None


def test_a_runs_state_survives_a_restart_owner_only_and_one_process_works_on_a_run(tmp_path: Path) -> None:
    state = RunState(run_id="r1", run_dir=tmp_path / "runs" / "r1", source_id="src", tables=["public.orders"],
                     where={"orders": "id > 1"}, target="topics:.backfill", batch_size=10, mappings="abc")
    state.progress["orders"] = TableProgress("orders", rows=20, after=["20"], total=50)
    state.cuts.append({"cut": "0/10", "cut_lsn": 16})
    state.save()
    assert stat.S_IMODE(state.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.run_dir.stat().st_mode) == 0o700
    loaded = RunState.load(tmp_path / "runs", "r1")
    assert loaded.as_dict() == state.as_dict()
    with pytest.raises(ConfigurationError, match=r"no backfill run of that id .*\(runs there: r1\)"):
        RunState.load(tmp_path / "runs", "r2")

    lock = RunLock(state.run_dir)
    with pytest.raises(ConfigurationError, match="in use by another process"):
        RunLock(state.run_dir)
    lock.release()
    RunLock(state.run_dir).release()


def test_progress_off_a_terminal_is_a_plain_line_with_rows_rate_and_eta() -> None:
    import io
    import time

    from bridge.backfill_progress import ProgressDisplay
    from bridge.pipeline import PipelineStats
    from bridge.snapshot import TableShape

    shape = TableShape("public", "orders", ("id",), (int,), ("id",), ("bigint",))
    progress = {"orders": TableProgress("orders", total=1000)}
    out = io.StringIO()
    display = ProgressDisplay(out, interval_s=0.05)
    display.start(progress, [shape], PipelineStats(events=12))
    for read in (100, 200, 300):
        progress["orders"].read = read
        time.sleep(0.06)
    display.stop()
    last = out.getvalue().strip().splitlines()[-1]
    assert last.startswith("backfill: 300/1000 rows (30%), ") and "rows/s, ETA " in last
    assert "orders 300/1000; 12 events, 0 dead letters" in last
