"""Benchmark: encoding event payloads (events.encode_data) against the encoding it replaced, in process.

    .venv/bin/python bench/encode_data.py [--rounds 7] [--number 20000]

The payloads are the restaurant's own: every event the golden cases of mappings/restaurant.tests translate
to (customers with jsonb preferences, menu items with tags and prices, orders with lines and totals). Each
is encoded by the shipped encode_data (the C encoder in one pass, a default hook for Decimal, datetime,
...) and by the reference, the encoding events were published with before: json.dumps(to_json_value(data)),
which first walks every value in Python. Both must give the same bytes (checked first). Reported: median
over rounds of the time per payload, and the ratio reference/shipped.
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

from bridge.events import encode_data, to_json_value  # noqa: E402
from bridge.mapping.golden import load_case_file  # noqa: E402
from bridge.mapping.loader import load_mappings  # noqa: E402
from bridge.mapping.translate import translate  # noqa: E402


def reference(data: object) -> bytes:
    return json.dumps(to_json_value(data, "data"), separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=200, help="passes over all payloads per round")
    args = parser.parse_args()
    mappings = load_mappings([REPO / "mappings" / "restaurant.yaml"])
    payloads = []
    for case_file in sorted((REPO / "mappings" / "restaurant.tests").glob("*.yaml")):
        for case in load_case_file(case_file):
            for tx in case.transactions:
                payloads += [event.data for event in translate(tx, mappings, source_id="bench").events]
    assert all(encode_data(p) == reference(p) for p in payloads), "the two encodings differ"

    def encode_all(encode) -> None:  # type: ignore[no-untyped-def]
        for payload in payloads:
            encode(payload)

    times: dict[str, list[float]] = {"reference": [], "shipped": []}
    for round_ in range(args.rounds):
        for name in ("reference", "shipped") if round_ % 2 == 0 else ("shipped", "reference"):
            encode = reference if name == "reference" else encode_data
            seconds = timeit.timeit(lambda: encode_all(encode), number=args.number)
            times[name].append(seconds / (args.number * len(payloads)) * 1e6)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{len(payloads)} payloads of the golden cases, median of {args.rounds} rounds x {args.number} passes:")
    for name, us in median.items():
        print(f"  {name:<10} {us:6.2f} us per payload   (rounds: {', '.join(f'{t:.2f}' for t in times[name])})")
    print(f"  reference/shipped: {median['reference'] / median['shipped']:.2f}x faster, "
          f"{median['reference'] - median['shipped']:.2f} us saved per event")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
