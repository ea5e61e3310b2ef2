"""Diagnostic: run the bridge on a Debezium backlog as bench/_bench_child.py does and sample, every few
seconds, RSS and what the Debezium source holds: rows and END markers waiting in the transaction
assembler (per topic), records read and not yet done, kafka-python's buffered fetches, paused partitions,
each partition's position. --trace N,M takes tracemalloc snapshots at N and M records read and prints the
top allocation sites of the difference (slow: 3-4x).

    .venv/bin/python bench/debezium_probe.py --repo . --bootstrap HOST:PORT --prefix PREFIX --state DIR \
        --out samples.json [--code .state/ab-base] [--trace 20000,50000]

Reads the source's private state (diagnosis only, never a figure of its own); the samples are printed as
JSON lines while it runs and written to --out at the end.
"""
import argparse
import json
import sys
import threading
import time
import tracemalloc
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("--repo", required=True)
ap.add_argument("--code")
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--prefix", required=True)
ap.add_argument("--state", required=True)
ap.add_argument("--every", type=float, default=3.0)
ap.add_argument("--trace", default="", help="comma list of consumed-record counts at which to snapshot")
ap.add_argument("--out", required=True)
ap.add_argument("--trim-at-end", action="store_true")
args = ap.parse_args()
REPO = Path(args.repo)
sys.path.insert(0, str(REPO))
if args.code:
    sys.path.insert(0, args.code)
import uuid
from bridge.daemon import run_daemon
from bridge.settings import Settings
import bridge.sources.debezium.source as src

holder = {}
orig_init = src.DebeziumKafkaSource.__init__
def init(self, *a, **k):
    orig_init(self, *a, **k)
    holder["s"] = self
src.DebeziumKafkaSource.__init__ = init

import bridge.state as state_module  # noqa: E402

store_init = state_module.PriorRowStore.__init__


def store_captured(self, *a, **k):
    store_init(self, *a, **k)
    holder["store"] = self


state_module.PriorRowStore.__init__ = store_captured

group = f"probe-{uuid.uuid4().hex[:6]}"
settings = Settings(
    source_id="bench", mappings=[REPO / "mappings" / "restaurant.yaml"],
    source={"bootstrap_servers": args.bootstrap, "topic_prefix": args.prefix, "group_id": group},
    sink={"bootstrap_servers": args.bootstrap, "topic_template": f"{args.prefix}-out-probe-{group}" + ".{aggregate_type}",
          "dead_letter_topic": f"{args.prefix}-out-probe-{group}.dead-letters"},
    state={"path": args.state + f"/{group}.sqlite"}, logging={"level": "WARNING"})

traces = [int(x) for x in args.trace.split(",") if x]
if traces:
    tracemalloc.start(1)
samples, snaps = [], {}
stop = threading.Event()
def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
def sample():
    t0 = time.monotonic()
    while not stop.wait(args.every):
        s = holder.get("s")
        if s is None:
            continue
        try:
            ses = s._session
            asm = ses.assembler
            held = {}
            rows = 0
            for p in list(asm._pending.values()):
                for rec, ref in list(p.rows.values()):
                    held[ref[0].topic.split(".")[-1]] = held.get(ref[0].topic.split(".")[-1], 0) + 1
                    rows += 1
            c = s._consumer
            pos = {}
            for tp in list(c.assignment()):
                try:
                    pos[tp.topic.split(".")[-1]] = c._subscription.assignment[tp].position.offset
                except Exception:
                    pass
            f = c._fetcher
            fetch_buf = len(f._completed_fetches) + len(f._paused_completed_fetches) + len(f._paused_partition_records)
            consumed = sum(pos.values())
            rec = {"t": round(time.monotonic() - t0, 1), "rss": round(rss(), 1), "consumed": consumed, "pos": pos,
                   "open_tx": len(asm._pending), "ends_waiting": len(asm._end_order), "rows_held": rows, "held_by_topic": held,
                   "tracker_pending": s._session.tracker.pending_count(), "released": len(ses.released),
                   "finished": len(ses.finished), "fetch_buf": fetch_buf,
                   "paused": len(c.paused()) if hasattr(c, "paused") else None}
            store = holder.get("store")
            if store is not None:  # the prior-row store's prune bookkeeping (names of the current build)
                rec["store"] = {name: (len(value) if hasattr(value, "__len__") else value)
                                for name in ("_prunable", "_prunable_on_disk", "_touched", "_buffered")
                                if (value := getattr(store, name, None)) is not None}
            if tracemalloc.is_tracing():
                rec["traced_mb"] = round(tracemalloc.get_traced_memory()[0] / 2**20, 1)
            samples.append(rec)
            print(json.dumps(rec), flush=True)
            for n in traces:
                if n not in snaps and consumed >= n:
                    snaps[n] = tracemalloc.take_snapshot()
                    print(f"snapshot at {consumed}", flush=True)
                    if len(snaps) == 2:
                        a, b = (snaps[n] for n in sorted(snaps))
                        print("DIFF", sorted(snaps), rec, flush=True)
                        for x in b.compare_to(a, "lineno")[:25]:
                            print(x, flush=True)
                        print("TOP", flush=True)
                        for x in b.statistics("lineno")[:15]:
                            print(x, flush=True)
        except Exception as exc:
            print("sample error", exc, flush=True)
threading.Thread(target=sample, daemon=True).start()
t = time.monotonic()
stats = run_daemon(settings, stop=threading.Event(), idle_exit_s=2.0)
stop.set()
result = {"seconds": stats.last_activity - t, "changes": stats.changes, "events": stats.events, "samples": samples}
Path(args.out).write_text(json.dumps(result))
if len(snaps) >= 2:
    a, b = (snaps[n] for n in sorted(snaps)[:2])
    for line in [f"diff {sorted(snaps)[:2]}"] + [str(x) for x in b.compare_to(a, "lineno")[:25]]:
        print(line)
    print("top at last snapshot")
    for x in b.statistics("lineno")[:15]:
        print(x)
if args.trim_at_end:
    import ctypes
    print("rss before trim", rss(), flush=True)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    print("rss after trim", rss(), flush=True)
print("done", stats.changes, round(stats.last_activity - t, 1))
