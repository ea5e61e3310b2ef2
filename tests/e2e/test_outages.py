"""Outages ridden out inside the process: Kafka stopped for longer than the producer's delivery timeout,
a walsender killed, PostgreSQL restarted. Each test starts the service it stops (tests/support/
private_services.py), never the session stack's, runs `cdc-bridge run` (direct source -> Kafka) as a
child process under legacy traffic, and demands that every event arrived: folded, they equal the legacy
rows; repeats are byte-identical. Beyond pipeline.outage_limit_s the bridge exits 3 with one line.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from legacy_db.migrate import apply_migrations
from legacy_db.simulate import run_simulation
from tests.conftest import PUBLISHERS
from tests.support.bridge_process import REPO_ROOT, BridgeProcess, write_e2e_config
from tests.support.direct_run import DirectRun
from tests.support.event_checks import (
    assert_ordered_per_aggregate,
    assert_repeats_identical,
    assert_state_matches,
    fold,
)
from tests.support.local_stack import StackInfo
from tests.support.private_services import PrivateService, private_service

DELIVERY_TIMEOUT_S = 6.0  # short, so that an outage longer than it does not make the test slow


@pytest.fixture
def private_kafka() -> Iterator[PrivateService]:
    with private_service("kafka") as kafka:
        yield kafka


@pytest.fixture
def private_postgres() -> Iterator[PrivateService]:
    with private_service("postgres") as server:
        yield server


def log_entries(bridge: BridgeProcess) -> tuple[list[dict[str, Any]], list[str]]:
    """The bridge's JSON log entries, and its other lines (the CLI's closing error, a traceback)."""
    entries, other = [], []
    for line in bridge.log().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            other.append(line)
    return entries, other


def messages(bridge: BridgeProcess, prefix: str) -> list[str]:
    return [e["message"] for e in log_entries(bridge)[0] if e.get("message", "").startswith(prefix)]


def wait_until(condition: Callable[[], bool], bridge: BridgeProcess, what: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert bridge.alive(), f"the bridge exited while waiting for {what}:\n{bridge.log()[-4000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s}s:\n{bridge.log()[-4000:]}"
        time.sleep(0.5)


def traffic(dsn: str, seed: int, count: int, rate: float) -> tuple[threading.Thread, dict[str, Any]]:
    """The legacy app's simulated traffic in the background; `result` gets its report or its error."""
    result: dict[str, Any] = {}

    def simulate() -> None:
        try:
            result["report"] = run_simulation(dsn, seed=seed, count=count, rate=rate)
        except Exception as exc:  # noqa: BLE001 (a restarted server ends the legacy app's session too)
            result["error"] = exc

    thread = threading.Thread(target=simulate, daemon=True)
    thread.start()
    return thread, result


def finished(writer: threading.Thread, result: dict[str, Any]) -> None:
    writer.join(timeout=300)
    assert "report" in result, f"the simulated traffic did not finish: {result}"


def assert_clean_log(bridge: BridgeProcess) -> list[dict[str, Any]]:
    entries, other = log_entries(bridge)
    assert not [line for line in other if line.strip()], f"lines that are not log entries:\n{other[:20]}"
    noisy = [e for e in entries if e.get("logger", "").startswith("kafka")]
    assert not noisy, f"kafka-python's own lines reached the log: {noisy[:3]}"
    return entries


def caught_up_and_stopped(run: DirectRun, bridge: BridgeProcess) -> list[dict[str, Any]]:
    """Wait until the slot is confirmed past everything written, then SIGTERM: exit 0 and a clean log."""
    run.wait_caught_up(bridge, timeout_s=300)
    assert bridge.stop() == 0, bridge.log()[-3000:]
    return assert_clean_log(bridge)


def assert_everything_arrived(run: DirectRun) -> list[dict[str, Any]]:
    """Every event arrived (folded, they equal the legacy rows), in order, repeats identical; returns the dead
    letters for the caller to judge."""
    records = run.events()
    unique = assert_repeats_identical(records)
    assert_ordered_per_aggregate(records)
    assert_state_matches(fold(unique), run.dsn)
    return [json.loads(record.value) for record in run.dead_letters()]


@pytest.mark.parametrize(("kafka_client", "separate_process"), PUBLISHERS)
def test_kafka_stopped_longer_than_the_delivery_timeout_is_waited_for_and_nothing_is_lost(
    fresh_legacy_db: str, private_kafka: PrivateService, tmp_path: Path, kafka_client: str, separate_process: bool,
) -> None:
    bootstrap = private_kafka.facts["bootstrap_servers"]
    run = DirectRun(bootstrap, fresh_legacy_db, tmp_path, sink={"delivery_timeout_s": DELIVERY_TIMEOUT_S},
                    pipeline={"outage_limit_s": 900}, client=kafka_client, separate_process=separate_process)
    bridge = run.bridge()
    try:
        run.wait_for_slot(bridge)
        writer, result = traffic(fresh_legacy_db, seed=37, count=1500, rate=25)
        wait_until(lambda: len(run.events()) >= 100, bridge, "events before the outage")
        private_kafka.stop()
        stopped_at = time.monotonic()
        # The producer gives up after the delivery timeout; then the bridge waits, saying so every few seconds.
        waiting = f"waiting for Kafka at {bootstrap} since "
        wait_until(lambda: len(messages(bridge, waiting)) >= 3, bridge, "three 'waiting for Kafka' lines")
        assert time.monotonic() - stopped_at > DELIVERY_TIMEOUT_S
        private_kafka.start()
        finished(writer, result)
        entries = caught_up_and_stopped(run, bridge)
    finally:
        if bridge.alive():
            bridge.kill()
        run.drop_slot()
    lines = [e["message"] for e in entries]
    assert any(m.startswith(f"Kafka at {bootstrap} answers again after ") for m in lines), lines[-30:]
    assert "gives up after 900 s" in messages(bridge, waiting)[0]
    assert entries[-1]["message"] == "stopped" and entries[-1]["restarts"] >= 1
    assert assert_everything_arrived(run) == []


def refused_kafka_config(dsn: str, tmp_path: Path, limit_s: float, client: str,
                         separate_process: bool = False) -> tuple[Path, int]:
    with socket.socket() as probe:  # a port nobody listens on: connections are refused, the host is fine
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return write_e2e_config(tmp_path, source={"kind": "pgoutput", "dsn": dsn},
                            sink={"bootstrap_servers": f"127.0.0.1:{port}", "client": client,
                                  "separate_process": separate_process},
                            pipeline={"outage_limit_s": limit_s}), port


def test_sigterm_while_waiting_for_kafka_stops_at_once_with_exit_code_0(fresh_legacy_db: str, tmp_path: Path,
                                                                        kafka_client: str) -> None:
    config, port = refused_kafka_config(fresh_legacy_db, tmp_path, limit_s=900, client=kafka_client)
    bridge = BridgeProcess(config, tmp_path / "bridge.log").start()
    try:
        wait_until(lambda: bool(messages(bridge, f"waiting for Kafka at 127.0.0.1:{port} since ")), bridge,
                   "a 'waiting for Kafka' line", timeout_s=120)
        assert bridge.stop(timeout_s=60) == 0, bridge.log()[-3000:]
    finally:
        if bridge.alive():
            bridge.kill()
    assert messages(bridge, "stopped while waiting for Kafka") or messages(bridge, "stopped while Kafka")
    assert_clean_log(bridge)


@pytest.mark.parametrize(("kafka_client", "separate_process"), PUBLISHERS)
def test_kafka_away_beyond_the_outage_limit_exits_3_with_one_line(fresh_legacy_db: str, tmp_path: Path,
                                                                  kafka_client: str, separate_process: bool) -> None:
    config, port = refused_kafka_config(fresh_legacy_db, tmp_path, limit_s=12, client=kafka_client,
                                        separate_process=separate_process)
    done = subprocess.run([sys.executable, "-m", "bridge.cli", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 3, done.stderr[-3000:]
    entries, other = [], []
    for line in done.stderr.strip().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            other.append(line)
    assert len(other) == 1, f"one line of error, no traceback:\n{done.stderr[-3000:]}"
    assert other[0].startswith(f"cdc-bridge: gave up waiting for Kafka at 127.0.0.1:{port} after ")
    assert "pipeline.outage_limit_s = 12" in other[0]
    waiting = [e for e in entries if e["message"].startswith(f"waiting for Kafka at 127.0.0.1:{port} since ")]
    assert waiting and all(e["level"] == "WARNING" for e in waiting)
    assert not [e for e in entries if e.get("logger", "").startswith("kafka")], "kafka-python's lines stay out"


def kill_walsender(dsn: str, slot: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                           "WHERE slot_name = %s AND active", (slot,)).fetchone()
    return 0 if row is None else int(bool(row[0]))


@pytest.mark.parametrize("separate_process", [False, True], ids=["one-process", "separate-process"])
def test_a_killed_walsender_and_a_postgresql_restart_are_ridden_out_and_nothing_is_lost(
    stack: StackInfo, private_postgres: PrivateService, tmp_path: Path, separate_process: bool,
) -> None:
    """Also with the sink in a second process: each restart of a run starts a new sink process, and the
    events the old one had not confirmed are read and published again."""
    dsn = private_postgres.facts["dsn"]
    apply_migrations(dsn)
    run = DirectRun(stack.bootstrap_servers, dsn, tmp_path, pipeline={"outage_limit_s": 900},
                    separate_process=separate_process)
    waiting = "waiting for PostgreSQL at "
    bridge = run.bridge()
    try:
        run.wait_for_slot(bridge)
        writer, result = traffic(dsn, seed=41, count=600, rate=40)
        wait_until(lambda: len(run.events()) >= 50, bridge, "events before the walsender is killed")
        assert kill_walsender(dsn, run.slot) == 1
        wait_until(lambda: len(messages(bridge, waiting)) >= 1, bridge, "a 'waiting for PostgreSQL' line")
        finished(writer, result)

        before = len(run.events())
        writer, result = traffic(dsn, seed=43, count=100_000, rate=40)  # cut short by the restart
        wait_until(lambda: len(run.events()) >= before + 100, bridge, "events of the second round of traffic")
        private_postgres.stop()
        wait_until(lambda: len(messages(bridge, waiting)) >= 3, bridge, "'waiting for PostgreSQL' lines")
        writer.join(timeout=60)
        private_postgres.start()
        writer, result = traffic(dsn, seed=47, count=300, rate=40)
        finished(writer, result)
        entries = caught_up_and_stopped(run, bridge)
    finally:
        if bridge.alive():
            bridge.kill()
    lines = [e["message"] for e in entries]
    assert sum(m.startswith("PostgreSQL at ") and " answers again after " in m for m in lines) >= 2, lines[-40:]
    assert entries[-1]["message"] == "stopped" and entries[-1]["restarts"] >= 2
    letters = assert_everything_arrived(run)
    # PostgreSQL 15 does not persist a slot's confirmed_flush_lsn at shutdown, so the restarted slot replays from
    # an older position: the bridge resumes at its own acknowledged position and its store kept the history.
    assert letters == []
