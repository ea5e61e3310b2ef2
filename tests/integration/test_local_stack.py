"""The stack script itself, where it meets the machine: a clone inside a folder other accounts cannot enter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.local_stack import STACK_SCRIPT


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands PostgreSQL to another account")
def test_postgres_runs_when_its_account_cannot_enter_the_state_directory(tmp_path: Path) -> None:
    private = tmp_path / "private"  # like a mktemp -d folder: mode 700
    private.mkdir(mode=0o700)
    state = private / "state"

    def stack(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(STACK_SCRIPT), "--state", str(state), *args],
                              capture_output=True, text=True, timeout=120)

    up = stack("up", "postgres")
    try:
        assert up.returncode == 0, up.stderr
        home = Path(json.loads((state / "stack.json").read_text())["postgres"]["home"])
        assert not home.is_relative_to(private) and (home / "data" / "PG_VERSION").exists()
    finally:
        down = stack("down", "--purge")
    assert down.returncode == 0, down.stderr
    assert not home.exists() and not state.exists()
