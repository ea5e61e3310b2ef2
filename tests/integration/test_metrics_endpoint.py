"""The metrics endpoint of a real `run`: the direct source on PostgreSQL, the local event log, legacy traffic;
/metrics counts what went through, /healthz and /readyz answer, and the slot lag is measured."""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from bridge.daemon import run_daemon
from bridge.pipeline import PipelineStats
from bridge.settings import load_settings
from legacy_db.simulate import run_simulation
from tests.support.bridge_process import REPO_ROOT, write_config


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, number = line.rpartition(" ")
            samples[name] = float(number)
    return samples


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("separate_process", [False, True], ids=["one-process", "separate-process"])
def test_a_running_bridge_serves_its_metrics_and_health(tmp_path: Path, fresh_legacy_db: str,
                                                        separate_process: bool) -> None:
    port = _free_port()
    name = f"met_{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path / "bridge.yaml", mappings=[str(REPO_ROOT / "mappings" / "restaurant.yaml")],
                          source={"kind": "pgoutput", "dsn": fresh_legacy_db, "slot_name": name,
                                  "publication_name": name},
                          sink={"kind": "locallog", "path": str(tmp_path / "events"),
                                "separate_process": separate_process},
                          state={"path": str(tmp_path / "prior-rows.sqlite")},
                          metrics={"port": port, "lag_interval_s": 0.5})
    stop = threading.Event()
    stats = PipelineStats()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_daemon(load_settings(config), stop=stop, stats=stats)
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            errors.append(exc)

    daemon = threading.Thread(target=run)
    daemon.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while _status_or_none(f"{base}/readyz") != 200:
            assert not errors and time.monotonic() < deadline, errors or "never ready"
            time.sleep(0.2)
        # The counters belong to the process (a test before this one may have counted): compare what this run adds.
        baseline = _scrape(f"{base}/metrics")
        report = run_simulation(fresh_legacy_db, seed=11, count=50)
        while stats.transactions < len(report.transactions) or stats.acknowledged < stats.events + stats.dead_letters:
            assert not errors and time.monotonic() < deadline + 120, errors or stats.as_dict()
            time.sleep(0.2)
        time.sleep(1.5)  # counts reach prometheus-client once a second
        samples = _scrape(f"{base}/metrics")
        assert _status(f"{base}/healthz") == 200 and _status(f"{base}/readyz") == 200
    finally:
        stop.set()
        daemon.join(timeout=60)
    assert not errors, errors

    def added(name: str) -> float:
        return samples[name] - baseline.get(name, 0.0)

    def total(prefix: str) -> float:
        return sum(added(k) for k in samples if k.startswith(prefix))

    expected_changes = sum(report.row_changes.values())
    assert total("cdc_bridge_changes_total{") == expected_changes
    for (table, op), count in report.row_changes.items():
        assert added(f'cdc_bridge_changes_total{{op="{op}",table="{table}"}}') == count
    assert total("cdc_bridge_events_total{") == stats.events > 0
    assert added("cdc_bridge_commit_to_publish_seconds_count") >= 1
    assert samples["cdc_bridge_source_connected"] == 1
    assert "cdc_bridge_slot_lag_bytes" in samples
    assert re.search(r"cdc_bridge_events_in_flight", " ".join(samples))
    # The sink process's own CPU and memory, beside the bridge's; none without one.
    sink_rss = samples.get("cdc_bridge_sink_process_resident_memory_bytes")
    if separate_process:
        assert sink_rss is not None and sink_rss > 10e6, samples
        assert samples["cdc_bridge_sink_process_cpu_seconds_total"] > 0
        assert samples["cdc_bridge_sink_process_start_time_seconds"] >= samples["process_start_time_seconds"]
    else:
        assert sink_rss is None
    # Stopped: the endpoint is gone with the daemon.
    assert _status_or_none(f"{base}/healthz") is None


def _status_or_none(url: str) -> int | None:
    try:
        return _status(url)
    except (urllib.error.URLError, ConnectionError):
        return None
