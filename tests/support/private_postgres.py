"""A PostgreSQL server of one test's own, which the test may stop, restart or kill without harming others.

The session stack's server is shared by every test; a test that restarts PostgreSQL starts this one
instead, through the same `stack.py up postgres` humans use, in a state directory of its own under
.state/pytest-private-*, and purges it at the end (a killed session's is reaped by the next one).
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.local_stack import _new_session_state, reap_abandoned_stacks, run_stack, stop_session_stack


@dataclass(frozen=True)
class PrivatePostgres:
    admin_dsn: str
    version: str
    state_dir: Path
    facts: dict

    @property
    def major(self) -> int:
        return int(self.version.rsplit(" ", 1)[-1].split(".")[0])

    def pg_ctl(self, *args: str, timeout_s: float = 120) -> None:
        """pg_ctl as the account the server runs as; `restart` reuses the options it was started with."""
        command = [str(Path(self.facts["bindir"]) / "pg_ctl"), "-D", self.facts["data_dir"],
                   "-l", self.facts["log"], "-w", "-t", "60", *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False,
                              user=self.facts.get("os_user"))
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed ({done.returncode}): {done.stdout}{done.stderr}")

    def stop(self, mode: str = "fast") -> None:
        """fast: a clean shutdown (with its checkpoint); immediate: like a crash (recovery at the next start)."""
        self.pg_ctl("-m", mode, "stop")

    def start(self) -> None:
        """Start it again with the options it first ran with (its port among them). Not `stack.py up`: that
        refuses a port with connections still in TIME_WAIT, which PostgreSQL itself can listen on again."""
        words = shlex.split((Path(self.facts["data_dir"]) / "postmaster.opts").read_text())[1:]
        at = words.index("-D")
        options = shlex.join(words[:at] + words[at + 2:])
        self.pg_ctl("-o", options, "start")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """The machine's PostgreSQL (normally 15), alone, for one test; always stopped and purged."""
    reap_abandoned_stacks()
    state = _new_session_state("private-")
    try:
        run_stack(state, "up", "postgres")
        facts = json.loads((state / "stack.json").read_text())["postgres"]
        yield PrivatePostgres(admin_dsn=facts["admin_dsn"], version=facts["version"], state_dir=state, facts=facts)
    finally:
        stop_session_stack(state)
