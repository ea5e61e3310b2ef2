"""One timed run for bench/debezium_bridge.py, in a fresh process so peak RSS is its own.

    passthrough: consume every record and produce it unchanged (same client settings as the bridge)
    bridge:      the real pipeline (decode, assemble transactions, translate, publish, commit)
    bridge-confluent, bridge-process, bridge-confluent-process: the same with sink.client: confluent and/or
                 sink.separate_process: true (the sink's peak RSS is then reported apart, sink_process_max_rss_mb)

Prints one JSON line: seconds (start to last acknowledged delivery), cpu_seconds, max_rss_mb, and counts; with
--rss-every S also rss_mb_over_time, [seconds since start, VmRSS MB] every S seconds. --code DIR runs the
bridge package found in DIR instead of this checkout's (another build, for an A/B).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KINDS = ["passthrough", "bridge", "bridge-confluent", "bridge-process", "bridge-confluent-process"]
sys.path.insert(0, str(REPO))

from _peak_rss import peak_rss_mb, sink_process_peaks, status_mb  # noqa: E402 (bench/ is the script's own folder)


def passthrough(args: argparse.Namespace) -> dict:
    from kafka import KafkaConsumer, KafkaProducer

    started = time.monotonic()
    consumer = KafkaConsumer(*args.topics.split(","), bootstrap_servers=args.bootstrap, group_id=args.group,
                             enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=2000)
    producer = KafkaProducer(bootstrap_servers=args.bootstrap, acks="all", enable_idempotence=True,
                             max_in_flight_requests_per_connection=5, linger_ms=5, batch_size=256 * 1024)
    seen = 0
    while seen < args.records:
        for records in consumer.poll(timeout_ms=200, max_records=2000).values():
            for record in records:
                producer.send(args.out, key=record.key, value=record.value, headers=record.headers or [])
            seen += len(records)
    producer.flush()
    consumer.commit()
    seconds = time.monotonic() - started
    consumer.close()
    producer.close()
    return {"seconds": seconds, "records": seen}


def bridge(args: argparse.Namespace) -> dict:
    from bridge.daemon import run_daemon
    from bridge.settings import Settings

    prefix = args.prefix
    settings = Settings(
        source_id="bench",
        mappings=[REPO / "mappings" / "restaurant.yaml"],
        source={"bootstrap_servers": args.bootstrap, "topic_prefix": prefix, "group_id": args.group},
        sink={"bootstrap_servers": args.bootstrap, "topic_template": args.out + ".{aggregate_type}",
              "dead_letter_topic": args.out + ".dead-letters",
              "client": "confluent" if args.kind.startswith("bridge-confluent") else "kafka-python",
              "separate_process": args.kind.endswith("-process")},
        state={"path": args.state},
        logging={"level": "WARNING"},
    )
    sink_peaks = sink_process_peaks()
    started = time.monotonic()
    stop = threading.Event()
    stats = run_daemon(settings, stop=stop, idle_exit_s=2.0)
    seconds = stats.last_activity - started
    return {"seconds": seconds, "changes": stats.changes, "transactions": stats.transactions,
            "events": stats.events, "dead_letters": stats.dead_letters, "unmatched": dict(stats.unmatched),
            "sink_process_max_rss_mb": max(sink_peaks) if sink_peaks else None}


def sample_rss(every_s: float, samples: list[list[float]], stop: threading.Event) -> None:
    """Append [seconds since start, VmRSS MB] every `every_s` until `stop` is set."""
    started = time.monotonic()
    while not stop.wait(every_s):
        if (rss := status_mb("VmRSS")) is not None:
            samples.append([round(time.monotonic() - started, 1), round(rss, 1)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=KINDS)
    for option in ("--bootstrap", "--group", "--prefix", "--topics", "--out", "--state"):
        parser.add_argument(option, required=True)
    parser.add_argument("--records", type=int, required=True)
    parser.add_argument("--code", type=Path, help="a folder whose bridge/ package is run instead of this one's")
    parser.add_argument("--rss-every", type=float, default=0.0)
    args = parser.parse_args()
    if args.code is not None:
        sys.path.insert(0, str(args.code))
    samples: list[list[float]] = []
    stop_sampling = threading.Event()
    if args.rss_every > 0:
        threading.Thread(target=sample_rss, args=(args.rss_every, samples, stop_sampling), daemon=True).start()
    result = passthrough(args) if args.kind == "passthrough" else bridge(args)
    stop_sampling.set()
    result["max_rss_mb"] = peak_rss_mb()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 2)  # less moved by a shared machine than wall time
    if args.rss_every > 0:
        result["rss_mb_over_time"] = samples
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
