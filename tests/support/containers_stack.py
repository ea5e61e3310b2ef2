"""The same stack from testcontainers, for machines with a Docker engine (BRIDGE_TESTCONTAINERS=1).

Images match the local stack: PostgreSQL 15 with logical WAL, Apache Kafka 4 in KRaft mode, and
Debezium's Kafka Connect image. Connect reaches the other two over a private Docker network by alias;
the tests reach all three through mapped ports.

Caveat: the build machine has no Docker engine, so this path has not been run there; the local
process stack (local_stack.py) is what CI exercises.
"""

from __future__ import annotations

import contextlib
import time
import urllib.request
from collections.abc import Iterator

from tests.support.local_stack import StackInfo

POSTGRES_IMAGE = "postgres:15"
KAFKA_IMAGE = "apache/kafka:4.1.0"
CONNECT_IMAGE = "quay.io/debezium/connect:3.1"


@contextlib.contextmanager
def container_stack() -> Iterator[StackInfo]:
    try:
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.network import Network
        from testcontainers.core.waiting_utils import wait_for_logs
        from testcontainers.postgres import PostgresContainer
    except ImportError as exc:
        raise RuntimeError("BRIDGE_TESTCONTAINERS=1 needs the test extra: pip install -e '.[test]'") from exc

    with Network() as network:
        postgres = (
            PostgresContainer(POSTGRES_IMAGE, username="postgres", password="postgres", dbname="restaurant")
            .with_command("postgres -c wal_level=logical -c max_replication_slots=40 -c max_wal_senders=40")
            .with_network(network).with_network_aliases("postgres")
        )
        # Two listeners: INTERNAL for Connect inside the network, EXTERNAL for the tests on the host.
        kafka = (
            DockerContainer(KAFKA_IMAGE)
            .with_network(network).with_network_aliases("kafka")
            .with_exposed_ports(9094)
            .with_env("KAFKA_NODE_ID", "1")
            .with_env("KAFKA_PROCESS_ROLES", "broker,controller")
            .with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@kafka:9093")
            .with_env("KAFKA_LISTENERS", "INTERNAL://0.0.0.0:9092,CONTROLLER://0.0.0.0:9093,EXTERNAL://0.0.0.0:9094")
            .with_env("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT,EXTERNAL:PLAINTEXT")
            .with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
            .with_env("KAFKA_INTER_BROKER_LISTENER_NAME", "INTERNAL")
            .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
            .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
            .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        )
        with postgres:
            with kafka:
                external = f"{kafka.get_container_host_ip()}:{kafka.get_exposed_port(9094)}"
                # The advertised address is only known once the port is mapped, so set it at runtime.
                kafka.exec(["/opt/kafka/bin/kafka-configs.sh", "--bootstrap-server", "kafka:9092", "--alter",
                            "--entity-type", "brokers", "--entity-name", "1", "--add-config",
                            f"advertised.listeners=[INTERNAL://kafka:9092,EXTERNAL://{external}]"])
                connect = (
                    DockerContainer(CONNECT_IMAGE)
                    .with_network(network)
                    .with_exposed_ports(8083)
                    .with_env("BOOTSTRAP_SERVERS", "kafka:9092")
                    .with_env("GROUP_ID", "cdc-bridge-tests")
                    .with_env("CONFIG_STORAGE_TOPIC", "connect_configs")
                    .with_env("OFFSET_STORAGE_TOPIC", "connect_offsets")
                    .with_env("STATUS_STORAGE_TOPIC", "connect_statuses")
                )
                with connect:
                    wait_for_logs(connect, "Finished starting connectors and tasks", timeout=180)
                    url = f"http://{connect.get_container_host_ip()}:{connect.get_exposed_port(8083)}"
                    _wait_http(url)
                    port = int(postgres.get_exposed_port(5432))
                    host = postgres.get_container_host_ip()
                    yield StackInfo(
                        admin_dsn=f"postgresql://postgres:postgres@{host}:{port}/postgres",
                        pg_host=host,
                        pg_port=port,
                        pg_version=POSTGRES_IMAGE,
                        bootstrap_servers=external,
                        connect_url=url,
                        pg_host_from_connect="postgres",
                        pg_port_from_connect=5432,
                        state_dir=None,
                    )


def _wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/connector-plugins", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"Kafka Connect at {url} did not answer within {timeout}s")
