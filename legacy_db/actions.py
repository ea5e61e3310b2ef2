"""The business actions of the legacy app, as plain immutable values: what the planner emits, what the
executor turns into one SQL transaction each.

Entities are named by *handles*, not database ids: the n-th customer (menu item, order, ...) the plan
creates has handle n-1, counted per kind from zero. Handles make a plan independent of the database it will
run against; the executor maps them to ids with ``RETURNING``. Every value an action writes (names, prices,
quantities, texts) is in the action, so the same plan writes the same data everywhere; only the database's
own clock columns differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, Literal, TypeAlias, get_args

TouchTable = Literal["customers", "menu_items", "orders"]


@dataclass(frozen=True, slots=True)
class NewAddress:
    handle: int
    customer: int
    label: str | None
    street: str
    city: str
    postal_code: str | None
    country: str
    is_default: bool


@dataclass(frozen=True, slots=True)
class NewCustomer:
    handle: int
    email: str
    full_name: str
    phone: str | None
    preferences: dict[str, Any] | None
    #: Signing up with an address writes both rows in the same transaction.
    first_address: NewAddress | None


@dataclass(frozen=True, slots=True)
class NewMenuItem:
    handle: int
    name: str
    description: str | None
    price: Decimal
    category: str | None
    tags: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class NewOrderLine:
    handle: int
    order: int
    menu_item: int
    quantity: int
    unit_price: Decimal


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """First action of every plan: a menu and a few customers, so every other action has something to use."""

    kind: ClassVar[str] = "bootstrap"
    menu_items: tuple[NewMenuItem, ...]
    customers: tuple[NewCustomer, ...]


@dataclass(frozen=True, slots=True)
class CustomerSignedUp:
    kind: ClassVar[str] = "customer_signed_up"
    customer: NewCustomer


@dataclass(frozen=True, slots=True)
class AddressAdded:
    """A new address; when it becomes the default, the previous default is cleared in the same transaction."""

    kind: ClassVar[str] = "address_added"
    address: NewAddress
    previous_default: int | None


@dataclass(frozen=True, slots=True)
class CustomerDeactivated:
    """Soft delete (is_deleted = true); the app also cancels the customer's open orders, same transaction."""

    kind: ClassVar[str] = "customer_deactivated"
    customer: int
    cancelled_orders: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class MenuItemAdded:
    kind: ClassVar[str] = "menu_item_added"
    item: NewMenuItem


@dataclass(frozen=True, slots=True)
class MenuItemModified:
    """Edits some of name, description, tags; a field left as None is not part of the UPDATE."""

    kind: ClassVar[str] = "menu_item_modified"
    menu_item: int
    name: str | None
    description: str | None
    tags: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class MenuItemRepriced:
    kind: ClassVar[str] = "menu_item_repriced"
    menu_item: int
    price: Decimal


@dataclass(frozen=True, slots=True)
class MenuItemWithdrawn:
    kind: ClassVar[str] = "menu_item_withdrawn"
    menu_item: int


@dataclass(frozen=True, slots=True)
class MenuItemRemoved:
    """Hard DELETE. Order lines naming the item stay: order_items.menu_item_id has no foreign key."""

    kind: ClassVar[str] = "menu_item_removed"
    menu_item: int


@dataclass(frozen=True, slots=True)
class OrderOpened:
    kind: ClassVar[str] = "order_opened"
    order: int
    customer: int
    notes: str | None


@dataclass(frozen=True, slots=True)
class OrderItemAdded:
    kind: ClassVar[str] = "order_item_added"
    line: NewOrderLine


@dataclass(frozen=True, slots=True)
class OrderItemQuantityChanged:
    kind: ClassVar[str] = "order_item_quantity_changed"
    order: int
    line: int
    quantity: int


@dataclass(frozen=True, slots=True)
class OrderItemRemoved:
    kind: ClassVar[str] = "order_item_removed"
    order: int
    line: int


@dataclass(frozen=True, slots=True)
class DeliveryAddressSet:
    kind: ClassVar[str] = "delivery_address_set"
    order: int
    address: int


@dataclass(frozen=True, slots=True)
class OrderPlaced:
    kind: ClassVar[str] = "order_placed"
    order: int


@dataclass(frozen=True, slots=True)
class Checkout:
    """One transaction: INSERT the order (OPEN), INSERT its lines, UPDATE it to PLACED."""

    kind: ClassVar[str] = "checkout"
    order: int
    customer: int
    delivery_address: int | None
    notes: str | None
    lines: tuple[NewOrderLine, ...]


@dataclass(frozen=True, slots=True)
class OrderCancelled:
    kind: ClassVar[str] = "order_cancelled"
    order: int


@dataclass(frozen=True, slots=True)
class OrderDeleted:
    """DELETE the order's lines (listed, so the executor can check the row count), then the order."""

    kind: ClassVar[str] = "order_deleted"
    order: int
    lines: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Touched:
    """Legacy noise: an UPDATE that only bumps updated_on. A mapping must not turn it into an event."""

    kind: ClassVar[str] = "touch"
    table: TouchTable
    handle: int


Action: TypeAlias = (
    Bootstrap
    | CustomerSignedUp
    | AddressAdded
    | CustomerDeactivated
    | MenuItemAdded
    | MenuItemModified
    | MenuItemRepriced
    | MenuItemWithdrawn
    | MenuItemRemoved
    | OrderOpened
    | OrderItemAdded
    | OrderItemQuantityChanged
    | OrderItemRemoved
    | DeliveryAddressSet
    | OrderPlaced
    | Checkout
    | OrderCancelled
    | OrderDeleted
    | Touched
)

ACTION_TYPES: tuple[type, ...] = get_args(Action)

#: Every kind of business action, in a stable order.
ACTION_KINDS: tuple[str, ...] = tuple(t.kind for t in ACTION_TYPES)  # type: ignore[attr-defined]
