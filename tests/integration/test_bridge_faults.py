"""Wrong but reachable settings stop `cdc-bridge run` with one line and exit code 2, against the real
services: a database that does not exist, a wrong password, a role without LOGIN, an unknown host, a state
or event-log path that cannot be used, a prior-row store file that is not one, a missing DSN. (The start's
checks, bridge/preflight.py, find most of them before anything opens; the same judgement applies if one
slips past them, tests/unit/test_daemon_outages.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.bridge_process import REPO_ROOT, write_config
from tests.support.local_stack import StackInfo
from tests.support.private_services import PrivateService, private_service

SECRET = "s3cret-not-to-print"


def bridge_config(tmp_path: Path, *, source: dict[str, Any], sink: dict[str, Any] | None = None,
                  state_path: Path | None = None) -> Path:
    return write_config(
        tmp_path / "bridge.yaml",
        mappings=[str(REPO_ROOT / "mappings" / "restaurant.yaml")],
        source=source,
        sink=sink or {"kind": "locallog", "path": str(tmp_path / "events")},
        state={"path": str(state_path or tmp_path / "prior-rows.sqlite")},
        logging={"level": "INFO", "format": "json"},
    )


def run_bridge(config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge.cli", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=180, cwd=REPO_ROOT, env={**os.environ, **env})


def assert_one_line_input_error(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{done.stderr[-3000:]}"
    line = lines[0]
    assert line.startswith("cdc-bridge: ")
    for text in expected:
        assert text in line, line
    return line


def pgoutput(dsn: str) -> dict[str, Any]:
    name = f"faults_{uuid.uuid4().hex[:6]}"
    return {"kind": "pgoutput", "dsn": dsn, "slot_name": name, "publication_name": name}


def with_database(admin_dsn: str, database: str, user: str | None = None, password: str | None = None) -> str:
    params = psycopg.conninfo.conninfo_to_dict(admin_dsn) | {"dbname": database}
    if user:
        params["user"] = user
    if password:
        params["password"] = password
    host, port = params["host"], params["port"]
    auth = params["user"] + (f":{password}" if password else "")
    return f"postgresql://{auth}@{host}:{port}/{database}"


def test_a_database_that_does_not_exist(stack: StackInfo, tmp_path: Path) -> None:
    dsn = with_database(stack.admin_dsn, "restaurnt_typo")
    done = run_bridge(bridge_config(tmp_path, source=pgoutput(dsn)))
    assert_one_line_input_error(done, "database 'restaurnt_typo' does not exist", "source.dsn")


def test_a_role_without_login(stack: StackInfo, fresh_legacy_db: str, tmp_path: Path) -> None:
    role = f"nologin_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(stack.admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} NOLOGIN")
    try:
        dsn = with_database(stack.admin_dsn, fresh_legacy_db.rsplit("/", 1)[1], user=role)
        done = run_bridge(bridge_config(tmp_path, source=pgoutput(dsn)))
    finally:
        with psycopg.connect(stack.admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")
    assert_one_line_input_error(done, f"role '{role}' may not log in", f"ALTER ROLE {role} LOGIN", "source.dsn")


@pytest.fixture(scope="module")
def password_server() -> Iterator[PrivateService]:
    """A PostgreSQL of this module that checks passwords (the session stack's trusts every local login)."""
    with private_service("postgres") as server:
        with psycopg.connect(server.facts["admin_dsn"], autocommit=True) as conn:
            conn.execute("CREATE ROLE bridge_pw LOGIN REPLICATION PASSWORD 'the-right-one'")
            hba = Path(conn.execute("SHOW hba_file").fetchone()[0])  # type: ignore[index]
            hba.write_text("host all bridge_pw 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
            conn.execute("SELECT pg_reload_conf()")
        yield server


def test_a_wrong_password_is_named_without_printing_it(password_server: PrivateService, tmp_path: Path) -> None:
    dsn = with_database(password_server.facts["admin_dsn"], "restaurant", user="bridge_pw", password=SECRET)
    done = run_bridge(bridge_config(tmp_path, source=pgoutput(dsn)))
    line = assert_one_line_input_error(done, "refused the login", "password authentication failed", "source.dsn")
    assert SECRET not in done.stderr + done.stdout and SECRET not in line


def test_an_unknown_database_host(tmp_path: Path) -> None:
    done = run_bridge(bridge_config(tmp_path, source=pgoutput("postgresql://bridge@legacy-db.invalid:5432/restaurant")))
    assert_one_line_input_error(done, "legacy-db.invalid", "fix the host in source.dsn")


def test_an_unknown_kafka_host_is_one_line_not_thirty_seconds_of_client_errors(
    fresh_legacy_db: str, tmp_path: Path,
) -> None:
    done = run_bridge(bridge_config(tmp_path, source=pgoutput(fresh_legacy_db),
                                    sink={"kind": "kafka", "bootstrap_servers": "kafka-broker.invalid:9092"}))
    assert_one_line_input_error(done, "'kafka-broker.invalid' in sink.bootstrap_servers", "does not resolve")


def test_a_state_path_that_cannot_be_created(fresh_legacy_db: str, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"  # as root, permissions do not stop anything; a file in the path does
    blocker.write_text("")
    done = run_bridge(bridge_config(tmp_path, source=pgoutput(fresh_legacy_db), state_path=blocker / "prior.sqlite"))
    assert_one_line_input_error(done, "state.path", str(blocker))


def test_a_prior_row_store_file_of_random_bytes(fresh_legacy_db: str, tmp_path: Path) -> None:
    garbage = tmp_path / "prior-rows.sqlite"
    garbage.write_bytes(os.urandom(64 * 1024))
    done = run_bridge(bridge_config(tmp_path, source=pgoutput(fresh_legacy_db), state_path=garbage))
    assert_one_line_input_error(done, "state.path", str(garbage), "prior-row store")


def test_an_event_log_path_that_cannot_be_created(fresh_legacy_db: str, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = run_bridge(bridge_config(tmp_path, source=pgoutput(fresh_legacy_db),
                                    sink={"kind": "locallog", "path": str(blocker / "events")}))
    assert_one_line_input_error(done, "sink.path", str(blocker))


def test_a_pgoutput_source_without_a_dsn_does_not_guess_one(tmp_path: Path) -> None:
    source = pgoutput("unused")
    del source["dsn"]
    done = run_bridge(bridge_config(tmp_path, source=source))
    assert_one_line_input_error(done, "source.dsn: required", "BRIDGE_SOURCE__DSN")
