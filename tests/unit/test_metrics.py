"""Metrics and health: the pipeline's hook counts what it handled, the HTTP endpoint serves /metrics,
/healthz and /readyz, and the Grafana dashboard queries only metrics that exist."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from bridge import metrics
from bridge.changes import Op, RowChange, SourcePosition, Transaction
from bridge.errors import DecodeError
from bridge.mapping.loader import load_mappings
from bridge.pipeline import Pipeline
from bridge.ports import SourceUnit
from tests.unit.test_pipeline import MAPPING, FakeSink, FakeSource

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "cdc-bridge.json"


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def _unit(order_id: int, total: object, lsn: int, committed: datetime) -> SourceUnit:
    change = RowChange(op=Op.CREATE, schema="public", table="orders", key={"id": order_id}, before=None,
                       after={"id": order_id, "total": total}, position=SourcePosition(lsn + 8, lsn, 0),
                       commit_time=committed, xid=lsn)
    return SourceUnit(Transaction(xid=lsn, commit_lsn=lsn + 8, commit_time=committed, changes=(change,)),
                      handle=order_id)


class LaggingSource(FakeSource):
    def slot_lag_bytes(self) -> int:
        return 4096


def test_the_hook_counts_changes_events_dead_letters_latency_and_lag(tmp_path: Path) -> None:
    mapping = tmp_path / "shop.yaml"
    mapping.write_text(MAPPING.format(policy="dead_letter"))
    committed = datetime.now(timezone.utc)
    bad = SourceUnit(None, handle="bad", error=DecodeError("cannot decode"), raw={"topic": "t", "offset": 1})
    source = LaggingSource([_unit(1, Decimal("5"), 100, committed), _unit(2, "not a number", 200, committed), bad])
    sink = FakeSink()
    before = {
        "changes": value("cdc_bridge_changes_total", table="orders", op="c"),
        "opened": value("cdc_bridge_events_total", type="shop.order.OrderOpened.v1"),
        "failed": value("cdc_bridge_dead_letters_total", rule="orders.opened", reason="expression_error"),
        "undecodable": value("cdc_bridge_dead_letters_total", rule="", reason="undecodable"),
        "latency": value("cdc_bridge_commit_to_publish_seconds_count"),
        "transactions": value("cdc_bridge_transactions_total"),
        "acknowledged": value("cdc_bridge_acknowledged_total"),
    }
    pipeline = Pipeline(source, sink, load_mappings([mapping]), source_id="test", prior_rows=None,
                        commit_interval_s=0.01)
    pipeline.metrics = hook = metrics.PipelineMetrics(source, pipeline.stats, lag_interval_s=0.0)
    stop = threading.Event()
    threading.Timer(0.5, lambda: (sink.ack_all(), threading.Timer(0.5, stop.set).start())).start()
    pipeline.run(stop)
    hook.flush()
    assert value("cdc_bridge_changes_total", table="orders", op="c") - before["changes"] == 2
    assert value("cdc_bridge_events_total", type="shop.order.OrderOpened.v1") - before["opened"] == 1
    assert value("cdc_bridge_dead_letters_total", rule="orders.opened", reason="expression_error") \
        - before["failed"] == 1
    assert value("cdc_bridge_dead_letters_total", rule="", reason="undecodable") - before["undecodable"] == 1
    assert value("cdc_bridge_transactions_total") - before["transactions"] == 2
    assert value("cdc_bridge_acknowledged_total") - before["acknowledged"] == 4  # 2 events + 2 dead letters
    # One latency observation per transaction whose events were all acknowledged (both orders).
    assert value("cdc_bridge_commit_to_publish_seconds_count") - before["latency"] == 2
    assert value("cdc_bridge_slot_lag_bytes") == 4096
    assert value("cdc_bridge_events_in_flight") == 0


def test_a_transaction_in_slices_counts_once_and_keeps_the_health_beat(tmp_path: Path) -> None:
    from tests.unit.test_pipeline import AckingSource, _large_unit

    mapping = tmp_path / "shop.yaml"
    mapping.write_text(MAPPING.format(policy="dead_letter"))
    sink = FakeSink()
    unit = _large_unit([Decimal(i) for i in range(1, 11)])  # 10 changes in 4 slices of 3
    source = AckingSource([unit], sink)
    before = {"changes": value("cdc_bridge_changes_total", table="orders", op="c"),
              "transactions": value("cdc_bridge_transactions_total"),
              "latency": value("cdc_bridge_commit_to_publish_seconds_count")}
    pipeline = Pipeline(source, sink, load_mappings([mapping]), source_id="test", prior_rows=None,
                        max_in_flight_events=4, slice_changes=3)
    pipeline.metrics = hook = metrics.PipelineMetrics(source, pipeline.stats, lag_interval_s=3600.0)
    metrics.HEALTH.last_beat = 0.0
    pipeline._handle(source.poll(0)[0])  # the loop never turns meanwhile: the slices must beat for it
    assert metrics.HEALTH.last_beat > 0.0
    sink.ack_all()
    while not source.done_units:
        pipeline._collect(block=True, timeout_s=5)
    hook.flush()
    assert value("cdc_bridge_changes_total", table="orders", op="c") - before["changes"] == 10
    assert value("cdc_bridge_transactions_total") - before["transactions"] == 1
    assert value("cdc_bridge_commit_to_publish_seconds_count") - before["latency"] == 1


def test_dead_letter_reasons_are_a_small_fixed_set() -> None:
    assert metrics.dead_letter_reason("needs the old row of public.orders ({'id': 1}), but ...") == "missing_old_row"
    assert metrics.dead_letter_reason("rule 'r', field 'f': after.x is unknown (an unchanged TOAST value ...") \
        == "unknown_value"
    assert metrics.dead_letter_reason("rule 'r', field 'total': TypeError: ...") == "expression_error"
    assert metrics.dead_letter_reason("something else") == "rule_failed"


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_endpoint_serves_metrics_liveness_and_readiness(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "HEALTH", metrics.Health())
    server = metrics.MetricsServer("127.0.0.1", 0, stall_after_s=30)
    try:
        host, port = server.address
        base = f"http://{host}:{port}"
        status, body = _get(f"{base}/metrics")
        assert status == 200 and "cdc_bridge_restarts_total" in body and "process_resident_memory_bytes" in body
        assert _get(f"{base}/healthz") == (200, "alive\n")
        assert _get(f"{base}/readyz") == (503, "the source is not connected\n")
        metrics.set_source_connected(True)
        assert _get(f"{base}/readyz") == (200, "ready\n")
        # Work waits and nothing moved for longer than stall_after_s: not ready; a stuck loop: not alive.
        metrics.HEALTH.waiting_work = True
        metrics.HEALTH.last_progress = metrics.HEALTH.last_beat = time.monotonic() - 31
        status, reason = _get(f"{base}/readyz")
        assert status == 503 and "nothing was read or acknowledged for 31s" in reason
        status, reason = _get(f"{base}/healthz")
        assert status == 503 and "has not turned for 31s" in reason
        metrics.mark_alive()
        assert _get(f"{base}/healthz")[0] == 200
        restarts = value("cdc_bridge_restarts_total")
        metrics.count_restart()
        assert value("cdc_bridge_restarts_total") == restarts + 1
        assert _get(f"{base}/nope")[0] == 404
    finally:
        server.close()


def test_a_taken_port_is_one_clear_error() -> None:
    from bridge.errors import ConfigurationError

    first = metrics.MetricsServer("127.0.0.1", 0)
    try:
        with pytest.raises(ConfigurationError, match=r"cannot serve metrics on 127\.0\.0\.1:\d+ \(metrics\.host"):
            metrics.MetricsServer("127.0.0.1", first.address[1])
    finally:
        first.close()


def _exposed_names() -> set[str]:
    """Every series name the registry can expose: counters as _total, histograms as _bucket/_sum/_count."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names = set()
    for family in metrics.REGISTRY.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def test_every_metric_the_dashboard_queries_exists() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    expressions += [variable.get("definition", "") for variable in dashboard["templating"]["list"]]
    assert expressions, "the dashboard has no queries"
    queried = {name for expr in expressions for name in re.findall(r"\b(?:cdc_bridge|process)_[a-z_]+", expr)}
    assert queried - _exposed_names() == set()
    # And it shows each of the bridge's own metrics somewhere (restarts, lag, latency, in flight...).
    own = {n for n in _exposed_names() if n.startswith("cdc_bridge_") and not n.endswith(("_sum", "_count"))}
    assert own - queried == set()
