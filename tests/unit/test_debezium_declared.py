"""Schemaless topics, declared types, placeholders and before images: the decoder's options.

Without a schema the decoder decodes only what is declared and lists the rest; with a schema it
trusts the schema and takes from declarations only the one fact a schema can lack (that a plain
string or double was a numeric column).
"""

from __future__ import annotations

import base64
import json
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import pytest

from bridge.changes import UNKNOWN, Op
from bridge.errors import ConfigurationError, DecodeError
from bridge.sources.debezium.declared import DeclaredTypes, parse_pg_type
from bridge.sources.debezium.records import ChangeRecord, DecodeOptions, Heartbeat, Tombstone, decode_record
from bridge.sources.debezium.values import toast_forms
from tests.fixtures.debezium import fixture_io

EXPECTED = fixture_io.load_expected()
SCHEMAS = fixture_io.load_schemas()
ALL_COLUMNS = frozenset(EXPECTED["columns"])
DECLARED = {f"legacy.{t}": {c: ("enum" if pg == "mood" else pg) for c, pg in EXPECTED["columns"].items()}
            for t in EXPECTED["tables"]}


def decode_mode(mode: str, **options: Any) -> list[Any]:
    opts = DecodeOptions(**options)
    return [decode_record(r.topic, r.partition, r.offset, r.key, r.value, r.headers, options=opts)
            for r in fixture_io.load_records(mode, SCHEMAS)]


def row_changes(records: list[Any]) -> list[ChangeRecord]:
    return [r for r in records if isinstance(r, ChangeRecord) and r.op in (Op.READ, Op.CREATE, Op.UPDATE, Op.DELETE)]


def inserted(records: list[Any], row_id: int = 2, table: str = "fx_default") -> ChangeRecord:
    (record,) = [r for r in records if isinstance(r, ChangeRecord) and r.op is Op.CREATE
                 and r.table == table and r.after["id"] == row_id]
    return record


@pytest.mark.parametrize("mode", [m for m, f in EXPECTED["modes"].items() if not f["schemas_enable"]])
def test_schemaless_without_declarations_keeps_raw_values_and_lists_every_column(mode: str) -> None:
    facts = EXPECTED["modes"][mode]
    records = decode_mode(mode, decimal_mode=facts["decimal_mode"], time_mode=facts["time_mode"])
    for record in row_changes(records):
        assert record.undeclared_columns == ALL_COLUMNS, record.source_ref
    raw = inserted(records)
    assert raw.after["day"] in (19782, "2024-02-29Z")  # the encoding, untouched: days or an ISO string
    assert raw.after["toast_bytea"] == base64.b64encode(bytes(range(2, 62))).decode()  # base64, not bytes
    assert raw.key == {"id": 2}


def test_schemaless_partial_declaration_decodes_declared_columns_exactly() -> None:
    declared = {"legacy.fx_default": {"id": "integer", "price": "numeric(10,2)", "at_ts": "timestamp",
                                      "at_ts3": "timestamp(3) without time zone", "day": "date"}}
    record = inserted(decode_mode("plain_precise_adaptive", declared=declared))
    assert record.undeclared_columns == ALL_COLUMNS - {"id", "price", "at_ts", "at_ts3", "day"}
    assert str(record.after["price"]) == "12.30"
    assert record.after["at_ts"] == datetime(2024, 2, 29, 13, 45, 30, 123456)
    assert record.after["at_ts3"] == datetime(2024, 2, 29, 13, 45, 30, 123000)
    assert record.after["day"] == date(2024, 2, 29)
    assert record.after["amount"] == {"scale": 5, "value": "BMsv"}  # undeclared: raw, and listed


def test_a_bare_table_name_matches_in_any_schema() -> None:
    record = inserted(decode_mode("plain_string_connect", declared={"fx_default": {"price": "numeric(10,2)"}},
                                  decimal_mode="string", time_mode="connect"))
    assert record.after["price"] == Decimal("12.30") and "price" not in record.undeclared_columns


def test_with_a_schema_nothing_is_undeclared_and_contradicting_declarations_lose() -> None:
    declared = {"legacy.fx_default": {"price": "integer", "day": "text", "at_ts": "bigint"}}
    record = inserted(decode_mode("schema_precise_adaptive", declared=declared))
    assert record.undeclared_columns == frozenset()
    assert record.after["price"] == Decimal("12.30")
    assert record.after["day"] == date(2024, 2, 29)
    assert record.after["at_ts"] == datetime(2024, 2, 29, 13, 45, 30, 123456)


def test_with_a_schema_declarations_say_which_plain_strings_and_doubles_were_numeric() -> None:
    plain = inserted(decode_mode("schema_string_connect", decimal_mode="string", time_mode="connect"))
    assert plain.after["price"] == "12.30" and plain.after["amount"] == "3.14159"  # the Connect type: string
    refined = inserted(decode_mode("schema_string_connect", declared=DECLARED, decimal_mode="string",
                                   time_mode="connect"))
    assert str(refined.after["price"]) == "12.30" and str(refined.after["amount"]) == "3.14159"
    lossy = inserted(decode_mode("schema_double_isostring", decimal_mode="double", time_mode="isostring"))
    assert lossy.after["price"] == 12.3 and isinstance(lossy.after["price"], float)
    refined = inserted(decode_mode("schema_double_isostring", declared=DECLARED, decimal_mode="double",
                                   time_mode="isostring"))
    assert refined.after["price"] == Decimal("12.3")  # Decimal(repr(x)): the scale is gone, as documented
    assert refined.after["double_v"] == 0.1 and isinstance(refined.after["double_v"], float)


def test_before_images_are_key_only_unless_the_table_is_declared_full() -> None:
    records = decode_mode("schema_precise_adaptive")  # fx_full not declared FULL: conservatively key-only
    (delete,) = [r for r in records if isinstance(r, ChangeRecord) and r.op is Op.DELETE
                 and r.table == "fx_full" and r.key == {"id": 1}]
    assert delete.before["id"] == 1 and all(v is UNKNOWN for c, v in delete.before.items() if c != "id")
    declared_full = decode_mode("schema_precise_adaptive", replica_identity_full={"legacy.fx_full"})
    (delete,) = [r for r in declared_full if isinstance(r, ChangeRecord) and r.op is Op.DELETE
                 and r.table == "fx_full" and r.key == {"id": 1}]
    assert delete.before["label"] == "label-1" and delete.before["price"] == Decimal("12.30")


def test_key_only_before_hides_debeziums_fillers_for_not_null_columns() -> None:
    (record,) = [r for r in fixture_io.load_records("plain_precise_adaptive", SCHEMAS)
                 if r.value and json.loads(r.value).get("op") == "d" and r.topic.endswith("fx_default")
                 and json.loads(r.key) == {"id": 1}]
    raw_before = json.loads(record.value)["before"]
    assert raw_before["label"] == "" and raw_before["price"] is None  # what Debezium sends: "" for NOT NULL
    decoded = decode_record(record.topic, record.partition, record.offset, record.key, record.value,
                            record.headers, options=DecodeOptions(declared=DECLARED))
    assert decoded.before["label"] is UNKNOWN and decoded.before["price"] is UNKNOWN and decoded.before["id"] == 1


def custom_placeholder(value: bytes, old: str, new: str) -> bytes:
    """Rewrite every typed placeholder form of `old` into the same form of `new`."""
    was, now = toast_forms(old), toast_forms(new)
    text = value.decode()
    for a, b in ((was.bytes_b64, now.bytes_b64), (was.uuid_array[0], now.uuid_array[0]),
                 (",".join(map(str, was.byte_values)), ",".join(map(str, now.byte_values))), (old, new)):
        text = text.replace(a, b)
    return text.encode()


@pytest.mark.parametrize("mode", ["schema_precise_adaptive", "plain_precise_adaptive"])
def test_the_placeholder_is_the_connectors_option(mode: str) -> None:
    (update,) = [r for r in fixture_io.load_records(mode, SCHEMAS) if r.value and r.topic.endswith("fx_default")
                 and b'"op":"u"' in r.value and b'"id":2,' in r.value]
    value = custom_placeholder(update.value, "__debezium_unavailable_value", "<<gone>>")
    assert b"__debezium_unavailable_value" not in value

    def after(**options: Any) -> dict[str, Any]:
        return decode_record(update.topic, update.partition, update.offset, update.key, value, update.headers,
                             options=DecodeOptions(declared=DECLARED, **options)).after
    toast = set(EXPECTED["toast_columns"])
    assert {c for c, v in after(placeholder="<<gone>>").items() if v is UNKNOWN} == toast
    # With the wrong placeholder configured, the jsonb placeholder is not JSON: an error, not a guess.
    with pytest.raises(DecodeError, match=r"column 'toast_jsonb': expected .*a string holding JSON"):
        after()


def test_tombstones_and_heartbeats_without_schemas() -> None:
    records = decode_mode("plain_precise_adaptive")
    assert sorted(r.key["id"] for r in records if isinstance(r, Tombstone)) == [1, 1, 2, 2, 4]
    (beat,) = [r for r in records if isinstance(r, Heartbeat)]
    assert beat.server_name == EXPECTED["modes"]["plain_precise_adaptive"]["topic_prefix"]


def test_pretty_printed_json_takes_the_slow_path_to_the_same_result() -> None:
    record = next(r for r in fixture_io.load_records("schema_precise_adaptive", SCHEMAS)
                  if r.value and b'"op":"c"' in r.value)
    pretty = json.dumps(json.loads(record.value), indent=2).encode()
    fast = decode_record(record.topic, 0, 1, record.key, record.value, record.headers)
    slow = decode_record(record.topic, 0, 1, record.key, pretty, record.headers)
    assert fast == slow


@pytest.mark.parametrize("spelling, parsed", [
    ("numeric(10,2)", ("numeric", 10, 2, False)),
    ("NUMERIC(10)", ("numeric", 10, 0, False)),
    ("numeric", ("numeric", None, None, False)),
    ("timestamp(3) without time zone", ("timestamp", 3, None, False)),
    ("timestamp with time zone", ("timestamptz", None, None, False)),
    ("time(3) with time zone", ("timetz", 3, None, False)),
    ("character varying(255)", ("text", 255, None, False)),
    ("character(2)", ("text", 2, None, False)),
    ("integer[]", ("integer", None, None, True)),
    ("double precision", ("double precision", None, None, False)),
])
def test_postgresql_type_spellings(spelling: str, parsed: tuple[Any, ...]) -> None:
    assert parse_pg_type(spelling) == parsed


def test_unknown_declared_types_and_modes_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match=r"public.orders.total.*'money' is not supported"):
        DeclaredTypes({"public.orders": {"total": "money"}})
    with pytest.raises(ConfigurationError, match="time.precision.mode 'adaptive_ms'"):
        DecodeOptions(time_mode="adaptive_ms")
    with pytest.raises(ConfigurationError, match="decimal.handling.mode 'exact'"):
        DecodeOptions(decimal_mode="exact")


@pytest.mark.parametrize("time_mode, pg_type, raw, value", [
    ("adaptive", "time(3)", 49530123, time(13, 45, 30, 123000)),
    ("adaptive", "time", 49530123456, time(13, 45, 30, 123456)),
    ("adaptive_time_microseconds", "time(3)", 49530123000, time(13, 45, 30, 123000)),
    ("adaptive_time_microseconds", "timestamp(3)", 1709214330123, datetime(2024, 2, 29, 13, 45, 30, 123000)),
    ("connect", "timestamp", 1709214330123, datetime(2024, 2, 29, 13, 45, 30, 123000)),
    ("microseconds", "timestamp(3)", 1709214330123000, datetime(2024, 2, 29, 13, 45, 30, 123000)),
    ("nanoseconds", "time", 49530123456000, time(13, 45, 30, 123456)),
    ("isostring", "timestamp", "2024-02-29T13:45:30.123456Z", datetime(2024, 2, 29, 13, 45, 30, 123456)),
    ("isostring", "date", "-5877611-06-21Z", date.max),  # Debezium's rendering of +infinity
    ("adaptive", "date", -2147472691, date.min),  # -infinity: PostgreSQL's DATEVAL_NOBEGIN, overflowed
])
def test_declared_time_types_follow_the_time_mode(time_mode: str, pg_type: str, raw: Any, value: Any) -> None:
    declared = DeclaredTypes({"s.t": {"id": "integer", "c": pg_type}})
    document = {"before": None, "after": {"id": 1, "c": raw}, "op": "c",
                "source": {"schema": "s", "table": "t", "ts_ms": 0, "lsn": 10, "txId": 5}}
    record = decode_record("p.s.t", 0, 0, b'{"id":1}', json.dumps(document).encode(), [],
                           options=DecodeOptions(declared=declared, time_mode=time_mode))
    assert record.after["c"] == value and type(record.after["c"]) is type(value)
    assert record.xid == 5 and record.change_lsn == 10 and record.sequence == () and record.snapshot is None


def test_incremental_snapshot_reads_have_no_lsn_and_no_transaction() -> None:
    document = {"before": None, "after": {"id": 1}, "op": "r", "transaction": None,
                "source": {"schema": "s", "table": "t", "ts_ms": 1_700_000_000_123, "snapshot": "incremental",
                           "sequence": None, "txId": None, "lsn": None}}
    record = decode_record("p.s.t", 0, 9, b'{"id":1}', json.dumps(document).encode(), [])
    assert (record.op, record.change_lsn, record.xid, record.snapshot) == (Op.READ, 0, None, "incremental")
    assert record.commit_time == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=record.commit_time.tzinfo)
    assert record.commit_time.utcoffset().total_seconds() == 0 and record.sequence == ()


def test_each_distinct_schema_is_compiled_once() -> None:
    from bridge.sources.debezium.envelope import envelope_plans
    records = [r for r in fixture_io.load_records("schema_precise_adaptive", SCHEMAS)
               if r.value and b'"op":"c"' in r.value and r.topic.endswith("fx_default")]
    decode_record(records[0].topic, 0, 0, records[0].key, records[0].value, records[0].headers)
    before = envelope_plans.cache_info()
    for record in records * 10:
        decode_record(record.topic, 0, 0, record.key, record.value, record.headers)
    after = envelope_plans.cache_info()
    assert after.misses == before.misses and after.hits == before.hits + 10 * len(records)
