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
from tests.support.databases import create_legacy_database, database_dsn  # noqa: E402
from tests.support.local_stack import read_stack, run_stack  # noqa: E402

TABLES = ("customers", "customer_addresses", "menu_items", "orders", "order_items")


def prepare(stack, changes: int) -> tuple[str, list[str], int]:
    """A fresh database, a connector, and at least `changes` row changes published by Debezium."""
    suffix = uuid.uuid4().hex[:6]
    database = f"bench_{suffix}"
    create_legacy_database(stack.admin_dsn, database)
    prefix = f"bench{suffix}"
    _, config = connectors.load_definition(REPO / "deploy/connectors/restaurant-postgres.json", {
        "database.hostname": "127.0.0.1", "database.port": str(stack.pg_port), "database.password": "",
        "database.dbname": database, "topic.prefix": prefix, "slot.name": f"bench_{suffix}",
        "publication.name": f"bench_{suffix}"})
    connectors.add(stack.connect_url, f"bench-{suffix}", config)
    written = fill(stack, prefix, changes)
    return prefix, topics_of(prefix), written


def topics_of(prefix: str) -> list[str]:
    return [f"{prefix}.public.{t}" for t in TABLES] + [f"{prefix}.transaction"]


def fill(stack, prefix: str, changes: int) -> int:
    """Write at least `changes` more row changes into the database behind `prefix` (its connector running)
    and wait until Debezium has published every transaction's markers."""
    dsn = database_dsn(stack.admin_dsn, f"bench_{prefix.removeprefix('bench')}")
    markers_before = _end_offset_sum(stack.bootstrap_servers, [f"{prefix}.transaction"])
    seed_base = 1000 + markers_before  # a grown backlog gets new seeds, not the first fill's again
    written = transactions = 0
    started = time.monotonic()
    while written < changes:
        report = run_simulation(dsn, seed=seed_base + transactions, count=2000, keep_transactions=False)
        written += sum(report.row_changes.values())
        transactions += report.transaction_count
    print(f"simulator wrote {written} row changes in {transactions} transactions "
          f"({time.monotonic() - started:.0f}s); waiting for Debezium ...", flush=True)
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        markers = _end_offset_sum(stack.bootstrap_servers, [f"{prefix}.transaction"])
        if markers >= markers_before + 2 * transactions:
            break
        time.sleep(2)
    total = _end_offset_sum(stack.bootstrap_servers, topics_of(prefix))
    print(f"Debezium published {total} records ({markers} transaction markers) under prefix {prefix}", flush=True)
    return written


def _end_offset_sum(bootstrap: str, topics: list[str]) -> int:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        existing = consumer.topics()
        tps = [TopicPartition(t, p) for t in topics if t in existing for p in consumer.partitions_for_topic(t) or ()]
        return sum(consumer.end_offsets(tps).values()) if tps else 0
    finally:
        consumer.close()


def run_child(kind: str, stack, prefix: str, topics: list[str], records: int, tmp: Path,
              base_code: Path | None = None, rss_every_s: float = 0.0) -> dict:
    """One timed run in a fresh process and consumer group; kind 'base' is the bridge run from `base_code`."""
    group = f"{kind}-{uuid.uuid4().hex[:6]}"
    out = f"{prefix}-out-{kind}-{uuid.uuid4().hex[:4]}"
    args = [sys.executable, str(REPO / "bench" / "_bench_child.py"), "bridge" if kind == "base" else kind,
            "--bootstrap", stack.bootstrap_servers,
            "--group", group, "--prefix", prefix, "--topics", ",".join(topics), "--records", str(records),
            "--out", out, "--state", str(tmp / f"{group}.sqlite"), "--rss-every", str(rss_every_s)]
    if kind == "base":
        if base_code is None:
            raise SystemExit("kind 'base' needs --base-code DIR (e.g. `git archive main bridge | tar -x -C DIR`)")
        args += ["--code", str(base_code.resolve())]
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
                             "bridge-confluent: the bridge with sink.client: confluent; a '-process' suffix: with "
                             "sink.separate_process: true)")
    parser.add_argument("--reuse-prefix", help="with --state: measure topics an earlier run filled (its topic prefix)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="with --state: fill a new backlog of --changes row changes, print its prefix, stop")
    parser.add_argument("--grow", metavar="PREFIX",
                        help="with --state: add --changes more row changes to the backlog of PREFIX, then stop")
    parser.add_argument("--base-code", type=Path,
                        help="a folder holding another build's bridge/ package, run as kind 'base' (the A/B's before)")
    parser.add_argument("--rss-every", type=float, default=0.0,
                        help="sample each child's RSS every this many seconds (0: peak only)")
    args = parser.parse_args()
    if (args.prepare_only or args.grow) and args.state is None:
        parser.error("--prepare-only and --grow keep the backlog on a running stack: give --state")
    state = args.state or REPO / ".state" / f"bench-{uuid.uuid4().hex[:6]}"
    own_stack = args.state is None
    if own_stack:
        state.mkdir(parents=True)
        run_stack(state, "up")
    try:
        stack = read_stack(state)
        if args.grow:
            fill(stack, args.grow, args.changes)
            return 0
        if args.prepare_only:
            prefix, _, _ = prepare(stack, args.changes)
            print(f"backlog ready: --reuse-prefix {prefix}")
            return 0
        if args.reuse_prefix:
            prefix = args.reuse_prefix
            topics = topics_of(prefix)
            changes = 0  # the first bridge run's count is the figure every later run must match
        else:
            prefix, topics, changes = prepare(stack, args.changes)
        records = _end_offset_sum(stack.bootstrap_servers, topics)
        kinds = args.kinds.split(",")
        results: dict[str, list[dict]] = {kind: [] for kind in kinds}
        for run in range(args.runs):
            for kind in kinds:
                result = run_child(kind, stack, prefix, topics, records, state, args.base_code, args.rss_every)
                if kind != "passthrough" and not changes and args.reuse_prefix:
                    changes = result["changes"]
                if kind != "passthrough" and changes and result["changes"] != changes:
                    raise RuntimeError(f"the bridge handled {result['changes']} of {changes} row changes: "
                                       "a run that stops early measures nothing")
                results[kind].append(result)
                print(f"run {run + 1} {kind:<11} {result['seconds']:7.2f}s  {records / result['seconds']:9.0f} records/s"
                      f"  cpu {result.get('cpu_seconds', '?')}s  peak RSS {result['max_rss_mb']:.0f} MB  {result.get('events', '')}", flush=True)
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
    """Medians per kind; for each bridge kind ('bridge', 'bridge-confluent', 'base') its throughput over the
    passthrough's."""
    median = {kind: statistics.median(r["seconds"] for r in runs) for kind, runs in results.items()}
    counted = next((runs[-1] for kind, runs in results.items() if kind != "passthrough" and runs), {})
    changes = counted.get("changes") or changes  # as the bridge counted them (no tombstones)
    summary: dict = {"records_on_kafka": records, "row_changes": changes, "events_published": counted.get("events")}
    for kind, runs in results.items():
        summary[f"{kind}_seconds"] = round(median[kind], 2)
        summary[f"{kind}_records_per_s"] = round(records / median[kind])
        summary[f"{kind}_peak_rss_mb"] = round(max(r["max_rss_mb"] for r in runs), 1)
        if all("cpu_seconds" in r for r in runs):
            summary[f"{kind}_cpu_seconds"] = round(statistics.median(r["cpu_seconds"] for r in runs), 1)
        if kind != "passthrough":
            summary[f"{kind}_changes_per_s"] = round(changes / median[kind])
            if "passthrough" in median:
                summary[f"{kind}_over_passthrough_time"] = round(median[kind] / median["passthrough"], 3)
                summary[f"{kind}_throughput_vs_passthrough"] = round(median["passthrough"] / median[kind], 3)
    if "bridge-confluent" in median and "bridge" in median:
        summary["bridge_confluent_over_bridge_time"] = round(median["bridge-confluent"] / median["bridge"], 3)
    for kind in median:
        if kind.endswith("-process") and kind.removesuffix("-process") in median:  # the split's own ratio
            summary[f"{kind}_speedup_over_one_process"] = round(median[kind.removesuffix("-process")] / median[kind], 3)
        if any(r.get("sink_process_max_rss_mb") for r in results[kind]):
            summary[f"{kind}_sink_process_peak_rss_mb"] = round(max(r["sink_process_max_rss_mb"] or 0
                                                                    for r in results[kind]), 1)
    return summary


if __name__ == "__main__":
    sys.exit(main())
