"""Run `cdc-bridge run` as a child process and watch its consumer group catch up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from kafka import KafkaConsumer, TopicPartition

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_config(path: Path, **settings: Any) -> Path:
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def write_e2e_config(workdir: Path, *, source: dict[str, Any], sink: dict[str, Any],
                     pipeline: dict[str, Any] | None = None) -> Path:
    """`workdir`/bridge.yaml for an end-to-end run: the restaurant mappings, a prior-row store in `workdir`,
    frequent commits (tests wait for them) and JSON logs; the source and sink differ between tests, and
    `pipeline` may add settings."""
    return write_config(
        workdir / "bridge.yaml",
        source_id="legacy-restaurant",
        mappings=[str(REPO_ROOT / "mappings" / "restaurant.yaml")],
        source=source,
        sink=sink,
        state={"path": str(workdir / "prior-rows.sqlite")},
        pipeline={"commit_interval_s": 0.5, **(pipeline or {})},
        logging={"level": "INFO", "format": "json"},
    )


def sink_processes_of(parent_pid: int) -> list[int]:
    """Pids of live sink processes (python -m bridge.sinks.process_worker <parent pid>) started by `parent_pid`."""
    wanted = f"bridge.sinks.process_worker\0{parent_pid}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if wanted in (entry / "cmdline").read_bytes() and not _ended(int(entry.name)):
                found.append(int(entry.name))
        except OSError:  # ended meanwhile
            continue
    return found


def _ended(pid: int) -> bool:
    """Gone, or every thread of it a zombie (its files, a lock among them, are closed with its last thread).
    Not the command line: an exiting process loses it before it closes its files."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        return all("State:\tZ" in (task / "status").read_text() for task in tasks)
    except OSError:
        return True


def wait_ended(pids: list[int], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while alive := [pid for pid in pids if not _ended(pid)]:
        assert time.monotonic() < deadline, f"processes {alive} outlived their killed bridge"
        time.sleep(0.05)


class BridgeProcess:
    def __init__(self, config: Path, log_file: Path) -> None:
        self.config = config
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> BridgeProcess:
        log = open(self.log_file, "ab")  # noqa: SIM115 (the child owns it for its lifetime)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "run", "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 90) -> int:
        """SIGTERM, then wait: the daemon drains and commits before it exits."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def kill(self) -> None:
        """SIGKILL, and wait until its sink process (sink.separate_process) is gone too: the kernel kills it."""
        assert self.process is not None
        children = sink_processes_of(self.process.pid)
        self.process.kill()
        self.process.wait(timeout=30)
        wait_ended(children)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


def group_lag(bootstrap_servers: str, group_id: str, topics: list[str]) -> int:
    """Records in `topics` that the group has not committed past (unknown topics count as empty)."""
    # A consumer in the group that never subscribes: it can fetch committed offsets without joining.
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=group_id, enable_auto_commit=False)
    try:
        existing = consumer.topics()
        partitions = [TopicPartition(t, p) for t in topics if t in existing
                      for p in sorted(consumer.partitions_for_topic(t) or ())]
        if not partitions:
            return 0
        end = consumer.end_offsets(partitions)
        return sum(end[tp] - (consumer.committed(tp) or 0) for tp in partitions)
    finally:
        consumer.close(autocommit=False)


def wait_caught_up(bridge: BridgeProcess, bootstrap_servers: str, group_id: str, topics: list[str],
                   timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    lag = -1
    while time.monotonic() < deadline:
        if not bridge.alive():
            raise AssertionError(f"the bridge exited early:\n{bridge.log()[-4000:]}")
        lag = group_lag(bootstrap_servers, group_id, topics)
        if lag == 0:
            return
        time.sleep(1)
    raise AssertionError(f"the bridge did not catch up within {timeout_s}s (lag {lag}):\n{bridge.log()[-4000:]}")
