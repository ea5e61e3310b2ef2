"""Benchmark: Debezium change events already on Kafka -> the bridge -> domain events on Kafka,
against a kafka-python passthrough (consume and produce the same records untranslated) in the same run.

    .venv/bin/python bench/debezium_bridge.py --changes 100000 --runs 3

It starts its own local stack (or uses a running one: --state DIR), fills a fresh legacy database with
the traffic simulator until Debezium has published at least N row changes, then alternates passthrough
and bridge runs, each as a fresh process with a fresh consumer group, and reports medians: records/s,
changes/s, the bridge/passthrough time ratio, and peak RSS. Results go to bench/results/ as JSON.
Absolute numbers on a shared 2-core machine are noisy; the ratio is the figure to watch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "deploy" / "local"))

import connectors  # noqa: E402
from legacy_db.simulate import run_simulation  # noqa: E402
from tests.support.databases import create_legacy_database  # noqa: E402
from tests.support.local_stack import read_stack, run_stack  # noqa: E402

TABLES = ("customers", "customer_addresses", "menu_items", "orders", "order_items")


def prepare(stack, changes: int) -> tuple[str, list[str], int]:
    """A fresh database, a connector, and at least `changes` row changes published by Debezium."""
    suffix = uuid.uuid4().hex[:6]
    database = f"bench_{suffix}"
    dsn = create_legacy_database(stack.admin_dsn, database)
    prefix = f"bench{suffix}"
    _, config = connectors.load_definition(REPO / "deploy/connectors/restaurant-postgres.json", {
        "database.hostname": "127.0.0.1", "database.port": str(stack.pg_port), "database.password": "",
        "database.dbname": database, "topic.prefix": prefix, "slot.name": f"bench_{suffix}",
        "publication.name": f"bench_{suffix}"})
    connectors.add(stack.connect_url, f"bench-{suffix}", config)
    written = transactions = 0
    started = time.monotonic()
    while written < changes:
        report = run_simulation(dsn, seed=1000 + transactions, count=2000, keep_transactions=False)
        written += sum(report.row_changes.values())
        transactions += report.transaction_count
    print(f"simulator wrote {written} row changes in {transactions} transactions "
          f"({time.monotonic() - started:.0f}s); waiting for Debezium ...", flush=True)
    topics = [f"{prefix}.public.{t}" for t in TABLES] + [f"{prefix}.transaction"]
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        markers = _end_offset_sum(stack.bootstrap_servers, [f"{prefix}.transaction"])
        if markers >= 2 * transactions:
            break
        time.sleep(2)
    total = _end_offset_sum(stack.bootstrap_servers, topics)
    print(f"Debezium published {total} records ({markers} transaction markers)", flush=True)
    return prefix, topics, written


def _end_offset_sum(bootstrap: str, topics: list[str]) -> int:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        existing = consumer.topics()
        tps = [TopicPartition(t, p) for t in topics if t in existing for p in consumer.partitions_for_topic(t) or ()]
        return sum(consumer.end_offsets(tps).values()) if tps else 0
    finally:
        consumer.close()


def run_child(kind: str, stack, prefix: str, topics: list[str], records: int, tmp: Path) -> dict:
    group = f"{kind}-{uuid.uuid4().hex[:6]}"
    out = f"{prefix}-out-{kind}-{uuid.uuid4().hex[:4]}"
    args = [sys.executable, str(REPO / "bench" / "_bench_child.py"), kind, "--bootstrap", stack.bootstrap_servers,
            "--group", group, "--prefix", prefix, "--topics", ",".join(topics), "--records", str(records),
            "--out", out, "--state", str(tmp / f"{group}.sqlite")]
    done = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--state", type=Path, help="use the running stack under this state dir")
    parser.add_argument("--kinds", default="passthrough,bridge",
                        help="which runs to make (e.g. just 'bridge' to measure memory at a large N; "
                             "bridge-confluent: the bridge with sink.client: confluent)")
    parser.add_argument("--reuse-prefix", help="with --state: measure topics an earlier run filled (its topic prefix)")
    args = parser.parse_args()
    state = args.state or REPO / ".state" / f"bench-{uuid.uuid4().hex[:6]}"
    own_stack = args.state is None
    if own_stack:
        state.mkdir(parents=True)
        run_stack(state, "up")
    try:
        stack = read_stack(state)
        if args.reuse_prefix:
            prefix = args.reuse_prefix
            topics = [f"{prefix}.public.{t}" for t in TABLES] + [f"{prefix}.transaction"]
            changes = 0  # the bridge's own count is used
        else:
            prefix, topics, changes = prepare(stack, args.changes)
        records = _end_offset_sum(stack.bootstrap_servers, topics)
        kinds = args.kinds.split(",")
        results: dict[str, list[dict]] = {kind: [] for kind in kinds}
        for run in range(args.runs):
            for kind in kinds:
                result = run_child(kind, stack, prefix, topics, records, state)
                if kind.startswith("bridge") and changes and result["changes"] != changes:
                    raise RuntimeError(f"the bridge handled {result['changes']} of {changes} row changes: "
                                       "a run that stops early measures nothing")
                results[kind].append(result)
                print(f"run {run + 1} {kind:<11} {result['seconds']:7.2f}s  {records / result['seconds']:9.0f} records/s"
                      f"  peak RSS {result['max_rss_mb']:.0f} MB  {result.get('events', '')}", flush=True)
        summary = summarize(results, records, changes)
        print(json.dumps(summary, indent=2))
        out_dir = REPO / "bench" / "results"
        out_dir.mkdir(exist_ok=True)
        (out_dir / f"debezium_bridge-{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(
            json.dumps({"summary": summary, "runs": results}, indent=2))
    finally:
        if own_stack:
            run_stack(state, "down", "--purge", check=False)
    return 0


def summarize(results: dict[str, list[dict]], records: int, changes: int) -> dict:
    median = {kind: statistics.median(r["seconds"] for r in runs) for kind, runs in results.items()}
    if "passthrough" not in median or "bridge" not in median:
        return {"records_on_kafka": records, "row_changes": changes,
                **{f"{k}_seconds": round(v, 2) for k, v in median.items()},
                **{f"{k}_peak_rss_mb": round(max(r["max_rss_mb"] for r in rs), 1) for k, rs in results.items()}}
    changes = results["bridge"][-1].get("changes") or changes  # as the bridge counted them (no tombstones)
    return {
        "records_on_kafka": records,
        "row_changes": changes,
        "passthrough_records_per_s": round(records / median["passthrough"]),
        "bridge_records_per_s": round(records / median["bridge"]),
        "bridge_changes_per_s": round(changes / median["bridge"]),
        "bridge_over_passthrough_time": round(median["bridge"] / median["passthrough"], 3),
        "bridge_peak_rss_mb": round(max(r["max_rss_mb"] for r in results["bridge"]), 1),
        "passthrough_peak_rss_mb": round(max(r["max_rss_mb"] for r in results["passthrough"]), 1),
        "events_published": results["bridge"][-1].get("events"),
        **({"bridge_confluent_records_per_s": round(records / median["bridge-confluent"]),
            "bridge_confluent_over_bridge_time": round(median["bridge-confluent"] / median["bridge"], 3)}
           if "bridge-confluent" in median else {}),
    }


if __name__ == "__main__":
    sys.exit(main())
