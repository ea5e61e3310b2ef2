"""pgoutput messages of the legacy restaurant's tables, as PostgreSQL sends them under REPLICA IDENTITY DEFAULT.

For unit tests that need whole restaurant transactions in the direct source's wire format (checkout,
repricing, deletes needing old rows) without a server: rows are given as {column: text value} in
PostgreSQL's text output, None for NULL, UNKNOWN for an unchanged TOAST value.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from bridge.changes import Transaction
from bridge.sources.pgoutput.changes import PgOutputAssembler
from tests.unit.test_pgoutput_protocol import begin, commit, delete, insert, relation, update

INT8, INT4, BOOL, TEXT, VARCHAR, NUMERIC, TIMESTAMPTZ, TIMESTAMP, JSONB, TEXT_ARRAY = (
    20, 23, 16, 25, 1043, 1700, 1184, 1114, 3802, 1009)

# table -> (relation OID, [(column, type OID)]); the first column is the primary key.
TABLES: dict[str, tuple[int, list[tuple[str, int]]]] = {
    "customers": (16401, [("id", INT8), ("email", VARCHAR), ("full_name", VARCHAR), ("phone", VARCHAR),
                          ("preferences", JSONB), ("created_at", TIMESTAMPTZ), ("updated_on", TIMESTAMP),
                          ("is_deleted", BOOL)]),
    "menu_items": (16402, [("id", INT4), ("name", VARCHAR), ("description", TEXT), ("price", NUMERIC),
                           ("category", VARCHAR), ("tags", TEXT_ARRAY), ("is_available", BOOL),
                           ("created_at", TIMESTAMPTZ), ("updated_on", TIMESTAMP)]),
    "orders": (16403, [("id", INT8), ("customer_id", INT8), ("status", VARCHAR), ("delivery_address_id", INT8),
                       ("placed_at", TIMESTAMPTZ), ("notes", TEXT), ("created_at", TIMESTAMPTZ),
                       ("updated_on", TIMESTAMP)]),
    "order_items": (16404, [("id", INT8), ("order_id", INT8), ("menu_item_id", INT4), ("quantity", INT4),
                            ("unit_price", NUMERIC), ("created_at", TIMESTAMPTZ)]),
}
PRIMARY_KEYS = {f"public.{table}": ("id",) for table in TABLES}
CREATED = "2026-03-01 12:00:00+00"


def relations() -> list[bytes]:
    return [relation(oid, "public", table, "d", [(name, type_oid, -1, index == 0)
                                                for index, (name, type_oid) in enumerate(columns)])
            for table, (oid, columns) in TABLES.items()]


def _values(table: str, row: Mapping[str, Any]) -> list[Any]:
    return [row.get(name) for name, _ in TABLES[table][1]]


def ins(table: str, **row: Any) -> bytes:
    return insert(TABLES[table][0], _values(table, {"created_at": CREATED, **row}))


def upd(table: str, **row: Any) -> bytes:
    """An update that does not change the key: no old tuple (REPLICA IDENTITY DEFAULT)."""
    return update(TABLES[table][0], _values(table, {"created_at": CREATED, **row}))


def dele(table: str, row_id: int) -> bytes:
    """A delete: the 'K' tuple, the key and NULL for every other column."""
    return delete(TABLES[table][0], _values(table, {"id": str(row_id)}))


def frames(xid: int, messages: list[bytes | tuple[int, bytes]], *, start: int, when: datetime) -> Iterator[
        tuple[int, bytes]]:
    """One transaction as (lsn, payload): Begin, the messages at increasing LSNs (a message given as
    (offset, payload) sits `offset` LSNs after the previous one: 0 puts two changes at one LSN), Commit."""
    lsn = start
    body: list[tuple[int, bytes]] = []
    for message in messages:
        step, payload = message if isinstance(message, tuple) else (0x40, message)
        lsn += step
        body.append((lsn, payload))
    final = lsn + 0x40
    yield start, begin(final, when, xid)
    yield from body
    yield final + 0x30, commit(final, final + 0x30, when)


def assemble(assembler: PgOutputAssembler, stream: Iterator[tuple[int, bytes]]) -> list[Transaction]:
    return [tx for lsn, payload in stream if (tx := assembler.feed(lsn, payload)) is not None]
