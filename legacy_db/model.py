"""The planner's in-memory picture of the rows a simulation has written, keyed by handles.

:meth:`World.apply` is the only place where state changes, one action at a time, exactly as the executor
will change the database. The sets of "entities eligible for X" are kept incrementally so that choosing a
target stays O(1) however long a simulation runs.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from legacy_db import actions as a

OPEN, PLACED, CANCELLED = "OPEN", "PLACED", "CANCELLED"


class IndexedSet:
    """A set of ints with O(1) add, discard and uniform random choice, and a deterministic order.

    The order depends only on the sequence of operations (swap-with-last on removal), never on hashing, so a
    seeded choice picks the same element in every run.
    """

    __slots__ = ("_items", "_positions")

    def __init__(self) -> None:
        self._items: list[int] = []
        self._positions: dict[int, int] = {}

    def add(self, item: int) -> None:
        if item not in self._positions:
            self._positions[item] = len(self._items)
            self._items.append(item)

    def discard(self, item: int) -> None:
        position = self._positions.pop(item, None)
        if position is None:
            return
        last = self._items.pop()
        if position < len(self._items):
            self._items[position] = last
            self._positions[last] = position

    def choice(self, rng: random.Random) -> int:
        return self._items[rng.randrange(len(self._items))]

    def __getitem__(self, index: int) -> int:
        return self._items[index]

    def __contains__(self, item: object) -> bool:
        return item in self._positions

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._items)


@dataclass(slots=True)
class CustomerState:
    active: bool = True
    addresses: list[int] = field(default_factory=list)
    default_address: int | None = None
    #: Insertion-ordered (a dict used as an ordered set) for determinism.
    open_orders: dict[int, None] = field(default_factory=dict)


@dataclass(slots=True)
class MenuItemState:
    price: Decimal
    available: bool = True


@dataclass(slots=True)
class LineState:
    menu_item: int
    quantity: int


@dataclass(slots=True)
class OrderState:
    customer: int
    status: str = OPEN
    delivery_address: int | None = None
    lines: dict[int, LineState] = field(default_factory=dict)


class World:
    """Everything a plan has created and not deleted. Handles are allocated here, per kind, from zero."""

    def __init__(self) -> None:
        self.customers: list[CustomerState] = []
        self.address_owner: list[int] = []  # address handle -> customer handle
        self.menu_items: dict[int, MenuItemState] = {}  # live (not hard-deleted) items
        self.orders: dict[int, OrderState] = {}  # live (not deleted) orders
        self.next_menu_item = 0
        self.next_order = 0
        self.next_line = 0

        self.active_customers = IndexedSet()
        self.live_menu_items = IndexedSet()
        self.available_menu_items = IndexedSet()
        self.live_orders = IndexedSet()
        self.open_orders = IndexedSet()
        self.open_orders_with_lines = IndexedSet()
        self.placed_orders = IndexedSet()
        self.cancelled_orders = IndexedSet()

    # -- handle allocation: the planner asks for the next handle, apply() consumes it --------------------

    @property
    def next_customer(self) -> int:
        return len(self.customers)

    @property
    def next_address(self) -> int:
        return len(self.address_owner)

    # -- transitions ------------------------------------------------------------------------------------

    def apply(self, action: a.Action) -> None:
        """Record the effect of ``action``; raises ValueError if the action does not fit the current state."""
        handler = _HANDLERS.get(type(action))
        if handler is None:
            raise TypeError(f"not a legacy_db action: {action!r}")
        handler(self, action)

    def _add_customer(self, new: a.NewCustomer) -> None:
        _expect(new.handle == self.next_customer, f"customer handle {new.handle} out of sequence")
        self.customers.append(CustomerState())
        self.active_customers.add(new.handle)
        if new.first_address is not None:
            self._add_address(new.first_address)

    def _add_address(self, new: a.NewAddress) -> None:
        _expect(new.handle == self.next_address, f"address handle {new.handle} out of sequence")
        customer = self._active_customer(new.customer)
        self.address_owner.append(new.customer)
        customer.addresses.append(new.handle)
        if new.is_default:
            customer.default_address = new.handle

    def _add_menu_item(self, new: a.NewMenuItem) -> None:
        _expect(new.handle == self.next_menu_item, f"menu item handle {new.handle} out of sequence")
        self.next_menu_item += 1
        self.menu_items[new.handle] = MenuItemState(price=new.price)
        self.live_menu_items.add(new.handle)
        self.available_menu_items.add(new.handle)

    def _add_line(self, new: a.NewOrderLine) -> None:
        _expect(new.handle == self.next_line, f"order line handle {new.handle} out of sequence")
        order = self._open_order(new.order)
        item = self.menu_items.get(new.menu_item)
        _expect(item is not None and item.available, f"menu item {new.menu_item} is not on the menu")
        self.next_line += 1
        order.lines[new.handle] = LineState(new.menu_item, new.quantity)
        self.open_orders_with_lines.add(new.order)

    def _open(self, order: int, customer: int, address: int | None) -> None:
        _expect(order == self.next_order, f"order handle {order} out of sequence")
        owner = self._active_customer(customer)
        _expect(address is None or address in owner.addresses, f"address {address} is not the customer's")
        self.next_order += 1
        self.orders[order] = OrderState(customer=customer, delivery_address=address)
        owner.open_orders[order] = None
        self.live_orders.add(order)
        self.open_orders.add(order)

    def _set_status(self, handle: int, status: str) -> None:
        order = self.orders[handle]
        if order.status == OPEN:
            self.open_orders.discard(handle)
            self.open_orders_with_lines.discard(handle)
            self.customers[order.customer].open_orders.pop(handle, None)
        elif order.status == PLACED:
            self.placed_orders.discard(handle)
        order.status = status
        (self.placed_orders if status == PLACED else self.cancelled_orders).add(handle)

    def _active_customer(self, handle: int) -> CustomerState:
        _expect(0 <= handle < len(self.customers), f"unknown customer {handle}")
        customer = self.customers[handle]
        _expect(customer.active, f"customer {handle} is deactivated")
        return customer

    def _live_menu_item(self, handle: int) -> MenuItemState:
        item = self.menu_items.get(handle)
        _expect(item is not None, f"menu item {handle} does not exist (never created or removed)")
        return item  # type: ignore[return-value]

    def _open_order(self, handle: int) -> OrderState:
        order = self.orders.get(handle)
        _expect(order is not None and order.status == OPEN, f"order {handle} is not an open order")
        return order  # type: ignore[return-value]

    def _line(self, order_handle: int, line: int) -> LineState:
        order = self._open_order(order_handle)
        _expect(line in order.lines, f"line {line} is not in order {order_handle}")
        return order.lines[line]


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


# -- one handler per action type ----------------------------------------------------------------------


def _bootstrap(w: World, x: a.Bootstrap) -> None:
    for item in x.menu_items:
        w._add_menu_item(item)
    for customer in x.customers:
        w._add_customer(customer)


def _signed_up(w: World, x: a.CustomerSignedUp) -> None:
    w._add_customer(x.customer)


def _address_added(w: World, x: a.AddressAdded) -> None:
    customer = w._active_customer(x.address.customer)
    _expect(
        x.previous_default == (customer.default_address if x.address.is_default else None),
        "previous_default must name the current default exactly when the new address becomes default",
    )
    w._add_address(x.address)


def _deactivated(w: World, x: a.CustomerDeactivated) -> None:
    customer = w._active_customer(x.customer)
    _expect(x.cancelled_orders == tuple(customer.open_orders), "must cancel exactly the open orders")
    for order in x.cancelled_orders:
        w._set_status(order, CANCELLED)
    customer.active = False
    w.active_customers.discard(x.customer)


def _item_added(w: World, x: a.MenuItemAdded) -> None:
    w._add_menu_item(x.item)


def _item_modified(w: World, x: a.MenuItemModified) -> None:
    w._live_menu_item(x.menu_item)
    _expect(
        (x.name, x.description, x.tags) != (None, None, None), "a modification must change something"
    )


def _item_repriced(w: World, x: a.MenuItemRepriced) -> None:
    w._live_menu_item(x.menu_item).price = x.price


def _item_withdrawn(w: World, x: a.MenuItemWithdrawn) -> None:
    item = w._live_menu_item(x.menu_item)
    _expect(item.available, f"menu item {x.menu_item} is already withdrawn")
    item.available = False
    w.available_menu_items.discard(x.menu_item)


def _item_removed(w: World, x: a.MenuItemRemoved) -> None:
    w._live_menu_item(x.menu_item)
    del w.menu_items[x.menu_item]
    w.live_menu_items.discard(x.menu_item)
    w.available_menu_items.discard(x.menu_item)


def _order_opened(w: World, x: a.OrderOpened) -> None:
    w._open(x.order, x.customer, None)


def _line_added(w: World, x: a.OrderItemAdded) -> None:
    w._add_line(x.line)


def _quantity_changed(w: World, x: a.OrderItemQuantityChanged) -> None:
    line = w._line(x.order, x.line)
    _expect(x.quantity > 0 and x.quantity != line.quantity, "a quantity change must change the quantity")
    line.quantity = x.quantity


def _line_removed(w: World, x: a.OrderItemRemoved) -> None:
    w._line(x.order, x.line)
    order = w.orders[x.order]
    del order.lines[x.line]
    if not order.lines:
        w.open_orders_with_lines.discard(x.order)


def _address_set(w: World, x: a.DeliveryAddressSet) -> None:
    order = w._open_order(x.order)
    customer = w._active_customer(order.customer)
    _expect(x.address in customer.addresses, f"address {x.address} is not the customer's")
    _expect(x.address != order.delivery_address, "the delivery address must change")
    order.delivery_address = x.address


def _placed(w: World, x: a.OrderPlaced) -> None:
    order = w._open_order(x.order)
    _expect(bool(order.lines), f"order {x.order} has no lines and cannot be placed")
    w._set_status(x.order, PLACED)


def _checkout(w: World, x: a.Checkout) -> None:
    _expect(bool(x.lines), "a checkout needs at least one line")
    w._open(x.order, x.customer, x.delivery_address)
    for line in x.lines:
        _expect(line.order == x.order, "checkout lines must belong to the checkout's order")
        w._add_line(line)
    w._set_status(x.order, PLACED)


def _cancelled(w: World, x: a.OrderCancelled) -> None:
    order = w.orders.get(x.order)
    _expect(order is not None and order.status in (OPEN, PLACED), f"order {x.order} cannot be cancelled")
    w._set_status(x.order, CANCELLED)


def _deleted(w: World, x: a.OrderDeleted) -> None:
    order = w.orders.get(x.order)
    _expect(order is not None and order.status in (OPEN, CANCELLED), f"order {x.order} cannot be deleted")
    _expect(x.lines == tuple(order.lines), "an order deletion must list exactly the order's lines")  # type: ignore[union-attr]
    if order.status == OPEN:  # type: ignore[union-attr]
        w.customers[order.customer].open_orders.pop(x.order, None)  # type: ignore[union-attr]
    del w.orders[x.order]
    for index in (w.live_orders, w.open_orders, w.open_orders_with_lines, w.cancelled_orders):
        index.discard(x.order)


def _touched(w: World, x: a.Touched) -> None:
    if x.table == "customers":
        w._active_customer(x.handle)
    elif x.table == "menu_items":
        w._live_menu_item(x.handle)
    else:
        _expect(x.handle in w.orders, f"order {x.handle} does not exist")


_HANDLERS: dict[type, Callable[[World, Any], None]] = {
    a.Bootstrap: _bootstrap,
    a.CustomerSignedUp: _signed_up,
    a.AddressAdded: _address_added,
    a.CustomerDeactivated: _deactivated,
    a.MenuItemAdded: _item_added,
    a.MenuItemModified: _item_modified,
    a.MenuItemRepriced: _item_repriced,
    a.MenuItemWithdrawn: _item_withdrawn,
    a.MenuItemRemoved: _item_removed,
    a.OrderOpened: _order_opened,
    a.OrderItemAdded: _line_added,
    a.OrderItemQuantityChanged: _quantity_changed,
    a.OrderItemRemoved: _line_removed,
    a.DeliveryAddressSet: _address_set,
    a.OrderPlaced: _placed,
    a.Checkout: _checkout,
    a.OrderCancelled: _cancelled,
    a.OrderDeleted: _deleted,
    a.Touched: _touched,
}
