"""The pure half of the simulator: a seeded, endless stream of business actions that are valid in order.

No I/O, no clock, no global random state: ``Planner(seed)`` yields the same actions, with the same values,
on every machine and every run. Each step draws a kind of action by weight, then asks that kind's proposer
for a concrete action against the current :class:`~legacy_db.model.World`; a proposer that finds nothing
valid to act on (no open order with lines to place, say) declines and the kind is redrawn without it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from legacy_db import actions as a
from legacy_db import fakedata as fake
from legacy_db.model import World

#: Relative frequency of each kind once the run is going: a restaurant where people mostly fiddle with
#: their basket, sometimes order, and the menu changes now and then.
WEIGHTS: dict[str, float] = {
    a.CustomerSignedUp.kind: 4.0,
    a.AddressAdded.kind: 2.0,
    a.CustomerDeactivated.kind: 0.5,
    a.MenuItemAdded.kind: 1.5,
    a.MenuItemModified.kind: 1.0,
    a.MenuItemRepriced.kind: 1.5,
    a.MenuItemWithdrawn.kind: 0.5,
    a.MenuItemRemoved.kind: 0.4,
    a.OrderOpened.kind: 8.0,
    a.OrderItemAdded.kind: 20.0,
    a.OrderItemQuantityChanged.kind: 6.0,
    a.OrderItemRemoved.kind: 4.0,
    a.DeliveryAddressSet.kind: 5.0,
    a.OrderPlaced.kind: 6.0,
    a.Checkout.kind: 5.0,
    a.OrderCancelled.kind: 2.0,
    a.OrderDeleted.kind: 2.0,
    a.Touched.kind: 6.0,
}

#: Named traffic mixes: which kinds of action, how often, and how many lines a checkout has. "restaurant" is
#: the default above; "checkouts" is mostly whole orders of 10-50 lines written in one transaction, the
#: workload where per-transaction costs matter less than per-row ones (bench/pgoutput_bridge.py --workload).
MIXES: dict[str, dict[str, float]] = {
    "restaurant": WEIGHTS,
    "checkouts": {a.Checkout.kind: 10.0, a.CustomerSignedUp.kind: 0.5, a.MenuItemAdded.kind: 0.3,
                  a.MenuItemRepriced.kind: 0.3, a.Touched.kind: 0.2},
}
CHECKOUT_LINES: dict[str, tuple[int, int]] = {"checkouts": (10, 50)}  # other mixes: 1-4 lines, mostly 1

BOOTSTRAP_MENU_ITEMS = 12
BOOTSTRAP_CUSTOMERS = 8

# A proposer that draws a random target may miss (e.g. an open order whose customer has no other address);
# it retries this many times before declining, which keeps a step's cost bounded.
_ATTEMPTS = 8

Proposer = Callable[["Planner"], "a.Action | None"]


class Planner:
    """Endless, deterministic stream of valid actions. ``namespace`` only salts e-mail addresses, so that a
    second run against a database that already has this seed's customers does not collide on the UNIQUE
    e-mail; pass "" (the default) for a fresh database."""

    def __init__(self, seed: int, namespace: str = "", mix: str = "restaurant") -> None:
        if mix not in MIXES:
            raise ValueError(f"unknown traffic mix {mix!r}: use one of {', '.join(MIXES)}")
        self.seed = seed
        self.namespace = namespace
        self.mix = mix
        self.weights = MIXES[mix]
        self.rng = random.Random(seed)
        self.world = World()
        self._started = False

    def __iter__(self) -> Iterator[a.Action]:
        while True:
            yield self.next_action()

    def next_action(self) -> a.Action:
        action = self._bootstrap() if not self._started else self._draw()
        self._started = True
        self.world.apply(action)
        return action

    def _draw(self) -> a.Action:
        kinds = list(self.weights)
        weights = list(self.weights.values())
        while kinds:
            index = self.rng.choices(range(len(kinds)), weights=weights)[0]
            action = _PROPOSERS[kinds[index]](self)
            if action is not None:
                return action
            del kinds[index], weights[index]
        # Unreachable: signing up and adding a menu item are always possible.
        raise RuntimeError("no action is possible")

    # -- building blocks shared by proposers ----------------------------------------------------------

    def _bootstrap(self) -> a.Bootstrap:
        items = tuple(self._new_menu_item(self.world.next_menu_item + i) for i in range(BOOTSTRAP_MENU_ITEMS))
        customers: list[a.NewCustomer] = []
        next_address = self.world.next_address
        for i in range(BOOTSTRAP_CUSTOMERS):
            customer = self._new_customer(self.world.next_customer + i, next_address)
            next_address += customer.first_address is not None
            customers.append(customer)
        return a.Bootstrap(menu_items=items, customers=tuple(customers))

    def _new_customer(self, handle: int, address_handle: int) -> a.NewCustomer:
        """``address_handle`` is used only if the customer signs up with an address."""
        rng = self.rng
        name = fake.full_name(rng)
        address = None
        if rng.random() < 0.6:
            address = a.NewAddress(handle=address_handle, customer=handle, is_default=True, **fake.address_fields(rng))
        return a.NewCustomer(
            handle=handle,
            email=fake.email(rng, name, handle, self.namespace),
            full_name=name,
            phone=fake.phone(rng),
            preferences=fake.preferences(rng),
            first_address=address,
        )

    def _new_menu_item(self, handle: int) -> a.NewMenuItem:
        rng = self.rng
        return a.NewMenuItem(
            handle=handle,
            name=fake.dish_name(rng),
            description=fake.description(rng),
            price=fake.price(rng),
            category=fake.category(rng),
            tags=fake.tags(rng),
        )

    def _new_line(self, handle: int, order: int, menu_item: int | None = None) -> a.NewOrderLine:
        world = self.world
        item = world.available_menu_items.choice(self.rng) if menu_item is None else menu_item
        return a.NewOrderLine(
            handle=handle,
            order=order,
            menu_item=item,
            quantity=fake.quantity(self.rng),
            unit_price=world.menu_items[item].price,  # the price at the time it was added
        )


# -- proposers: one per kind, each returns a valid action or None ---------------------------------------


def _customer_signed_up(p: Planner) -> a.Action:
    # Address handles are only consumed when the customer really comes with an address.
    return a.CustomerSignedUp(p._new_customer(p.world.next_customer, p.world.next_address))


def _address_added(p: Planner) -> a.Action | None:
    world = p.world
    if not world.active_customers:
        return None
    handle = world.active_customers.choice(p.rng)
    customer = world.customers[handle]
    becomes_default = customer.default_address is None or p.rng.random() < 0.3
    address = a.NewAddress(
        handle=world.next_address, customer=handle, is_default=becomes_default, **fake.address_fields(p.rng)
    )
    return a.AddressAdded(address, previous_default=customer.default_address if becomes_default else None)


def _customer_deactivated(p: Planner) -> a.Action | None:
    world = p.world
    if len(world.active_customers) <= 1:
        return None  # keep someone around to order
    handle = world.active_customers.choice(p.rng)
    return a.CustomerDeactivated(handle, cancelled_orders=tuple(world.customers[handle].open_orders))


def _menu_item_added(p: Planner) -> a.Action:
    return a.MenuItemAdded(p._new_menu_item(p.world.next_menu_item))


def _menu_item_modified(p: Planner) -> a.Action | None:
    if not p.world.live_menu_items:
        return None
    rng = p.rng
    handle = p.world.live_menu_items.choice(rng)
    fields = rng.choice((("name",), ("description",), ("tags",), ("name", "description"), ("description", "tags")))
    return a.MenuItemModified(
        handle,
        name=fake.dish_name(rng) if "name" in fields else None,
        # Never None here: None means "not part of the UPDATE".
        description=(fake.description(rng) or "") if "description" in fields else None,
        tags=(fake.tags(rng) or ()) if "tags" in fields else None,
    )


def _menu_item_repriced(p: Planner) -> a.Action | None:
    if not p.world.live_menu_items:
        return None
    handle = p.world.live_menu_items.choice(p.rng)
    return a.MenuItemRepriced(handle, fake.new_price(p.rng, p.world.menu_items[handle].price))


def _menu_item_withdrawn(p: Planner) -> a.Action | None:
    if len(p.world.available_menu_items) <= 3:
        return None  # a restaurant keeps a menu
    return a.MenuItemWithdrawn(p.world.available_menu_items.choice(p.rng))


def _menu_item_removed(p: Planner) -> a.Action | None:
    world = p.world
    if len(world.live_menu_items) <= 3:
        return None
    handle = world.live_menu_items.choice(p.rng)
    if world.menu_items[handle].available and len(world.available_menu_items) <= 3:
        return None
    return a.MenuItemRemoved(handle)


def _order_opened(p: Planner) -> a.Action | None:
    if not p.world.active_customers:
        return None
    customer = p.world.active_customers.choice(p.rng)
    return a.OrderOpened(p.world.next_order, customer, fake.order_notes(p.rng))


def _order_item_added(p: Planner) -> a.Action | None:
    world = p.world
    if not world.open_orders or not world.available_menu_items:
        return None
    order = world.open_orders.choice(p.rng)
    return a.OrderItemAdded(p._new_line(world.next_line, order))


def _random_line(p: Planner) -> tuple[int, int] | None:
    world = p.world
    if not world.open_orders_with_lines:
        return None
    order = world.open_orders_with_lines.choice(p.rng)
    lines = world.orders[order].lines
    return order, list(lines)[p.rng.randrange(len(lines))]


def _order_item_quantity_changed(p: Planner) -> a.Action | None:
    picked = _random_line(p)
    if picked is None:
        return None
    order, line = picked
    current = p.world.orders[order].lines[line].quantity
    quantity = p.rng.choice([q for q in range(1, 7) if q != current])
    return a.OrderItemQuantityChanged(order, line, quantity)


def _order_item_removed(p: Planner) -> a.Action | None:
    picked = _random_line(p)
    return None if picked is None else a.OrderItemRemoved(*picked)


def _delivery_address_set(p: Planner) -> a.Action | None:
    world = p.world
    if not world.open_orders:
        return None
    for _ in range(_ATTEMPTS):
        order_handle = world.open_orders.choice(p.rng)
        order = world.orders[order_handle]
        candidates = [x for x in world.customers[order.customer].addresses if x != order.delivery_address]
        if candidates:
            return a.DeliveryAddressSet(order_handle, p.rng.choice(candidates))
    return None


def _order_placed(p: Planner) -> a.Action | None:
    if not p.world.open_orders_with_lines:
        return None
    return a.OrderPlaced(p.world.open_orders_with_lines.choice(p.rng))


def _checkout(p: Planner) -> a.Action | None:
    world = p.world
    if not world.active_customers or not world.available_menu_items:
        return None
    rng = p.rng
    customer = world.active_customers.choice(rng)
    order = world.next_order
    if p.mix in CHECKOUT_LINES:
        count = rng.randint(*CHECKOUT_LINES[p.mix])
    else:
        count = rng.choices((1, 2, 3, 4), weights=(40, 30, 20, 10))[0]
    lines = tuple(p._new_line(world.next_line + i, order) for i in range(count))
    return a.Checkout(
        order=order,
        customer=customer,
        delivery_address=world.customers[customer].default_address,
        notes=fake.order_notes(rng),
        lines=lines,
    )


def _order_cancelled(p: Planner) -> a.Action | None:
    world = p.world
    n_open, n_placed = len(world.open_orders), len(world.placed_orders)
    if n_open + n_placed == 0:
        return None
    i = p.rng.randrange(n_open + n_placed)
    return a.OrderCancelled(world.open_orders[i] if i < n_open else world.placed_orders[i - n_open])


def _order_deleted(p: Planner) -> a.Action | None:
    world = p.world
    n_open, n_cancelled = len(world.open_orders), len(world.cancelled_orders)
    if n_open + n_cancelled == 0:
        return None
    i = p.rng.randrange(n_open + n_cancelled)
    order = world.open_orders[i] if i < n_open else world.cancelled_orders[i - n_open]
    return a.OrderDeleted(order, lines=tuple(world.orders[order].lines))


def _touch(p: Planner) -> a.Action | None:
    world = p.world
    table = p.rng.choice(("customers", "menu_items", "orders"))
    population = {
        "customers": world.active_customers,
        "menu_items": world.live_menu_items,
        "orders": world.live_orders,
    }[table]
    if not population:
        return None
    return a.Touched(table, population.choice(p.rng))  # type: ignore[arg-type]


_PROPOSERS: dict[str, Proposer] = {
    a.CustomerSignedUp.kind: _customer_signed_up,
    a.AddressAdded.kind: _address_added,
    a.CustomerDeactivated.kind: _customer_deactivated,
    a.MenuItemAdded.kind: _menu_item_added,
    a.MenuItemModified.kind: _menu_item_modified,
    a.MenuItemRepriced.kind: _menu_item_repriced,
    a.MenuItemWithdrawn.kind: _menu_item_withdrawn,
    a.MenuItemRemoved.kind: _menu_item_removed,
    a.OrderOpened.kind: _order_opened,
    a.OrderItemAdded.kind: _order_item_added,
    a.OrderItemQuantityChanged.kind: _order_item_quantity_changed,
    a.OrderItemRemoved.kind: _order_item_removed,
    a.DeliveryAddressSet.kind: _delivery_address_set,
    a.OrderPlaced.kind: _order_placed,
    a.Checkout.kind: _checkout,
    a.OrderCancelled.kind: _order_cancelled,
    a.OrderDeleted.kind: _order_deleted,
    a.Touched.kind: _touch,
}
assert set(_PROPOSERS) == set(WEIGHTS), "every weighted kind needs a proposer"


def plan(seed: int, steps: int, namespace: str = "", mix: str = "restaurant") -> list[a.Action]:
    """The first ``steps`` actions of the plan for ``seed`` (the first one is always the bootstrap)."""
    planner = Planner(seed, namespace, mix)
    return [planner.next_action() for _ in range(steps)]
