"""A single-node Kafka broker in KRaft mode and a Kafka Connect worker carrying Debezium."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from jars import Jars, debezium_version, kafka_version
from procs import free_port, java_binary, port_open, require_port_free, run, spawn, wait_until

LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
"""

# Small heaps: both JVMs share a 2-core machine with PostgreSQL, the bridge and the tests.
HEAP = ["-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]


def _properties(values: dict[str, object]) -> str:
    return "".join(f"{key}={value}\n" for key, value in values.items())


def _java_command(jars: Jars, home: Path, main_class: str, *args: str) -> list[str]:
    (home / "log4j2.properties").write_text(LOG4J2.format(log=home / "server.log"))
    return [java_binary(), *HEAP, f"-Dlog4j2.configurationFile={home / 'log4j2.properties'}",
            "-cp", f"{jars.kafka_lib}/*", main_class, *args]


def start_broker(state: Path, jars: Jars, port: int | None) -> dict:
    home = state / "kafka"
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    controller_port = free_port()
    require_port_free(port, "Kafka broker")
    config = home / "server.properties"
    config.write_text(_properties({
        "process.roles": "broker,controller",
        "node.id": 1,
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": home / "data",
        "num.partitions": 1,
        "offsets.topic.replication.factor": 1,
        "offsets.topic.num.partitions": 5,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "transaction.state.log.num.partitions": 5,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        "group.initial.rebalance.delay.ms": 0,
        "auto.create.topics.enable": "true",
    }))
    if not (home / "data" / "meta.properties").exists():
        run(_java_command(jars, home, "kafka.tools.StorageTool", "format", "-t", str(uuid.uuid4().hex[:22]),
                          "-c", str(config), "--ignore-formatted"),
            what="Formatting Kafka's KRaft storage")
    log_file = home / "stdout.log"
    pid = spawn(_java_command(jars, home, "kafka.Kafka", str(config)), log_file=log_file, pid_file=home / "pid")
    ready_after = wait_until(
        lambda: port_open(port) and "Kafka Server started" in (home / "server.log").read_text(errors="replace"),
        pid=pid, service="Kafka broker", log_file=home / "server.log", timeout=90,
    )
    return {
        "version": kafka_version(),
        "bootstrap_servers": f"127.0.0.1:{port}",
        "port": port,
        "controller_port": controller_port,
        "pid": pid,
        "log": str(home / "server.log"),
        "ready_after_s": round(ready_after, 2),
    }


def start_connect(state: Path, jars: Jars, bootstrap_servers: str, port: int | None) -> dict:
    """Kafka Connect in standalone mode: offsets in a local file, connectors added over REST."""
    home = state / "connect"
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    require_port_free(port, "Kafka Connect")
    config = home / "worker.properties"
    config.write_text(_properties({
        "bootstrap.servers": bootstrap_servers,
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "key.converter.schemas.enable": "true",
        "value.converter.schemas.enable": "true",
        "offset.storage.file.filename": home / "offsets.dat",
        "offset.flush.interval.ms": 1000,
        "plugin.path": jars.plugin_path,
        "plugin.discovery": "hybrid_warn",
        "listeners": f"http://127.0.0.1:{port}",
    }))
    url = f"http://127.0.0.1:{port}"
    pid = spawn(_java_command(jars, home, "org.apache.kafka.connect.cli.ConnectStandalone", str(config)),
                log_file=home / "stdout.log", pid_file=home / "pid")
    ready_after = wait_until(lambda: _has_debezium(url), pid=pid, service="Kafka Connect",
                             log_file=home / "server.log", timeout=120)
    return {
        "version": kafka_version(),
        "debezium_version": debezium_version(),
        "url": url,
        "port": port,
        "pid": pid,
        "log": str(home / "server.log"),
        "ready_after_s": round(ready_after, 2),
    }


def _has_debezium(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/connector-plugins", timeout=2) as response:
            plugins = json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return any(p.get("class") == "io.debezium.connector.postgresql.PostgresConnector" for p in plugins)
