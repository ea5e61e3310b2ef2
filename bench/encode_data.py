"""Benchmark: encoding events (payloads, event times) against the encodings they replaced, in process.

    .venv/bin/python bench/encode_data.py [--rounds 7] [--number 20000]

The payloads are the restaurant's own: every event the golden cases of mappings/restaurant.tests translate
to (customers with jsonb preferences, menu items with tags and prices, orders with lines and totals). Each
is encoded by the shipped encode_data (the C encoder in one pass, a default hook for Decimal, datetime,
...) and by the reference, the encoding events were published with before: json.dumps(to_json_value(data)),
which first walks every value in Python. Both must give the same bytes (checked first). The same for
events.format_time (every event's ce_time, every timestamp in a payload) against strftime, which it
replaced. Reported: median over rounds of the time per payload or time, and the ratio reference/shipped.
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


def ab(name: str, items: list, reference_fn, shipped_fn, rounds: int, number: int) -> None:  # type: ignore[no-untyped-def]
    """Time both over `items`, interleaved, and print medians and the ratio."""
    assert all(reference_fn(item) == shipped_fn(item) for item in items), f"{name}: the two differ"
    times: dict[str, list[float]] = {"reference": [], "shipped": []}
    for round_ in range(rounds):
        for which in ("reference", "shipped") if round_ % 2 == 0 else ("shipped", "reference"):
            fn = reference_fn if which == "reference" else shipped_fn
            seconds = timeit.timeit(lambda: [fn(item) for item in items], number=number)
            times[which].append(seconds / (number * len(items)) * 1e6)
    median = {which: statistics.median(values) for which, values in times.items()}
    print(f"{name}: {len(items)} of the golden cases, median of {rounds} rounds x {number} passes:")
    for which, us in median.items():
        print(f"  {which:<10} {us:6.2f} us each   (rounds: {', '.join(f'{t:.2f}' for t in times[which])})")
    print(f"  reference/shipped: {median['reference'] / median['shipped']:.2f}x faster, "
          f"{median['reference'] - median['shipped']:.2f} us saved each")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=200, help="passes over all items per round")
    args = parser.parse_args()
    mappings = load_mappings([REPO / "mappings" / "restaurant.yaml"])
    events = []
    for case_file in sorted((REPO / "mappings" / "restaurant.tests").glob("*.yaml")):
        for case in load_case_file(case_file):
            for tx in case.transactions:
                events += translate(tx, mappings, source_id="bench").events
    ab("payloads", [e.data for e in events], reference, encode_data, args.rounds, args.number)
    ab("event times", [e.time for e in events], strftime_time, format_time, args.rounds, args.number)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
