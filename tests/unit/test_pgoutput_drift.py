"""Schema drift of the direct source, as pure logic: Relation messages against the mapping's declared types.

What counts as compatible (the decoded values, and so the events, stay the same) and what stops the rules
reading a column; the real ALTER TABLEs run in tests/integration/test_pgoutput_schema_drift.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bridge.mapping.loader import load_mappings
from bridge.sources.pgoutput.drift import MappingContract, SchemaWatch, declared_type, streamed_type
from bridge.sources.pgoutput.protocol import Relation, RelationColumn
from bridge.sources.pgoutput.values import UserType

REPO = Path(__file__).resolve().parents[2]
INT2, INT4, INT8, TEXT, VARCHAR, BPCHAR, NUMERIC = 21, 23, 20, 25, 1043, 1042, 1700
TIMESTAMP, TIMESTAMPTZ, JSON, JSONB, TEXT_ARRAY, VARCHAR_ARRAY, FLOAT4, FLOAT8 = 1114, 1184, 114, 3802, 1009, 1015, 700, 701
ORDER_STATUS = UserType(16500, "public", "order_status", "e", category="E")
AMOUNT = UserType(16510, "public", "amount", "d", base_oid=NUMERIC, category="N", base_modifier=(10 << 16 | 2) + 4)
USER_TYPES = {t.oid: t for t in (ORDER_STATUS, AMOUNT)}


def numeric(precision: int, scale: int) -> int:
    return ((precision << 16) | scale) + 4


@pytest.mark.parametrize(("oid", "modifier", "spelled"), [
    (NUMERIC, numeric(10, 2), "numeric(10,2)"),
    (NUMERIC, -1, "numeric"),
    (VARCHAR, 124, "character varying(120)"),
    (BPCHAR, 6, "character(2)"),
    (TIMESTAMPTZ, 3, "timestamp(3) with time zone"),
    (TIMESTAMP, -1, "timestamp without time zone"),
    (TEXT_ARRAY, -1, "text[]"),
    (INT8, -1, "bigint"),
    (16500, -1, "public.order_status"),
    (16510, -1, "public.amount (a domain over numeric(10,2))"),
    (16999, -1, "type OID 16999"),
])
def test_a_streamed_type_is_spelled_as_postgresql_does(oid: int, modifier: int, spelled: str) -> None:
    assert streamed_type(oid, modifier, USER_TYPES).text == spelled


@pytest.mark.parametrize(("declared", "oid", "modifier"), [
    ("character varying(120)", VARCHAR, 204),  # a longer varchar
    ("character varying(120)", TEXT, -1),
    ("character varying(20)", 16500, -1),  # a varchar status becomes an enum: its labels are the same strings
    ("text", VARCHAR, -1),
    ("integer", INT8, -1),  # widened to bigint: the same integers
    ("bigint", INT4, -1),
    ("smallint", INT4, -1),
    ("numeric(10,2)", NUMERIC, numeric(12, 2)),  # more precision, same scale: "1.50" stays "1.50"
    ("numeric(10,2)", 16510, -1),  # a domain over numeric(10,2)
    ("numeric", NUMERIC, -1),
    ("real", FLOAT8, -1),
    ("json", JSONB, -1),
    ("timestamp without time zone", TIMESTAMP, 3),
    ("timestamp(3) with time zone", TIMESTAMPTZ, -1),
    ("text[]", VARCHAR_ARRAY, -1),
    ("character(2)", BPCHAR, 6),
])
def test_compatible_changes_keep_every_value(declared: str, oid: int, modifier: int) -> None:
    assert declared_type(declared).kind == streamed_type(oid, modifier, USER_TYPES).kind


@pytest.mark.parametrize(("declared", "oid", "modifier"), [
    ("integer", NUMERIC, numeric(10, 2)),  # 1 would become "1.00"
    ("numeric(10,2)", TEXT, -1),  # "cheap"
    ("numeric(10,2)", NUMERIC, numeric(10, 3)),  # "1.50" would become "1.500"
    ("numeric(10,2)", NUMERIC, -1),  # any scale
    ("numeric(10,2)", FLOAT8, -1),
    ("integer", TEXT, -1),
    ("timestamp without time zone", TIMESTAMPTZ, -1),
    ("character(2)", BPCHAR, 7),  # blank padding changes the value
    ("character(2)", VARCHAR, 6),
    ("text", INT4, -1),
    ("boolean", TEXT, -1),
    ("text[]", TEXT, -1),
    ("integer", 16999, -1),  # a type nobody knows
])
def test_incompatible_changes_are_drift(declared: str, oid: int, modifier: int) -> None:
    assert declared_type(declared).kind != streamed_type(oid, modifier, USER_TYPES).kind


def relation(name: str, *columns: tuple[str, int, int], namespace: str = "public") -> Relation:
    return Relation(16600, namespace, name, "d", tuple(RelationColumn(c, oid, mod, c == "id") for c, oid, mod in columns))


ORDER_ITEMS = (("id", INT8, -1), ("order_id", INT8, -1), ("menu_item_id", INT4, -1),
               ("unit_price", NUMERIC, numeric(10, 2)), ("created_at", TIMESTAMPTZ, -1))


@pytest.fixture(scope="module")
def contract() -> MappingContract:
    return MappingContract.of(load_mappings([REPO / "mappings" / "restaurant.yaml"]))


def test_the_restaurant_rules_reading_a_column_are_known(contract: MappingContract) -> None:
    assert set(contract.readers("order_items", "quantity")) == {
        "order_items.added", "order_items.quantity_changed", "orders.opened", "orders.placed"}
    assert "menu_items.price_changed" in contract.readers("menu_items", "price")
    assert not any(rule.startswith("customers.") for rule in contract.readers("menu_items", "price"))


def test_a_type_change_stops_exactly_the_rules_reading_the_column_naming_everything(
        contract: MappingContract) -> None:
    watch = SchemaWatch(contract, schema="public")
    assert watch.observe(relation("order_items", *ORDER_ITEMS, ("quantity", INT4, -1)), {}, 100) == []
    assert watch.stopped_rules == {}

    notes = watch.observe(relation("order_items", *ORDER_ITEMS, ("quantity", NUMERIC, numeric(10, 2))), {}, 200)
    assert set(watch.stopped_rules) == {"order_items.added", "order_items.quantity_changed", "orders.opened",
                                        "orders.placed"}
    reason = watch.stopped_rules["order_items.added"]
    for part in ("public.order_items.quantity", "declared integer", "numeric(10,2)", "orders.placed", "restart"):
        assert part in reason
    [note] = notes
    assert note.level == logging.WARNING and note.fields["column"] == "quantity" and note.fields["lsn"] == "0/C8"

    assert watch.observe(relation("order_items", *ORDER_ITEMS, ("quantity", INT4, -1)), {}, 300)[0].level \
        == logging.WARNING  # the column is back as declared: the rules resume, and the log says so
    assert watch.stopped_rules == {}


def test_a_dropped_column_stops_its_readers_and_a_compatible_change_is_noted_once(contract: MappingContract) -> None:
    watch = SchemaWatch(contract, schema="public")
    customers = (("id", INT8, -1), ("email", VARCHAR, 259), ("full_name", VARCHAR, 204), ("preferences", JSONB, -1),
                 ("created_at", TIMESTAMPTZ, -1), ("updated_on", TIMESTAMP, -1), ("is_deleted", 16, -1))
    watch.observe(relation("customers", *customers), {}, 100)
    assert "customers.signed_up" in watch.stopped_rules
    assert "no longer in the table" in watch.stopped_rules["customers.signed_up"]
    assert "customers.deactivated" not in watch.stopped_rules  # reads is_deleted only

    items = (("id", INT4, -1), ("name", VARCHAR, 204), ("description", TEXT, -1), ("price", NUMERIC, numeric(10, 2)),
             ("category", VARCHAR, 44), ("tags", TEXT_ARRAY, -1), ("is_available", 16, -1),
             ("created_at", TIMESTAMPTZ, -1), ("updated_on", TIMESTAMP, -1))
    [note] = watch.observe(relation("menu_items", *items), {}, 200)  # name: varchar(120) -> varchar(200)
    assert note.level == logging.INFO and note.fields["found"] == "character varying(200)"
    assert watch.observe(relation("menu_items", *items), {}, 300) == []
    assert not any(rule.startswith("menu_items.") for rule in watch.stopped_rules)


def test_an_enum_status_is_compatible_and_other_schemas_are_not_compared(contract: MappingContract) -> None:
    watch = SchemaWatch(contract, schema="public")
    orders = (("id", INT8, -1), ("customer_id", INT8, -1), ("status", 16500, -1), ("delivery_address_id", INT8, -1),
              ("placed_at", TIMESTAMPTZ, -1), ("notes", TEXT, -1), ("created_at", TIMESTAMPTZ, -1),
              ("updated_on", TIMESTAMP, -1))
    [note] = watch.observe(relation("orders", *orders), USER_TYPES, 100)
    assert note.level == logging.INFO and note.fields["found"] == "public.order_status"
    assert watch.stopped_rules == {}
    assert watch.observe(relation("orders", ("id", TEXT, -1), namespace="archive"), {}, 200) == []
    assert watch.stopped_rules == {}
