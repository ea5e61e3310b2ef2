"""The restaurant mapping against the legacy app's own traffic, without a database.

`LegacyDatabase` runs the simulator's planned actions the way legacy_db/executor.py writes them (the same
statements, in the same order, one transaction per action) and yields the RowChanges logical replication
would carry under REPLICA IDENTITY DEFAULT: no before image for updates, only the key for deletes, and
an unchanged long description as UNKNOWN (it lives in TOAST). A consumer folds the translated events;
its per-aggregate state must equal the rows the database ends with.
"""

from __future__ import annotations

import json

from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bridge.changes import UNKNOWN, Op, RowChange, SourcePosition, Transaction
from bridge.mapping.loader import load_mappings
from bridge.mapping.prior_rows import InMemoryPriorRows
from bridge.mapping.translate import translate
from legacy_db import actions as a
from legacy_db.planner import plan
from legacy_db.tables import metadata
from tests.support.restaurant_fold import FoldingConsumer, legacy_state

RESTAURANT = Path(__file__).resolve().parents[2] / "mappings" / "restaurant.yaml"
TOAST_THRESHOLD = 2000  # characters: longer descriptions are stored out of line (STORAGE EXTERNAL)
_START = datetime(2024, 6, 1, 9, 0, tzinfo=timezone.utc)


class LegacyDatabase:
    """Rows of the five legacy tables, changed action by action as the legacy app changes them."""

    def __init__(self) -> None:
        tables = ("customers", "customer_addresses", "menu_items", "orders", "order_items")
        self.rows: dict[str, dict[int, dict[str, Any]]] = {table: {} for table in tables}
        self.next_id = Counter[str]()
        self.handles: dict[str, list[int]] = {"customer": [], "address": [], "menu_item": [], "order": [], "line": []}
        self.lsn = 0x1000
        self.xid = 700
        self.clock = _START
        self._changes: list[RowChange] = []

    # -- statements -------------------------------------------------------------------------------------------

    def _change(self, op: Op, table: str, key: dict[str, Any], before: Any, after: Any) -> None:
        self.lsn += 0x28
        self._changes.append(RowChange(op, "public", table, key, before, after, SourcePosition(0, self.lsn),
                                       self.clock, self.xid))

    def insert(self, table: str, handle_kind: str | None, **values: Any) -> int:
        self.next_id[table] += 1
        row_id = self.next_id[table]
        row = {"id": row_id, **values}
        row.setdefault("created_at", self.clock)  # every legacy table has it, filled by a DEFAULT
        self.rows[table][row_id] = row
        if handle_kind:
            self.handles[handle_kind].append(row_id)
        self._change(Op.CREATE, table, {"id": row_id}, None, dict(row))
        return row_id

    def update(self, table: str, row_id: int, **values: Any) -> None:
        row = self.rows[table][row_id]
        row.update(values)
        after = dict(row)
        description = after.get("description")
        if "description" not in values and isinstance(description, str) and len(description) > TOAST_THRESHOLD:
            after["description"] = UNKNOWN  # unchanged TOAST: not in the WAL
        self._change(Op.UPDATE, table, {"id": row_id}, None, after)

    def delete(self, table: str, row_id: int) -> None:
        del self.rows[table][row_id]
        self._change(Op.DELETE, table, {"id": row_id}, {"id": row_id}, None)

    def local_now(self) -> datetime:
        return self.clock.replace(tzinfo=None)  # updated_on: the app's naive local timestamp

    # -- actions (legacy_db/executor.py, statement by statement) -------------------------------------------------

    def run(self, action: a.Action) -> Transaction:
        self.xid += 1
        self.clock += timedelta(seconds=7)
        self._changes = []
        getattr(self, "_" + action.kind)(action)
        self.lsn += 0x28
        commit = self.lsn
        changes = tuple(RowChange(c.op, c.schema, c.table, c.key, c.before, c.after,
                                  SourcePosition(commit, c.position.change_lsn), c.commit_time, c.xid)
                        for c in self._changes)
        return Transaction(self.xid, commit, self.clock, changes)

    def _customer(self, new: a.NewCustomer) -> None:
        customer_id = self.insert("customers", "customer", email=new.email, full_name=new.full_name,
                                  phone=new.phone, preferences=new.preferences, updated_on=self.local_now(),
                                  is_deleted=False)
        if new.first_address is not None:
            self._address(new.first_address, customer_id)

    def _address(self, new: a.NewAddress, customer_id: int) -> None:
        self.insert("customer_addresses", "address", customer_id=customer_id, label=new.label, street=new.street,
                    city=new.city, postal_code=new.postal_code, country=new.country, is_default=new.is_default)

    def _menu_item(self, new: a.NewMenuItem) -> None:
        self.insert("menu_items", "menu_item", name=new.name, description=new.description, price=new.price,
                    category=new.category, tags=None if new.tags is None else list(new.tags), is_available=True,
                    updated_on=self.local_now())

    def _order(self, customer: int, address: int | None, notes: str | None) -> int:
        return self.insert("orders", "order", customer_id=self.handles["customer"][customer], status="OPEN",
                           delivery_address_id=None if address is None else self.handles["address"][address],
                           placed_at=None, notes=notes, updated_on=self.local_now())

    def _line(self, new: a.NewOrderLine, order_id: int) -> None:
        self.insert("order_items", "line", order_id=order_id, menu_item_id=self.handles["menu_item"][new.menu_item],
                    quantity=new.quantity, unit_price=new.unit_price)

    def _bootstrap(self, x: a.Bootstrap) -> None:
        for item in x.menu_items:
            self._menu_item(item)
        for customer in x.customers:
            self._customer(customer)

    def _customer_signed_up(self, x: a.CustomerSignedUp) -> None:
        self._customer(x.customer)

    def _address_added(self, x: a.AddressAdded) -> None:
        if x.previous_default is not None:
            self.update("customer_addresses", self.handles["address"][x.previous_default], is_default=False)
        self._address(x.address, self.handles["customer"][x.address.customer])

    def _customer_deactivated(self, x: a.CustomerDeactivated) -> None:
        self.update("customers", self.handles["customer"][x.customer], is_deleted=True, updated_on=self.local_now())
        for order in x.cancelled_orders:
            self.update("orders", self.handles["order"][order], status="CANCELLED", updated_on=self.local_now())

    def _menu_item_added(self, x: a.MenuItemAdded) -> None:
        self._menu_item(x.item)

    def _menu_item_modified(self, x: a.MenuItemModified) -> None:
        values: dict[str, Any] = {k: v for k, v in (("name", x.name), ("description", x.description)) if v is not None}
        if x.tags is not None:
            values["tags"] = list(x.tags)
        self.update("menu_items", self.handles["menu_item"][x.menu_item], **values, updated_on=self.local_now())

    def _menu_item_repriced(self, x: a.MenuItemRepriced) -> None:
        self.update("menu_items", self.handles["menu_item"][x.menu_item], price=x.price, updated_on=self.local_now())

    def _menu_item_withdrawn(self, x: a.MenuItemWithdrawn) -> None:
        self.update("menu_items", self.handles["menu_item"][x.menu_item], is_available=False,
                    updated_on=self.local_now())

    def _menu_item_removed(self, x: a.MenuItemRemoved) -> None:
        self.delete("menu_items", self.handles["menu_item"][x.menu_item])

    def _order_opened(self, x: a.OrderOpened) -> None:
        self._order(x.customer, None, x.notes)

    def _order_item_added(self, x: a.OrderItemAdded) -> None:
        self._line(x.line, self.handles["order"][x.line.order])

    def _order_item_quantity_changed(self, x: a.OrderItemQuantityChanged) -> None:
        self.update("order_items", self.handles["line"][x.line], quantity=x.quantity)

    def _order_item_removed(self, x: a.OrderItemRemoved) -> None:
        self.delete("order_items", self.handles["line"][x.line])

    def _delivery_address_set(self, x: a.DeliveryAddressSet) -> None:
        self.update("orders", self.handles["order"][x.order], delivery_address_id=self.handles["address"][x.address],
                    updated_on=self.local_now())

    def _place(self, order_id: int) -> None:
        self.update("orders", order_id, status="PLACED", placed_at=self.clock, updated_on=self.local_now())

    def _order_placed(self, x: a.OrderPlaced) -> None:
        self._place(self.handles["order"][x.order])

    def _checkout(self, x: a.Checkout) -> None:
        order_id = self._order(x.customer, x.delivery_address, x.notes)
        for line in x.lines:
            self._line(line, order_id)
        self._place(order_id)

    def _order_cancelled(self, x: a.OrderCancelled) -> None:
        self.update("orders", self.handles["order"][x.order], status="CANCELLED", updated_on=self.local_now())

    def _order_deleted(self, x: a.OrderDeleted) -> None:
        order_id = self.handles["order"][x.order]
        for line_id in sorted(i for i, row in self.rows["order_items"].items() if row["order_id"] == order_id):
            self.delete("order_items", line_id)
        self.delete("orders", order_id)

    def _touch(self, x: a.Touched) -> None:
        kind = {"customers": "customer", "menu_items": "menu_item", "orders": "order"}[x.table]
        self.update(x.table, self.handles[kind][x.handle], updated_on=self.local_now())


@pytest.fixture(scope="module")
def restaurant():
    return load_mappings([RESTAURANT])


@pytest.mark.parametrize("seed", [1, 42])
def test_folding_the_events_rebuilds_the_legacy_rows(restaurant, seed: int) -> None:
    db, consumer, prior = LegacyDatabase(), FoldingConsumer(), InMemoryPriorRows()
    actions = plan(seed, 1500)
    ignored, touched = Counter[str](), Counter(x.table for x in actions if isinstance(x, a.Touched))
    for action in actions:
        tx = db.run(action)
        result = translate(tx, restaurant, source_id="fold", prior_rows=prior)
        prior.remember_transaction(tx)
        assert not result.dead_letters, result.dead_letters[0].error
        assert not result.unmatched, (action, result.unmatched)
        ignored.update(result.ignored)
        for event in result.events:
            consumer.apply(event.type, json.loads(event.value()))  # the bytes a consumer would read
    removed = {mid for mid, item in consumer.menu_items.items() if item["removed"]}
    customers, items, orders = legacy_state(db.rows)
    assert consumer.customers == customers
    assert consumer.live_menu_items() == items
    assert removed == set(range(1, db.next_id["menu_items"] + 1)) - set(items)
    assert consumer.orders == orders
    deleted_lines = sum(len(x.lines) for x in actions if isinstance(x, a.OrderDeleted))
    assert ignored == Counter({**touched, "order_items": deleted_lines}) - Counter()
    assert sum(x.kind == "checkout" for x in actions) > 10, "the plan exercises checkouts"


def test_declared_columns_are_the_legacy_schema(restaurant) -> None:
    """The mapping's declared types (used to decode schemaless JSON) match legacy_db/tables.py exactly."""
    from sqlalchemy.dialects import postgresql

    from bridge.mapping.loader import declared_types_of

    legacy = declared_types_of({t.name: {c.name: c.type.compile(dialect=postgresql.dialect()) for c in t.columns}
                                for t in metadata.sorted_tables})
    assert restaurant.declared_types() == legacy
    assert load_mappings([RESTAURANT], known_schema=legacy).rule_count() == restaurant.rule_count()


def test_every_update_or_delete_rule_that_reads_old_values_is_listed(restaurant) -> None:
    needs = restaurant.needs_before()
    assert set(needs) == {"customers", "customer_addresses", "menu_items", "orders", "order_items"}
    assert "orders.placed" in needs["orders"] and "order_items.removed" in needs["order_items"]
    assert "menu_items.removed" not in needs["menu_items"]  # key.id is enough for a delete
