"""Schema changes while the direct source streams: the Relation messages against the mapping's declared types.

A column whose type no longer fits its declaration (integer -> numeric, numeric -> text) or that is gone
stops the rules reading it: their changes are dead-lettered (or the bridge halts, per policy) naming
table, column, declared and new type and the rules; nothing malformed is published. Changes that keep
every value's meaning (a longer varchar, a new enum whose labels are the old strings) go on as before.
Each test runs the daemon in this process (tests/support/direct_bridge.py) on PostgreSQL 15 and 18.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bridge.pipeline import PipelineStopped
from bridge.settings import Settings
from tests.support.direct_bridge import DaemonThread, direct_settings, log_records, payloads


def sql(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


SEED = (
    "INSERT INTO customers (id, email, full_name, created_at, updated_on) VALUES (1, 'a@example.com', 'A', now(), now())",
    "INSERT INTO menu_items (id, name, price) VALUES (1, 'Soup', 4.50)",
    "INSERT INTO orders (id, customer_id) VALUES (1, 1)",
    "INSERT INTO order_items (order_id, menu_item_id, quantity, unit_price) VALUES (1, 1, 2, 4.50)",
)


def run_with(settings: Settings, dsn: str, *steps: str) -> DaemonThread:
    """The daemon runs through the seed rows, then `steps` (DDL and DML) while it streams; caught up, stopped.
    The steps start once the initial snapshot (of empty tables) is complete: DDL while it is read would make
    the next start redo it on a new slot, with the seed rows read as they are after the steps."""
    daemon = DaemonThread(settings).start()
    try:
        daemon.wait_for_slot(dsn)
        daemon.wait_for_snapshot()
        sql(dsn, *SEED, *steps)
        daemon.wait_caught_up(dsn)
    finally:
        daemon.stop()
    return daemon


def dead_letters(settings: Settings) -> list[dict[str, Any]]:
    return [json.loads(record.value) for record in log_records(settings, dead_letters=True)]


def events_of(settings: Settings, kind: str) -> list[dict[str, Any]]:
    return [data for event_type, data in payloads(log_records(settings)) if f".{kind}." in event_type]


@pytest.fixture
def settings(legacy_db_any: str, tmp_path: Path) -> Callable[..., Settings]:
    slot = f"sd_{uuid.uuid4().hex[:8]}"

    def make(**overrides: Any) -> Settings:
        built = direct_settings(legacy_db_any, slot, tmp_path)
        return built.model_copy(update=overrides) if overrides else built
    return make


def test_integer_quantity_becoming_numeric_stops_the_rules_reading_it(legacy_db_any: str,
                                                                       settings: Callable[..., Settings]) -> None:
    config = settings()
    run_with(config, legacy_db_any,
             "ALTER TABLE order_items ALTER COLUMN quantity TYPE numeric(10,2)",
             "INSERT INTO order_items (order_id, menu_item_id, quantity, unit_price) VALUES (1, 1, 1.5, 4.50)",
             "UPDATE menu_items SET name = 'Soup of the day' WHERE id = 1")

    added = events_of(config, "ItemAddedToOrder")
    assert [item["quantity"] for item in added] == [2], "an event with the drifted quantity was published"
    assert [e["name"] for e in events_of(config, "MenuItemModified")] == ["Soup of the day"], "other tables go on"
    letters = dead_letters(config)
    assert letters, "the change the stopped rule would have translated is not dead-lettered"
    assert {letter["rule"] for letter in letters} == {"order_items.added"}
    error = letters[0]["error"]
    for part in ("public.order_items", "quantity", "integer", "numeric(10,2)", "order_items.added",
                 "order_items.quantity_changed", "orders.opened"):
        assert part in error, f"{part!r} missing from: {error}"
    assert letters[0]["change"]["after"]["quantity"] == {"$decimal": "1.50"}  # the change, exactly


def test_numeric_price_becoming_text_stops_the_price_rules_and_halts_under_policy_stop(
        legacy_db_any: str, settings: Callable[..., Settings]) -> None:
    config = settings()
    config = config.model_copy(update={"pipeline": config.pipeline.model_copy(update={"on_error": "stop"})})
    with pytest.raises(PipelineStopped) as caught:
        run_with(config, legacy_db_any,
                 "ALTER TABLE menu_items ALTER COLUMN price TYPE text",
                 "UPDATE menu_items SET price = 'cheap' WHERE id = 1")
    message = str(caught.value)
    for part in ("public.menu_items", "price", "numeric(10,2)", "text", "menu_items.price_changed"):
        assert part in message, f"{part!r} missing from: {message}"
    published = [data for _, data in payloads(log_records(config))]
    assert all(data.get("newPrice") != "cheap" for data in published)


def test_a_column_a_rule_reads_that_was_dropped_stops_that_rule(legacy_db_any: str,
                                                                 settings: Callable[..., Settings]) -> None:
    config = settings()
    run_with(config, legacy_db_any,
             "ALTER TABLE customers DROP COLUMN phone",
             "INSERT INTO customers (id, email, full_name, created_at, updated_on) VALUES (2, 'b@example.com', 'B', "
             "now(), now())")
    assert [c["customerId"] for c in events_of(config, "CustomerSignedUp")] == [1]
    letters = dead_letters(config)
    assert [letter["rule"] for letter in letters] == ["customers.signed_up"]
    assert "phone" in letters[0]["error"] and "no longer" in letters[0]["error"]


def test_compatible_changes_go_on_a_longer_varchar_and_a_new_enum_for_the_status(
        legacy_db_any: str, settings: Callable[..., Settings]) -> None:
    config = settings()
    run_with(config, legacy_db_any,
             "ALTER TABLE menu_items ALTER COLUMN name TYPE varchar(200)",
             "UPDATE menu_items SET name = 'Soup of the day, with bread' WHERE id = 1",
             "CREATE TYPE order_status AS ENUM ('OPEN', 'PLACED', 'CANCELLED')",
             "ALTER TABLE orders ALTER COLUMN status DROP DEFAULT",
             "ALTER TABLE orders ALTER COLUMN status TYPE order_status USING status::order_status",
             "ALTER TABLE orders ALTER COLUMN status SET DEFAULT 'OPEN'",
             "UPDATE orders SET status = 'PLACED', placed_at = now() WHERE id = 1")
    assert dead_letters(config) == []
    assert [e["name"] for e in events_of(config, "MenuItemModified")] == ["Soup of the day, with bread"]
    assert [e["orderId"] for e in events_of(config, "OrderPlaced")] == [1]
