"""Where an undecodable Debezium record sits in its transaction, read leniently from its raw JSON.

A row that cannot be decoded still belongs to a transaction whose END counts it; if it were simply
dead-lettered on its own, that transaction would wait for it forever (and, once its offset was
committed, every restart would too). Its transaction block (`transaction.id`, `total_order`) is
usually intact even when a column is not, so it is read here with no checks beyond its own shape.
"""

from __future__ import annotations

from bridge.sources.debezium.envelope import parse_transaction_id, split_document
from bridge.sources.debezium.records import LOGICAL_MESSAGES
from bridge.sources.transactions import TransactionPlace


def transaction_place(value: bytes | None) -> TransactionPlace | None:
    """The record's transaction and place in it, or None when its transaction block cannot be read (not
    JSON, nested too deep, no block: a snapshot read, or a connector without transaction metadata)."""
    if value is None:
        return None
    try:
        _schema, payload = split_document(value)
    except ValueError:
        return None
    if payload.__class__ is not dict or "op" not in payload:
        return None
    block = payload.get("transaction")
    if block.__class__ is not dict:
        return None
    try:
        xid, _lsn = parse_transaction_id(block.get("id"), "transaction.id")
    except ValueError:
        return None
    order = block.get("total_order")
    if order.__class__ is not int or order < 1:
        return None
    source = payload.get("source")
    source = source if source.__class__ is dict else {}
    schema, table, lsn = source.get("schema"), source.get("table"), source.get("lsn")
    if payload.get("op") == "m":
        collection = LOGICAL_MESSAGES
    elif schema.__class__ is str and table.__class__ is str:
        collection = f"{schema}.{table}"
    else:
        collection = ""
    return TransactionPlace(xid=xid, total_order=order, data_collection=collection,
                            change_lsn=lsn if lsn.__class__ is int else None)
