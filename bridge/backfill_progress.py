"""How far a backfill is, while it runs: a tqdm bar per table on a terminal, else a plain line every few seconds.

Rows count when read (translated and sent); the run's state moves only when the target acknowledged them.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from bridge.snapshot import TableShape
from bridge.snapshot_scan import TableProgress

TERMINAL_REFRESH_S = 0.25
PLAIN_INTERVAL_S = 5.0


class ProgressDisplay:
    def __init__(self, stream: TextIO | None = None, *, interval_s: float | None = None) -> None:
        self._stream = stream or sys.stderr
        self._terminal = self._stream.isatty()
        self._interval = interval_s or (TERMINAL_REFRESH_S if self._terminal else PLAIN_INTERVAL_S)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, progress: Mapping[str, TableProgress], shapes: Sequence[TableShape], stats: Any) -> None:
        tables = [progress[shape.table] for shape in shapes]
        self._thread = threading.Thread(target=self._loop, args=(tables, stats), name="backfill-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self, tables: list[TableProgress], stats: Any) -> None:
        if self._terminal:
            self._bars(tables)
        else:
            self._lines(tables, stats)

    def _bars(self, tables: list[TableProgress]) -> None:
        from tqdm import tqdm

        width = max(len(t.table) for t in tables)
        bars = [tqdm(total=t.total, initial=t.read, desc=t.table.ljust(width), unit=" rows", position=i,
                     file=self._stream, dynamic_ncols=True, leave=True) for i, t in enumerate(tables)]
        try:
            while True:
                stopping = self._stop.wait(self._interval)
                for bar, table in zip(bars, tables, strict=True):
                    bar.update(table.read - bar.n)
                if stopping:
                    return
        finally:
            for bar in bars:
                bar.close()

    def _lines(self, tables: list[TableProgress], stats: Any) -> None:
        started = time.monotonic()
        first = sum(t.read for t in tables)
        while not self._stop.wait(self._interval):
            read = sum(t.read for t in tables)
            total = sum(t.total or 0 for t in tables)
            rate = (read - first) / max(time.monotonic() - started, 1e-9)
            eta = f", ETA {(total - read) / rate:.0f} s" if rate > 0 and total >= read else ""
            current = next((t for t in tables if t.read < (t.total or 0)), tables[-1])
            print(f"backfill: {read}/{total} rows ({100 * read / max(total, 1):.0f}%), {rate:.0f} rows/s{eta}; "
                  f"{current.table} {current.read}/{current.total}; {stats.events} events, "
                  f"{stats.dead_letters} dead letters", file=self._stream, flush=True)
