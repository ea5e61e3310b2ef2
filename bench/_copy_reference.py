"""The reference run for bench/backfill.py, in a fresh process so its peak RSS and time are its own.

    python bench/_copy_reference.py DSN TABLE:KEY[,KEY] ...

One REPEATABLE READ, READ ONLY transaction; for each table, in the order given,
`COPY (SELECT * FROM public.TABLE ORDER BY KEY) TO STDOUT` through psycopg, every row taken into Python
with `copy.rows()` (tuples of the columns' text, as the backfill's reader gets them) and counted.
Prints one JSON line: seconds (connect to last row), rows per table, max_rss_mb (VmHWM).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peak_rss import peak_rss_mb  # noqa: E402 (bench/ is the script's own folder)


def main() -> None:
    import psycopg
    from psycopg import sql

    dsn, specs = sys.argv[1], sys.argv[2:]
    started = time.monotonic()
    rows: dict[str, int] = {}
    with psycopg.connect(dsn) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        for spec in specs:
            table, _, keys = spec.partition(":")
            query = sql.SQL("COPY (SELECT * FROM {} ORDER BY {}) TO STDOUT").format(
                sql.Identifier("public", table), sql.SQL(", ").join(sql.Identifier(k) for k in keys.split(",")))
            count = 0
            with conn.cursor() as cursor, cursor.copy(query) as copy:
                for _row in copy.rows():
                    count += 1
            rows[table] = count
        conn.rollback()
    seconds = time.monotonic() - started
    print(json.dumps({"seconds": seconds, "rows": rows, "max_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main()
