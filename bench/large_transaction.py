"""Peak memory and time of `cdc-bridge run` (direct source) draining one very large legacy transaction.

    .venv/bin/python bench/large_transaction.py --rows 150000,300000            # local event log
    .venv/bin/python bench/large_transaction.py --rows 150000 --sink kafka      # needs a stack with Kafka
    .venv/bin/python bench/large_transaction.py --rows 150000 --shape update     # N inserts, then N updates
    .venv/bin/python bench/large_transaction.py --rows 150000 --source debezium  # needs Kafka and Connect

Per size: a fresh database with the legacy schema, the bridge's publication and slot, then one transaction
writing 1 customer, 1 menu item, 1 order (OPEN) and N order_items (`--shape update` then updates every line's
quantity in the same transaction: N more changes whose old rows come from earlier in the transaction).
Then `cdc-bridge run --exit-when-idle 3` in a child under `/usr/bin/time -v`: its peak RSS (the child's own
maximum resident set size), wall time, and the events in the log. Memory must not grow with N once a
transaction is above `pipeline.spill_changes`.

With `--source debezium` the repository's connector captures the transaction first (the bridge starts once
every row is on Kafka), and the bridge reads it from Kafka instead of the replication slot.

`--state DIR` uses a running local stack (deploy/local/stack.py); without it, a private PostgreSQL (and,
for `--sink kafka` or `--source debezium`, Kafka and Connect) is started under .state/bench-bigtx-<pid> and
removed at the end.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "deploy" / "local"))

import connectors  # noqa: E402  (deploy/local/connectors.py)
from kafka import KafkaConsumer, TopicPartition  # noqa: E402

from legacy_db.migrate import apply_migrations  # noqa: E402

TABLES = ("customers", "customer_addresses", "menu_items", "orders", "order_items")


def stack_up(state: Path, services: list[str]) -> dict:
    subprocess.run([sys.executable, str(ROOT / "deploy/local/stack.py"), "--state", str(state), "up", *services],
                   check=True, stdout=subprocess.DEVNULL)
    return json.loads((state / "stack.json").read_text())


def stack_down(state: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "deploy/local/stack.py"), "--state", str(state), "down", "--purge"],
                   check=False, stdout=subprocess.DEVNULL)


def create_database(admin_dsn: str, database: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{database}"')
    dsn = admin_dsn.rsplit("/", 1)[0] + "/" + database
    apply_migrations(dsn)
    return dsn


def capture_with_slot(dsn: str, slot: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE PUBLICATION cdc_bridge FOR TABLE {', '.join(TABLES)}")
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))  # slots span databases


def capture_with_debezium(stack: dict, dsn: str, prefix: str) -> None:
    _, config = connectors.load_definition(ROOT / "deploy/connectors/restaurant-postgres.json", {
        "database.hostname": "127.0.0.1", "database.port": str(stack["postgres"]["port"]),
        "database.dbname": dsn.rsplit("/", 1)[1], "database.password": "", "topic.prefix": prefix,
        "slot.name": prefix, "publication.name": prefix})
    connectors.add(stack["connect"]["url"], prefix, config)


def wait_for_kafka(bootstrap: str, prefix: str, rows: int, timeout_s: float = 1800) -> None:
    """Until Debezium has published every order_items row and the transaction's END marker."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            counts = {}
            for topic in (f"{prefix}.public.order_items", f"{prefix}.transaction"):
                partitions = consumer.partitions_for_topic(topic) or set()
                ends = consumer.end_offsets([TopicPartition(topic, p) for p in partitions]) if partitions else {}
                counts[topic] = sum(ends.values())
            if counts[f"{prefix}.public.order_items"] >= rows and counts[f"{prefix}.transaction"] >= 2:
                return
            time.sleep(2)
    finally:
        consumer.close()
    raise RuntimeError(f"Debezium did not publish {rows} order_items rows in {timeout_s:.0f}s")


def write_transaction(dsn: str, rows: int, shape: str) -> None:
    with psycopg.connect(dsn) as conn:  # one transaction
        conn.execute("INSERT INTO customers (id, email, full_name) VALUES (1, 'big@example.com', 'Big Buyer')")
        conn.execute("INSERT INTO menu_items (id, name, price) VALUES (1, 'Soup', 4.50)")
        conn.execute("INSERT INTO orders (id, customer_id) VALUES (1, 1)")
        conn.execute("INSERT INTO order_items (order_id, menu_item_id, quantity, unit_price) "
                     "SELECT 1, 1, 1 + g %% 5, 4.50 FROM generate_series(1, %s) g", (rows,))
        if shape == "update":
            conn.execute("UPDATE order_items SET quantity = quantity + 1")


def run_bridge(source: dict, sink: dict, work: Path, overrides: dict, bridge: list[str]) -> dict:
    config = {"source_id": "bench-bigtx", "mappings": [str(ROOT / "mappings/restaurant.yaml")],
              "source": source, "sink": sink, "state": {"path": str(work / "prior-rows.sqlite")},
              "pipeline": overrides, "logging": {"level": "INFO"}}
    (work / "bridge.yaml").write_text(yaml.safe_dump(config))
    started = time.monotonic()
    done = subprocess.run(["/usr/bin/time", "-v", *bridge, "run", "--config", str(work / "bridge.yaml"),
                           "--exit-when-idle", "3"], capture_output=True, text=True)
    seconds = time.monotonic() - started
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    if done.returncode != 0 or peak is None:
        raise RuntimeError(f"the bridge exited {done.returncode}: {done.stderr[-2000:]}")
    summary = next((json.loads(line) for line in done.stderr.splitlines() if '"message": "stopped"' in line), {})
    return {"peak_rss_mb": round(int(peak.group(1)) / 1024, 1), "seconds": round(seconds, 1),
            "events": summary.get("events"), "changes": summary.get("changes")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="150000", help="comma-separated order_items counts")
    parser.add_argument("--sink", choices=("locallog", "kafka"), default="locallog")
    parser.add_argument("--shape", choices=("insert", "update"), default="insert")
    parser.add_argument("--source", choices=("pgoutput", "debezium"), default="pgoutput")
    parser.add_argument("--state", type=Path, help="a running local stack's state directory")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a pipeline setting, e.g. spill_changes=20000")
    parser.add_argument("--bridge", default=str(ROOT / ".venv/bin/cdc-bridge"),
                        help="the command that runs cdc-bridge (another build, for an A/B comparison)")
    args = parser.parse_args()
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    own_state = args.state is None
    state = args.state or ROOT / f".state/bench-bigtx-{__import__('os').getpid()}"
    try:
        services = ["postgres", "kafka", "connect"] if args.source == "debezium" else (
            ["postgres", "kafka"] if args.sink == "kafka" else ["postgres"])
        stack = stack_up(state, services) if own_state else json.loads((state / "stack.json").read_text())
        for rows in (int(n) for n in args.rows.split(",")):
            work = Path(tempfile.mkdtemp(prefix="bigtx-", dir=ROOT / ".state"))
            try:
                database = f"bigtx_{rows}"
                dsn = create_database(stack["postgres"]["admin_dsn"], database)
                if args.source == "debezium":
                    prefix = f"bigtx{rows}{int(time.time())}"
                    capture_with_debezium(stack, dsn, prefix)
                    time.sleep(5)  # the connector's (empty) snapshot, then streaming
                    source = {"kind": "debezium", "bootstrap_servers": stack["kafka"]["bootstrap_servers"],
                              "topic_prefix": prefix, "group_id": prefix, "group_instance_id": None,
                              "transaction_wait_s": 600}
                else:
                    capture_with_slot(dsn, database)
                    source = {"kind": "pgoutput", "dsn": dsn, "slot_name": database, "publication_name": "cdc_bridge"}
                write_transaction(dsn, rows, args.shape)
                if args.source == "debezium":
                    wait_for_kafka(stack["kafka"]["bootstrap_servers"], prefix, rows)
                if args.sink == "kafka":
                    sink = {"kind": "kafka", "bootstrap_servers": stack["kafka"]["bootstrap_servers"],
                            "topic_template": f"bigtx{rows}.{{namespace}}.{{aggregate_type}}",
                            "dead_letter_topic": f"bigtx{rows}.dead-letters"}
                else:
                    sink = {"kind": "locallog", "path": str(work / "events")}
                result = run_bridge(source, sink, work, overrides, args.bridge.split())
                print(json.dumps({"rows": rows, "shape": args.shape, "source": args.source, "sink": args.sink,
                                  **overrides, **result}), flush=True)
            finally:
                shutil.rmtree(work, ignore_errors=True)
                if args.source == "debezium":
                    connectors.remove(stack["connect"]["url"], prefix)
    finally:
        if own_state:
            stack_down(state)


if __name__ == "__main__":
    main()
