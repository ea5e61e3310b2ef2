"""`cdc-bridge demo` as a person runs it: a child process with the embedded PostgreSQL, stopped by
--duration or Ctrl-C, and pointed at an existing database with --dsn. Output here is not a terminal,
so the demo prints one line per event plus status lines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from bridge.sinks.locallog_reader import EventLogReader
from tests.support.local_stack import REPO_ROOT


def _demo(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "bridge.cli", "demo", *args], cwd=REPO_ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _accepts_connections(output: str) -> bool:
    """Whether the server the demo said it reads (`reading host=... port=...`) still answers."""
    line = next(line for line in output.splitlines() if line.startswith("reading "))
    port = next(word.split("=")[1] for word in line.split() if word.startswith("port="))
    try:
        psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=3").close()
    except psycopg.OperationalError:
        return False
    return True


@pytest.fixture
def demo_state(tmp_path: Path) -> Iterator[Path]:
    """The demo's state folder; its PostgreSQL's data (kept by the demo for its next run) purged afterwards."""
    state = tmp_path / "demo"
    yield state
    subprocess.run([sys.executable, str(REPO_ROOT / "deploy" / "local" / "stack.py"), "--state",
                    str(state / "postgres"), "down", "--purge"], capture_output=True, check=False)


def test_the_demo_shows_events_live_and_stops_everything_on_ctrl_c(demo_state: Path) -> None:
    state = demo_state
    demo = _demo("--state", str(state), "--rate", "40", "--seed", "5")
    lines: list[str] = []
    assert demo.stdout is not None
    deadline = time.monotonic() + 120
    while sum("OrderOpened.v1" in line for line in lines) < 3:  # events arrive while the traffic runs
        assert time.monotonic() < deadline and demo.poll() is None, "".join(lines)[-3000:]
        lines.append(demo.stdout.readline())
    demo.send_signal(signal.SIGINT)
    # Read the rest through the same buffered reader: communicate(timeout=...) reads the pipe's descriptor
    # directly and would skip what readline() already buffered.
    watchdog = threading.Timer(120, demo.kill)
    watchdog.start()
    try:
        rest = demo.stdout.read()
        demo.wait()
    finally:
        watchdog.cancel()
    output = "".join(lines) + rest
    assert demo.returncode == 0, output[-3000:]
    assert "Stopped. This run published" in output
    assert f"cdc-bridge tail --log {state / 'events'} --from-start" in output
    events = list(EventLogReader(state / "events").read())
    assert len(events) >= 3 and len({e.id for e in events}) == len(events)
    shown = {line.split()[0] for line in output.splitlines() if ".v1  " in line}
    assert {str(e.offset) for e in events} == shown, output[-6000:]
    assert not _accepts_connections(output), "Ctrl-C stops the demo's PostgreSQL"


def test_the_demo_reads_an_existing_database_and_says_the_slot_stays(fresh_legacy_db: str, tmp_path: Path) -> None:
    demo = _demo("--dsn", fresh_legacy_db, "--traffic", "--rate", "30", "--duration", "6",
                 "--state", str(tmp_path / "demo"))
    try:
        output, _ = demo.communicate(timeout=120)
        assert demo.returncode == 0, output[-3000:]
        assert "OrderOpened.v1" in output and "[demo " in output  # event lines and status lines
        assert _accepts_connections(output), "a database the demo did not start is left running"
        assert "pg_drop_replication_slot('cdc_bridge_demo')" in output
        with psycopg.connect(fresh_legacy_db, autocommit=True) as conn:
            lag = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn) "
                               "FROM pg_replication_slots WHERE slot_name = 'cdc_bridge_demo'").fetchone()
        assert lag is not None, "the slot stays, holding the position"
    finally:
        if demo.poll() is None:
            demo.kill()
        with psycopg.connect(fresh_legacy_db, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                         "WHERE slot_name = 'cdc_bridge_demo'")


def test_a_demo_pointed_at_nothing_says_what_is_wrong(tmp_path: Path) -> None:
    demo = _demo("--dsn", "postgresql://nobody:secret@127.0.0.1:1/none", "--state", str(tmp_path / "demo"))
    output, _ = demo.communicate(timeout=60)
    assert demo.returncode == 3, output
    assert "cannot reach PostgreSQL" in output and "127.0.0.1" in output and "secret" not in output
