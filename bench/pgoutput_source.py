"""Benchmark: the direct source alone (pgoutput decoding, transaction assembly, spooling) draining a real WAL,
against the server's own decoding of the same WAL, in the same run; optionally an A/B of builds.

    .venv/bin/python bench/pgoutput_source.py --changes 100000 --runs 3
    .venv/bin/python bench/pgoutput_source.py --changes 100000 --runs 0 --profile --py-spy   # profiles only
    # A/B of two builds in the same run (mkdir -p .state/ab-base; git archive main bridge | tar -x -C .state/ab-base):
    .venv/bin/python bench/pgoutput_source.py --changes 100000 --runs 5 --build base=.state/ab-base --build current=.
    # iterating: keep a workload in a running stack (deploy/local/stack.py --state DIR up postgres), drain it again
    .venv/bin/python bench/pgoutput_source.py --state DIR --changes 100000 --runs 0 --keep-workload
    .venv/bin/python bench/pgoutput_source.py --state DIR --workload pgsource_XXXXXX --runs 3 --build ...

It starts a PostgreSQL of its own (deploy/local/stack.py up postgres, under .state/bench-pgsource-*, removed at
the end), or uses a running one (--state DIR).

- **Workload.** A fresh migrated legacy database, a publication for exactly the mapped tables and an origin
  pgoutput slot, then the legacy simulator writes at least N row changes (its small transactions, about 1.3
  changes each), as bench/pgoutput_bridge.py does.
- **Reference ("server").** `SELECT count(*) FROM pg_logical_slot_peek_binary_changes(copy, ...)` over a
  copy of the origin slot (pg_copy_logical_replication_slot: the same WAL from the same position): the
  server decoding the WAL with pgoutput and sending nothing but a count. Its count of I/U/D/T messages is the
  N every build must hand out exactly.
- **A build.** bench/_pgoutput_source_child.py in a fresh process, with the `bridge` package of the build's
  folder first on sys.path, on its own copy of the origin slot: the source built as the daemon builds it,
  polled as the pipeline polls it, every unit acknowledged at once, nothing translated or published. Timed
  from the source constructed (connections open, streaming started) to the N-th change handed out.
- **Order.** Each run does the server, then every build; the builds' order is reversed every other run, so
  none always goes first. Reported: medians over --runs of changes/s, each build's ratio to the server's
  median and to the first build's.
- --check-identical: one extra untimed run per build, hashing every field of every transaction and change it
  hands out (value types included); the builds must agree.
- --profile / --py-spy: one extra run per build under cProfile (in the child) or `py-spy record` (200 Hz,
  raw collapsed stacks), not in the medians; files in bench/results/, read with bench/_profile_summary.py.

Results go to bench/results/pgoutput_source-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import psycopg  # noqa: E402
from _finish import finish  # noqa: E402

from bridge.mapping.loader import load_mappings  # noqa: E402
from legacy_db.simulate import run_simulation  # noqa: E402
from tests.support.databases import create_legacy_database, database_dsn, drop_database  # noqa: E402
from tests.support.local_stack import run_stack  # noqa: E402

CHILD = REPO / "bench" / "_pgoutput_source_child.py"
MAPPINGS_FILE = REPO / "mappings" / "restaurant.yaml"
ROW_MESSAGES = (ord("I"), ord("U"), ord("D"), ord("T"))  # pgoutput Insert, Update, Delete, Truncate
SPILL_CHANGES = 10_000  # pipeline.spill_changes' default
CHILD_TIMEOUT_S = 1800


def sql(dsn: str, statement: str, params: tuple = ()) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def prepare(admin_dsn: str, changes: int) -> dict[str, Any]:
    """A fresh legacy database; the publication and the origin slot first, then >= `changes` row changes."""
    suffix = uuid.uuid4().hex[:6]
    database = f"pgsource_{suffix}"
    dsn = create_legacy_database(admin_dsn, database)
    work = {"database": database, "dsn": dsn, "publication": f"bench_src_{suffix}", "origin": f"bench_src_{suffix}",
            "simulated_changes": 0, "transactions": 0}
    tables = ", ".join(f"public.{table}" for table in load_mappings([MAPPINGS_FILE]).tables())
    sql(dsn, f'CREATE PUBLICATION "{work["publication"]}" FOR TABLE {tables}')
    sql(dsn, "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (work["origin"],))
    started = time.monotonic()
    batch = 0
    while work["simulated_changes"] < changes:
        count = max(200, min(5000, (changes - work["simulated_changes"]) * 4 // 5))
        report = run_simulation(dsn, seed=1000 + batch, count=count, keep_transactions=False)
        work["simulated_changes"] += sum(report.row_changes.values())
        work["transactions"] += report.transaction_count
        batch += 1
    print(f"simulator wrote {work['simulated_changes']} row changes in {work['transactions']} transactions "
          f"({time.monotonic() - started:.0f} s)", flush=True)
    return work


def copy_slot(work: dict[str, Any], name: str) -> str:
    sql(work["dsn"], "SELECT pg_copy_logical_replication_slot(%s, %s)", (work["origin"], name))
    return name


def drop_slot(work: dict[str, Any], name: str) -> None:
    sql(work["dsn"], "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                     "WHERE slot_name = %s AND NOT active", (name,))


def server(work: dict[str, Any], slot: str) -> dict[str, Any]:
    """The server's own decoding of the slot copy: every message counted, none sent."""
    query = ("SELECT count(*), count(*) FILTER (WHERE get_byte(data, 0) IN (%s, %s, %s, %s)) "
             "FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, 'proto_version', '1', 'publication_names', %s)")
    with psycopg.connect(work["dsn"], autocommit=True) as conn:
        started = time.monotonic()
        messages, changes = conn.execute(query, (*ROW_MESSAGES, slot, work["publication"])).fetchone()
        seconds = time.monotonic() - started
    return {"seconds": seconds, "changes": changes, "messages": messages}


def run_build(work: dict[str, Any], tree: Path, slot: str, folder: Path, *, profile: Path | None = None,
              py_spy: Path | None = None, digest: bool = False) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"tree": str(tree), "dsn": work["dsn"], "slot": slot, "publication": work["publication"],
            "mappings": str(MAPPINGS_FILE), "changes": work["changes"], "scratch": str(folder),
            "spill_changes": SPILL_CHANGES, "profile": str(profile) if profile else None, "digest": digest}
    (folder / "spec.json").write_text(json.dumps(spec))
    command = [sys.executable, str(CHILD), str(folder / "spec.json"), str(folder / "result.json")]
    if py_spy is not None:
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
        command = [spy, "record", "--nonblocking", "--threads", "--rate", "200", "--format", "raw",
                   "-o", str(py_spy), "--", *command]
    with (folder / "output.log").open("w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=CHILD_TIMEOUT_S, check=False,
                              env={**os.environ, "PYTHONPATH": ""})
    result_file = folder / "result.json"
    if done.returncode != 0 or not result_file.exists():
        tail = (folder / "output.log").read_text(errors="replace")[-4000:]
        raise RuntimeError(f"build {tree} failed (exit {done.returncode}); the end of {folder}/output.log:\n{tail}")
    result = json.loads(result_file.read_text())
    expected = (tree.resolve() / "bridge")
    if Path(result["bridge"]) != expected:
        raise RuntimeError(f"the child imported bridge from {result['bridge']}, not {expected}")
    if result["changes"] != work["changes"]:
        raise RuntimeError(f"build {tree} handed out {result['changes']} of {work['changes']} row changes")
    return result


def parse_builds(values: list[str] | None) -> list[tuple[str, Path]]:
    builds = []
    for value in values or ["current=."]:
        label, sep, tree = value.partition("=")
        if not sep:
            label, tree = (value, ".") if value == "current" else (Path(value).name, value)
        path = (REPO / tree).resolve() if not Path(tree).is_absolute() else Path(tree)
        if not (path / "bridge" / "sources" / "pgoutput" / "source.py").exists():
            raise SystemExit(f"--build {value}: {path} holds no bridge package")
        builds.append((label, path))
    return builds


def reuse(admin_dsn: str, database: str) -> dict[str, Any]:
    """A workload a --keep-workload run left behind (its database, publication and origin slot)."""
    suffix = database.removeprefix("pgsource_")
    dsn = database_dsn(admin_dsn, database)
    work = {"database": database, "dsn": dsn, "publication": f"bench_src_{suffix}", "origin": f"bench_src_{suffix}",
            "transactions": 0}
    if not sql(dsn, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (work["origin"],)):
        raise SystemExit(f"--workload {database}: no origin slot {work['origin']} (was it kept with --keep-workload?)")
    return work


def bench(admin_dsn: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    builds = parse_builds(args.build)
    work = reuse(admin_dsn, args.workload) if args.workload else prepare(admin_dsn, args.changes)
    try:
        count = server(work, copy_slot(work, f"{work['origin']}_count"))
        drop_slot(work, f"{work['origin']}_count")
        work["changes"] = count["changes"]
        work.setdefault("simulated_changes", count["changes"])  # (a reused workload: counted by the server only)
        if work["changes"] != work["simulated_changes"]:
            raise RuntimeError(f"the slot decodes {work['changes']} row changes, the simulator reports "
                               f"{work['simulated_changes']}")
        runs: dict[str, list[dict[str, Any]]] = {"server": [], **{label: [] for label, _ in builds}}
        for run in range(args.runs):
            order = builds if run % 2 == 0 else builds[::-1]
            slot = copy_slot(work, f"{work['origin']}_r{run}_server")
            try:
                runs["server"].append(server(work, slot))
            finally:
                drop_slot(work, slot)
            for label, tree in order:
                slot = copy_slot(work, f"{work['origin']}_r{run}_{label}")
                try:
                    runs[label].append(run_build(work, tree, slot, scratch / slot))
                finally:
                    drop_slot(work, slot)
            line = "  ".join(f"{kind} {work['changes'] / results[-1]['seconds']:9.0f}/s"
                             for kind, results in runs.items())
            print(f"run {run + 1}: {line}  (load {os.getloadavg()[0]:.1f})", flush=True)
        digests = {}
        if args.check_identical:  # untimed: every build must hand out exactly the same transactions and changes
            for label, tree in builds:
                slot = copy_slot(work, f"{work['origin']}_digest_{label}")
                try:
                    digests[label] = run_build(work, tree, slot, scratch / slot, digest=True)["digest"]
                finally:
                    drop_slot(work, slot)
                print(f"{label}: digest of every change handed out {digests[label]}", flush=True)
            if len(set(digests.values())) != 1:
                raise RuntimeError(f"the builds handed out different changes: {digests}")
        profiles = {}
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for how in [h for h, wanted in (("cprofile", args.profile), ("py-spy", args.py_spy)) if wanted]:
            for label, tree in builds:
                slot = copy_slot(work, f"{work['origin']}_{how.replace('-', '')}_{label}")
                suffix = "prof" if how == "cprofile" else "py-spy.txt"
                output = args.results / f"pgoutput_source-{args.changes}-{label}-{stamp}.{suffix}"
                try:
                    result = run_build(work, tree, slot, scratch / slot, profile=output if how == "cprofile" else None,
                                       py_spy=output if how == "py-spy" else None)
                finally:
                    drop_slot(work, slot)
                profiles[f"{label}-{how}"] = {"profile": str(output.relative_to(REPO)),
                                              "seconds": round(result["seconds"], 2)}
                print(f"{label} under {how}: {result['seconds']:.1f} s, profile {output}", flush=True)
        return {"workload": {"row_changes": work["changes"], "transactions": work["transactions"],
                             "messages": count["messages"]},
                "builds": {label: str(tree) for label, tree in builds},
                "summary": summarize(runs, work["changes"], builds) if args.runs else {}, "digests": digests,
                "profiles": profiles, "runs": runs}
    finally:
        if args.keep_workload:
            print(f"workload kept: --state {args.state} --workload {work['database']}", flush=True)
        else:
            drop_database(admin_dsn, work["database"])


def summarize(runs: dict[str, list[dict[str, Any]]], changes: int, builds: list[tuple[str, Path]]) -> dict[str, Any]:
    rate = {kind: changes / statistics.median(r["seconds"] for r in results) for kind, results in runs.items()}
    summary: dict[str, Any] = {kind: {"changes_per_s": round(value),
                                      "per_run": [round(changes / r["seconds"]) for r in runs[kind]]}
                               for kind, value in rate.items()}
    first = builds[0][0]
    for label, _ in builds:
        summary[label]["ratio_to_server"] = round(rate[label] / rate["server"], 4)
        summary[label]["peak_rss_mb"] = round(max(r["max_rss_mb"] for r in runs[label]), 1)
        if label != first:
            summary[label][f"ratio_to_{first}"] = round(rate[label] / rate[first], 3)
            per_run = [a["seconds"] / b["seconds"] for a, b in zip(runs[first], runs[label], strict=True)]
            summary[label][f"ratio_to_{first}_per_run"] = [round(r, 3) for r in per_run]
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=100_000, help="row changes in the WAL")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of the server and of every build")
    parser.add_argument("--build", action="append", metavar="LABEL=TREE",
                        help="a folder holding the bridge package to measure (repeatable; default current=.)")
    parser.add_argument("--check-identical", action="store_true",
                        help="one extra untimed run per build digesting every change it hands out; they must agree")
    parser.add_argument("--profile", action="store_true", help="one extra cProfile'd run per build")
    parser.add_argument("--py-spy", action="store_true", help="one extra run per build under py-spy record")
    parser.add_argument("--state", type=Path, help="use the running stack's postgres under this state dir")
    parser.add_argument("--keep-workload", action="store_true", help="with --state: keep the database and its slot")
    parser.add_argument("--workload", help="with --state: drain the database a --keep-workload run left (no simulator)")
    args = parser.parse_args()
    args.results = REPO / "bench" / "results"
    args.results.mkdir(exist_ok=True)
    if (args.keep_workload or args.workload) and args.state is None:
        parser.error("--keep-workload and --workload need --state (a stack this run does not remove)")
    own_stack = args.state is None
    state = args.state.resolve() if args.state else REPO / ".state" / f"bench-pgsource-{uuid.uuid4().hex[:6]}"
    scratch = state / f"pgsource-bench-{uuid.uuid4().hex[:6]}"
    if own_stack:
        state.mkdir(parents=True)
        run_stack(state, "up", "postgres")
    output: dict[str, Any] = {"command": sys.argv[1:], "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        facts = json.loads((state / "stack.json").read_text())
        output["result"] = bench(facts["postgres"]["admin_dsn"], args, scratch)
        print(json.dumps(output["result"]["summary"], indent=2), flush=True)
    finally:
        output["loadavg_after"] = os.getloadavg()
        finish(args.results, "pgoutput_source", output, state, scratch, own_stack=own_stack)
    return 0


if __name__ == "__main__":
    sys.exit(main())
