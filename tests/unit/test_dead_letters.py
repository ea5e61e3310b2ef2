"""Dead letters are bounded, total and deterministic: whatever the record, its dead letter fits the sink
and is the same bytes on a replay."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from types import SimpleNamespace

from bridge.changes import Op, RowChange, SourcePosition
from bridge.errors import DecodeError, RecordTooLarge
from bridge.events import DomainEvent
from bridge.sinks.dead_letters import (
    PREFIX_BYTES,
    dead_letter_for_change,
    dead_letter_for_oversized_event,
    dead_letter_for_record,
    encode_dead_letter,
    shrink_dead_letter,
)

T = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
BIG = "x" * 1_500_000


def _change(description: str = BIG) -> RowChange:
    return RowChange(op=Op.CREATE, schema="public", table="menu_items", key={"id": 2}, before=None,
                     after={"id": 2, "name": "Big", "description": description}, commit_time=T, xid=771,
                     position=SourcePosition(0x2000, 0x1F00, 0), source_ref="pgoutput/0/1F00")


def test_a_600_kb_undecodable_record_makes_a_small_dead_letter_with_its_size_and_hash() -> None:
    value = b'{"op":"c","junk":"' + b"\x01" * 600_000 + b'"}'
    raw = {"topic": "legacy.public.orders", "partition": 0, "offset": 9, "key": b'{"id":1}', "value": value,
           "headers": {"__debezium.context.taskId": b"0"}}
    record, key = dead_letter_for_record(raw, DecodeError("bad"), "test")
    encoded = encode_dead_letter(record)
    assert len(encoded) < 250_000, len(encoded)  # control bytes escape 6-fold: the prefix is what is bounded
    kept = record["record"]
    assert kept["value_bytes"] == len(value) and kept["value_sha256"] == hashlib.sha256(value).hexdigest()
    assert kept["key"] == '{"id":1}' and "key_bytes" not in kept  # small fields stay whole
    assert kept["offset"] == 9 and key == b"legacy.public.orders"


def test_a_deeply_nested_value_in_a_dead_letter_does_not_recurse_forever() -> None:
    deep: dict = {}
    node = deep
    for _ in range(5000):
        node["a"] = {}
        node = node["a"]
    letter = SimpleNamespace(change=_change(description="short"), rule_id="r", error="failed")
    object.__setattr__(letter.change, "after", {"id": 2, "doc": deep})
    record, _ = dead_letter_for_change(letter, "test")
    assert b"$truncated" in encode_dead_letter(record)


def _event(value_size: int) -> DomainEvent:
    return DomainEvent(id="8d9e4c43-0000-5000-8000-000000000001", type="restaurant.menu_item.MenuItemAdded.v1",
                       source="/cdc-bridge/test", subject="menu_item/2", time=T,
                       sequence="0000000000002000-0000000000001F00-0000-0000", aggregate_type="menu_item",
                       aggregate_id="2", data={"menuItemId": 2, "description": "y" * value_size},
                       rule_id="menu_items.added", position=SourcePosition(0x2000, 0x1F00, 0))


def test_an_oversized_event_becomes_a_bounded_dead_letter_with_its_coordinates() -> None:
    event = _event(1_500_000)
    too_large = RecordTooLarge(1_500_200, 1_048_576, "Kafka topic restaurant.menu_item")
    record, key = dead_letter_for_oversized_event(event, _change(), too_large, "test")
    encoded = encode_dead_letter(record)
    assert len(encoded) < 2 * PREFIX_BYTES + 2000
    assert record["kind"] == "too_large" and record["rule"] == "menu_items.added"
    assert record["size"] == 1_500_200 and record["limit"] == 1_048_576
    assert "1500200 bytes, more than the 1048576 bytes Kafka topic restaurant.menu_item takes" in record["error"]
    assert record["event"]["id"] == event.id and record["event"]["type"] == event.type
    change = record["change"]
    assert change["table"] == "public.menu_items" and change["key"] == {"id": 2} and change["xid"] == 771
    assert change["commit_lsn"] == 0x2000 and "after" not in change
    assert record["payload"]["bytes"] == len(event.value())
    assert record["payload"]["prefix"] == event.value()[:PREFIX_BYTES].decode()
    assert key == b"public.menu_items"
    again, _ = dead_letter_for_oversized_event(event, _change(), too_large, "test")
    assert encode_dead_letter(again) == encoded  # a replay writes the same bytes


def test_an_oversized_dead_letter_is_cut_to_its_coordinates() -> None:
    letter = SimpleNamespace(change=_change(), rule_id="menu_items.added", error="needs the old row")
    record, key = dead_letter_for_change(letter, "test")
    original = encode_dead_letter(record)
    shrunk, shrunk_key = shrink_dead_letter(record, key, RecordTooLarge(len(original), 1_048_576, "topic dl"))
    encoded = encode_dead_letter(shrunk)
    assert len(encoded) < 2 * PREFIX_BYTES + 2000
    assert shrunk["kind"] == "translation_failed" and shrunk["rule"] == "menu_items.added"
    assert shrunk["error"] == "needs the old row" and shrunk_key == key
    assert shrunk["change"]["table"] == "public.menu_items" and shrunk["change"]["seq"] == 0
    assert "after" not in shrunk["change"]
    assert shrunk["too_large"]["bytes"] == len(original)
    assert shrunk["too_large"]["sha256"] == hashlib.sha256(original).hexdigest()
    assert json.loads(encoded)  # valid JSON


def test_an_oversized_undecodable_dead_letter_keeps_where_the_record_was() -> None:
    raw = {"topic": "legacy.public.orders", "partition": 2, "offset": 77, "key": None, "value": "\\" * 30_000}
    record, key = dead_letter_for_record(raw, DecodeError("bad"), "test")
    shrunk, _ = shrink_dead_letter(record, key, RecordTooLarge(60_000, 16_384, "topic dl"))
    assert shrunk["record"] == {"topic": "legacy.public.orders", "partition": 2, "offset": 77, "key": None}
