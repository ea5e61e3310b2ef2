"""The direct source's two connections under faults: killed, paused, silent. Real PostgreSQL 15 and 18.

- the ordinary SQL connection (application_name cdc-bridge) killed: noticed within a status interval,
  reopened, with a log line; the stream goes on;
- the walsender (application_name cdc-bridge-stream) paused: a warning saying how long nothing came;
- the walsender killed: ServiceUnavailable at once, and a new source resumes without loss.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from bridge.errors import ServiceUnavailable
from bridge.ports import SourceUnit
from bridge.sources.pgoutput.source import PgOutputChangeSource
from legacy_db.simulate import run_simulation
from tests.support.pgoutput_source import TABLES, drop_slot, receive_and_acknowledge, source_settings

@pytest.fixture
def slot(legacy_db_any: str) -> Iterator[str]:
    name = f"pgc_{uuid.uuid4().hex[:8]}"
    yield name
    drop_slot(legacy_db_any, name)


def backend_pid(dsn: str, application_name: str) -> int:
    """The server process serving this test database's connection of that name."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = "
                            "current_database()", (application_name,)).fetchall()
    assert len(rows) == 1, f"expected one {application_name} connection, found {rows}"
    return int(rows[0][0])


def terminate(dsn: str, pid: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]


def insert_customer(dsn: str, email: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO customers (email, full_name, created_at, updated_on) VALUES (%s, 'x', now(), "
                     "now()::timestamp)", (email,))


def poll_for(source: PgOutputChangeSource, seconds: float) -> list[SourceUnit]:
    units: list[SourceUnit] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for unit in source.poll(0.1):
            units.append(unit)
            source.done(unit)
        source.commit()
    return units


def test_a_killed_sql_connection_is_noticed_at_once_and_reopened(legacy_db_any: str, slot: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bridge")
    source = PgOutputChangeSource(source_settings(legacy_db_any, slot), TABLES)
    try:
        killed = backend_pid(legacy_db_any, "cdc-bridge")
        terminate(legacy_db_any, killed)
        deadline = time.monotonic() + 20  # noticed without any heartbeat (one an hour here) using it
        while not any("reopened" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the killed SQL connection was not noticed"
            poll_for(source, 0.2)
        assert backend_pid(legacy_db_any, "cdc-bridge") != killed
        assert source.slot_lag_bytes() >= 0  # the reopened connection works
        insert_customer(legacy_db_any, "after@example.com")
        units = [u for u in poll_for(source, 3) if not u.heartbeat]
        assert [u.transaction.changes[0].after["email"] for u in units] == ["after@example.com"]
    finally:
        source.close()
    line = next(r for r in caplog.records if "reopened" in r.getMessage())
    assert line.levelno == logging.WARNING


def test_a_paused_walsender_gets_a_warning_saying_how_long_nothing_came(legacy_db_any: str, slot: str,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bridge")
    source = PgOutputChangeSource(source_settings(legacy_db_any, slot, heartbeat_interval_s=0.3, silence_warning_s=1.5),
                                  TABLES)
    walsender = backend_pid(legacy_db_any, "cdc-bridge-stream")
    try:
        poll_for(source, 1.5)  # heartbeats flow: no warning while the server answers
        assert not [r for r in caplog.records if "silent" in r.getMessage()]
        os.kill(walsender, signal.SIGSTOP)
        try:
            poll_for(source, 3.0)
        finally:
            os.kill(walsender, signal.SIGCONT)
        warnings = [r for r in caplog.records if "silent" in r.getMessage()]
        assert warnings and all(r.levelno == logging.WARNING for r in warnings)
        assert "cdc-bridge-stream" in warnings[0].getMessage() or "replication stream" in warnings[0].getMessage()
        assert warnings[0].__dict__.get("silent_s", 0) >= 1.5
        insert_customer(legacy_db_any, "resumed@example.com")
        units = [u for u in poll_for(source, 3) if not u.heartbeat]
        assert [u.transaction.changes[0].after["email"] for u in units] == ["resumed@example.com"]
        assert any("resumed" in r.getMessage() for r in caplog.records)
    finally:
        source.close()


def test_a_killed_walsender_is_service_unavailable_and_a_new_source_resumes_without_loss(legacy_db_any: str,
                                                                                       slot: str) -> None:
    config = source_settings(legacy_db_any, slot)
    source = PgOutputChangeSource(config, TABLES)
    try:
        report = run_simulation(legacy_db_any, seed=23, count=40, durable_commits=True)
        receive_and_acknowledge(source, 15, acknowledge=15)
        terminate(legacy_db_any, backend_pid(legacy_db_any, "cdc-bridge-stream"))
        began = time.monotonic()
        with pytest.raises(ServiceUnavailable) as caught:
            poll_for(source, 30)
        assert time.monotonic() - began < 30
    finally:
        source.close()
    assert "replication stream" in str(caught.value) and "terminat" in str(caught.value)
    again = PgOutputChangeSource(config, TABLES)
    try:
        units: list[SourceUnit] = []
        deadline = time.monotonic() + 30
        while len(units) < 25 and time.monotonic() < deadline:
            units.extend(u for u in again.poll(0.3) if not u.heartbeat)
    finally:
        again.close()
    assert [u.transaction.xid for u in units] == [r.xid for r in report.transactions[15:]]
