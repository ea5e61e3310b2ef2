"""What the end-to-end tests demand of published domain events, whichever source produced them:
folded, they equal the legacy rows; per aggregate they are in order; a repeat is byte-identical."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tests.support.restaurant_fold import FoldingConsumer, legacy_state

TABLES = ("customers", "customer_addresses", "menu_items", "orders", "order_items")


def legacy_rows(dsn: str) -> dict[str, dict[int, dict]]:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return {t: {row["id"]: row for row in conn.execute(f"SELECT * FROM {t}")} for t in TABLES}


def fold(records: list[Any]) -> FoldingConsumer:
    """Kafka records (type in the ce_type header, JSON data as the value) folded by the reference consumer."""
    consumer = FoldingConsumer()
    for record in records:
        consumer.apply(dict(record.headers)["ce_type"].decode(), json.loads(record.value))
    return consumer


def assert_state_matches(consumer: FoldingConsumer, dsn: str) -> None:
    customers, items, orders = legacy_state(legacy_rows(dsn))
    assert consumer.customers == customers
    assert consumer.live_menu_items() == items
    assert consumer.orders == orders


def assert_ordered_per_aggregate(records: list[Any]) -> None:
    """On each partition, an aggregate's events carry rising sequences (first occurrences)."""
    last: dict[tuple[str, bytes], str] = {}
    seen: set[bytes] = set()
    for record in records:
        headers = dict(record.headers)
        if headers["ce_id"] in seen:
            continue
        seen.add(headers["ce_id"])
        sequence = headers["ce_sequence"].decode()
        aggregate = (record.topic, record.key)
        assert sequence > last.get(aggregate, ""), f"aggregate {aggregate} out of order at {sequence}"
        last[aggregate] = sequence


def assert_repeats_identical(records: list[Any]) -> list[Any]:
    """Every event published more than once carries the same key, bytes and headers; returns the first copies."""
    by_id: dict[bytes, list[Any]] = defaultdict(list)
    for record in records:
        by_id[dict(record.headers)["ce_id"]].append(record)
    for copies in by_id.values():
        assert len({(r.key, r.value, tuple(r.headers)) for r in copies}) == 1
    unique = [r for r in records if by_id[dict(r.headers)["ce_id"]][0] is r]
    print(f"{len(records)} events published, {len(records) - len(unique)} repeated, {len(unique)} unique")
    return unique
