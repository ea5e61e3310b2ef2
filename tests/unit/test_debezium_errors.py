"""Malformed Debezium records raise DecodeError naming topic, partition, offset and column, never guess.

Each case starts from a real recorded record and breaks one thing, so the rest of the record is
exactly what Debezium writes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from bridge.errors import DecodeError
from bridge.sources.debezium.records import DebeziumDecodeError, DecodeOptions, decode_record
from tests.fixtures.debezium import fixture_io

EXPECTED = fixture_io.load_expected()
SCHEMAS = fixture_io.load_schemas()
DECLARED = {f"legacy.{t}": {c: ("enum" if pg == "mood" else pg) for c, pg in EXPECTED["columns"].items()}
            for t in EXPECTED["tables"]}
TOPIC, PARTITION, OFFSET = "legacy.public.orders", 3, 4711


def first(mode: str, predicate: Callable[[dict[str, Any]], bool]) -> fixture_io.RecordedRecord:
    for record in fixture_io.load_records(mode, SCHEMAS):
        if record.value is not None:
            document = json.loads(record.value)
            payload = document["payload"] if "schema" in document and "payload" in document else document
            if predicate(payload):
                return record
    raise LookupError(mode)


def insert_of(mode: str) -> fixture_io.RecordedRecord:
    return first(mode, lambda p: p.get("op") == "c" and p["after"]["id"] == 2 and p["source"]["table"] == "fx_default")


def mutated(record: fixture_io.RecordedRecord, change: Callable[[dict[str, Any]], None]) -> bytes:
    document = json.loads(record.value)
    change(document)
    return json.dumps(document, separators=(",", ":")).encode()


def decode(value: bytes | None, key: bytes | None = b'{"id":2}', headers=(), **options: Any):
    return decode_record(TOPIC, PARTITION, OFFSET, key, value, list(headers), options=DecodeOptions(**options))


def failure(value: bytes | None, key: bytes | None = b'{"id":2}', headers=(), **options: Any) -> DebeziumDecodeError:
    with pytest.raises(DecodeError) as caught:
        decode(value, key, headers, **options)
    error = caught.value
    assert isinstance(error, DebeziumDecodeError)
    message = str(error)
    assert f"topic {TOPIC!r}" in message and f"partition {PARTITION}" in message and f"offset {OFFSET}" in message
    assert (error.topic, error.partition, error.offset) == (TOPIC, PARTITION, OFFSET)
    return error


def test_bytes_that_are_not_json() -> None:
    error = failure(b'{"before": null, "after": {"id": 1')
    assert "not JSON" in str(error)


def test_json_that_is_not_a_debezium_record() -> None:
    assert "expected a JSON object" in str(failure(b"[1, 2, 3]"))
    assert "expected a change event" in str(failure(b'{"hello": "world"}'))


def test_unknown_op() -> None:
    record = insert_of("schema_precise_adaptive")
    error = failure(mutated(record, lambda d: d["payload"].update(op="x")), record.key)
    assert "op: expected one of r, c, u, d, t, m, got 'x'" in str(error)


def test_missing_source_block() -> None:
    record = insert_of("plain_precise_adaptive")
    error = failure(mutated(record, lambda d: d.pop("source")), record.key)
    assert "source" in str(error) and "missing" in str(error)


def test_value_that_does_not_fit_its_decimal_schema_names_the_column() -> None:
    record = insert_of("schema_precise_adaptive")
    error = failure(mutated(record, lambda d: d["payload"]["after"].update(price="not base64!")), record.key)
    assert error.column == "price"
    assert "after of legacy.fx_default" in str(error) and "org.apache.kafka.connect.data.Decimal" in str(error)
    assert "scale 2" in str(error)


def test_decimal_format_numeric_is_refused_not_rounded() -> None:
    record = insert_of("schema_precise_adaptive")
    error = failure(mutated(record, lambda d: d["payload"]["after"].update(price=12.3)), record.key)
    assert error.column == "price" and "decimal.format=BASE64" in str(error)


@pytest.mark.parametrize("column, bad, expected", [
    ("medium", "70000", "an int32"),
    ("flag", 1, "a boolean"),
    ("day", "2024-02-29", "io.debezium.time.Date"),
    ("at_time", 86_400_000_000, "[00:00, 24:00)"),  # time '24:00:00' exists in PostgreSQL, not in Python
    ("day", 4_000_000, "years 1..9999"),
    ("uid", "not-a-uuid", "io.debezium.data.Uuid"),
    ("doc", "{broken", "io.debezium.data.Json"),
    ("tags", "a,b", "an array of a string"),
    ("label", None, "not optional"),
])
def test_value_that_does_not_fit_its_schema(column: str, bad: Any, expected: str) -> None:
    record = insert_of("schema_precise_adaptive")
    error = failure(mutated(record, lambda d: d["payload"]["after"].update({column: bad})), record.key)
    assert error.column == column and expected in str(error), str(error)


def test_missing_and_extra_fields_are_named() -> None:
    record = insert_of("schema_precise_adaptive")
    assert failure(mutated(record, lambda d: d["payload"]["after"].pop("note")), record.key).column == "note"
    assert failure(mutated(record, lambda d: d["payload"]["after"].update(surprise=1)), record.key).column == "surprise"


def test_schemaless_declared_column_that_does_not_fit_its_declaration() -> None:
    record = insert_of("plain_precise_adaptive")
    bad = mutated(record, lambda d: d["after"].update(day="2024-02-29"))
    error = failure(bad, record.key, declared=DECLARED)
    assert error.column == "day" and "days since 1970-01-01" in str(error)
    bad = mutated(record, lambda d: d["after"].update(at_ts3=1.5))
    assert "ms since epoch" in str(failure(bad, record.key, declared=DECLARED))


def test_microsecond_values_in_nanosecond_fields_are_not_rounded() -> None:
    record = insert_of("schema_string_nanoseconds")
    error = failure(mutated(record, lambda d: d["payload"]["after"].update(at_ts=1_000_000_001)), record.key)
    assert error.column == "at_ts" and "whole microseconds" in str(error)


def test_interval_as_micro_duration_is_refused_with_the_fix() -> None:
    record = insert_of("schema_precise_adaptive")

    def add_interval(document: dict[str, Any]) -> None:
        for field in document["schema"]["fields"]:
            if field["field"] == "after":
                field["fields"].append({"type": "int64", "optional": True, "name": "io.debezium.time.MicroDuration",
                                        "version": 1, "field": "span"})
        document["payload"]["after"]["span"] = 86_400_000_000
    error = failure(mutated(record, add_interval), record.key)
    assert error.column == "span" and "interval.handling.mode=string" in str(error)


def test_broken_schema_is_reported() -> None:
    record = insert_of("schema_precise_adaptive")
    error = failure(mutated(record, lambda d: d["schema"].update(fields="nope")), record.key)
    assert "schema" in str(error)


@pytest.mark.parametrize("change, expected", [
    (lambda p: p.update(id="761"), "'<xid>:<lsn>'"),
    (lambda p: p.update(status="COMMIT"), "BEGIN or END"),
    (lambda p: p.update(event_count="2"), "event_count"),
    (lambda p: p.update(data_collections=[{"data_collection": "legacy.fx_default"}]), "event_count"),
])
def test_malformed_transaction_markers(change: Callable[[dict[str, Any]], None], expected: str) -> None:
    record = first("plain_precise_adaptive", lambda p: p.get("status") == "END")
    assert expected in str(failure(mutated(record, change), record.key))


def test_change_event_with_a_bad_transaction_block() -> None:
    record = insert_of("plain_precise_adaptive")
    error = failure(mutated(record, lambda d: d["transaction"].update(id="abc")), record.key)
    assert "transaction.id" in str(error)


def test_key_that_does_not_fit_the_key_schema() -> None:
    record = insert_of("schema_precise_adaptive")
    key = json.loads(record.key)
    key["payload"]["id"] = "two"
    error = failure(record.value, json.dumps(key).encode())
    assert error.column == "id" and "key of legacy.fx_default" in str(error)


def test_errors_are_change_errors_that_do_not_ask_for_a_retry() -> None:
    error = failure(b"nope")
    assert not error.retryable and isinstance(error, DecodeError)
