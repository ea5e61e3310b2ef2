"""Benchmark: translate() alone, this build against a base build, in child processes, alternating.

    mkdir -p .state/ab-base && git archive main bridge | tar -x -C .state/ab-base
    .venv/bin/python bench/translate.py [--base .state/ab-base] [--rounds 21] [--passes 40] [--profile]

The change stream is the golden cases of mappings/restaurant.tests (every table and op of the restaurant,
inserts, checkouts with collects, updates ignored as touches, deletes, snapshot reads, dead letters), decoded
once per child before timing. One child per build (bench/_translate_child.py --serve) loads and warms up, then
the rounds alternate between the two, the order swapped every round, so that load from other work falls on
both alike: in a round a child times only its translate() calls (process CPU time) over --passes passes of
every case and reports the median us per change. Reported: each build's median over the
rounds (and its fastest round, the least disturbed), and base/current of both and of each round. Both builds must translate to the same events and dead letters (a digest of ids,
types and payloads), or the benchmark stops.

Then the expression lever alone, in one process of this build (bench/_translate_child.py --closures): the
same mappings loaded twice, once with the closure compiler expressions had before (tests/support/closure_expr.py)
and once as shipped, 4 x --passes passes alternating; medians over 5 such processes.

--profile also runs this build's child under cProfile (5 x --passes passes) and prints where translate's time goes
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
LEVER_PROCESSES = 5


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
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--passes", type=int, default=40, help="passes over every golden case per round")
    parser.add_argument("--profile", action="store_true", help="also profile this build's translate()")
    args = parser.parse_args()
    if not (args.base / "bridge" / "mapping" / "translate.py").is_file():
        raise SystemExit(f"{args.base}: no bridge package; extract one with: mkdir -p {args.base} && "
                         f"git archive main bridge | tar -x -C {args.base}")
    builds = {"base": args.base.resolve(), "current": REPO}
    times: dict[str, list[float]] = {name: [] for name in builds}
    children = {name: subprocess.Popen([sys.executable, str(CHILD), str(tree), "1", "--serve"], cwd=REPO, text=True,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE) for name, tree in builds.items()}
    try:
        loaded = {name: json.loads(child.stdout.readline()) for name, child in children.items()}  # type: ignore[union-attr]
        if len({outcome["digest"] for outcome in loaded.values()}) > 1:
            raise SystemExit(f"the builds translate differently: {loaded}")
        first = loaded["current"]
        for round_ in range(args.rounds):
            for name in list(builds) if round_ % 2 == 0 else list(reversed(builds)):
                child = children[name]
                child.stdin.write(f"{args.passes}\n")  # type: ignore[union-attr]
                child.stdin.flush()  # type: ignore[union-attr]
                times[name].append(json.loads(child.stdout.readline())["us_per_change"])  # type: ignore[union-attr]
    finally:
        for child in children.values():
            child.stdin.close()  # type: ignore[union-attr]
            child.wait()
    median = {name: statistics.median(values) for name, values in times.items()}
    fastest = {name: min(values) for name, values in times.items()}  # the round least disturbed by other work
    print(f"translate(): {first['cases']} golden cases, {first['changes']} changes, {first['events']} events; "
          f"median of {args.rounds} alternating rounds x {args.passes} passes (same events and dead letters in "
          "both builds)")
    for name, values in times.items():
        print(f"  {name:<8} {median[name]:7.2f} us per change, fastest round {fastest[name]:6.2f}   "
              f"(rounds: {', '.join(f'{t:.2f}' for t in values)})")
    # Each round's two figures were taken back to back: their ratio cancels most of the load of that moment.
    paired = statistics.median(b / c for b, c in zip(times["base"], times["current"]))
    print(f"  base/current: {median['base'] / median['current']:.2f}x (medians), "
          f"{fastest['base'] / fastest['current']:.2f}x (fastest rounds), {paired:.2f}x (median of the rounds' ratios)")
    lever: dict[str, list[float]] = {"closures": [], "generated": []}
    for _ in range(LEVER_PROCESSES):
        outcome = run_child(REPO, args.passes * 4, "--closures")
        lever["closures"].append(outcome["closures_us_per_change"])
        lever["generated"].append(outcome["us_per_change"])
    closures, generated = statistics.median(lever["closures"]), statistics.median(lever["generated"])
    print(f"expressions alone, this build, closures vs generated code in one process, passes alternating "
          f"(median of {LEVER_PROCESSES} processes x {args.passes * 4} passes each):")
    print(f"  closures  {closures:7.2f} us per change   (rounds: {', '.join(f'{t:.2f}' for t in lever['closures'])})")
    print(f"  generated {generated:7.2f} us per change   (rounds: {', '.join(f'{t:.2f}' for t in lever['generated'])})")
    print(f"  closures/generated: {closures / generated:.2f}x")
    if args.profile:
        results = REPO / "bench" / "results"
        results.mkdir(exist_ok=True)
        run_child(REPO, args.passes * 5, "--profile", str(results / "translate.prof"))
        subprocess.run([sys.executable, str(REPO / "bench" / "_profile_summary.py"), "--top", "30",
                        str(results / "translate.prof")], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
