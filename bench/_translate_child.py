"""translate() alone on the golden cases, for bench/translate.py: one build's bridge package, in a process of its own.

    python bench/_translate_child.py TREE PASSES [--profile FILE | --closures | --serve]

Imports `bridge` from TREE (a checkout, or a `git archive` of another commit), loads the restaurant mappings
and every golden case of mappings/restaurant.tests (the cases' changes decoded once, before timing), then runs
every case PASSES times as the golden runner does (its prior rows, then its transactions in order, each
translated and remembered), after one untimed pass. Only the translate() calls are timed, in process CPU
time (less sensitive to other work on the machine than wall time). Prints one JSON line: us_per_change
(median over passes), changes and events per pass, and a digest of every event (id, type, payload) and dead
letter, so that two builds can be shown to translate alike.

--serve: after loading (and printing that JSON line without timings), read a number of passes per line of
stdin and answer each with one JSON line {"us_per_change": median of those passes}, until stdin closes: the
parent alternates two such children round by round, both loaded and warm.

--closures (this build only): the expression lever alone, in this one process. The mappings are loaded a
second time with every expression compiled by the closure compiler it replaced (tests/support/closure_expr.py,
wrapped in the field guard as closures.guard did), and the passes alternate between the two loads; prints
us_per_change and closures_us_per_change (medians), after checking both translate alike.

--profile FILE: PASSES passes under cProfile, written to FILE, before the timed ones.
"""

from __future__ import annotations

import cProfile
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

MAPPINGS = Path(__file__).resolve().parents[1] / "mappings"


def main() -> None:
    tree, passes = sys.argv[1], int(sys.argv[2])
    profile_to = sys.argv[4] if len(sys.argv) > 4 and sys.argv[3] == "--profile" else None
    closures = sys.argv[3:4] == ["--closures"]
    serve = sys.argv[3:4] == ["--serve"]
    sys.path.insert(0, tree)
    import bridge
    assert Path(bridge.__file__).resolve().is_relative_to(Path(tree).resolve()), bridge.__file__
    from bridge.mapping.golden import discover_case_files, load_case_file
    from bridge.mapping.prior_rows import InMemoryPriorRows
    from bridge.mapping.translate import translate

    cache: dict = {}
    cases = [case for f in discover_case_files([MAPPINGS]) for case in load_case_file(f, cache)]
    changes = sum(len(tx.changes) for case in cases for tx in case.transactions)
    loads = {"generated": cache, "closures": closure_mappings(cache) if closures else {}}

    def one_pass(digest: hashlib._Hash | None, load: str = "generated") -> tuple[float, int]:
        spent, events = 0.0, 0
        clock = time.process_time  # CPU time of this process: other work on the machine weighs less on it
        for case in cases:
            mappings = loads[load][case.mapping]
            prior = None
            if case.prior_rows is not None:
                prior = InMemoryPriorRows()
                for schema, table, key, row in case.prior_rows:
                    prior.put(schema, table, key, row)
            for tx in case.transactions:
                started = clock()
                result = translate(tx, mappings, source_id=case.source_id, prior_rows=prior)
                spent += clock() - started
                events += len(result.events)
                if digest is not None:
                    for event in result.events:
                        digest.update(f"{event.id} {event.type} {event.aggregate_id} {event.data!r}\n".encode())
                    for letter in result.dead_letters:
                        digest.update(f"{letter.rule_id} {letter.error}\n".encode())
                if any(d.on_error == "stop" for d in result.dead_letters):
                    break
                if prior is not None:
                    prior.remember_transaction(tx)
        return spent, events

    digest = hashlib.sha256()
    _, events = one_pass(digest)  # untimed: warms up, and says what this build translates to
    if profile_to is not None:
        profiler = cProfile.Profile()
        profiler.runcall(lambda: [one_pass(None) for _ in range(passes)])
        profiler.dump_stats(profile_to)
    outcome = {"changes": changes, "events": events, "digest": digest.hexdigest(), "cases": len(cases)}
    if serve:
        print(json.dumps(outcome), flush=True)
        for line in sys.stdin:
            times = [one_pass(None)[0] for _ in range(int(line))]
            print(json.dumps({"us_per_change": statistics.median(times) / changes * 1e6}), flush=True)
        return
    if closures:
        other = hashlib.sha256()
        one_pass(other, "closures")
        assert other.hexdigest() == outcome["digest"], "closures and generated code translate differently"
        times = {"generated": [], "closures": []}
        for i in range(passes):
            for load in ("generated", "closures") if i % 2 == 0 else ("closures", "generated"):
                times[load].append(one_pass(None, load)[0])
        outcome["closures_us_per_change"] = statistics.median(times["closures"]) / changes * 1e6
    else:
        times = {"generated": [one_pass(None)[0] for _ in range(passes)]}
    outcome["us_per_change"] = statistics.median(times["generated"]) / changes * 1e6
    print(json.dumps(outcome))


def closure_mappings(cache: dict) -> dict:
    """The same mapping files loaded again, every expression compiled by the old closure compiler."""
    import bridge.mapping.compile as rule_compiler
    from bridge.mapping.codegen import CAUGHT
    from bridge.mapping.expr import Expression, UnknownValue
    from bridge.mapping.loader import load_mappings
    from tests.support.closure_expr import compile_with_closures

    shipped = rule_compiler.compile_expression

    def with_closures(text, names, guard=None):  # type: ignore[no-untyped-def]
        checked = shipped(text, names)  # the same refusals, names and columns
        evaluate = compile_with_closures(text, names)
        if guard is None:
            return Expression(checked.text, evaluate, checked.names, checked.columns)
        check, fail, unknown = guard.check, guard.fail, guard.unknown

        def guarded(scope):  # type: ignore[no-untyped-def]  # closures.guard as it was
            try:
                value = evaluate(scope)
                return value if check is None else check(value)
            except UnknownValue as exc:
                if unknown is not None:
                    return unknown
                raise fail(exc) from None
            except CAUGHT as exc:
                raise fail(exc) from None
        return Expression(checked.text, guarded, checked.names, checked.columns)

    rule_compiler.compile_expression = with_closures
    try:
        return {mapping: load_mappings([mapping]) for mapping in cache}
    finally:
        rule_compiler.compile_expression = shipped


if __name__ == "__main__":
    main()
