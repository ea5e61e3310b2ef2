"""The daemon's lifecycle: preflight, build the pipeline, run until SIGTERM/SIGINT, drain, commit, exit.

A graceful stop waits for every in-flight event to be acknowledged and commits the source position, so
a restart neither loses nor repeats anything. A crash (kill -9) loses nothing either: the source
position only ever moves past changes whose events were acknowledged, and replayed changes produce the
same event ids.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from bridge.errors import MappingError
from bridge.mapping.loader import load_mappings
from bridge.pipeline import Pipeline, PipelineStats
from bridge.preflight import enforce_at_start
from bridge.ports import ChangeSource, EventSink
from bridge.settings import Settings
from bridge.sinks.kafka import KafkaEventSink
from bridge.sinks.locallog import LocalLogEventSink
from bridge.state import PriorRowStore

log = logging.getLogger("bridge.daemon")


def preflight(settings: Settings):  # noqa: ANN201 (returns the compiled mappings)
    """Load the mappings and refuse to start when a rule cannot get what it needs."""
    mappings = load_mappings(settings.mappings)
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
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
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


def _open_sink(settings: Settings, mappings: Any) -> EventSink:
    if settings.sink.kind == "locallog":
        return LocalLogEventSink.from_settings(settings.sink)
    return KafkaEventSink.open(settings.sink, mappings.aggregates())


def _open_source(settings: Settings, mappings: Any) -> tuple[ChangeSource, dict[str, Any]]:
    """The configured source, and what to log about where it reads."""
    if settings.source.kind == "pgoutput":
        from bridge.redact import redacted_dsn
        from bridge.sources.pgoutput.drift import MappingContract
        from bridge.sources.pgoutput.source import PgOutputChangeSource

        pg = PgOutputChangeSource(settings.source, tables=mappings.tables(), contract=MappingContract.of(mappings),
                                  acknowledged_path=acknowledged_path(settings))
        return pg, {"source": "pgoutput", "dsn": redacted_dsn(settings.source.dsn), "slot": settings.source.slot_name,
                    "publication": settings.source.publication_name}
    from bridge.sources.debezium.source import DebeziumKafkaSource

    debezium = DebeziumKafkaSource(settings.source, tables=mappings.tables(), declared_types=mappings.declared_types())
    return debezium, {"source": "debezium", "topics": debezium.topics}


def acknowledged_path(settings: Settings) -> Path | None:
    """Where the pgoutput source keeps its acknowledged position: as configured, else beside the prior-row store."""
    configured = getattr(settings.source, "acknowledged_path", None)
    if configured is not None:
        return Path(configured)
    return settings.state.path.with_suffix(".acknowledged.json") if settings.state.path is not None else None


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


def run_daemon(settings: Settings, *, stop: threading.Event | None = None,
               idle_exit_s: float | None = None, stats: PipelineStats | None = None) -> PipelineStats:
    """Run until `stop` is set (or SIGTERM/SIGINT in the main thread); `stats`, if given, is kept up to date
    while it runs, for a caller that shows progress from another thread."""
    stop = stop or threading.Event()
    mappings = preflight(settings)
    enforce_at_start(settings, mappings, log)  # bridge/preflight.py: the checks of `cdc-bridge check`
    with ExitStack() as resources:
        serving = _serve_metrics(settings, resources)  # first: /healthz answers while the rest opens
        store = None
        if settings.state.path is not None and (needing := mappings.needs_before()):
            store = PriorRowStore(settings.state.path, tables=needing.keys())
            resources.callback(store.close)
        sink = _open_sink(settings, mappings)
        resources.callback(sink.close)
        source, reading = _open_source(settings, mappings)
        resources.callback(source.close)
        stats = stats if stats is not None else PipelineStats()
        hook = _metrics_hook(settings, source, stats, resources) if serving else None
        pipeline = Pipeline(source, sink, mappings, source_id=settings.source_id, prior_rows=store,
                            max_in_flight_events=settings.pipeline.max_in_flight_events,
                            commit_interval_s=settings.pipeline.commit_interval_s,
                            on_error=settings.pipeline.on_error, stats=stats, metrics=hook)
        log.info("started", extra={"source_id": settings.source_id, **reading, "rules": mappings.rule_count()})
        started = time.monotonic()
        with _stop_on_signals(stop):
            pipeline.run(stop, idle_exit_s=idle_exit_s)
        log.info("stopped", extra={**pipeline.stats.as_dict(), "seconds": round(time.monotonic() - started, 1)})
        return pipeline.stats
