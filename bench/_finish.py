"""The end of a benchmark run, kept or failed: its JSON results written, its stack or scratch folder removed."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from tests.support.local_stack import run_stack


def finish(results: Path, name: str, output: dict[str, Any], state: Path, scratch: Path, *, own_stack: bool) -> None:
    """Write `output` to results/<name>-<time>.json; stop and purge a stack the run started, else drop its scratch."""
    path = results / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(output, indent=2, default=str))
    print(f"results: {path}", flush=True)
    if own_stack:
        run_stack(state, "down", "--purge", check=False)
        shutil.rmtree(state, ignore_errors=True)
    else:
        shutil.rmtree(scratch, ignore_errors=True)
