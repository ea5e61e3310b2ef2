"""A benchmark child's own peak memory, and memory figures of a process read from /proc."""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any


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


def sink_process_peaks() -> list[float]:
    """Wrap SinkProcess.close (sink.separate_process) so the sink process's VmHWM is read just before it ends;
    the list of them. A process's own peak_rss_mb does not hold its sink process's."""
    try:
        from bridge.sinks.process import SinkProcess
    except ImportError:  # a build before sink.separate_process (--base-code)
        return []
    peaks: list[float] = []
    original = SinkProcess.close

    def close(self: Any) -> None:
        child = getattr(self, "_child", None)
        if child is not None and child.poll() is None and (peak := status_mb("VmHWM", child.pid)) is not None:
            peaks.append(peak)
        original(self)

    SinkProcess.close = close  # type: ignore[method-assign]
    return peaks
