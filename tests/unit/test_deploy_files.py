"""The deployment files that cannot run here (no Docker, no systemd as init) still have to be right:
valid syntax, and consistent with the local stack that the integration tests do run."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from legacy_db.tables import metadata

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _pom_version(pom: str, prop: str) -> str:
    match = re.search(rf"<{prop}>([^<]+)</{prop}>", (DEPLOY / "local" / "maven" / pom).read_text())
    assert match, f"{pom} lost its <{prop}>"
    return match.group(1)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def connector() -> dict:
    return json.loads((DEPLOY / "connectors" / "restaurant-postgres.json").read_text())


def test_compose_runs_the_same_stack_as_the_local_scripts(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "kafka", "connect", "legacy-app", "bridge"}
    assert "wal_level=logical" in services["postgres"]["command"]
    assert services["kafka"]["image"].endswith(":" + _pom_version("kafka.pom.xml", "kafka.version"))
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert services["connect"]["image"].endswith(":" + _pom_version("debezium.pom.xml", "debezium.version"))
    for service in services.values():
        for dependency in service.get("depends_on", {}):
            assert dependency in services
    for volume in services["postgres"]["volumes"]:
        source = volume.split(":", 1)[0]
        if source.startswith("."):
            assert (DEPLOY / source).is_dir(), f"compose mounts {source}, which does not exist"
    assert (DEPLOY / services["bridge"]["build"]["dockerfile"].removeprefix("deploy/")).is_file()


def test_connector_captures_every_legacy_table_with_transaction_metadata(connector: dict, compose: dict) -> None:
    config = connector["config"]
    assert config["connector.class"] == "io.debezium.connector.postgresql.PostgresConnector"
    assert config["plugin.name"] == "pgoutput"
    assert config["provide.transaction.metadata"] == "true"
    assert int(config["heartbeat.interval.ms"]) > 0
    assert config["skipped.operations"] == "none", "truncates must reach the bridge"
    captured = {name.removeprefix("public.") for name in config["table.include.list"].split(",")}
    legacy_tables = {name for name in metadata.tables if name != "schema_migrations"}
    assert captured == legacy_tables
    # It is written for the compose network: host and database are compose's.
    assert config["database.hostname"] in compose["services"]
    assert config["database.dbname"] == compose["services"]["postgres"]["environment"]["POSTGRES_DB"]


def test_systemd_unit_is_well_formed() -> None:
    unit_file = DEPLOY / "systemd" / "cdc-bridge.service"
    unit = configparser.ConfigParser(strict=True, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  (systemd keys are case-sensitive)
    unit.read_string(unit_file.read_text())
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert service["ExecStart"].split()[1:3] == ["run", "--config"]
    assert service["KillSignal"] == "SIGTERM"  # the daemon drains and commits on SIGTERM
    assert service["User"] != "root"
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    done = subprocess.run([analyze, "verify", str(unit_file)], capture_output=True, text=True)
    # The only complaint allowed is that the program is not installed on this machine.
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if line.strip() and "is not executable" not in line]
    assert problems == []


def test_the_connector_files_table_list_is_the_one_connector_add_derives_from_the_mappings(connector: dict) -> None:
    import sys

    sys.path.insert(0, str(DEPLOY / "local"))
    import connectors

    derived = connectors.tables_from_mappings([DEPLOY.parent / "mappings"])
    # docker-compose users post the file as written; `stack.py connector add` replaces the list with this.
    assert sorted(connector["config"]["table.include.list"].split(",")) == derived.split(",")
