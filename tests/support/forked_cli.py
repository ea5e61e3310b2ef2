"""Runs `cdc-bridge` many times, quickly: imports the CLI once, then forks a fresh process per invocation.

Each child gets its own argv, environment, working directory, stdin from /dev/null and stdout+stderr into
a file, and calls the console script's `main()`: what a user's shell would run, without paying the
imports each time (most of a failing command's cost). Reads a JSON list of jobs on stdin
({argv, env, cwd, output, timeout_s}) and writes their exit codes as a JSON list on stdout.
Use it as `python -m tests.support.forked_cli`; it starts no threads before forking.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import bridge.cli  # the expensive part, done once

PARALLEL = 4


def _child(job: dict[str, Any]) -> None:
    code = 1
    try:
        output = os.open(job["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.chdir(job["cwd"])
        os.environ.clear()
        os.environ.update(job["env"])
        sys.argv = ["cdc-bridge", *job["argv"]]
        signal.alarm(int(job["timeout_s"]))  # a hung command dies (exit by SIGALRM) instead of the test
        bridge.cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - nothing useful to do in a dying child
                pass
        os._exit(code)


def run_jobs(jobs: list[dict[str, Any]]) -> list[int]:
    codes: list[int | None] = [None] * len(jobs)
    running: dict[int, int] = {}  # pid -> job index
    pending = list(enumerate(jobs))
    while pending or running:
        while pending and len(running) < PARALLEL:
            index, job = pending.pop(0)
            pid = os.fork()
            if pid == 0:
                _child(job)
            running[pid] = index
        pid, status = os.wait()
        codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
    return [code if code is not None else -1 for code in codes]


if __name__ == "__main__":
    sys.stdout.write(json.dumps(run_jobs(json.load(sys.stdin))))
