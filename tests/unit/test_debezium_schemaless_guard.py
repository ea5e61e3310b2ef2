"""Schemaless Debezium JSON with a column nobody declared is refused, never guessed."""

from __future__ import annotations

from types import SimpleNamespace

from kafka import TopicPartition

from bridge.sources.debezium.source import _undeclared
from bridge.sources.debezium.records import DecodeOptions, decode_record

VALUE = (b'{"before":null,"after":{"id":1,"price":"D54="},"source":{"version":"3.6.1.Final","connector":"postgresql",'
         b'"name":"legacy","ts_ms":1700000000000,"snapshot":"false","db":"restaurant","sequence":"[null,\\"100\\"]",'
         b'"schema":"public","table":"menu_items","txId":700,"lsn":100,"xmin":null},"op":"c","ts_ms":1700000000001,'
         b'"transaction":null}')


def test_an_undeclared_schemaless_column_names_topic_column_and_both_fixes() -> None:
    options = DecodeOptions(declared={"menu_items": {"id": "integer"}})
    record = decode_record("legacy.public.menu_items", 0, 41, b'{"id":1}', VALUE, [], options=options)
    assert record.undeclared_columns == frozenset({"price"})
    error = _undeclared(TopicPartition("legacy.public.menu_items", 0), SimpleNamespace(offset=41), record)
    message = str(error)
    assert "'legacy.public.menu_items'" in message and "offset 41" in message
    assert "column(s) price of public.menu_items" in message
    assert "tables.menu_items.columns" in message and "value.converter.schemas.enable=true" in message


def test_a_declared_schemaless_decimal_is_exact() -> None:
    from decimal import Decimal

    options = DecodeOptions(declared={"menu_items": {"id": "integer", "price": "numeric(10,2)"}})
    record = decode_record("legacy.public.menu_items", 0, 41, b'{"id":1}', VALUE, [], options=options)
    assert record.undeclared_columns == frozenset()
    assert record.after["price"] == Decimal("39.98")  # base64 of the unscaled 3998, scale from the declaration
