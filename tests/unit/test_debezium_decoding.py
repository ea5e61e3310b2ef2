"""Decode real Debezium 3.6.1 output and compare every value with what PostgreSQL itself holds.

The fixtures (tests/fixtures/debezium, recorded by record_fixtures.py from the real stack) hold the
Kafka records of ten connector configurations that captured the same workload, and expected.json
holds each touched row as psycopg read it back from the database, statement by statement. So a decoder
that is off by a scale, a time zone, a microsecond or a TOAST placeholder fails here.

Where a mode is lossy by Debezium's design, the expectation applies exactly that loss and no more:
decimal.handling.mode=double (binary64, compared as Decimal(repr(float))), time.precision.mode=connect
(milliseconds, floored), and precise mode's unconstrained numeric (VariableScaleDecimal), which
Debezium sends with trailing zeros stripped (scale 9 for ...1234567890, scale 10 in PostgreSQL) and
as null for NaN.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import pytest

from bridge.changes import UNKNOWN, Op
from bridge.sources.debezium.records import (
    LOGICAL_MESSAGES,
    ChangeRecord,
    DecodeOptions,
    Heartbeat,
    Tombstone,
    TransactionMarker,
    decode_record,
)
from tests.fixtures.debezium import fixture_io

EXPECTED = fixture_io.load_expected()
SCHEMAS = fixture_io.load_schemas()
MODES = sorted(EXPECTED["modes"])
SCHEMA = EXPECTED["schema"]
COLUMNS: dict[str, str] = EXPECTED["columns"]
DECLARED = {f"{SCHEMA}.{t}": {c: ("enum" if pg == "mood" else pg) for c, pg in COLUMNS.items()}
            for t in EXPECTED["tables"]}
FULL = frozenset({f"{SCHEMA}.fx_full"})


def options_for(mode: str, *, declared: bool = True) -> DecodeOptions:
    facts = EXPECTED["modes"][mode]
    return DecodeOptions(declared=DECLARED if declared else None, decimal_mode=facts["decimal_mode"],
                         time_mode=facts["time_mode"], replica_identity_full=FULL)


def decode_all(mode: str, options: DecodeOptions | None = None) -> list[tuple[fixture_io.RecordedRecord, Any]]:
    options = options or options_for(mode)
    return [(r, decode_record(r.topic, r.partition, r.offset, r.key, r.value, r.headers, options=options))
            for r in fixture_io.load_records(mode, SCHEMAS)]


@pytest.fixture(scope="module", params=MODES)
def decoded(request: pytest.FixtureRequest) -> tuple[str, list[tuple[fixture_io.RecordedRecord, Any]]]:
    return request.param, decode_all(request.param)


# --- what a value must decode to, per mode ---------------------------------------------------------


def expected_value(pg_type: str, value: Any, mode: str) -> Any:
    facts = EXPECTED["modes"][mode]
    if value is None:
        return None
    if pg_type.startswith("numeric"):
        if facts["decimal_mode"] == "double":
            return Decimal(repr(float(value)))  # Debezium rounded to binary64: exactly that loss
        if facts["decimal_mode"] == "precise" and pg_type == "numeric":
            # VariableScaleDecimal cannot carry NaN (Debezium sends null) and loses trailing zeros.
            return None if value.is_nan() else ValueOnly(value)
        return value
    if pg_type == "timetz":
        return datetime.combine(date(2000, 1, 1), value).astimezone(UTC).timetz()
    infinite = value in (datetime.max, datetime.min)
    if facts["time_mode"] == "connect" and pg_type in ("time", "timestamp") and not infinite:
        return value.replace(microsecond=value.microsecond // 1000 * 1000)  # Connect types hold ms, floored
    return value


class ValueOnly:
    """An expected Decimal whose scale Debezium does not preserve: compare the number only."""

    def __init__(self, value: Decimal) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"ValueOnly({self.value!r})"


def same(actual: Any, expected: Any) -> bool:
    if isinstance(expected, ValueOnly):
        return isinstance(actual, Decimal) and actual == expected.value
    if isinstance(expected, Decimal) and isinstance(actual, Decimal):
        if expected.is_nan():
            return actual.is_nan()
        return actual == expected and actual.as_tuple().exponent == expected.as_tuple().exponent
    if isinstance(expected, float) and isinstance(actual, float):
        return (math.isnan(actual) and math.isnan(expected)) or (
            actual == expected and math.copysign(1, actual) == math.copysign(1, expected))
    if isinstance(expected, (datetime, time)) and isinstance(actual, type(expected)):
        return actual == expected and (actual.tzinfo is None) == (expected.tzinfo is None)
    return type(actual) is type(expected) and actual == expected


def assert_row(actual: dict[str, Any] | None, expected: dict[str, Any], mode: str, where: str,
               unknown: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    assert actual is not None, f"{where}: no row image"
    assert set(actual) == set(expected), where
    for column, db_value in expected.items():
        if column in unknown:
            assert actual[column] is UNKNOWN, f"{where}.{column}: expected UNKNOWN, got {actual[column]!r:.80}"
            continue
        want = expected_value(COLUMNS[column], db_value, mode)
        assert same(actual[column], want), f"{where}.{column}: decoded {actual[column]!r:.120}, expected {want!r:.120}"


def key_only(row_id: int, columns: dict[str, Any]) -> dict[str, Any]:
    return {column: row_id if column == "id" else UNKNOWN for column in columns}


# --- the tests ------------------------------------------------------------------------------------


def test_every_record_of_every_mode_decodes_to_the_right_kind(decoded) -> None:
    mode, records = decoded
    tables = EXPECTED["modes"][mode]["tables"]
    kinds = Counter(type(d).__name__ for _, d in records)
    steps = EXPECTED["steps"]
    deletes = sum(1 for s in steps for c in s["changes"] if c["op"] in ("d", "key_change") and c["table"] in tables)
    assert kinds["TransactionMarker"] == 2 * len(steps)
    assert kinds["Heartbeat"] == 1
    assert kinds["Tombstone"] == deletes
    assert all(d.undeclared_columns == frozenset() for _, d in records if isinstance(d, ChangeRecord))


def test_rows_match_the_database_statement_by_statement(decoded) -> None:
    mode, records = decoded
    tables = EXPECTED["modes"][mode]["tables"]
    by_xid: dict[int | None, list[ChangeRecord]] = defaultdict(list)
    for _, record in records:
        if isinstance(record, ChangeRecord) and record.op is not Op.READ:
            by_xid[record.xid].append(record)
    for step in EXPECTED["steps"]:
        events = []
        for change in step["changes"]:
            if change["op"] == "key_change" and change["table"] in tables:
                events += [("d", change), ("c", change)]
            elif change["op"] == "m" or change.get("table") in tables:
                events.append((change["op"], change))
        got = sorted(by_xid.pop(step["xid"]), key=lambda r: r.total_order)
        assert [r.op.value for r in got] == [op for op, _ in events], step["name"]
        assert [r.total_order for r in got] == list(range(1, len(events) + 1))
        for record, (op, change) in zip(got, events, strict=True):
            check_event(record, op, change, mode, f"{mode}/{step['name']}/{record.source_ref}")
    loose = by_xid.pop(None)  # the non-transactional message
    assert [(r.op, r.message.prefix, r.message.content, r.message.transactional, r.total_order) for r in loose] == [
        (Op.MESSAGE, "fx-loose", b"loose", False, None)]
    assert not by_xid


def check_event(record: ChangeRecord, op: str, change: dict[str, Any], mode: str, where: str) -> None:
    if op == "m":
        assert (record.schema, record.table, record.key) == ("", "", {"prefix": change["prefix"]})
        assert record.message.prefix == change["prefix"] and record.message.transactional
        assert record.message.content == fixture_io.decode_tagged({"$bytes": change["content"]})
        assert record.data_collection == LOGICAL_MESSAGES
        return
    assert (record.schema, record.table) == (SCHEMA, change["table"]), where
    full = change["table"] == "fx_full"
    toast_gone = set() if full else set(change.get("unchanged_toast") or ())
    if op == "t":
        assert (record.key, record.before, record.after) == (None, None, None)
        return
    if op == "c":
        new_id = change.get("new_id") or change["id"]
        assert record.key == {"id": new_id} and record.before is None
        assert_row(record.after, change["after"], mode, f"{where} after", toast_gone)
        assert record.old_key == ({"id": change["id"]} if change["op"] == "key_change" else None)
    elif op == "u":
        assert record.key == {"id": change["id"]}
        if full:
            assert_row(record.before, change["before"], mode, f"{where} before")
        else:
            assert record.before is None, "REPLICA IDENTITY DEFAULT: an update carries no before image"
        assert_row(record.after, change["after"], mode, f"{where} after", toast_gone)
    elif op == "d":
        assert record.key == {"id": change["id"]} and record.after is None
        if full:
            assert_row(record.before, change["before"], mode, f"{where} before")
        else:  # key-only: Debezium's null / "" fillers become UNKNOWN
            assert record.before == key_only(change["id"], change["before"]), where
        assert record.new_key == ({"id": change["new_id"]} if change["op"] == "key_change" else None)


def test_snapshot_reads_match_the_database(decoded) -> None:
    mode, records = decoded
    reads = [d for _, d in records if isinstance(d, ChangeRecord) and d.op is Op.READ]
    assert sorted(r.table for r in reads) == sorted(EXPECTED["modes"][mode]["tables"])
    for read in reads:
        assert_row(read.after, EXPECTED["snapshot"][f"{read.table}/1"], mode, f"{mode} snapshot {read.table}")
        assert read.before is None and read.total_order is None and read.xid is not None
        assert read.snapshot in ("first", "true", "last", "last_in_data_collection", "first_in_data_collection")
        assert read.change_lsn > 0 and read.sequence[0] is None
        assert read.commit_time.tzinfo is UTC


def test_transaction_markers_carry_xid_lsn_and_counts(decoded) -> None:
    mode, records = decoded
    tables = EXPECTED["modes"][mode]["tables"]
    markers = [d for _, d in records if isinstance(d, TransactionMarker)]
    changes = [d for _, d in records if isinstance(d, ChangeRecord) and d.total_order is not None]
    for step in EXPECTED["steps"]:
        begin, end = [m for m in markers if m.xid == step["xid"]]
        assert (begin.status, end.status) == ("BEGIN", "END")
        assert begin.event_count is None and begin.per_table_counts == {}
        expected = Counter()
        for change in step["changes"]:
            if change["op"] == "m":
                expected[LOGICAL_MESSAGES] += 1
            elif change["table"] in tables:
                expected[f"{SCHEMA}.{change['table']}"] += 2 if change["op"] == "key_change" else 1
        assert end.per_table_counts == dict(expected), step["name"]
        assert end.event_count == sum(expected.values())
        mine = [c for c in changes if c.xid == step["xid"]]
        assert Counter(c.data_collection for c in mine) == expected
        assert all(begin.lsn <= c.change_lsn <= end.lsn for c in mine)
        assert all(c.commit_time.replace(microsecond=c.commit_time.microsecond // 1000 * 1000) == end.commit_time
                   for c in mine)
        assert all(c.sequence[1] == c.change_lsn for c in mine)


def test_deletes_are_followed_by_tombstones_with_the_same_key(decoded) -> None:
    _, records = decoded
    by_position = {(raw.topic, raw.offset): d for raw, d in records}
    deletes = [(raw, d) for raw, d in records if isinstance(d, ChangeRecord) and d.op is Op.DELETE]
    assert deletes
    for raw, delete in deletes:
        tombstone = by_position[(raw.topic, raw.offset + 1)]
        assert isinstance(tombstone, Tombstone) and tombstone.key == delete.key and tombstone.topic == raw.topic


def test_heartbeat_names_its_connector(decoded) -> None:
    mode, records = decoded
    (beat,) = [d for _, d in records if isinstance(d, Heartbeat)]
    assert beat.server_name == EXPECTED["modes"][mode]["topic_prefix"]
    assert beat.timestamp.tzinfo is UTC and beat.timestamp.year >= 2024


def test_unchanged_toast_is_unknown_in_every_typed_form() -> None:
    """The placeholder arrives as text, base64 bytes, [text], a byte list and [name-based UUID]."""
    toast = set(EXPECTED["toast_columns"])
    for mode in MODES:
        updates = [d for _, d in decode_all(mode) if isinstance(d, ChangeRecord) and d.table == "fx_default"
                   and d.op is Op.UPDATE and d.after["id"] == 2]
        assert len(updates) == 1
        assert {c for c, value in updates[0].after.items() if value is UNKNOWN} == toast, mode


def test_raw_placeholder_forms_really_occur_in_the_fixtures() -> None:
    """Guards the test above: the recorded bytes hold every typed form, so UNKNOWN is earned."""
    from bridge.sources.debezium.values import toast_forms
    forms = toast_forms("__debezium_unavailable_value")
    raw = "".join(r.value.decode() for r in fixture_io.load_records("plain_precise_adaptive", SCHEMAS) if r.value)
    for form in ('"__debezium_unavailable_value"', f'"{forms.bytes_b64}"', '["__debezium_unavailable_value"]',
                 str(list(forms.byte_values)).replace(" ", ""), f'["{forms.uuid_array[0]}"]'):
        assert form in raw, form
