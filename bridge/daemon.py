"""The daemon's lifecycle: preflight, build the pipeline, run until SIGTERM/SIGINT, drain, commit, exit.

A graceful stop waits for every in-flight event to be acknowledged and commits the source position, so
a restart neither loses nor repeats anything. A crash (kill -9) loses nothing either: the source
position only ever moves past changes whose events were acknowledged, and replayed changes produce the
same event ids. An outage of Kafka or PostgreSQL is ridden out in the process: the run stops, commits
what is done, closes source and sink, and the supervisor starts a new run from the committed position.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from bridge.errors import BridgeError, DeliveryError, MappingError, ServiceUnavailable, UnresolvableHost
from bridge.kafka_client import redacted_servers
from bridge.mapping.loader import load_mappings
from bridge.pipeline import Pipeline, PipelineStats
from bridge.preflight import enforce_at_start
from bridge.redact import redacted_dsn
from bridge.ports import ChangeSource, EventSink
from bridge.settings import KafkaSink, LocalLogSink, Settings
from bridge.sinks.process import SinkProcess, open_configured_sink
from bridge.state import PriorRowStore
from bridge.supervisor import Supervisor

log = logging.getLogger("bridge.daemon")


def preflight(settings: Settings):  # noqa: ANN201 (returns the compiled mappings)
    """Load the mappings and refuse to start when a rule cannot get what it needs."""
    mappings = load_mappings(settings.mappings, retired=settings.retired_events)
    unchecked = mappings.unchecked_event_types()
    if unchecked:  # allowed (a first mapping need not have contracts yet), but never silently
        log.warning("events published without a contract check: their mapping file has no contracts folder next "
                    "to it (see the README's Contracts section)", extra={"event_types": unchecked})
    needing = mappings.needs_before()
    if needing and settings.state.path is None:
        lines = [f"table {settings.source.schema_name}.{table} (rules {', '.join(sorted(rules))})"
                 for table, rules in sorted(needing.items())]
        fixes = "; ".join(f"ALTER TABLE {settings.source.schema_name}.{t} REPLICA IDENTITY FULL" for t in sorted(needing))
        raise MappingError(
            f"rules need old row values, but the prior-row store is disabled (state.path: null): {'; '.join(lines)}. "
            f"Fix: enable the store (set state.path), or, if every such table has REPLICA IDENTITY FULL, run {fixes}")
    return mappings


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def request_stop(signum: int, _frame: object) -> None:
        log.info("stopping: draining in-flight events and committing", extra={"signal": signal.Signals(signum).name})
        stop.set()

    for sig in previous:
        signal.signal(sig, request_stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _open_store(settings: Settings, mappings: Any) -> PriorRowStore | None:
    """The prior-row store, if rules need old rows (a path it cannot use is a ConfigurationError, bridge/state.py)."""
    path = settings.state.path
    if path is None or not (needing := mappings.needs_before()):
        return None
    return PriorRowStore(path, tables=needing.keys())


def _open_source(settings: Settings, mappings: Any) -> tuple[ChangeSource, dict[str, Any]]:
    """The configured source, and what to log about where it reads."""
    if settings.source.kind == "pgoutput":
        from bridge.sources.pgoutput.drift import MappingContract
        from bridge.sources.pgoutput.source import PgOutputChangeSource
        from bridge.sources.pgoutput.spill import SpillPolicy

        spill = SpillPolicy(settings.pipeline.spill_changes, settings.pipeline.spill_directory(settings.state.path))
        spill.prepare()
        pg = PgOutputChangeSource(settings.source, tables=mappings.tables_in_rule_order(),
                                  contract=MappingContract.of(mappings),
                                  acknowledged_path=settings.source.acknowledged_file(settings.state.path), spill=spill,
                                  snapshot_marker=settings.source.snapshot_file(settings.state.path))
        return pg, {"source": "pgoutput", "dsn": redacted_dsn(settings.source.dsn), "slot": settings.source.slot_name,
                    "publication": settings.source.publication_name}
    from bridge.sources.debezium.source import DebeziumKafkaSource

    debezium = DebeziumKafkaSource(settings.source, tables=mappings.tables(), declared_types=mappings.declared_types())
    return debezium, {"source": "debezium", "topics": debezium.topics}


def _serve_metrics(settings: Settings, resources: ExitStack) -> bool:
    """/metrics, /healthz and /readyz when metrics.port is set; closed with the daemon's other resources."""
    if settings.metrics.port is None:
        return False
    from bridge.metrics import MetricsServer

    server = MetricsServer(settings.metrics.host, settings.metrics.port, stall_after_s=settings.metrics.stall_after_s)
    resources.callback(server.close)
    host, port = server.address
    log.info("serving metrics", extra={"url": f"http://{host}:{port}/metrics"})
    return True


def _metrics_hook(settings: Settings, source: ChangeSource, stats: PipelineStats, resources: ExitStack) -> Any:
    from bridge.metrics import PipelineMetrics, set_source_connected

    hook = PipelineMetrics(source, stats, lag_interval_s=settings.metrics.lag_interval_s)
    set_source_connected(True)
    resources.callback(hook.flush)  # the counts of the last second, before the process ends
    return hook


def _close_quietly(resource: Any, what: str) -> None:
    """Close, and only log a failure: a close error (a producer that cannot flush while its broker is away)
    must never replace the reason the run stopped, and nothing unacknowledged was committed anyway."""
    try:
        resource.close()
    except Exception as exc:  # noqa: BLE001 (any client library's error; the stop's own reason matters)
        log.warning("closing %s failed", what, extra={"error": " ".join(str(exc).split()) or type(exc).__name__})


def _service_names(settings: Settings) -> dict[str, str]:
    """What the waiting line calls the source's and the sink's service."""
    source, sink = settings.source, settings.sink
    if source.kind == "pgoutput":
        source_name = f"PostgreSQL at {redacted_dsn(source.dsn)}"
    else:
        source_name = f"Kafka at {redacted_servers(source.bootstrap_servers)} (the Debezium topics)"
    sink_name = f"Kafka at {redacted_servers(sink.bootstrap_servers)}" if sink.kind == "kafka" else \
        f"the event log at {sink.path}"
    return {"source": source_name, "sink": sink_name}


def _writing(sink: KafkaSink | LocalLogSink) -> dict[str, Any]:
    """What the start line says about the sink: its kind and, for Kafka, the producer library (sink.client)."""
    return {"sink": "kafka", "kafka_client": sink.client} if isinstance(sink, KafkaSink) else {"sink": "locallog"}


class _Runs:
    """One run per call: open the sink and the source, run the pipeline until it stops; always close both.

    The prior-row store and the stats outlive the runs: its position-stamped history makes a replay after
    a restart translate exactly as the first time, and the stats add up over the whole process. With
    metrics served, each run has its own hook, the source counts as disconnected between runs, and the
    daemon stays live (/healthz) while it waits.
    """

    def __init__(self, settings: Settings, mappings: Any, store: PriorRowStore | None, stats: PipelineStats,
                 stop: threading.Event, idle_exit_s: float | None, *, serving: bool) -> None:
        self.settings, self.mappings, self.store, self.stats = settings, mappings, store, stats
        self.stop, self.idle_exit_s, self.serving = stop, idle_exit_s, serving
        self.services = _service_names(settings)
        self.supervisor = Supervisor(stop=stop, limit_s=settings.pipeline.outage_limit_s, blame=self.blame,
                                     heartbeat=_mark_alive if serving else None)
        self.stage = "sink"  # what the current run was doing: opening the sink, the source, or running
        self.opened = 0  # runs that opened their source and sink

    def blame(self, error: BridgeError) -> str:
        if self.stage == "run":  # delivery failures are the sink's; a source's stream or commit failed otherwise
            return self.services["sink" if isinstance(error, DeliveryError) else "source"]
        return self.services[self.stage]

    def __call__(self) -> None:
        settings = self.settings
        with ExitStack() as parts:
            try:
                self.stage = "sink"
                sink = open_configured_sink(settings.sink, self.mappings.aggregates(),
                                            log_level=settings.logging.level, log_format=settings.logging.format)
                parts.callback(_close_quietly, sink, "the sink")
                self.stage = "source"
                source, reading = _open_source(settings, self.mappings)
                parts.callback(_close_quietly, source, "the source")
            except UnresolvableHost as exc:
                if not self.opened:
                    raise  # at start: a typo to fix
                # Once the bridge has run, a name that stops resolving is a service being replaced: wait for it.
                raise ServiceUnavailable(str(exc)) from exc
            self.opened += 1
            self.stage = "run"
            hook = self._metrics(source, sink, parts)
            pipeline = Pipeline(source, sink, self.mappings,
                                source_id=settings.source_id, prior_rows=self.store,
                                max_in_flight_events=settings.pipeline.max_in_flight_events,
                                commit_interval_s=settings.pipeline.commit_interval_s,
                                on_error=settings.pipeline.on_error, stats=self.stats, metrics=hook,
                                on_commit=lambda _position: self.supervisor.progressed(),
                                slice_changes=settings.pipeline.spill_changes)
            self.supervisor.running()
            log.info("started", extra={"source_id": settings.source_id, **reading, **_writing(settings.sink),
                                       "rules": self.mappings.rule_count(),
                                       **({"restarts": self.supervisor.restarts} if self.supervisor.restarts else {})})
            pipeline.run(self.stop, idle_exit_s=self.idle_exit_s)

    def _metrics(self, source: ChangeSource, sink: EventSink, parts: ExitStack) -> Any:
        if not self.serving:
            return None
        from bridge.metrics import count_restart, set_source_connected, watch_sink_process

        if self.opened > 1:
            count_restart()
        parts.callback(set_source_connected, False)  # until the next run is up
        if isinstance(sink, SinkProcess):
            watch_sink_process(sink.pid)
            parts.callback(watch_sink_process, None)
        return _metrics_hook(self.settings, source, self.stats, parts)


def _mark_alive() -> None:
    from bridge.metrics import mark_alive

    mark_alive()


def run_daemon(settings: Settings, *, stop: threading.Event | None = None,
               idle_exit_s: float | None = None, stats: PipelineStats | None = None) -> PipelineStats:
    """Run until `stop` is set (or SIGTERM/SIGINT in the main thread); `stats`, if given, is kept up to date
    while it runs, for a caller that shows progress from another thread.

    A retryable stop (Kafka or PostgreSQL away) is waited out and the pipeline started again from the
    committed position, for up to pipeline.outage_limit_s (bridge/supervisor.py); then ServiceUnavailable.
    """
    stop = stop or threading.Event()
    stats = PipelineStats() if stats is None else stats
    mappings = preflight(settings)
    enforce_at_start(settings, mappings, log)  # bridge/preflight.py: the checks of `cdc-bridge check`
    started = time.monotonic()
    with ExitStack() as resources, stop_on_signals(stop):
        serving = _serve_metrics(settings, resources)  # first: /healthz answers while the rest opens
        store = _open_store(settings, mappings)
        if store is not None:
            resources.callback(_close_quietly, store, "the prior-row store")
        runs = _Runs(settings, mappings, store, stats, stop, idle_exit_s, serving=serving)
        runs.supervisor.supervise(runs)
    log.info("stopped", extra={**stats.as_dict(), "restarts": runs.supervisor.restarts,
                               "seconds": round(time.monotonic() - started, 1)})
    return stats
