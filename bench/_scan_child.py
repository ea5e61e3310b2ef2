"""The backfill's read side alone, for bench/backfill.py --scan: a fresh process, so its time and RSS are its own.

    python bench/_scan_child.py DSN BATCH_SIZE TABLE ...

A SnapshotReader (a snapshot of its own: no slot needed) and a SnapshotScan over the tables, in order, as
BackfillSource drives it: every unit taken (keyset pages through COPY, values decoded, RowChanges built),
acknowledged and advanced; nothing translated or published. Prints one JSON line: seconds, rows, cpu_seconds
(this process's user + system time), max_rss_mb (VmHWM).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peak_rss import peak_rss_mb  # noqa: E402 (bench/ is the script's own folder)


def main() -> None:
    from bridge.changes import SnapshotMark
    from bridge.snapshot import SnapshotReader
    from bridge.snapshot_scan import SnapshotScan

    dsn, batch_size, tables = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    started = time.monotonic()
    cpu = os.times()
    reader = SnapshotReader.open(dsn, None, where="bench")
    try:
        shapes = [reader.describe("public", [table])[table] for table in tables]
        scan = SnapshotScan(reader, shapes, SnapshotMark("bench", 0), batch_size, {})
        rows = 0
        while (unit := scan.next_unit()) is not None:
            rows += len(unit.transaction.changes) + len(unit.dead_lettered)
            scan.done(unit)
            scan.advance()
    finally:
        reader.close()
    seconds = time.monotonic() - started
    after = os.times()
    print(json.dumps({"seconds": seconds, "rows": rows, "max_rss_mb": peak_rss_mb(),
                      "cpu_seconds": (after.user - cpu.user) + (after.system - cpu.system)}))


if __name__ == "__main__":
    main()
