"""Shared fixtures. The ones below run the real services: PostgreSQL, Kafka and Kafka Connect with Debezium.

The session starts one stack (local processes, or testcontainers with BRIDGE_TESTCONTAINERS=1) and
always stops it. Each test gets its own database and, when it asks, its own Debezium connector, slot
and topic prefix, so tests cannot see each other's changes.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.databases import create_legacy_database, drop_database
from tests.support.local_stack import REPO_ROOT, StackInfo, start_session_stack, stop_session_stack

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


@pytest.fixture
def fresh_legacy_db(stack: StackInfo) -> Iterator[str]:
    """A new database with the legacy schema migrated and no rows; dropped afterwards."""
    name = f"legacy_{uuid.uuid4().hex[:10]}"
    dsn = create_legacy_database(stack.admin_dsn, name)
    try:
        yield dsn
    finally:
        drop_database(stack.admin_dsn, name)


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
