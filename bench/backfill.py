"""Benchmark: `cdc-bridge backfill` over a large legacy database, against a plain COPY of the same rows.

    .venv/bin/python bench/backfill.py --rows 250000,1000000 --runs 3         # local event log
    .venv/bin/python bench/backfill.py --rows 250000 --sink kafka              # also --to topics (Kafka)
    .venv/bin/python bench/backfill.py --rows 250000 --sink kafka --separate-process   # + the sink in a second process
    .venv/bin/python bench/backfill.py --rows 250000 --sink kafka --kafka-client confluent   # sink.client: confluent
    .venv/bin/python bench/backfill.py --rows 1000000 --runs 1 --profile       # + one cProfile'd run
    .venv/bin/python bench/backfill.py --rows 250000 --runs 5 --scan --check-identical \\
        --bridge "base=env PYTHONPATH=.state/ab-base .venv/bin/python -m bridge.cli" --bridge current   # A/B, same run

It starts its own PostgreSQL (deploy/local/stack.py, and Kafka for --sink kafka) under
.state/bench-backfill-<id> and removes it at the end, or uses a running stack (--state DIR).

Data. Per size N (--rows: the total number of rows in all five tables), a fresh database with the legacy
schema (legacy_db.migrate.apply_migrations), seeded with set-based SQL (generate_series, a fixed random
seed): 400 menu items (numeric prices, text[] tags, some quoted or empty, a few TOASTed descriptions,
5% withdrawn), C customers (jsonb preferences or NULL, phones or NULL, timestamptz created_at, 2%
soft-deleted), 1 or 2 addresses each, 2 orders each (80% PLACED with placed_at, 6% CANCELLED, the rest
OPEN; 70% with a delivery address; notes or NULL) and 1-5 lines per order (3 on average), C chosen so
the total reaches N (C ~ N / 10.5); then VACUUM ANALYZE and CHECKPOINT. Before the timed runs, one
untimed COPY of every table warms the server's and the OS's caches, so every timed run reads warm data.
The events the mappings must give for these rows are counted in SQL (one per row, plus
CustomerDeactivated, MenuItemWithdrawn, DeliveryAddressAddedToOrder, OrderPlaced and OrderCanceled where
the row says so), and every run of the bridge must report exactly them, no dead letter, and every row.

Runs. For each size and each of --runs, sequentially (nothing else of the benchmark runs meanwhile):
  copy      the reference: bench/_copy_reference.py, a fresh Python process: one REPEATABLE READ
            transaction, `COPY (SELECT * FROM t ORDER BY key) TO STDOUT` of each table through psycopg,
            every row taken into Python by copy.rows() and counted. The ceiling for any reader in Python
            that reads through COPY text: no pagination, no decoding, nothing published.
  backfill  `cdc-bridge backfill --config CFG --to log:DIR` (python -m bridge.cli) under
            /usr/bin/time -v: a temporary slot's exported snapshot, keyset pages of --batch-size rows,
            values decoded, translated, appended and fsynced to a fresh local event log, a manifest.
  kafka     (--sink kafka) the same with `--to topics:.b<tag>` (fresh topics per run); the records on
            Kafka are counted and must equal the events plus dead letters.
  ...-process  (--separate-process) each backfill again with sink.separate_process: true, right after it:
            encoding and publishing in a second process; the summary adds its speedup over one process.
  scan      (--scan) the read side alone, per build: bench/_scan_child.py drives a SnapshotScan as
            BackfillSource does (pages, decoding, RowChanges, acknowledgements), translating nothing.
Each bridge build given with --bridge LABEL=COMMAND runs once per run, in the order given (an A/B of two
builds in the same run: same data, same machine moment); builds run in a scratch folder, so that
`env PYTHONPATH=TREE python -m bridge.cli` imports TREE's bridge package (each build prints where from). --check-identical reads every log back and
compares a digest of all records (ids, sequences, headers, keys, values, in log order) across builds
and runs, with the four things that differ per run by design replaced by placeholders: the run id
(ce_backfill), the cut (ce_backfillcut, and the cut's 16 hex digits that start every ce_sequence) and
the time the snapshot was taken (the ce_time of facts whose rows keep no time of their own).

Measured. Wall time of each child process, start to exit (Python's start and imports included: the
headline rows/s = rows / that), and the seconds each reports of itself (the reference: connect to last
row; the backfill: its summary's "in X s", from reading the settings to the manifest). events/s = events
/ wall time. Peak RSS: the child's maximum resident set size as /usr/bin/time reports it (the reference
reports its own VmHWM; /usr/bin/time's own peak is too small to matter, see bench/README.md on
ru_maxrss). Reported per size: medians over the runs of rows/s and events/s, the ratio backfill/copy of
the medians, and the largest peak RSS of any run. --profile adds one run per size and build under
cProfile (`python -m cProfile -o ... -m bridge.cli backfill ...`, not counted in the medians) and
--py-spy one under `py-spy record` (needs py-spy in the venv and ptrace permission).

Results go to bench/results/backfill-<time>.json (gitignored). On this shared 2-core machine absolute
numbers move with whatever else runs (the 1-minute load average is recorded with every run); the in-run
ratio moves much less.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from itertools import product
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import psycopg  # noqa: E402
import yaml  # noqa: E402
from _finish import finish  # noqa: E402

from tests.support.databases import create_legacy_database, drop_database  # noqa: E402
from tests.support.local_stack import run_stack  # noqa: E402

TABLES = ("customers", "customer_addresses", "menu_items", "orders", "order_items")  # the backfill's order
MENU_ITEMS = 400
ROWS_PER_CUSTOMER = 10.5  # 1 customer + 1.5 addresses + 2 orders + 6 order lines
REFERENCE = REPO / "bench" / "_copy_reference.py"
SCAN_CHILD = REPO / "bench" / "_scan_child.py"
DEFAULT_BRIDGE = f"current={sys.executable} -m bridge.cli"
CHILD_TIMEOUT_S = 3 * 3600

SEED_SQL = """
SELECT setseed(0.42);

INSERT INTO menu_items (id, name, description, price, category, tags, is_available, created_at, updated_on)
SELECT m,
       (ARRAY['Spicy','Smoked','Crispy','Grilled','Braised','Fresh','Roasted','Pickled'])[1 + m % 8] || ' ' ||
       (ARRAY['Tofu Bowl','Burger','Ramen','Salad','Pizza','Curry','Taco','Dumplings','Risotto','Soup'])[1 + (m / 8) % 10]
       || ' #' || m,
       CASE WHEN m % 50 = 0 THEN repeat('A long story of this dish, told in full. ', 80)
            WHEN m % 7 = 0 THEN NULL
            ELSE 'House ' || lower((ARRAY['classic','special','favourite','recipe'])[1 + m % 4]) || ', serves one' END,
       round((3 + random() * 27)::numeric, 2),
       (ARRAY['starter','main','dessert','drink','side'])[1 + m % 5],
       CASE m % 6 WHEN 0 THEN NULL WHEN 1 THEN '{}'::text[] WHEN 2 THEN ARRAY['vegan','spicy']
                  WHEN 3 THEN ARRAY['gluten free','house "special"'] WHEN 4 THEN ARRAY['kids'] ELSE ARRAY['new','hot','local'] END,
       random() > 0.05,
       timestamptz '2018-01-01 00:00:00+00' + m * interval '3 days' + random() * interval '1 day',
       CASE WHEN m % 3 = 0 THEN localtimestamp(0) - random() * interval '300 days' END
FROM generate_series(1, %(menu)s) m;

INSERT INTO customers (id, email, full_name, phone, preferences, created_at, updated_on, is_deleted)
SELECT c,
       'customer' || c || '@example.com',
       (ARRAY['Ada','Grace','Alan','Edsger','Barbara','Donald','Frances','Ken','Margaret','Niklaus'])[1 + c % 10] || ' ' ||
       (ARRAY['Lovelace','Hopper','Turing','Dijkstra','Liskov','Knuth','Allen','Thompson','Hamilton','Wirth'])[1 + (c / 10) % 10],
       CASE WHEN random() < 0.7 THEN '+49 30 ' || lpad((c * 7919 % 10000000)::text, 7, '0') END,
       CASE WHEN random() < 0.8 THEN jsonb_build_object(
                'newsletter', random() < 0.4,
                'language', (ARRAY['en','de','fr','nl'])[1 + c % 4],
                'allergies', CASE WHEN c % 5 = 0 THEN '["nuts","gluten"]'::jsonb ELSE '[]'::jsonb END,
                'delivery', jsonb_build_object('leave_at_door', c % 3 = 0, 'floor', c % 6)) END,
       timestamptz '2019-01-01 00:00:00+00' + c * (interval '5 years' / %(customers)s) + random() * interval '1 hour',
       CASE WHEN random() < 0.5 THEN localtimestamp(0) - random() * interval '400 days' END,
       random() < 0.02
FROM generate_series(1, %(customers)s) c;

-- Customer c's addresses: 2c - 1 (its default), and 2c for every even c.
INSERT INTO customer_addresses (id, customer_id, label, street, city, postal_code, country, is_default, created_at)
SELECT 2 * c - 1 + second, c,
       CASE WHEN second = 0 THEN 'home' WHEN c % 4 = 0 THEN 'work' END,
       (1 + c % 180) || ' ' || (ARRAY['Main Street','Oak Avenue','Rue de la Paix','Hauptstraße','Kerkstraat'])[1 + (c + second) % 5],
       (ARRAY['Berlin','Paris','Amsterdam','Vienna','Brussels','Lyon'])[1 + (c + second) % 6],
       lpad(((c * 31 + second) % 99999)::text, 5, '0'),
       (ARRAY['DE','FR','NL','AT','BE','FR'])[1 + (c + second) % 6],
       second = 0,
       timestamptz '2019-01-01 00:00:00+00' + c * (interval '5 years' / %(customers)s) + (1 + second) * interval '2 hours'
FROM generate_series(1, %(customers)s) c, generate_series(0, 1) second
WHERE second = 0 OR c % 2 = 0
ORDER BY 1;

-- Customer c's orders: 2c - 1 and 2c.
INSERT INTO orders (id, customer_id, status, delivery_address_id, placed_at, notes, created_at, updated_on)
SELECT o, (o + 1) / 2, s.status,
       CASE WHEN random() < 0.7 THEN 2 * ((o + 1) / 2) - 1 END,
       CASE WHEN s.status <> 'OPEN' THEN s.created_at + random() * interval '40 minutes' END,
       CASE WHEN o % 5 = 0 THEN (ARRAY['ring twice','no onions please','leave with the neighbour'])[1 + o % 3] END,
       s.created_at,
       CASE WHEN s.status <> 'OPEN' THEN (s.created_at + interval '1 hour')::timestamp END
FROM generate_series(1, 2 * %(customers)s) o,
     LATERAL (SELECT CASE WHEN r < 0.80 THEN 'PLACED' WHEN r < 0.86 THEN 'CANCELLED' ELSE 'OPEN' END AS status,
                     timestamptz '2019-01-02 00:00:00+00' + o * (interval '5 years' / (2 * %(customers)s))
                     + random() * interval '3 hours' AS created_at
              FROM (SELECT random() + o * 0 AS r) x) s;

-- Order o's lines: 1 + (7 o mod 5) of them, priced as the menu item they name.
INSERT INTO order_items (order_id, menu_item_id, quantity, unit_price, created_at)
SELECT l.order_id, l.menu_item_id, l.quantity, m.price, l.created_at
FROM (SELECT o.id AS order_id, line, 1 + floor(random() * %(menu)s)::int AS menu_item_id,
             1 + floor(random() * 3)::int AS quantity, o.created_at + line * interval '1 second' AS created_at
      FROM orders o, generate_series(1, 5) line
      WHERE line <= 1 + (7 * o.id) % 5) l
JOIN menu_items m ON m.id = l.menu_item_id
ORDER BY l.order_id, l.line;

SELECT setval('customers_id_seq', (SELECT max(id) FROM customers));
SELECT setval('customer_addresses_id_seq', (SELECT max(id) FROM customer_addresses));
SELECT setval('menu_items_id_seq', (SELECT max(id) FROM menu_items));
SELECT setval('orders_id_seq', (SELECT max(id) FROM orders));
"""

# The events restaurant.yaml gives these rows read as op r (see mappings/restaurant.yaml's r rules).
EXPECTED_EVENTS_SQL = """
SELECT (SELECT count(*) + count(*) FILTER (WHERE is_deleted) FROM customers)
     + (SELECT count(*) FROM customer_addresses)
     + (SELECT count(*) + count(*) FILTER (WHERE NOT is_available) FROM menu_items)
     + (SELECT count(*) + count(delivery_address_id) + count(*) FILTER (WHERE status IN ('PLACED', 'CANCELLED'))
        FROM orders)
     + (SELECT count(*) FROM order_items)
"""


# --- the stack and the data ---------------------------------------------------------------------------


def seed(dsn: str, rows: int) -> dict[str, Any]:
    """Seed about `rows` rows in all; returns the row count of each table and the events they must give."""
    customers = max(1, -(-(rows - MENU_ITEMS) * 2 // int(ROWS_PER_CUSTOMER * 2)))
    started = time.monotonic()
    with psycopg.connect(dsn) as conn:
        conn.execute(SEED_SQL.replace("%(menu)s", str(MENU_ITEMS)).replace("%(customers)s", str(customers)))
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in TABLES:
            conn.execute(f"VACUUM (ANALYZE) {table}")
        conn.execute("CHECKPOINT")
        counts = {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES}
        events = conn.execute(EXPECTED_EVENTS_SQL).fetchone()[0]
        size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))").fetchone()[0]
    return {"tables": counts, "rows": sum(counts.values()), "expected_events": events,
            "seed_seconds": round(time.monotonic() - started, 1), "database_size": size}


# --- one run of each kind -----------------------------------------------------------------------------


def run_reference(dsn: str) -> dict[str, Any]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(REFERENCE), dsn, *(f"{t}:id" for t in TABLES)],
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"the COPY reference failed (exit {done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall_seconds": wall, "seconds": result["seconds"], "rows": sum(result["rows"].values()),
            "tables": result["rows"], "peak_rss_mb": round(result["max_rss_mb"], 1)}


def bridge_config(work: Path, dsn: str, sink: dict[str, Any]) -> Path:
    config = {"source_id": "bench-backfill", "mappings": [str(REPO / "mappings/restaurant.yaml")],
              "source": {"kind": "pgoutput", "dsn": dsn}, "sink": sink,
              "state": {"path": str(work / "prior-rows.sqlite")}, "logging": {"level": "INFO"}}
    path = work / "bridge.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_backfill(command: list[str], config: Path, to: str, runs_dir: Path, batch_size: int, *,
                 wrapper: list[str] | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """One `backfill` under /usr/bin/time -v (or `wrapper`: a profiler); its times, peak RSS and manifest."""
    argv = [*command, "backfill", "--config", str(config), "--to", to, "--runs-dir", str(runs_dir),
            "--batch-size", str(batch_size)]
    timed = wrapper is None
    started = time.monotonic()
    # In the run's own folder: run from the checkout, `python -m` would put it first on sys.path, ahead of a
    # build's PYTHONPATH.
    done = subprocess.run(["/usr/bin/time", "-v", *argv] if timed else [*wrapper, *argv], capture_output=True,
                          text=True, timeout=CHILD_TIMEOUT_S, env=env, cwd=config.parent)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"the backfill exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    manifests = list(runs_dir.glob("*/manifest.json"))
    if len(manifests) != 1:
        raise RuntimeError(f"expected one manifest under {runs_dir}, found {len(manifests)}")
    manifest = json.loads(manifests[0].read_text())
    summary = re.search(r"complete in ([0-9.]+) s", done.stdout)
    result = {"wall_seconds": wall, "seconds": float(summary.group(1)) if summary else None,
              "rows": sum(t["rows"] for t in manifest["tables"].values()),
              "tables": {name: t["rows"] for name, t in manifest["tables"].items()},
              "events": sum(manifest["events"].values()), "dead_letters": manifest["dead_letters"],
              "manifest": manifest, "loadavg_1m_after": round(os.getloadavg()[0], 2)}
    if timed:
        peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
        if peak is None:
            raise RuntimeError(f"no peak RSS in /usr/bin/time's output: {done.stderr[-2000:]}")
        result["peak_rss_mb"] = round(int(peak.group(1)) / 1024, 1)
        result["cpu_seconds"] = sum(float(m) for m in re.findall(r"(?:User|System) time \(seconds\): ([0-9.]+)",
                                                                  done.stderr))
    return result


def run_scan(command: list[str], env: dict[str, str] | None, dsn: str, batch_size: int, cwd: Path) -> dict[str, Any]:
    """The read side alone (bench/_scan_child.py) with a build's Python and bridge package."""
    python = command[0] if command[1:3] == ["-m", "bridge.cli"] else sys.executable
    started = time.monotonic()
    done = subprocess.run([python, str(SCAN_CHILD), dsn, str(batch_size), *TABLES], capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT_S, env=env, cwd=cwd)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"the scan child failed (exit {done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall_seconds": wall, "seconds": result["seconds"], "rows": result["rows"],
            "cpu_seconds": result["cpu_seconds"], "peak_rss_mb": round(result["max_rss_mb"], 1)}


def check_run(kind: str, result: dict[str, Any], data: dict[str, Any]) -> None:
    """A run that read or published anything else than every row and every expected event measured nothing."""
    if result["tables"] != data["tables"]:
        raise RuntimeError(f"{kind} read {result['tables']}, the database holds {data['tables']}")
    if "events" in result and (result["events"] != data["expected_events"] or result["dead_letters"]):
        raise RuntimeError(f"{kind} published {result['events']} events and {result['dead_letters']} dead letters; "
                           f"the rows must give {data['expected_events']} events and none")


def log_digest(log_dir: Path, manifest: dict[str, Any]) -> tuple[str, int]:
    """sha256 of every record of the log in order, with the run's id, cut and snapshot time as placeholders."""
    from datetime import datetime

    from bridge.events import format_time
    from bridge.sinks.locallog_reader import EventLogReader

    cut = manifest["cuts"][0]
    swaps = [(manifest["run_id"].encode(), b"<run>"), (cut["cut"].encode(), b"<cut>"),
             (manifest["cut_sequence"].encode(), b"<cutseq>"),
             (format_time(datetime.fromisoformat(cut["snapshot_taken_at"])).encode(), b"<snapshot-time>")]
    digest = hashlib.sha256()
    count = 0
    for record in EventLogReader(log_dir).read():
        parts = [record.id.encode(), (record.sequence or "").encode(), record.key or b"", record.value,
                 (record.aggregate_type or "").encode(), (record.rule_id or "").encode()]
        parts += [name.encode() + b"=" + value for name, value in record.headers]
        blob = b"\x00".join(parts)
        for old, new in swaps:
            blob = blob.replace(old, new)
        digest.update(blob + b"\x01")
        count += 1
    return digest.hexdigest(), count


def kafka_records(bootstrap: str, suffix: str) -> int:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        topics = [t for t in consumer.topics() if t.endswith(suffix)]
        partitions = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        return sum(consumer.end_offsets(partitions).values()) if partitions else 0
    finally:
        consumer.close()


# --- the benchmark ------------------------------------------------------------------------------------


def parse_builds(values: list[str]) -> list[tuple[str, list[str], dict[str, str] | None]]:
    """--bridge LABEL=COMMAND (or a bare "current"): the command that runs `python -m bridge.cli`."""
    builds = []
    for value in values or [DEFAULT_BRIDGE]:
        label, sep, command = value.partition("=")
        if not sep:
            label, _, command = DEFAULT_BRIDGE.partition("=") if value == "current" else (value, "", value)
        argv = shlex.split(command)
        env = None
        if argv and argv[0] == "env":  # env VAR=VALUE ... COMMAND: set them for the child (the wrappers too)
            env = dict(os.environ)
            argv = argv[1:]
            while argv and "=" in argv[0]:
                name, _, setting = argv.pop(0).partition("=")
                env[name] = setting if name != "PYTHONPATH" else os.pathsep.join(
                    os.path.abspath(entry) for entry in setting.split(os.pathsep))
        if argv and os.sep in argv[0]:
            argv[0] = os.path.abspath(argv[0])  # builds run in a scratch folder
        builds.append((label, argv, env))
    return builds


def bridge_location(command: list[str], env: dict[str, str] | None, cwd: Path) -> str:
    """Where a build's `bridge` package comes from (a check that --bridge runs what it says)."""
    python = command[0] if command[1:3] == ["-m", "bridge.cli"] else sys.executable
    done = subprocess.run([python, "-c", "import bridge; print(bridge.__file__)"], capture_output=True, text=True,
                          env=env, cwd=cwd)
    return done.stdout.strip() or done.stderr.strip()[-300:]


def bench_size(args: argparse.Namespace, stack: dict[str, Any], rows: int, scratch: Path) -> dict[str, Any]:
    name = f"bench_backfill_{rows}_{uuid.uuid4().hex[:6]}"
    admin = stack["postgres"]["admin_dsn"]
    dsn = create_legacy_database(admin, name)  # the name is unique to this size and run
    try:
        data = seed(dsn, rows)
        print(f"seeded {data['rows']} rows ({data['tables']}; {data['expected_events']} events expected) in "
              f"{data['seed_seconds']} s, database {data['database_size']}", flush=True)
        warm = run_reference(dsn)  # warms the caches; not counted
        check_run("the warm-up COPY", warm, data)
        builds = parse_builds(args.bridge)
        scratch.mkdir(parents=True, exist_ok=True)
        for label, command, env in builds:
            print(f"build {label}: {shlex.join(command)}, bridge from {bridge_location(command, env, scratch)}", flush=True)
        runs: dict[str, list[dict[str, Any]]] = {"copy": []}
        digests: dict[str, set[str]] = {}
        for run in range(args.runs):
            result = run_reference(dsn)
            check_run("the COPY reference", result, data)
            runs["copy"].append(result)
            print(f"size {rows} run {run + 1} copy{'':14} {result['wall_seconds']:7.2f} s "
                  f"{data['rows'] / result['wall_seconds']:9.0f} rows/s  peak RSS {result['peak_rss_mb']:5.0f} MB",
                  flush=True)
            for label, command, env in builds:
                if args.scan:
                    result = run_scan(command, env, dsn, args.batch_size, scratch)
                    if result["rows"] != data["rows"]:
                        raise RuntimeError(f"scan-{label} read {result['rows']} of {data['rows']} rows")
                    runs.setdefault(f"scan-{label}", []).append(result)
                    print(f"size {rows} run {run + 1} {'scan-' + label:<18} {result['seconds']:7.2f} s "
                          f"{data['rows'] / result['seconds']:9.0f} rows/s  cpu {result['cpu_seconds']:6.2f} s", flush=True)
                for target, separate in product(["log", "kafka"] if args.sink == "kafka" else ["log"],
                                                (False, True) if args.separate_process else (False,)):
                    kind = f"backfill-{label}" + ("-kafka" if target == "kafka" else "") + ("-process" if separate else "")
                    work = scratch / f"{rows}-r{run}-{kind}"
                    work.mkdir(parents=True)
                    try:
                        result = one_backfill(args, stack, dsn, command, env, work, target, data, digests, kind,
                                              separate_process=separate)
                    finally:
                        shutil.rmtree(work, ignore_errors=True)
                    runs.setdefault(kind, []).append(result)
                    print(f"size {rows} run {run + 1} {kind:<18} {result['wall_seconds']:7.2f} s "
                          f"{data['rows'] / result['wall_seconds']:9.0f} rows/s "
                          f"{result['events'] / result['wall_seconds']:9.0f} events/s  peak RSS "
                          f"{result['peak_rss_mb']:5.0f} MB  (own {result['seconds']} s, load {result['loadavg_1m_after']})"
                          f"{'  digest ' + result['digest'][:12] if 'digest' in result else ''}", flush=True)
        profiles = {}
        for label, command, env in builds:
            if args.profile:
                profiles[f"{label}-cprofile"] = profile_run(args, stack, dsn, command, env, scratch, rows, label,
                                                            data, "cprofile")
            if args.py_spy:
                profiles[f"{label}-py-spy"] = profile_run(args, stack, dsn, command, env, scratch, rows, label,
                                                          data, "py-spy")
        if args.check_identical and len(set().union(*digests.values())) != 1:
            raise RuntimeError(f"the event logs differ between runs or builds: {digests}")
        return {"data": data, "summary": summarize(runs, data) if args.runs else {}, "runs": strip(runs), "profiles": profiles,
                "digests": {k: sorted(v) for k, v in digests.items()}}
    finally:
        drop_database(admin, name)


def one_backfill(args: argparse.Namespace, stack: dict[str, Any], dsn: str, command: list[str], env: dict[str, str] | None,
                 work: Path, target: str, data: dict[str, Any], digests: dict[str, set[str]], kind: str,
                 wrapper: list[str] | None = None, separate_process: bool = False) -> dict[str, Any]:
    if target == "kafka":
        suffix = f".b{uuid.uuid4().hex[:8]}"
        sink = {"kind": "kafka", "bootstrap_servers": stack["kafka"]["bootstrap_servers"], "client": args.kafka_client,
                "topic_template": "bench.{namespace}.{aggregate_type}", "dead_letter_topic": "bench.dead-letters"}
        to = f"topics:{suffix}"
    else:
        sink = {"kind": "locallog", "path": str(work / "live-events")}
        to = f"log:{work / 'events'}"
    config = bridge_config(work, dsn, {**sink, "separate_process": separate_process})
    result = run_backfill(command, config, to, work / "runs", args.batch_size, wrapper=wrapper, env=env)
    check_run(kind, result, data)
    if target == "kafka":
        result["records_on_kafka"] = kafka_records(stack["kafka"]["bootstrap_servers"], suffix)
        if result["records_on_kafka"] != result["events"] + result["dead_letters"]:
            raise RuntimeError(f"{kind}: {result['records_on_kafka']} records on Kafka for {result['events']} events")
    elif args.check_identical and wrapper is None:
        digest, count = log_digest(work / "events", result["manifest"])
        if count != result["events"]:
            raise RuntimeError(f"{kind}: the log holds {count} records for {result['events']} events")
        result["digest"] = digest
        digests.setdefault(kind, set()).add(digest)
    return result


def profile_run(args: argparse.Namespace, stack: dict[str, Any], dsn: str, command: list[str], env: dict[str, str] | None,
                scratch: Path, rows: int, label: str, data: dict[str, Any], how: str) -> dict[str, Any]:
    """One extra run under a profiler (not in the medians); the profile goes to bench/results/."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    work = scratch / f"{rows}-{label}-{how}"
    work.mkdir(parents=True)
    python, rest = command[0], command[1:]
    if rest[:2] != ["-m", "bridge.cli"]:
        raise SystemExit(f"--profile/--py-spy need a build run as PYTHON -m bridge.cli, not {command}")
    if how == "cprofile":
        output = args.results / f"backfill-{rows}-{label}-{stamp}.prof"
        wrapper = [python, "-m", "cProfile", "-o", str(output), "-m", "bridge.cli"]
    else:
        output = args.results / f"backfill-{rows}-{label}-{stamp}.py-spy.txt"  # collapsed stacks, per thread
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
        wrapper = [spy, "record", "--nonblocking", "--threads", "--subprocesses", "--rate", "200", "--format", "raw",
                   "-o", str(output), "--", python, "-m", "bridge.cli"]
    # The target of --sink, in a second process with --separate-process (py-spy follows the sink process).
    target = "kafka" if args.sink == "kafka" else "log"
    try:
        result = one_backfill(args, stack, dsn, [], env, work, target, data, {}, f"{label}-{how}", wrapper=wrapper,
                              separate_process=args.separate_process)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"size {rows} {label} under {how}: {result['wall_seconds']:.1f} s, profile {output}", flush=True)
    return {"profile": str(output.relative_to(REPO)), "wall_seconds": round(result["wall_seconds"], 2)}


def summarize(runs: dict[str, list[dict[str, Any]]], data: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for kind, results in runs.items():
        wall = statistics.median(r["wall_seconds"] for r in results)
        own = statistics.median(r["seconds"] for r in results if r["seconds"] is not None)
        summary[kind] = {"wall_seconds": round(wall, 2), "own_seconds": round(own, 2),
                         "rows_per_s": round(data["rows"] / wall), "rows_per_s_own": round(data["rows"] / own),
                         "peak_rss_mb": max(r["peak_rss_mb"] for r in results)}
        if "cpu_seconds" in results[0]:
            summary[kind]["cpu_seconds"] = round(statistics.median(r["cpu_seconds"] for r in results), 2)
        if "events" in results[0]:
            summary[kind]["events"] = results[0]["events"]
            summary[kind]["events_per_s"] = round(results[0]["events"] / wall)
            summary[kind]["ratio_to_copy"] = round(summary["copy"]["wall_seconds"] / wall, 3)
            summary[kind]["ratio_to_copy_own"] = round(summary["copy"]["own_seconds"] / own, 3)
    for kind in summary:
        if kind.endswith("-process") and kind.removesuffix("-process") in summary:  # the split's own gain
            alone = kind.removesuffix("-process")
            summary[kind]["speedup_over_one_process"] = round(summary[alone]["wall_seconds"] /
                                                              summary[kind]["wall_seconds"], 3)
            summary[kind]["speedup_per_run"] = [round(a["wall_seconds"] / b["wall_seconds"], 3)
                                                for a, b in zip(runs[alone], runs[kind])]
    return summary


def strip(runs: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """The runs without their manifests' bulk (kept: cut, counts)."""
    kept = {}
    for kind, results in runs.items():
        kept[kind] = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k != "manifest"}
                      | ({"cut": r["manifest"]["cut"]} if "manifest" in r else {}) for r in results]
    return kept


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="250000,1000000", help="comma-separated total row counts (all tables)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1000, help="the backfill's --batch-size")
    parser.add_argument("--sink", choices=("locallog", "kafka"), default="locallog",
                        help="kafka: also run `--to topics` (starts Kafka too)")
    parser.add_argument("--bridge", action="append", metavar="LABEL=COMMAND",
                        help=f"a build to run, as the command for `python -m bridge.cli` (repeatable; default "
                             f"{DEFAULT_BRIDGE.partition('=')[0]}: this checkout); `env VAR=VALUE ... python -m "
                             "bridge.cli` sets variables, e.g. PYTHONPATH to another tree")
    parser.add_argument("--scan", action="store_true",
                        help="also time each build's read side alone (bench/_scan_child.py: pages, decoding, units)")
    parser.add_argument("--check-identical", action="store_true",
                        help="read every log back: all runs and builds must give the same records")
    parser.add_argument("--kafka-client", choices=("kafka-python", "confluent"), default="kafka-python",
                        help="with --sink kafka: the producer library (sink.client)")
    parser.add_argument("--separate-process", action="store_true",
                        help="each backfill also with sink.separate_process: true (kind ...-process, right after "
                             "the same backfill in one process; the summary adds its speedup)")
    parser.add_argument("--profile", action="store_true", help="one more run per size and build under cProfile")
    parser.add_argument("--py-spy", action="store_true", help="one more run per size and build under py-spy record "
                        "(of the --sink target, with --separate-process in two processes)")
    parser.add_argument("--state", type=Path, help="use the running stack under this state directory")
    args = parser.parse_args()
    args.results = REPO / "bench" / "results"
    args.results.mkdir(exist_ok=True)
    own_stack = args.state is None
    state = args.state.resolve() if args.state else REPO / ".state" / f"bench-backfill-{uuid.uuid4().hex[:6]}"
    scratch = state / f"backfill-bench-{uuid.uuid4().hex[:6]}"
    output: dict[str, Any] = {"command": sys.argv[1:], "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                              "commit": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                                       capture_output=True, text=True).stdout.strip(),
                              "sizes": {}}
    try:
        if own_stack:
            run_stack(state, "up", "postgres", *(["kafka"] if args.sink == "kafka" else []))
        stack = json.loads((state / "stack.json").read_text())
        if args.sink == "kafka" and "kafka" not in stack:
            raise SystemExit(f"{state}/stack.json lists no kafka")
        for rows in (int(n) for n in args.rows.split(",")):
            output["sizes"][rows] = bench_size(args, stack, rows, scratch)
            print(json.dumps(output["sizes"][rows]["summary"], indent=2), flush=True)
    finally:
        finish(args.results, "backfill", output, state, scratch, own_stack=own_stack)
    return 0


if __name__ == "__main__":
    sys.exit(main())
