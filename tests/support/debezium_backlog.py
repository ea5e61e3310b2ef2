"""A Debezium backlog whose topics advance at different paces in transactions, as Kafka records (without
Kafka): every 10th transaction adds a customer and each adds 3 order items, so read at the same number of
records per topic, the customers topic runs far ahead of order_items. For the read-ahead bound's tests."""

from __future__ import annotations

import json
from types import SimpleNamespace

from kafka import TopicPartition

DECLARED = {"customers": {"id": "bigint"}, "order_items": {"id": "bigint"}}  # the rows are schemaless JSON


def partitions(prefix: str) -> tuple[TopicPartition, TopicPartition, TopicPartition]:
    """The transaction topic's, the customers topic's and the order items topic's partition."""
    return (TopicPartition(f"{prefix}.transaction", 0), TopicPartition(f"{prefix}.public.customers", 0),
            TopicPartition(f"{prefix}.public.order_items", 0))


def row(prefix: str, table: str, xid: int, order: int, offset: int) -> SimpleNamespace:
    value = {"before": None, "after": {"id": offset}, "op": "c", "ts_ms": 1700000000001,
             "source": {"version": "3.6.1.Final", "connector": "postgresql", "name": prefix, "ts_ms": 1700000000000,
                        "snapshot": "false", "db": "restaurant", "sequence": '[null,"100"]', "schema": "public",
                        "table": table, "txId": xid, "lsn": 100 * xid + order, "xmin": None},
             "transaction": {"id": f"{xid}:{100 * xid}", "total_order": order, "data_collection_order": order}}
    return SimpleNamespace(offset=offset, key=json.dumps({"id": offset}).encode(), value=json.dumps(value).encode(),
                           headers=[])


def end(xid: int, per_table: dict[str, int], offset: int) -> SimpleNamespace:
    value = {"status": "END", "id": f"{xid}:{100 * xid}", "ts_ms": 1700000000000, "event_count": sum(per_table.values()),
             "data_collections": [{"data_collection": name, "event_count": n} for name, n in per_table.items()]}
    return SimpleNamespace(offset=offset, key=json.dumps({"id": f"{xid}:{100 * xid}"}).encode(),
                           value=json.dumps(value).encode(), headers=[])


def backlog(prefix: str, transactions: int) -> dict[TopicPartition, list[SimpleNamespace]]:
    """The records of `transactions` transactions per partition, in commit order."""
    tx, customers, items = partitions(prefix)
    logs: dict[TopicPartition, list[SimpleNamespace]] = {tx: [], customers: [], items: []}
    for xid in range(1, transactions + 1):
        per_table, order = {}, 0
        if xid % 10 == 0:
            order += 1
            logs[customers].append(row(prefix, "customers", xid, order, len(logs[customers])))
            per_table["public.customers"] = 1
        for _ in range(3):
            order += 1
            logs[items].append(row(prefix, "order_items", xid, order, len(logs[items])))
        per_table["public.order_items"] = 3
        logs[tx].append(end(xid, per_table, len(logs[tx])))
    return logs
