"""Prometheus metrics, liveness and readiness: their definitions, the pipeline's hook, and the HTTP endpoint.

    GET /metrics   every metric below (Prometheus text format), plus the process's CPU and memory
    GET /healthz   200 while the daemon's loop turns (liveness: restart the process if this fails)
    GET /readyz    200 while the source is connected and work that waits makes progress (readiness)

The hot path stays cheap: the pipeline hands the hook each transaction once, the hook counts into plain
dicts and moves the sums into prometheus-client's labelled counters at most once a second (a labelled
counter costs a lock and a label lookup per increment; a dict increment does not). The latency histogram
takes one observation per transaction, when its last event is acknowledged.

`count_restart()`, `mark_alive()` and `set_source_connected()` are for the daemon's reconnect loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter as Tally
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.process_collector import ProcessCollector

log = logging.getLogger("bridge.metrics")

# The bridge's own registry: tests and embedders get exactly these metrics, not a process-global mix.
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
# sink.separate_process: the sink process's CPU, memory and files as cdc_bridge_sink_process_*, absent while none
# runs (its pid, when one does; a path /proc does not have yields nothing).
_SINK_PROCESS: list[int] = []
ProcessCollector(namespace="cdc_bridge_sink", pid=lambda: _SINK_PROCESS[0] if _SINK_PROCESS else "none",
                 registry=REGISTRY)

CHANGES = Counter("cdc_bridge_changes", "Row changes read from the source, per legacy table and operation "
                  "(c, u, d, r, t, m)", ["table", "op"], registry=REGISTRY)
TRANSACTIONS = Counter("cdc_bridge_transactions", "Legacy transactions read (heartbeats excluded)", registry=REGISTRY)
EVENTS = Counter("cdc_bridge_events", "Domain events handed to the sink, per CloudEvents type", ["type"],
                 registry=REGISTRY)
ACKNOWLEDGED = Counter("cdc_bridge_acknowledged", "Events and dead letters the sink acknowledged", registry=REGISTRY)
DEAD_LETTERS = Counter("cdc_bridge_dead_letters", "Changes dead-lettered, per rule and reason (missing_old_row, "
                       "unknown_value, expression_error, too_large, rule_failed, undecodable)", ["rule", "reason"],
                       registry=REGISTRY)
IN_FLIGHT = Gauge("cdc_bridge_events_in_flight", "Events and dead letters sent but not yet acknowledged",
                  registry=REGISTRY)
SLOT_LAG = Gauge("cdc_bridge_slot_lag_bytes", "Direct source: WAL the server keeps for the slot "
                 "(pg_current_wal_lsn() - confirmed_flush_lsn)", registry=REGISTRY)
CONSUMER_LAG = Gauge("cdc_bridge_consumer_lag_records", "Debezium source: records in the topic not yet read, "
                     "per topic", ["topic"], registry=REGISTRY)
LATENCY = Histogram("cdc_bridge_commit_to_publish_seconds", "From the legacy commit to the sink's acknowledgement "
                    "of the transaction's last event", registry=REGISTRY,
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800))
RESTARTS = Counter("cdc_bridge_restarts", "Times the daemon reopened its source and sink after a failure "
                   "(in-process reconnects)", registry=REGISTRY)
SOURCE_CONNECTED = Gauge("cdc_bridge_source_connected", "1 while the source is connected", registry=REGISTRY)
LAST_PROGRESS = Gauge("cdc_bridge_last_progress_timestamp_seconds", "Unix time of the last change read or "
                      "delivery acknowledged", registry=REGISTRY)

FLUSH_INTERVAL_S = 1.0


class Health:
    """What /healthz and /readyz answer from; written by the daemon's thread, read by the HTTP thread."""

    def __init__(self) -> None:
        self.stall_after_s = 60.0
        self.last_beat = time.monotonic()
        self.last_progress = time.monotonic()
        self.connected = False
        self.waiting_work = False  # events in flight or records held: progress is expected

    def live(self, now: float) -> tuple[bool, str]:
        idle = now - self.last_beat
        if idle > self.stall_after_s:
            return False, f"the daemon's loop has not turned for {idle:.0f}s"
        return True, "alive"

    def ready(self, now: float) -> tuple[bool, str]:
        if not self.connected:
            return False, "the source is not connected"
        stalled = now - self.last_progress
        if self.waiting_work and stalled > self.stall_after_s:
            return False, f"work waits and nothing was read or acknowledged for {stalled:.0f}s"
        return True, "ready"


HEALTH = Health()


def count_restart() -> None:
    """The daemon reopened its source and sink after a failure (call once per reconnect)."""
    RESTARTS.inc()


def mark_alive() -> None:
    """The daemon is alive though the pipeline is not running (waiting to reconnect, say)."""
    HEALTH.last_beat = time.monotonic()


def watch_sink_process(pid: int | None) -> None:
    """The sink process whose figures /metrics shows (None: there is none now)."""
    _SINK_PROCESS[:] = [] if pid is None else [pid]


def set_source_connected(connected: bool) -> None:
    HEALTH.connected = connected
    SOURCE_CONNECTED.set(1 if connected else 0)
    if connected:
        HEALTH.last_progress = time.monotonic()


def dead_letter_reason(error: str) -> str:
    """A small fixed set of reasons, read from the error text (dead letters are rare: the cost is no matter)."""
    if "needs the old row" in error:
        return "missing_old_row"
    if "is unknown (an unchanged TOAST" in error:
        return "unknown_value"
    if "too large" in error:
        return "too_large"
    if "field '" in error:  # a `when`, `let` or emitted field's expression failed
        return "expression_error"
    return "rule_failed"


class PipelineMetrics:
    """The pipeline's hook. Each call is O(changes of one transaction) in plain dict increments."""

    def __init__(self, source: Any, stats: Any, *, lag_interval_s: float = 5.0) -> None:
        self._source = source
        self._stats = stats  # the pipeline's PipelineStats: acknowledgements and progress are read from it
        self._acknowledged_before = stats.acknowledged
        self._lag_interval_s = lag_interval_s
        self._changes: Tally[tuple[str, Any]] = Tally()  # (table, Op): Op.value is read at flush, not per change
        self._events: Tally[str] = Tally()
        self._letters: Tally[tuple[str, str]] = Tally()
        self._transactions = 0
        self._last_flush = self._last_lag = 0.0
        self._lag_failed = False

    def transaction(self, transaction: Any, result: Any, uncounted: bool, *, first_slice: bool = True) -> None:
        """One translated transaction, or one slice of a large one (counted as a transaction with its first);
        `uncounted`: not a legacy transaction (a heartbeat, a batch of snapshot reads), though its changes count."""
        changes = self._changes
        for change in transaction.changes:
            changes[(change.table, change.op)] += 1
        events = self._events
        for event in result.events:
            events[event.type] += 1
        for letter in result.dead_letters:
            self._letters[(letter.rule_id, dead_letter_reason(letter.error))] += 1
        self._transactions += not uncounted and first_slice

    def undecodable(self, count: int = 1) -> None:
        self._letters[("", "undecodable")] += count

    def too_large(self, rule: str) -> None:
        self._letters[(rule, "too_large")] += 1

    def published(self, unit: Any) -> None:
        """Every event of `unit` is acknowledged: its commit-to-publish latency (a snapshot read has no commit: its
        time is when the snapshot was taken)."""
        transaction = unit.transaction
        if transaction is not None and not unit.heartbeat and transaction.snapshot is None:
            LATENCY.observe(max(0.0, time.time() - transaction.commit_time.timestamp()))

    def turn(self, now: float, in_flight: int) -> None:
        """Once per loop turn: liveness; at most once a second, the counts; every lag interval, the lag."""
        HEALTH.last_beat = now
        if now - self._last_flush < FLUSH_INTERVAL_S:
            return
        self._last_flush = now
        self.flush(in_flight)
        if now - self._last_lag >= self._lag_interval_s:
            self._last_lag = now
            self._sample_lag()

    def flush(self, in_flight: int = 0) -> None:
        for (table, op), n in self._changes.items():
            CHANGES.labels(table, op.value).inc(n)
        for event_type, n in self._events.items():
            EVENTS.labels(event_type).inc(n)
        for (rule, reason), n in self._letters.items():
            DEAD_LETTERS.labels(rule, reason).inc(n)
        self._changes.clear()
        self._events.clear()
        self._letters.clear()
        TRANSACTIONS.inc(self._transactions)
        self._transactions = 0
        acknowledged = self._stats.acknowledged
        ACKNOWLEDGED.inc(acknowledged - self._acknowledged_before)
        self._acknowledged_before = acknowledged
        IN_FLIGHT.set(in_flight)
        HEALTH.waiting_work = bool(in_flight or self._source.pending())
        HEALTH.last_progress = max(HEALTH.last_progress, self._stats.last_activity)
        LAST_PROGRESS.set(time.time() - (time.monotonic() - HEALTH.last_progress))

    def _sample_lag(self) -> None:
        """A metric must never stop the bridge: a failed sample is logged once and skipped."""
        try:
            if hasattr(self._source, "slot_lag_bytes"):
                SLOT_LAG.set(self._source.slot_lag_bytes())
            elif hasattr(self._source, "consumer_lag"):
                for topic, lag in self._source.consumer_lag().items():
                    CONSUMER_LAG.labels(topic).set(lag)
            self._lag_failed = False
        except Exception as exc:  # noqa: BLE001 (the source reports its own failures on its next poll)
            if not self._lag_failed:
                log.warning("could not measure the source's lag", extra={"error": str(exc)})
            self._lag_failed = True


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._answer(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/readyz"):
            ok, reason = (HEALTH.live if path == "/healthz" else HEALTH.ready)(time.monotonic())
            self._answer(200 if ok else 503, f"{reason}\n".encode(), "text/plain; charset=utf-8")
        else:
            self._answer(404, b"not found: /metrics, /healthz or /readyz\n", "text/plain; charset=utf-8")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (scrapes are not worth a log line)
        pass


class MetricsServer:
    """/metrics, /healthz and /readyz on one port, served from a daemon thread."""

    def __init__(self, host: str, port: int, *, stall_after_s: float = 60.0) -> None:
        from bridge.errors import ConfigurationError

        HEALTH.stall_after_s = stall_after_s
        mark_alive()
        try:
            self._server = ThreadingHTTPServer((host, port), _Handler)
        except OSError as exc:
            raise ConfigurationError(f"cannot serve metrics on {host}:{port} (metrics.host, metrics.port): "
                                     f"{exc.strerror or exc}; choose a free port, or null to turn them off") from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        set_source_connected(False)
