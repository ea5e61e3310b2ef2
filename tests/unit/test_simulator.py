"""The simulator's pure half: the seeded plan and the report. No database.

The invariant checks replay a plan against a deliberately separate, naive model of the legacy data (sets and
dicts written here, not legacy_db.model), so a bug in the planner's bookkeeping cannot hide itself.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest

from legacy_db import actions as a
from legacy_db.model import IndexedSet, World
from legacy_db.planner import Planner, plan
from legacy_db.report import SimulationReport, TransactionRecord

STEPS = 2000


@pytest.fixture(scope="module")
def plan_42() -> list[a.Action]:
    return plan(42, STEPS)


def test_same_seed_gives_the_same_plan(plan_42: list[a.Action]) -> None:
    assert plan(42, STEPS) == plan_42
    # and the values are really equal, not just equal-comparing: same text of every action
    assert [repr(x) for x in plan(42, 300)] == [repr(x) for x in plan_42[:300]]


def test_different_seed_gives_a_different_plan(plan_42: list[a.Action]) -> None:
    other = plan(43, STEPS)
    assert other != plan_42
    assert other[0] != plan_42[0]  # even the bootstrap data differs


def test_the_plan_does_not_depend_on_global_random_state() -> None:
    random.seed(1)
    first = plan(7, 200)
    random.seed(2)
    assert plan(7, 200) == first


def test_the_plan_does_not_depend_on_hash_randomisation() -> None:
    """Iterating a set of strings would make the plan differ between processes: run it in two."""
    program = (
        "import hashlib; from legacy_db.planner import plan; "
        "print(hashlib.sha256(repr(plan(42, 3000)).encode()).hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", program],
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            cwd=Path(__file__).resolve().parents[2],  # the repository root, where legacy_db is importable
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        for hash_seed in ("0", "1")
    }
    assert digests == {hashlib.sha256(repr(plan(42, 3000)).encode()).hexdigest()}


def test_namespace_only_salts_emails() -> None:
    plain, salted = plan(5, 400), plan(5, 400, namespace="r99")
    emails = [c.email for x in salted for c in _new_customers(x)]
    assert emails and all("+r99@" in e for e in emails)
    assert [repr(x).replace("+r99@", "@") for x in salted] == [repr(x) for x in plain]


def test_first_action_bootstraps_a_usable_world(plan_42: list[a.Action]) -> None:
    first = plan_42[0]
    assert isinstance(first, a.Bootstrap)
    assert len(first.menu_items) >= 3 and len(first.customers) >= 1
    assert not any(isinstance(x, a.Bootstrap) for x in plan_42[1:])


def test_every_action_kind_appears(plan_42: list[a.Action]) -> None:
    seen = Counter(x.kind for x in plan_42)
    assert set(seen) == set(a.ACTION_KINDS), f"missing: {set(a.ACTION_KINDS) - set(seen)}"


@pytest.mark.parametrize("seed", [42, 1, 2024])
def test_plan_invariants(seed: int) -> None:
    checker = _Checker()
    for step, action in enumerate(plan(seed, STEPS)):
        try:
            checker.check(action)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}, step {step}: {action!r}: {exc}") from exc
    # the run went somewhere: orders were placed both ways and lines were written
    assert checker.placed > 50 and checker.lines_written > 500


def test_prices_are_exact_two_place_decimals(plan_42: list[a.Action]) -> None:
    prices = [i.price for x in plan_42 for i in _new_menu_items(x)]
    prices += [x.price for x in plan_42 if isinstance(x, a.MenuItemRepriced)]
    prices += [line.unit_price for x in plan_42 for line in _new_lines(x)]
    assert prices
    for price in prices:
        assert type(price) is Decimal and price.as_tuple().exponent == -2 and price > 0


def test_some_descriptions_are_long_enough_to_be_toasted(plan_42: list[a.Action]) -> None:
    lengths = [len((i.description or "").encode()) for x in plan_42 for i in _new_menu_items(x)]
    assert any(3 * 1024 <= n <= 6 * 1024 for n in lengths)
    assert any(n < 1024 for n in lengths)


def test_emails_are_unique_within_a_plan(plan_42: list[a.Action]) -> None:
    emails = [c.email for x in plan_42 for c in _new_customers(x)]
    assert len(emails) == len(set(emails))


def test_world_rejects_an_action_that_does_not_fit() -> None:
    world = World()
    world.apply(Planner(3).next_action())  # bootstrap
    world.apply(a.OrderOpened(order=0, customer=0, notes=None))
    with pytest.raises(ValueError, match="no lines"):
        world.apply(a.OrderPlaced(order=0))
    with pytest.raises(ValueError, match="not an open order"):
        line = a.NewOrderLine(handle=0, order=1, menu_item=0, quantity=1, unit_price=Decimal("1.00"))
        world.apply(a.OrderItemAdded(line))


def test_indexed_set_keeps_a_deterministic_order() -> None:
    s = IndexedSet()
    for i in range(5):
        s.add(i)
    s.discard(1)
    s.discard(42)  # absent: no error
    s.add(3)  # present: no duplicate
    assert list(s) == [0, 4, 2, 3] and len(s) == 4 and 1 not in s
    assert {s.choice(random.Random(n)) for n in range(50)} == {0, 2, 3, 4}


def test_report_json_round_trip() -> None:
    report = SimulationReport(seed=42, namespace="r12", elapsed_s=1.25, stop_reason="count")
    checkout = Counter({("orders", "c"): 1, ("orders", "u"): 1, ("order_items", "c"): 3})
    report.record(TransactionRecord(901, "checkout", checkout))
    report.record(TransactionRecord(902, "order_deleted", Counter({("order_items", "d"): 3, ("orders", "d"): 1})))
    restored = SimulationReport.from_json(report.to_json())
    assert restored == report
    assert restored.row_changes[("order_items", "c")] == 3
    assert restored.net_rows() == {"orders": 0, "order_items": 0}
    assert restored.transactions[0].changes == checkout
    assert "checkout" in restored.summary()


def test_report_from_json_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a simulation report"):
        SimulationReport.from_json('{"seed": 1}')


# -- an independent referee ---------------------------------------------------------------------------


def _new_customers(x: a.Action) -> list[a.NewCustomer]:
    if isinstance(x, a.Bootstrap):
        return list(x.customers)
    return [x.customer] if isinstance(x, a.CustomerSignedUp) else []


def _new_menu_items(x: a.Action) -> list[a.NewMenuItem]:
    if isinstance(x, a.Bootstrap):
        return list(x.menu_items)
    return [x.item] if isinstance(x, a.MenuItemAdded) else []


def _new_lines(x: a.Action) -> list[a.NewOrderLine]:
    if isinstance(x, a.Checkout):
        return list(x.lines)
    return [x.line] if isinstance(x, a.OrderItemAdded) else []


@dataclass
class _Checker:
    customers: dict[int, bool] = field(default_factory=dict)  # handle -> active
    addresses: dict[int, int] = field(default_factory=dict)  # handle -> customer
    defaults: dict[int, int] = field(default_factory=dict)  # customer -> default address
    menu: dict[int, tuple[Decimal, bool]] = field(default_factory=dict)  # live items: price, available
    removed_items: set[int] = field(default_factory=set)
    orders: dict[int, tuple[int, str]] = field(default_factory=dict)  # live orders: customer, status
    deleted_orders: set[int] = field(default_factory=set)
    lines: dict[int, dict[int, int]] = field(default_factory=dict)  # order -> {line: quantity}
    next_line: int = 0
    placed: int = 0
    lines_written: int = 0

    def check(self, x: a.Action) -> None:
        getattr(self, "_" + x.kind)(x)

    def _customer(self, c: a.NewCustomer) -> None:
        assert c.handle == len(self.customers), "customer handles are dense"
        self.customers[c.handle] = True
        if c.first_address is not None:
            assert c.first_address.customer == c.handle and c.first_address.is_default
            self._address(c.first_address)

    def _address(self, ad: a.NewAddress) -> None:
        assert ad.handle == len(self.addresses), "address handles are dense"
        assert self.customers.get(ad.customer), "address for a missing or deactivated customer"
        assert len(ad.country) == 2 and ad.street and ad.city
        self.addresses[ad.handle] = ad.customer
        if ad.is_default:
            self.defaults[ad.customer] = ad.handle

    def _item(self, i: a.NewMenuItem) -> None:
        assert i.handle == len(self.menu) + len(self.removed_items), "menu item handles are dense"
        self.menu[i.handle] = (i.price, True)

    def _live_item(self, handle: int) -> tuple[Decimal, bool]:
        assert handle not in self.removed_items, f"references removed menu item {handle}"
        assert handle in self.menu, f"references unknown menu item {handle}"
        return self.menu[handle]

    def _open_order(self, order: int) -> None:
        assert order not in self.deleted_orders, f"references deleted order {order}"
        assert self.orders[order][1] == "OPEN", f"order {order} is {self.orders[order][1]}, not OPEN"
        assert self.customers[self.orders[order][0]], "works on the order of a deactivated customer"

    def _line(self, line: a.NewOrderLine) -> None:
        assert line.handle == self.next_line, "line handles are dense"
        self._open_order(line.order)
        price, available = self._live_item(line.menu_item)
        assert available, f"adds withdrawn menu item {line.menu_item}"
        assert line.unit_price == price, "unit price must be the menu price at the time"
        assert line.quantity > 0
        self.lines[line.order][line.handle] = line.quantity
        self.next_line += 1
        self.lines_written += 1

    def _new_order(self, order: int, customer: int) -> None:
        assert order == len(self.orders) + len(self.deleted_orders), "order handles are dense"
        assert self.customers.get(customer), "order for a missing or deactivated customer"
        self.orders[order] = (customer, "OPEN")
        self.lines[order] = {}

    def _set_status(self, order: int, status: str) -> None:
        self.orders[order] = (self.orders[order][0], status)

    def _bootstrap(self, x: a.Bootstrap) -> None:
        assert not self.customers and not self.menu, "bootstrap only once, first"
        for i in x.menu_items:
            self._item(i)
        for c in x.customers:
            self._customer(c)

    def _customer_signed_up(self, x: a.CustomerSignedUp) -> None:
        self._customer(x.customer)

    def _address_added(self, x: a.AddressAdded) -> None:
        assert x.previous_default == (self.defaults.get(x.address.customer) if x.address.is_default else None)
        self._address(x.address)

    def _customer_deactivated(self, x: a.CustomerDeactivated) -> None:
        assert self.customers[x.customer], "deactivates a customer twice"
        still_open = [o for o, (c, s) in self.orders.items() if c == x.customer and s == "OPEN"]
        assert sorted(x.cancelled_orders) == sorted(still_open), "must cancel exactly the open orders"
        for o in x.cancelled_orders:
            self._set_status(o, "CANCELLED")
        self.customers[x.customer] = False

    def _menu_item_added(self, x: a.MenuItemAdded) -> None:
        self._item(x.item)

    def _menu_item_modified(self, x: a.MenuItemModified) -> None:
        self._live_item(x.menu_item)
        assert (x.name, x.description, x.tags) != (None, None, None)

    def _menu_item_repriced(self, x: a.MenuItemRepriced) -> None:
        price, available = self._live_item(x.menu_item)
        assert x.price != price
        self.menu[x.menu_item] = (x.price, available)

    def _menu_item_withdrawn(self, x: a.MenuItemWithdrawn) -> None:
        price, available = self._live_item(x.menu_item)
        assert available, "withdraws twice"
        self.menu[x.menu_item] = (price, False)

    def _menu_item_removed(self, x: a.MenuItemRemoved) -> None:
        self._live_item(x.menu_item)
        del self.menu[x.menu_item]
        self.removed_items.add(x.menu_item)

    def _order_opened(self, x: a.OrderOpened) -> None:
        self._new_order(x.order, x.customer)

    def _order_item_added(self, x: a.OrderItemAdded) -> None:
        self._line(x.line)

    def _order_item_quantity_changed(self, x: a.OrderItemQuantityChanged) -> None:
        self._open_order(x.order)
        assert x.line in self.lines[x.order], "changes a line that is not in the order"
        assert x.quantity > 0 and x.quantity != self.lines[x.order][x.line]
        self.lines[x.order][x.line] = x.quantity

    def _order_item_removed(self, x: a.OrderItemRemoved) -> None:
        self._open_order(x.order)
        assert x.line in self.lines[x.order], "removes a line that is not in the order"
        del self.lines[x.order][x.line]

    def _delivery_address_set(self, x: a.DeliveryAddressSet) -> None:
        self._open_order(x.order)
        assert self.addresses[x.address] == self.orders[x.order][0], "someone else's address"

    def _order_placed(self, x: a.OrderPlaced) -> None:
        self._open_order(x.order)
        assert self.lines[x.order], "places an empty order"
        self._set_status(x.order, "PLACED")
        self.placed += 1

    def _checkout(self, x: a.Checkout) -> None:
        self._new_order(x.order, x.customer)
        assert x.lines, "checks out an empty order"
        if x.delivery_address is not None:
            assert self.addresses[x.delivery_address] == x.customer
        for line in x.lines:
            assert line.order == x.order
            self._line(line)
        self._set_status(x.order, "PLACED")
        self.placed += 1

    def _order_cancelled(self, x: a.OrderCancelled) -> None:
        assert x.order not in self.deleted_orders
        assert self.orders[x.order][1] in ("OPEN", "PLACED"), "cancels a cancelled order"
        self._set_status(x.order, "CANCELLED")

    def _order_deleted(self, x: a.OrderDeleted) -> None:
        assert x.order not in self.deleted_orders, "deletes an order twice"
        assert self.orders[x.order][1] in ("OPEN", "CANCELLED"), "deletes a placed order"
        assert sorted(x.lines) == sorted(self.lines[x.order]), "must delete exactly the order's lines"
        del self.orders[x.order], self.lines[x.order]
        self.deleted_orders.add(x.order)

    def _touch(self, x: a.Touched) -> None:
        if x.table == "customers":
            assert self.customers[x.handle], "touches a deactivated customer"
        elif x.table == "menu_items":
            self._live_item(x.handle)
        else:
            assert x.handle in self.orders and x.handle not in self.deleted_orders, "touches a deleted order"


def test_checkouts_mix_writes_whole_orders_of_10_to_50_lines_and_stays_valid() -> None:
    actions = plan(42, 600, mix="checkouts")
    checker = _Checker()
    for step, action in enumerate(actions):
        try:
            checker.check(action)
        except AssertionError as exc:
            raise AssertionError(f"checkouts mix, step {step}: {action!r}: {exc}") from exc
    checkouts = [x for x in actions if isinstance(x, a.Checkout)]
    assert len(checkouts) > 0.8 * len(actions[1:])
    assert {len(x.lines) for x in checkouts} <= set(range(10, 51))
    assert min(len(x.lines) for x in checkouts) < 15 and max(len(x.lines) for x in checkouts) > 45
    assert plan(42, 600, mix="checkouts") == actions  # as deterministic as the default mix
    assert plan(42, 300) == plan(42, 300, mix="restaurant")  # the default mix is unchanged


def test_an_unknown_mix_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown traffic mix 'checkout'.*restaurant, checkouts"):
        plan(1, 10, mix="checkout")
