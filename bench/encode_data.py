"""Benchmark: encoding events (payloads, event times) against the encodings they replaced, in process.

    .venv/bin/python bench/encode_data.py [--rounds 7] [--number 20000]

The payloads are the restaurant's own: every event the golden cases of mappings/restaurant.tests translate
to (customers with jsonb preferences, menu items with tags and prices, orders with lines and totals). Each
is encoded by the shipped encode_data (the C encoder in one pass, a default hook for Decimal, datetime,
...) and by the reference, the encoding events were published with before: json.dumps(to_json_value(data)),
which first walks every value in Python. Both must give the same bytes (checked first). The same for
events.format_time (every event's ce_time, every timestamp in a payload) against strftime, which it
replaced. Reported: median over rounds of the time per payload or time, and the ratio reference/shipped.

    .venv/bin/pip install --target .state/orjson orjson && .venv/bin/python bench/encode_data.py --orjson .state/orjson

--orjson DIR also times orjson (imported from DIR, not a dependency) against the shipped encode_data, in the
only form that could ship: orjson writes floats in exponent form differently (1e-07 is "1e-7") and NaN as
null, so a payload holding a float anywhere must take the stdlib path, and finding out needs a walk.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datetime import datetime, timezone  # noqa: E402

from bridge.events import encode_data, format_time, to_json_value  # noqa: E402
from bridge.mapping.golden import load_case_file  # noqa: E402
from bridge.mapping.loader import load_mappings  # noqa: E402
from bridge.mapping.translate import translate  # noqa: E402


def reference(data: object) -> bytes:
    return json.dumps(to_json_value(data, "data"), separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def strftime_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ab(name: str, items: list, reference_fn, shipped_fn, rounds: int, number: int,  # type: ignore[no-untyped-def]
       labels: tuple[str, str] = ("reference", "shipped")) -> None:
    """Time both over `items`, interleaved, and print medians and the ratio."""
    assert all(reference_fn(item) == shipped_fn(item) for item in items), f"{name}: the two differ"
    first, second = labels
    times: dict[str, list[float]] = {first: [], second: []}
    for round_ in range(rounds):
        for which in (first, second) if round_ % 2 == 0 else (second, first):
            fn = reference_fn if which == first else shipped_fn
            seconds = timeit.timeit(lambda: [fn(item) for item in items], number=number)
            times[which].append(seconds / (number * len(items)) * 1e6)
    median = {which: statistics.median(values) for which, values in times.items()}
    print(f"{name}: {len(items)} of the golden cases, median of {rounds} rounds x {number} passes:")
    for which, us in median.items():
        print(f"  {which:<10} {us:6.2f} us each   (rounds: {', '.join(f'{t:.2f}' for t in times[which])})")
    print(f"  {first}/{second}: {median[first] / median[second]:.2f}x faster, "
          f"{median[first] - median[second]:.2f} us saved each")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=200, help="passes over all items per round")
    parser.add_argument("--orjson", type=Path, help="a folder orjson is installed in (pip install --target)")
    args = parser.parse_args()
    mappings = load_mappings([REPO / "mappings" / "restaurant.yaml"])
    events = []
    for case_file in sorted((REPO / "mappings" / "restaurant.tests").glob("*.yaml")):
        for case in load_case_file(case_file):
            for tx in case.transactions:
                events += translate(tx, mappings, source_id="bench").events
    ab("payloads", [e.data for e in events], reference, encode_data, args.rounds, args.number)
    ab("event times", [e.time for e in events], strftime_time, format_time, args.rounds, args.number)
    if args.orjson is not None:
        ab("payloads, shipped encode_data vs orjson with its float guard", [e.data for e in events], encode_data,
           orjson_encoder(args.orjson), args.rounds, args.number, labels=("stdlib", "orjson"))
    return 0


def orjson_encoder(folder: Path):  # type: ignore[no-untyped-def]
    """encode_data through orjson, exact only because payloads holding a float go the stdlib way."""
    sys.path.insert(0, str(folder))
    import orjson

    from bridge.events import _json_default
    options = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATACLASS
    assert orjson.dumps(1e-07) != json.dumps(1e-07).encode()  # why the guard is needed

    def has_float(value: object) -> bool:
        kind = type(value)
        if kind is float:
            return True
        if kind is dict:
            return any(has_float(item) for item in value.values())  # type: ignore[attr-defined]
        if kind is list or kind is tuple:
            return any(has_float(item) for item in value)  # type: ignore[attr-defined]
        return False

    def encode(data: dict) -> bytes:  # type: ignore[type-arg]
        if has_float(data):
            return encode_data(data)
        try:
            return orjson.dumps(data, default=_json_default, option=options)
        except (TypeError, ValueError):  # ints beyond 64 bits, lone surrogates, deep nesting: the stdlib way
            return encode_data(data)

    return encode


if __name__ == "__main__":
    raise SystemExit(main())
