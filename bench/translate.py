"""Benchmark: translate() alone, this build against a base build, in child processes, alternating.

    mkdir -p .state/ab-base && git archive main bridge | tar -x -C .state/ab-base
    .venv/bin/python bench/translate.py [--base .state/ab-base] [--rounds 7] [--passes 200] [--profile]

The change stream is the golden cases of mappings/restaurant.tests (every table and op of the restaurant,
inserts, checkouts with collects, updates ignored as touches, deletes, snapshot reads, dead letters), decoded
once per child before timing. Each round runs bench/_translate_child.py once per build, the order alternating
between rounds, so that load from other work falls on both; a child times only its translate() calls over
--passes passes of every case and reports the median us per change. Reported: each build's median over the
rounds (and its fastest round, the least disturbed), and base/current of both. Both builds must translate to the same events and dead letters (a digest of ids,
types and payloads), or the benchmark stops.

Then the expression lever alone, in one process of this build (bench/_translate_child.py --closures): the
same mappings loaded twice, once with the closure compiler expressions had before (tests/support/closure_expr.py)
and once as shipped, passes alternating; medians over --rounds such processes.

--profile also runs this build's child under cProfile and prints where translate's time goes
(bench/_profile_summary.py of the profile, written to bench/results/translate.prof).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHILD = REPO / "bench" / "_translate_child.py"


def run_child(tree: Path, passes: int, *extra: str) -> dict:
    done = subprocess.run([sys.executable, str(CHILD), str(tree), str(passes), *extra], capture_output=True,
                          text=True, cwd=REPO, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the child for {tree} failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, default=REPO / ".state" / "ab-base",
                        help="a tree holding the base build's bridge package (git archive main bridge)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--passes", type=int, default=200, help="passes over every golden case per child")
    parser.add_argument("--profile", action="store_true", help="also profile this build's translate()")
    args = parser.parse_args()
    if not (args.base / "bridge" / "mapping" / "translate.py").is_file():
        raise SystemExit(f"{args.base}: no bridge package; extract one with: mkdir -p {args.base} && "
                         f"git archive main bridge | tar -x -C {args.base}")
    builds = {"base": args.base.resolve(), "current": REPO}
    times: dict[str, list[float]] = {name: [] for name in builds}
    digests: dict[str, str] = {}
    first: dict = {}
    for round_ in range(args.rounds):
        order = list(builds) if round_ % 2 == 0 else list(reversed(builds))
        for name in order:
            outcome = run_child(builds[name], args.passes)
            times[name].append(outcome["us_per_change"])
            digests[name], first = outcome["digest"], outcome
        if len(set(digests.values())) > 1:
            raise SystemExit(f"the builds translate differently: {digests}")
    median = {name: statistics.median(values) for name, values in times.items()}
    fastest = {name: min(values) for name, values in times.items()}  # the round least disturbed by other work
    print(f"translate(): {first['cases']} golden cases, {first['changes']} changes, {first['events']} events; "
          f"median of {args.rounds} rounds x {args.passes} passes (same events and dead letters in both builds)")
    for name, values in times.items():
        print(f"  {name:<8} {median[name]:7.2f} us per change, fastest round {fastest[name]:6.2f}   "
              f"(rounds: {', '.join(f'{t:.2f}' for t in values)})")
    print(f"  base/current: {median['base'] / median['current']:.2f}x (medians), "
          f"{fastest['base'] / fastest['current']:.2f}x (fastest rounds)")
    lever: dict[str, list[float]] = {"closures": [], "generated": []}
    for _ in range(args.rounds):
        outcome = run_child(REPO, args.passes, "--closures")
        lever["closures"].append(outcome["closures_us_per_change"])
        lever["generated"].append(outcome["us_per_change"])
    closures, generated = statistics.median(lever["closures"]), statistics.median(lever["generated"])
    print(f"expressions alone, this build, closures vs generated code in one process (median of {args.rounds}):")
    print(f"  closures  {closures:7.2f} us per change   (rounds: {', '.join(f'{t:.2f}' for t in lever['closures'])})")
    print(f"  generated {generated:7.2f} us per change   (rounds: {', '.join(f'{t:.2f}' for t in lever['generated'])})")
    print(f"  closures/generated: {closures / generated:.2f}x")
    if args.profile:
        results = REPO / "bench" / "results"
        results.mkdir(exist_ok=True)
        run_child(REPO, args.passes, "--profile", str(results / "translate.prof"))
        subprocess.run([sys.executable, str(REPO / "bench" / "_profile_summary.py"), "--top", "30",
                        str(results / "translate.prof")], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
