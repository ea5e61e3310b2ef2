"""The console script as a user meets it: every subcommand listed, failures as one clear line."""

from __future__ import annotations

import socket
import subprocess
import sys


def _cdc_bridge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge.cli", *args], capture_output=True, text=True, timeout=60)


def test_help_lists_every_subcommand_with_one_line() -> None:
    top = _cdc_bridge("--help")
    assert top.returncode == 0
    top_commands = top.stdout.split("Commands:")[1].strip().splitlines()
    assert [line.split()[0] for line in top_commands] == ["backfill", "check", "contracts", "demo", "legacy", "log", "mappings",
                                                               "run", "tail"]
    assert all(len(line.split()) > 1 for line in top_commands)
    legacy = _cdc_bridge("legacy", "--help")
    commands = legacy.stdout.split("Commands:")[1].strip().splitlines()
    assert [line.split()[0] for line in commands] == ["migrate", "simulate"]
    assert all(len(line.split()) > 1 for line in commands), "each subcommand has a one-line summary"


def test_an_unreachable_database_is_one_line_and_exit_code_3() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = _cdc_bridge("legacy", "migrate", "--dsn", f"postgresql://postgres@127.0.0.1:{port}/restaurant")
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("cdc-bridge: cannot reach PostgreSQL") and str(port) in lines[0]


def test_a_bad_config_file_is_one_line_and_exit_code_2(tmp_path) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text("sink: {partitions: many}\n")
    done = _cdc_bridge("run", "--config", str(config))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cdc-bridge: {config}: sink.partitions")
