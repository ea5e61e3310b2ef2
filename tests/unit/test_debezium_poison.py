"""Poison records: values that decode without error on the face of it but would crash the bridge later
(recursion), publish values their column cannot hold (integer ranges), or make errors and dead letters
as large as themselves. Each must be a DecodeError that names where it is, so it is dead-lettered."""

from __future__ import annotations

import json

import pytest

from bridge.errors import DecodeError
from bridge.sources.debezium.records import DecodeOptions, decode_record
from tests.unit.test_debezium_errors import DECLARED, failure, insert_of, mutated

TOPIC = "legacy.public.orders"


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def test_a_value_nested_1200_deep_is_a_decode_error_not_a_recursion_error() -> None:
    error = failure(nested(1200).encode())
    assert "nested" in str(error)


def test_a_key_nested_1200_deep_is_a_decode_error() -> None:
    record = insert_of("schema_precise_adaptive")
    error = failure(record.value, nested(1200).encode())
    assert "nested" in str(error)


@pytest.mark.parametrize("depth", [150, 600, 1200])
def test_a_json_column_nested_too_deep_for_the_event_encoder_is_refused(depth: int) -> None:
    """It parses, but encoding it into an event (or a dead letter) would exceed Python's recursion limit."""
    record = insert_of("schema_precise_adaptive")
    error = failure(mutated(record, lambda d: d["payload"]["after"].update(doc=nested(depth))), record.key)
    assert error.column == "doc" and "nested deeper than" in str(error)


def test_a_json_column_of_ordinary_depth_still_decodes() -> None:
    record = insert_of("schema_precise_adaptive")
    value = mutated(record, lambda d: d["payload"]["after"].update(doc=nested(50)))
    decoded = decode_record(TOPIC, 0, 1, record.key, value, [], options=DecodeOptions())
    assert decoded.after["doc"]["a"]["a"]["a"] is not None


def test_a_deep_json_column_in_schemaless_mode_is_refused() -> None:
    record = insert_of("plain_precise_adaptive")
    bad = mutated(record, lambda d: d["after"].update(docb=nested(700)))
    error = failure(bad, record.key, declared=DECLARED)
    assert error.column == "docb" and "nested deeper than" in str(error)


@pytest.mark.parametrize("column, bad, kind", [
    ("medium", 10**40, "int32"),
    ("medium", 2**31, "int32"),
    ("medium", -(2**31) - 1, "int32"),
    ("small", 40000, "int16"),
    ("big", 2**63, "int64"),
])
def test_an_integer_outside_its_connect_type_is_refused(column: str, bad: int, kind: str) -> None:
    record = insert_of("schema_precise_adaptive")
    error = failure(mutated(record, lambda d: d["payload"]["after"].update({column: bad})), record.key)
    message = str(error)
    assert error.column == column and kind in message and "out of range" in message, message
    assert str(bad)[:30] in message


@pytest.mark.parametrize("column, good", [("medium", 2**31 - 1), ("medium", -(2**31)), ("small", -32768),
                                          ("big", 2**63 - 1)])
def test_integers_at_the_edges_of_their_range_decode(column: str, good: int) -> None:
    record = insert_of("schema_precise_adaptive")
    value = mutated(record, lambda d: d["payload"]["after"].update({column: good}))
    assert decode_record(TOPIC, 0, 1, record.key, value, [], options=DecodeOptions()).after[column] == good


@pytest.mark.parametrize("column, bad, declared", [
    ("medium", 10**40, "integer"),
    ("small", 32768, "smallint"),
    ("big", -(2**63) - 1, "bigint"),
])
def test_an_integer_outside_its_declared_sql_type_is_refused_in_schemaless_mode(column: str, bad: int,
                                                                                 declared: str) -> None:
    record = insert_of("plain_precise_adaptive")
    error = failure(mutated(record, lambda d: d["after"].update({column: bad})), record.key, declared=DECLARED)
    message = str(error)
    assert error.column == column and declared in message and "out of range" in message, message
    assert "offset" in message and "legacy.fx_default" in message


def test_an_integer_array_element_outside_its_type_is_refused() -> None:
    record = insert_of("plain_precise_adaptive")
    error = failure(mutated(record, lambda d: d["after"].update(nums=[1, 10**40])), record.key, declared=DECLARED)
    assert error.column == "nums" and "out of range" in str(error)


def test_a_huge_integer_is_shown_truncated() -> None:
    record = insert_of("schema_precise_adaptive")
    error = failure(mutated(record, lambda d: d["payload"]["after"].update(medium=10**4000)), record.key)
    assert error.column == "medium" and len(str(error)) < 1000


def test_errors_about_huge_fields_stay_short() -> None:
    """A 600 KB transaction id or field name must not make a 600 KB error message (or log line)."""
    record = insert_of("plain_precise_adaptive")
    bad_id = mutated(record, lambda d: d["transaction"].update(id="x" * 600_000))
    assert len(str(failure(bad_id, record.key))) < 2000
    junk = json.dumps({"y" * 300_000: 1, "z" * 300_000: 2}).encode()
    assert len(str(failure(junk))) < 2000


def test_a_top_level_array_nested_deep_is_refused_too() -> None:
    with pytest.raises(DecodeError):
        decode_record(TOPIC, 0, 1, None, ("[" * 5000 + "]" * 5000).encode(), [], options=DecodeOptions())


@pytest.mark.parametrize("type_name", ["json", "jsonb"])
def test_the_direct_source_refuses_the_same_deep_json_column(type_name: str) -> None:
    """Both sources must agree: a jsonb nested 600 deep decodes nowhere (it would crash the event encoder)."""
    from bridge.nesting import TooDeep
    from bridge.sources.pgoutput.values import column_decoder

    decoder = column_decoder({"json": 114, "jsonb": 3802}[type_name], None)
    with pytest.raises(TooDeep):
        decoder.decode(nested(600))
    assert decoder.decode(nested(50))["a"]["a"] is not None
