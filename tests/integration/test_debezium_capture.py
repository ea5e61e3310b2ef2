"""The legacy app's traffic, captured by real Debezium into real Kafka, read back with kafka-python.

This is the ground the bridge stands on: if these counts do not match what the simulator did, no
mapping can be right.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from legacy_db.simulate import run_simulation

from tests.conftest import DebeziumCapture
from tests.support.kafka_reading import payload, wait_for
from tests.support.local_stack import StackInfo

TABLES = ("customers", "customer_addresses", "menu_items", "orders", "order_items")
TRANSACTIONS = 300


def _xid(transaction_id: str) -> int:
    # Debezium's transaction.id is "<xid>:<lsn of this record>": only the xid part is stable.
    return int(transaction_id.split(":", 1)[0])


def test_simulated_traffic_arrives_through_debezium_complete_and_grouped(
    stack: StackInfo, debezium_capture: DebeziumCapture
) -> None:
    report = run_simulation(debezium_capture.dsn, seed=7, count=TRANSACTIONS)
    assert len(report.transactions) == TRANSACTIONS
    assert {op for _table, op in report.row_changes} == {"c", "u", "d"}, "the workload must insert, update and delete"
    expected_xids = {tx.xid for tx in report.transactions}

    def all_ends_arrived(records: list) -> bool:
        ends = [p for p in map(payload, records) if p and p["status"] == "END"]
        return {_xid(p["id"]) for p in ends} >= expected_xids

    tx_records = wait_for(stack.bootstrap_servers, [debezium_capture.transaction_topic], all_ends_arrived,
                          what=f"END markers of {TRANSACTIONS} transactions")
    expected_rows = sum(report.row_changes.values())
    table_topics = [debezium_capture.table_topic(t) for t in TABLES]
    row_records = wait_for(
        stack.bootstrap_servers, table_topics,
        lambda records: sum(r.value is not None for r in records) >= expected_rows,
        what=f"{expected_rows} row change events",
    )

    # Counts per table and operation equal what the simulator wrote (tombstones are not changes).
    changes = [(r.topic.rsplit(".", 1)[1], payload(r)) for r in row_records if r.value is not None]
    seen = Counter((table, event["op"]) for table, event in changes)
    assert seen == report.row_changes
    assert not any(event["op"] == "r" for _, event in changes), "tables were empty at snapshot time"

    # Rows of one legacy transaction share one xid (though transaction.id differs per record), and each
    # simulator transaction's changes arrive under exactly its xid.
    by_xid: dict[int, Counter] = defaultdict(Counter)
    for table, event in changes:
        xid = _xid(event["transaction"]["id"])
        assert xid == event["source"]["txId"]
        by_xid[xid][(table, event["op"])] += 1
    assert {tx.xid: tx.changes for tx in report.transactions} == dict(by_xid)
    distinct_ids = {event["transaction"]["id"] for _, event in changes}
    assert len(distinct_ids) == len(changes), "Debezium's per-record transaction.id is expected to differ"

    # The transaction topic's END counts match the rows that arrived, in total and per table.
    markers = [p for p in map(payload, tx_records) if p]
    ends = {_xid(p["id"]): p for p in markers if p["status"] == "END"}
    begins = {_xid(p["id"]) for p in markers if p["status"] == "BEGIN"}
    assert begins == set(ends) == expected_xids
    for xid, end in ends.items():
        assert end["event_count"] == sum(by_xid[xid].values())
        per_table = {c["data_collection"].rsplit(".", 1)[1]: c["event_count"] for c in end["data_collections"]}
        rows_per_table = Counter()
        for (table, _op), n in by_xid[xid].items():
            rows_per_table[table] += n
        assert per_table == dict(rows_per_table)
