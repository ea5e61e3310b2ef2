"""A reference consumer: what a new service does with the restaurant's domain events.

It folds the published events (type and JSON data, exactly as on the bus) into per-customer,
per-menu-item and per-order state, and `legacy_state` reads the same shape from the legacy rows, so a
test can demand that the two agree exactly. Money stays a string on the bus ("18.90"); it is compared
as a string too, since the legacy rows' numeric(10,2) values render the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from bridge.events import to_json_value


class FoldingConsumer:
    def __init__(self) -> None:
        self.customers: dict[int, dict[str, Any]] = {}
        self.menu_items: dict[int, dict[str, Any]] = {}
        self.orders: dict[int, dict[str, Any]] = {}

    def apply(self, event_type: str, d: dict[str, Any]) -> None:  # noqa: C901,PLR0912 (one branch per event)
        name = event_type.split(".")[2]
        if name == "CustomerSignedUp":
            self.customers[d["customerId"]] = {"email": d["email"], "name": d["fullName"], "active": True,
                                               "addresses": {}}
        elif name in ("CustomerDeactivated", "CustomerReactivated"):
            self.customers[d["customerId"]]["active"] = name == "CustomerReactivated"
        elif name == "AddressAdded":
            self.customers[d["customerId"]]["addresses"][d["addressId"]] = {
                "street": d["street"], "city": d["city"], "country": d["country"], "default": d["isDefault"]}
        elif name == "AddressDefaultChanged":
            self.customers[d["customerId"]]["addresses"][d["addressId"]]["default"] = d["isDefault"]
        elif name == "MenuItemAdded":
            self.menu_items[d["menuItemId"]] = {"name": d["name"], "description": d["description"],
                                                "price": d["price"], "category": d["category"], "tags": d["tags"],
                                                "available": True, "removed": False}
        elif name == "MenuItemModified":
            item = self.menu_items[d["menuItemId"]]
            item.update({k: d[k] for k in ("name", "description", "category", "tags") if k in d})
        elif name == "MenuItemPriceChanged":
            assert self.menu_items[d["menuItemId"]]["price"] == d["oldPrice"], d
            self.menu_items[d["menuItemId"]]["price"] = d["newPrice"]
        elif name in ("MenuItemWithdrawn", "MenuItemMadeAvailable"):
            self.menu_items[d["menuItemId"]]["available"] = name == "MenuItemMadeAvailable"
        elif name == "MenuItemRemoved":
            self.menu_items[d["menuItemId"]]["removed"] = True
        elif name == "OrderOpened":
            self.orders[d["id"]] = {"status": "OPEN", "customer": d["customerId"], "address": None, "lines": {}}
        elif name == "DeliveryAddressAddedToOrder":
            self.orders[d["orderId"]]["address"] = d["addressId"]
        elif name == "ItemAddedToOrder":
            self.orders[d["orderId"]]["lines"][d["orderItemId"]] = (d["menuItemId"], d["price"], d["quantity"])
        elif name == "ItemQuantityChanged":
            menu_item, price, old = self.orders[d["orderId"]]["lines"][d["orderItemId"]]
            assert old == d["oldQuantity"], d
            self.orders[d["orderId"]]["lines"][d["orderItemId"]] = (menu_item, price, d["quantity"])
        elif name == "ItemRemovedFromOrder":
            del self.orders[d["orderId"]]["lines"][d["orderItemId"]]
        elif name == "OrderPlaced":
            order = self.orders[d["orderId"]]
            order["status"] = "PLACED"
            if "lines" in d:  # a checkout: the lines announced in the same transaction
                assert {line["orderItemId"]: (line["menuItemId"], line["price"], line["quantity"])
                        for line in d["lines"]} == order["lines"]
                total = sum((Decimal(p) * q for _, p, q in order["lines"].values()), Decimal(0))
                assert Decimal(d["total"]) == total, d
        elif name == "OrderCanceled":
            self.orders[d["orderId"]]["status"] = "CANCELLED"
        elif name == "OrderDeleted":
            del self.orders[d["orderId"]]
        else:
            raise AssertionError(f"unexpected event {event_type}")

    def live_menu_items(self) -> dict[int, dict[str, Any]]:
        return {k: v for k, v in self.menu_items.items() if not v["removed"]}


def legacy_state(rows: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> tuple[dict, dict, dict]:
    """(customers, menu items, orders) from the legacy tables' rows (table -> id -> row), in the fold's shape."""
    j = to_json_value  # the bus's encoding of each value
    customers = {cid: {"email": c["email"], "name": c["full_name"], "active": not c["is_deleted"],
                       "addresses": {aid: {"street": ad["street"], "city": ad["city"], "country": ad["country"],
                                           "default": ad["is_default"]}
                                     for aid, ad in rows["customer_addresses"].items() if ad["customer_id"] == cid}}
                 for cid, c in rows["customers"].items()}
    items = {mid: {"name": m["name"], "description": m["description"], "price": j(m["price"]),
                   "category": m["category"], "tags": j(m["tags"]), "available": m["is_available"], "removed": False}
             for mid, m in rows["menu_items"].items()}
    orders = {oid: {"status": o["status"], "customer": o["customer_id"], "address": o["delivery_address_id"],
                    "lines": {lid: (li["menu_item_id"], j(li["unit_price"]), li["quantity"])
                              for lid, li in rows["order_items"].items() if li["order_id"] == oid}}
              for oid, o in rows["orders"].items()}
    return customers, items, orders
