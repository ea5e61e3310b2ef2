"""Where a profiled run's time went: the top functions by inclusive and by self time.

    .venv/bin/python bench/_profile_summary.py bench/results/backfill-1000000-current-*.py-spy.txt [--top 40]
    .venv/bin/python bench/_profile_summary.py bench/results/backfill-1000000-current-*.prof [--top 40]

A py-spy file (`record --format raw --threads`: collapsed stacks, one line per stack and thread) gives shares
of the main thread's samples (other threads are listed apart: they share the GIL, not the main thread's time);
functions are named without line numbers, and a function counts once per sample however deep it recurses.
A cProfile file (.prof) gives pstats' cumulative and internal time, as shares of the whole run.
"""

from __future__ import annotations

import argparse
import pstats
import re
from collections import Counter
from pathlib import Path


def py_spy(path: Path, top: int) -> None:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    other: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    main = 0
    lines = [_split(line) for line in path.read_text().splitlines()]
    # `--subprocesses` prefixes each stack with its process: the bridge's main thread is the busiest MainThread.
    mains = Counter(process for process, name, _frames, count in lines if name == "MainThread" for _ in range(count))
    bridge = mains.most_common(1)[0][0] if mains else ""
    for process, name, frames, count in lines:
        if process != bridge:
            name = f"{process}: {name}"
        threads[name] += count
        if not frames:
            continue
        if name != "MainThread":
            other[f"{name}: {frames[-1]}"] += count
            continue
        main += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    print(f"{path.name}: samples per thread {dict(threads.most_common())}")
    for title, counts in (("inclusive (main thread)", inclusive), ("self (main thread)", own)):
        print(f"--- {title}")
        for frame, count in counts.most_common(top):
            print(f"{100 * count / main:5.1f}%  {frame}")
    print("--- other threads, self, as shares of the main thread's samples")
    for frame, count in other.most_common(10):
        print(f"{100 * count / main:5.1f}%  {frame}")


def _split(line: str) -> tuple[str, str, list[str], int]:
    """(process, thread name, frames without line numbers, samples) of one raw py-spy line."""
    stack, _, count = line.rpartition(" ")
    frames = stack.split(";")
    process = ""
    if frames[0].startswith("process "):
        process, frames = re.sub(r'^process (\d+):"(.*)"$', r"\1 \2", frames[0]).strip(), frames[1:]
    thread, frames = frames[0], [re.sub(r":\d+\)$", ")", frame) for frame in frames[1:]]
    return process, re.sub(r"^thread \(\d+\)(: )?", "", thread) or "(unnamed)", frames, int(count)


def cprofile(path: Path, top: int) -> None:
    stats = pstats.Stats(str(path))
    total = max(entry[3] for entry in stats.stats.values())  # the outermost call's cumulative time
    rows = [(func, cc, nc, tt, ct) for func, (cc, nc, tt, ct, _callers) in stats.stats.items()]
    print(f"{path.name}: {total:.1f} s under cProfile")
    for title, index in (("cumulative", 4), ("internal (self)", 3)):
        print(f"--- {title}")
        for func, _cc, calls, tottime, cumtime in sorted(rows, key=lambda r: r[index], reverse=True)[:top]:
            where = f"{Path(func[0]).name}:{func[1]}({func[2]})"
            print(f"{100 * (cumtime if index == 4 else tottime) / total:5.1f}%  {calls:>9}  {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    (cprofile if args.profile.suffix == ".prof" else py_spy)(args.profile, args.top)


if __name__ == "__main__":
    main()
