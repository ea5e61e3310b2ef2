"""Benchmark: what the run-time contract check costs translate(), in process, no services.

    .venv/bin/python bench/contract_checks.py                     # translate on/off + each checker alone
    .venv/bin/python bench/contract_checks.py --profile           # + cProfile of translate with contracts

The same synthetic restaurant transactions (a customer signing up with an address, a menu item, an order
line: 4 changes, 4 events each) are translated with mappings/restaurant.yaml (contracts on: every event
checked by a strict, closed TypedDict of the contract's fields), with a copy of it in a folder without
contracts/ (off), and with every check swapped for the contract's pydantic model (model: the check as
first shipped, which builds a model instance per event and throws it away), interleaved, best of
--rounds each. Then each event type's checker is timed alone on a valid payload, against the model
validating the same payload. Complements
pgoutput_bridge.py --contracts-ab, which measures the whole bridge; this one isolates translate().
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import sys
import tempfile
import time
import timeit
from dataclasses import replace
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bridge.changes import Op, RowChange, SourcePosition, Transaction  # noqa: E402
from bridge.contracts.registry import load_contracts  # noqa: E402
from bridge.mapping.compiled import CompiledMappings  # noqa: E402
from bridge.mapping.loader import load_mappings  # noqa: E402
from bridge.mapping.translate import translate  # noqa: E402

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
PAYLOADS: dict[str, dict[str, Any]] = {
    "restaurant.customer.CustomerSignedUp.v1": {"customerId": 1, "email": "a@example.com", "fullName": "A B",
                                                "phone": None, "preferences": {"newsletter": True}},
    "restaurant.customer.AddressAdded.v1": {"customerId": 1, "addressId": 1, "label": "home", "street": "1 Main St",
                                            "city": "Springfield", "postalCode": "12345", "country": "US",
                                            "isDefault": True},
    "restaurant.menu_item.MenuItemAdded.v1": {"menuItemId": 1, "name": "Soup", "description": "Hot",
                                              "price": Decimal("4.50"), "category": "mains", "tags": ["vegan"]},
    "restaurant.order.ItemAddedToOrder.v1": {"orderId": 1, "orderItemId": 2, "menuItemId": 3,
                                             "price": Decimal("4.50"), "quantity": 2},
}


def _change(lsn: int, table: str, row: dict[str, Any]) -> RowChange:
    return RowChange(Op("c"), "public", table, {"id": row["id"]}, None, row, SourcePosition(lsn, lsn), T0, lsn)


def workload(count: int) -> list[Transaction]:
    transactions = []
    for i in range(count):
        lsn = 1000 + i * 10
        transactions.append(Transaction(i, lsn + 5, T0, (
            _change(lsn, "customers", {"id": i, "email": f"{i}@example.com", "full_name": "A B",
                                       "phone": None if i % 3 else "+1 555 0100", "preferences": {"newsletter": True},
                                       "created_at": T0, "updated_on": None, "is_deleted": False}),
            _change(lsn + 1, "customer_addresses", {"id": i, "customer_id": i, "label": "home", "street": "1 Main St",
                                                    "city": "Springfield", "postal_code": "12345", "country": "US",
                                                    "is_default": True, "created_at": T0}),
            _change(lsn + 2, "menu_items", {"id": i, "name": "Soup", "description": "Hot", "price": Decimal("4.50"),
                                            "category": "mains", "tags": ["vegan"], "is_available": True,
                                            "created_at": T0, "updated_on": None}),
            _change(lsn + 3, "order_items", {"id": i, "order_id": i, "menu_item_id": i, "quantity": 2,
                                             "unit_price": Decimal("4.50"), "created_at": T0}))))
    return transactions


def _model_validator(major: Any) -> Any:
    """The check as first shipped: the contract's model validates the payload and builds an instance (thrown
    away). The shipped check validates a TypedDict of the same strict, closed fields (models.build_checked_dict)."""
    return major.model().__pydantic_validator__.validate_python


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        shutil.copy(REPO / "mappings" / "restaurant.yaml", Path(scratch) / "restaurant.yaml")
        on = load_mappings([REPO / "mappings" / "restaurant.yaml"])
        off = load_mappings([Path(scratch) / "restaurant.yaml"])
    assert all(e.check for r in on.rules for e in r.emits) and not any(e.check for r in off.rules for e in r.emits)
    registry = load_contracts(REPO / "mappings" / "contracts")
    model = CompiledMappings(
        [replace(r, emits=tuple(replace(e, check=_model_validator(registry.major(e.type))) for e in r.emits))
         for r in on.rules], files=on.files, declared_types=on._declared, keys=on.keys, schemas=on.schemas)
    variants = {"on": on, "off": off, "model": model}
    work = workload(args.transactions)
    changes = sum(len(tx.changes) for tx in work)

    def translate_all(mappings: Any) -> int:
        return sum(len(translate(tx, mappings, source_id="bench").events) for tx in work)

    best: dict[str, float] = {}
    events = {name: translate_all(m) for name, m in variants.items()}  # warm-up, and equal outputs
    assert set(events.values()) == {changes}, events
    for round_ in range(args.rounds):
        for name in list(variants) if round_ % 2 == 0 else list(reversed(variants)):
            started = time.perf_counter()
            translate_all(variants[name])
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - started)
    print(f"translate, {changes} changes ({changes} events), best of {args.rounds}:")
    for name in variants:
        print(f"  contracts {name:<9} {best[name]:6.3f} s  {best[name] / changes * 1e6:6.1f} us/change  "
              f"{changes / best[name]:8.0f} changes/s")
    for name in ("on", "model"):
        print(f"  {name}/off throughput {best['off'] / best[name]:.3f}: the check adds "
              f"{(best[name] - best['off']) / changes * 1e6:.1f} us per event")

    print("each checker alone on a valid payload (best of 3 x 50,000), vs the model validating it:")
    for event_type, payload in PAYLOADS.items():
        major = registry.major(event_type)
        assert major is not None
        check, typed = major.checker, _model_validator(major)
        check(payload)
        typed(payload)
        model_us = min(timeit.repeat(lambda: check(payload), number=50_000, repeat=3)) / 50_000 * 1e6
        typed_us = min(timeit.repeat(lambda: typed(payload), number=50_000, repeat=3)) / 50_000 * 1e6
        print(f"  {event_type:<42} {model_us:5.2f} us (model {typed_us:5.2f} us)")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        translate_all(on)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
