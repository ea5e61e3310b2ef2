"""A benchmark child's own peak memory, and memory figures of a process read from /proc."""

from __future__ import annotations

import resource
from pathlib import Path


def status_mb(field: str, pid: int | str = "self") -> float | None:
    """A size field of /proc/<pid>/status (VmHWM, VmRSS) in MB; None when the process or the field is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return None


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries the parent's peak across fork and
    exec into it, so a child of a big parent would report the parent's size."""
    peak = status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
