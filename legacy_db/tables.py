"""SQLAlchemy Core tables mirroring ``migrations/*.sql`` exactly: types, lengths, nullability, keys.

The SQL files are the source of truth (the legacy app created the schema, not SQLAlchemy); these objects exist
so the backfill and the tests can read the tables with typed columns. An integration test reflects a migrated
database and fails on any drift. ``schema_migrations`` is deliberately not part of :data:`metadata`: it is
bookkeeping, not legacy data, and nothing should snapshot or stream it.
"""

from __future__ import annotations

from sqlalchemy import (
    CHAR,
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP

metadata = MetaData()

# The two clocks of the legacy app: created_at is filled by a DEFAULT in the server's time zone,
# updated_on is written by the application as a naive local timestamp.
_TIMESTAMPTZ = TIMESTAMP(timezone=True)
_LOCAL_TIMESTAMP = TIMESTAMP(timezone=False)

customers = Table(
    "customers",
    metadata,
    Column("id", BigInteger, primary_key=True),  # bigserial
    Column("email", String(255), nullable=False),
    Column("full_name", String(200), nullable=False),
    Column("phone", String(40), nullable=True),
    Column("preferences", JSONB, nullable=True),
    Column("created_at", _TIMESTAMPTZ, nullable=True, server_default=text("now()")),
    Column("updated_on", _LOCAL_TIMESTAMP, nullable=True),
    Column("is_deleted", Boolean, nullable=False, server_default=text("false")),
    UniqueConstraint("email", name="customers_email_key"),
)

customer_addresses = Table(
    "customer_addresses",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("customer_id", BigInteger, ForeignKey("customers.id"), nullable=False),
    Column("label", String(40), nullable=True),
    Column("street", String(200), nullable=False),
    Column("city", String(100), nullable=False),
    Column("postal_code", String(20), nullable=True),
    Column("country", CHAR(2), nullable=False),
    Column("is_default", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", _TIMESTAMPTZ, nullable=True, server_default=text("now()")),
    Index("customer_addresses_customer_id_idx", "customer_id"),
)

menu_items = Table(
    "menu_items",
    metadata,
    Column("id", Integer, primary_key=True),  # serial, not bigserial: the oldest table of the app
    Column("name", String(120), nullable=False),
    # STORAGE EXTERNAL (set by the migration): long descriptions live in the TOAST table, uncompressed.
    Column("description", Text, nullable=True),
    Column("price", Numeric(10, 2), nullable=False),
    Column("category", String(40), nullable=True),
    Column("tags", ARRAY(Text), nullable=True),
    Column("is_available", Boolean, nullable=False, server_default=text("true")),
    Column("created_at", _TIMESTAMPTZ, nullable=True, server_default=text("now()")),
    Column("updated_on", _LOCAL_TIMESTAMP, nullable=True),
)

orders = Table(
    "orders",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("customer_id", BigInteger, ForeignKey("customers.id"), nullable=False),
    # 'OPEN' | 'PLACED' | 'CANCELLED', enforced only by the application.
    Column("status", String(20), nullable=False, server_default=text("'OPEN'::character varying")),
    Column("delivery_address_id", BigInteger, ForeignKey("customer_addresses.id"), nullable=True),
    Column("placed_at", _TIMESTAMPTZ, nullable=True),
    Column("notes", Text, nullable=True),
    Column("created_at", _TIMESTAMPTZ, nullable=True, server_default=text("now()")),
    Column("updated_on", _LOCAL_TIMESTAMP, nullable=True),
    Index("orders_customer_id_idx", "customer_id"),
)

order_items = Table(
    "order_items",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("order_id", BigInteger, ForeignKey("orders.id"), nullable=False),
    # No foreign key (a legacy wart): a line may name a menu item that has since been deleted.
    Column("menu_item_id", Integer, nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("unit_price", Numeric(10, 2), nullable=False),
    Column("created_at", _TIMESTAMPTZ, nullable=True, server_default=text("now()")),
    Index("order_items_order_id_idx", "order_id"),
)

#: Columns holding a clock reading taken by the database, which differ between two otherwise identical runs.
CLOCK_COLUMNS: dict[str, frozenset[str]] = {
    "customers": frozenset({"created_at", "updated_on"}),
    "customer_addresses": frozenset({"created_at"}),
    "menu_items": frozenset({"created_at", "updated_on"}),
    "orders": frozenset({"created_at", "updated_on", "placed_at"}),
    "order_items": frozenset({"created_at"}),
}

#: Parents before children: the order in which rows can be inserted (reverse it to delete).
TABLE_NAMES: tuple[str, ...] = tuple(t.name for t in metadata.sorted_tables)
