"""One drain of a slot by the direct source alone, for bench/pgoutput_source.py, in a fresh process.

    python bench/_pgoutput_source_child.py SPEC.json RESULT.json

SPEC.json names the build (`tree`: a folder holding a `bridge` package, imported ahead of anything else), the
database, slot, publication and tables, the row changes to wait for, a scratch folder and optionally a cProfile
output. The source is built as bridge.daemon builds it (spill policy, mapping contract, acknowledged-position
file), then polled as the pipeline polls it (poll(0.2)); every unit is marked done at once and the source
committed every pipeline.commit_interval_s (1 s, as the pipeline's checkpoint does), so positions flow as they
would, but nothing is translated or published. RESULT.json receives seconds (from the
source constructed to the N-th change handed out), the counts and the bridge package's location; with `digest`
also a SHA-256 of every field of every transaction and change handed out, value types included (an untimed run).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
TIMEOUT_S = 1800
COMMIT_INTERVAL_S = 1.0  # pipeline.commit_interval_s' default


def add_to_digest(digest: Any, unit: Any) -> None:
    """Every field of the unit's transaction and changes, with every value's type (1 == 1.0 == True in Python)."""
    tx = unit.transaction
    digest.update(repr((tx.xid, tx.commit_lsn, tx.commit_time, tx.snapshot, unit.heartbeat, dict(unit.stopped_rules),
                        tx.newest_position())).encode())
    for c in tx.changes:
        rows = [None if row is None else [(k, type(v).__name__, repr(v)) for k, v in row.items()]
                for row in (c.key, c.before, c.after, c.old_key)]
        digest.update(repr((c.op, c.schema, c.table, rows, c.position, c.commit_time, c.xid, c.message,
                            c.source_ref)).encode())


def drain(spec: dict[str, Any]) -> dict[str, Any]:
    sys.path.insert(0, str(Path(spec["tree"]).resolve()))  # the build measured, ahead of this checkout's
    import bridge
    from bridge.mapping.loader import load_mappings
    from bridge.settings import PgOutputSource
    from bridge.sources.pgoutput.drift import MappingContract
    from bridge.sources.pgoutput.source import PgOutputChangeSource
    from bridge.sources.pgoutput.spill import SpillPolicy

    scratch = Path(spec["scratch"])
    mappings = load_mappings([Path(spec["mappings"])])
    settings = PgOutputSource(dsn=spec["dsn"], slot_name=spec["slot"], publication_name=spec["publication"],
                              create_slot=False, create_publication=False, snapshot="never",
                              heartbeat_interval_s=3600.0)
    spill = SpillPolicy(spec["spill_changes"], scratch / "spill")
    spill.prepare()
    source = PgOutputChangeSource(settings, tables=mappings.tables_in_rule_order(),
                                  contract=MappingContract.of(mappings),
                                  acknowledged_path=scratch / "acknowledged.json", spill=spill)
    wanted = spec["changes"]
    digest = hashlib.sha256() if spec.get("digest") else None
    changes = transactions = polls = 0
    profiler = None
    if spec.get("profile"):
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    started = last_commit = time.monotonic()
    try:
        while changes < wanted:
            if time.monotonic() - started > TIMEOUT_S:
                raise RuntimeError(f"only {changes} of {wanted} changes in {TIMEOUT_S} s")
            units = source.poll(0.2)
            polls += 1
            for unit in units:
                if unit.error is not None:
                    raise RuntimeError(f"a transaction failed to decode: {unit.error}")
                if not unit.heartbeat:
                    transactions += 1
                    changes += len(unit.transaction.changes)
                    if digest is not None:
                        add_to_digest(digest, unit)
                source.done(unit)
            now = time.monotonic()
            if now - last_commit >= COMMIT_INTERVAL_S:
                source.commit()
                last_commit = now
        seconds = time.monotonic() - started
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(spec["profile"])
        source.close()
    sys.path.insert(0, str(BENCH))
    from _peak_rss import peak_rss_mb
    return {"seconds": seconds, "changes": changes, "transactions": transactions, "polls": polls,
            "digest": digest.hexdigest() if digest is not None else None,
            "bridge": str(Path(bridge.__file__).resolve().parent), "max_rss_mb": peak_rss_mb()}


if __name__ == "__main__":
    spec_path, result_path = map(Path, sys.argv[1:3])
    Path(result_path).write_text(json.dumps(drain(json.loads(spec_path.read_text()))))
