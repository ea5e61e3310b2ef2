"""Text-format values -> exact Python values, by type OID, with the Debezium decoder's conventions.

The text is what PostgreSQL's output functions write (DateStyle ISO, bytea_output hex); the results
must be the values bridge.sources.debezium.values gives for the same column, so both sources agree.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from bridge.sources.debezium import values as debezium_values
from bridge.sources.pgoutput.values import UserType, column_decoder, parse_array

OID = {"bool": 16, "bytea": 17, "char": 18, "name": 19, "int8": 20, "int2": 21, "int4": 23, "text": 25, "oid": 26,
       "json": 114, "xml": 142, "float4": 700, "float8": 701, "money": 790, "inet": 869, "bpchar": 1042,
       "varchar": 1043, "date": 1082, "time": 1083, "timestamp": 1114, "timestamptz": 1184, "interval": 1186,
       "timetz": 1266, "numeric": 1700, "uuid": 2950, "jsonb": 3802, "point": 600}
ARRAY = {"bool": 1000, "bytea": 1001, "int2": 1005, "int4": 1007, "text": 1009, "bpchar": 1014, "varchar": 1015,
         "int8": 1016, "float4": 1021, "float8": 1022, "json": 199, "date": 1182, "time": 1183, "timestamp": 1115,
         "timestamptz": 1185, "timetz": 1270, "numeric": 1231, "uuid": 2951, "jsonb": 3807, "name": 1003}


def decode(type_oid: int, text: str, user_types: dict[int, UserType] | None = None) -> Any:
    decoder = column_decoder(type_oid, user_types)
    return text if decoder.decode is None else decoder.decode(text)


def exactly(value: Any, expected: Any) -> bool:
    if isinstance(expected, Decimal):
        return type(value) is Decimal and (value.is_nan() and expected.is_nan() or (
            value == expected and value.as_tuple() == expected.as_tuple()))
    if isinstance(expected, float):
        return type(value) is float and (math.isnan(value) and math.isnan(expected) or (
            value == expected and math.copysign(1, value) == math.copysign(1, expected)))
    if isinstance(expected, (datetime, time)):
        return type(value) is type(expected) and value == expected and value.tzinfo is expected.tzinfo
    return type(value) is type(expected) and value == expected


UTC_MAX, UTC_MIN = datetime.max.replace(tzinfo=UTC), datetime.min.replace(tzinfo=UTC)


@pytest.mark.parametrize(("pg_type", "text", "expected"), [
    ("bool", "t", True), ("bool", "f", False),
    ("int2", "-32768", -32768), ("int4", "2147483647", 2147483647), ("int8", "-9223372036854775808", -2**63),
    ("oid", "4294967295", 4294967295),
    ("numeric", "12.30", Decimal("12.30")), ("numeric", "-0.01", Decimal("-0.01")), ("numeric", "0", Decimal(0)),
    ("numeric", "-123456789012345678901234567890.1234567890", Decimal("-123456789012345678901234567890.1234567890")),
    ("numeric", "NaN", Decimal("NaN")), ("numeric", "Infinity", Decimal("Infinity")),
    ("numeric", "-Infinity", Decimal("-Infinity")),
    ("float4", "1.5", 1.5), ("float4", "0.1", 0.1), ("float8", "1e+308", 1e308), ("float8", "-0", -0.0),
    ("float8", "NaN", float("nan")), ("float8", "Infinity", float("inf")), ("float8", "-Infinity", float("-inf")),
    ("float8", "0.30000000000000004", 0.1 + 0.2),
    ("text", "naïve café ☕", "naïve café ☕"), ("varchar", "", ""), ("bpchar", "ab  ", "ab  "),
    ("name", "pg", "pg"),
    ("char", "x", "x"), ("xml", "<a/>", "<a/>"), ("inet", "10.0.0.1/8", "10.0.0.1/8"),
    ("date", "2024-02-29", date(2024, 2, 29)), ("date", "0001-01-01", date(1, 1, 1)),
    ("date", "infinity", date.max), ("date", "-infinity", date.min),
    ("time", "13:45:30.123456", time(13, 45, 30, 123456)), ("time", "00:00:00", time(0)),
    ("time", "23:59:59.999999", time(23, 59, 59, 999999)),
    ("timetz", "13:45:30.5+02", time(11, 45, 30, 500000, tzinfo=UTC)),
    ("timetz", "00:00:00-05:30", time(5, 30, tzinfo=UTC)),
    ("timetz", "23:00:00-05", time(4, 0, tzinfo=UTC)),  # the next day in UTC: only the time of day survives
    ("timetz", "10:00:00+00", time(10, tzinfo=UTC)),
    ("timestamp", "2024-02-29 13:45:30.123456", datetime(2024, 2, 29, 13, 45, 30, 123456)),
    ("timestamp", "1969-12-31 23:59:59.999999", datetime(1969, 12, 31, 23, 59, 59, 999999)),
    ("timestamp", "2024-02-29 13:45:30.12", datetime(2024, 2, 29, 13, 45, 30, 120000)),
    ("timestamp", "infinity", datetime.max), ("timestamp", "-infinity", datetime.min),
    ("timestamptz", "2024-02-29 11:45:30.123456+00", datetime(2024, 2, 29, 11, 45, 30, 123456, tzinfo=UTC)),
    ("timestamptz", "2024-02-29 13:45:30+02", datetime(2024, 2, 29, 11, 45, 30, tzinfo=UTC)),
    ("timestamptz", "2024-02-29 13:45:30.5-05:30:15", datetime(2024, 2, 29, 19, 15, 45, 500000, tzinfo=UTC)),
    ("timestamptz", "infinity", UTC_MAX), ("timestamptz", "-infinity", UTC_MIN),
    ("uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
    ("json", '{"b": [1, 2], "a": "x", "n": null}', {"b": [1, 2], "a": "x", "n": None}),
    ("jsonb", '"just a string"', "just a string"), ("jsonb", "[1, 3.5]", [1, 3.5]),
    ("bytea", "\\x0001feff", b"\x00\x01\xfe\xff"), ("bytea", "\\x", b""),
])
def test_scalars_decode_exactly(pg_type: str, text: str, expected: Any) -> None:
    value = decode(OID[pg_type], text)
    assert exactly(value, expected), f"{pg_type} {text!r}: {value!r}, expected {expected!r}"


def test_infinity_and_zones_follow_the_debezium_decoder() -> None:
    """Same sentinels and the same UTC normalisation as bridge.sources.debezium.values."""
    assert decode(OID["date"], "infinity") == debezium_values.date_from_days(-2147472692)
    assert decode(OID["date"], "-infinity") == debezium_values.date_from_days(-2147472691)
    assert decode(OID["timestamp"], "infinity") == debezium_values.timestamp_from_micros(9223372036825200000)
    assert decode(OID["timestamptz"], "infinity") == debezium_values.zoned_timestamp("infinity")
    assert decode(OID["timestamptz"], "-infinity") == debezium_values.zoned_timestamp("-infinity")
    assert exactly(decode(OID["timetz"], "00:00:00-05:30"), debezium_values.zoned_time("05:30:00Z"))
    moment = decode(OID["timestamptz"], "2024-02-29 13:45:30.123456+02")
    assert exactly(moment, debezium_values.zoned_timestamp("2024-02-29T11:45:30.123456Z"))


@pytest.mark.parametrize(("pg_type", "text", "says"), [
    ("date", "0044-03-15 BC", "years 1..9999"), ("date", "10000-01-01", "years 1..9999"),
    ("date", "29/02/2024", "DateStyle ISO"), ("timestamp", "2024-02-29 13:45:30+00", "without an offset"),
    ("timestamptz", "0001-01-01 00:00:00+01", "once converted to UTC"), ("timestamptz", "2024-02-29 13:45:30",
                                                                         "with an offset"),
    ("time", "24:00:00", "24:00:00 has no datetime.time"), ("timetz", "13:45:30", "with an offset"),
    ("bool", "true", "'t' or 'f'"), ("numeric", "12,30", "numeric"), ("int4", "1.5", "invalid literal"),
    ("bytea", "\\000\\001", "bytea_output = 'hex'"), ("bytea", "\\xZZ", "non-hexadecimal"),
    ("interval", "1 mon", "months and days"), ("money", "$1.00", "lc_monetary"),
    ("point", "(1,2)", "built-in type the bridge does not decode"),
])
def test_values_without_an_exact_python_value_raise(pg_type: str, text: str, says: str) -> None:
    with pytest.raises(ValueError, match=None) as caught:
        decode(OID[pg_type], text)
    assert says in str(caught.value)


def test_an_unsupported_type_fails_only_when_a_value_arrives() -> None:
    decoder = column_decoder(OID["interval"])  # building it is fine: NULLs of any type pass through
    assert decoder.decode is not None and "interval" in decoder.expected


# --- arrays ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("pg_type", "text", "expected"), [
    ("text", '{a,"b c","quote\\"d"}', ["a", "b c", 'quote"d']),
    ("text", '{x,NULL,""}', ["x", None, ""]),
    ("text", '{"NULL",null2,"back\\\\slash","{braces}","com,ma"}', ["NULL", "null2", "back\\slash", "{braces}",
                                                                    "com,ma"]),
    ("text", "{}", []),
    ("int4", "{NULL,-1}", [None, -1]), ("int4", "{{1,2},{3,NULL}}", [[1, 2], [3, None]]),
    ("int4", "[0:2]={7,8,9}", [7, 8, 9]), ("int4", "{{{1}},{{2}}}", [[[1]], [[2]]]),
    ("int8", "{9223372036854775807}", [2**63 - 1]), ("int2", "{1}", [1]),
    ("numeric", "{12.30,NaN,NULL}", [Decimal("12.30"), Decimal("NaN"), None]),
    ("float8", "{1.5,-Infinity}", [1.5, float("-inf")]), ("float4", "{0.25}", [0.25]),
    ("bool", "{t,f,NULL}", [True, False, None]),
    ("date", "{2024-02-29,infinity}", [date(2024, 2, 29), date.max]),
    ("time", '{"13:45:30.5"}', [time(13, 45, 30, 500000)]), ("time", "{13:45:30}", [time(13, 45, 30)]),
    ("timetz", '{"13:45:30+02"}', [time(11, 45, 30, tzinfo=UTC)]),
    ("timestamp", '{"2024-02-29 13:45:30",-infinity}', [datetime(2024, 2, 29, 13, 45, 30), datetime.min]),
    ("timestamptz", '{"2024-02-29 13:45:30+02",NULL}', [datetime(2024, 2, 29, 11, 45, 30, tzinfo=UTC), None]),
    ("uuid", "{00000000-0000-0000-0000-000000000001}", [uuid.UUID(int=1)]),
    ("jsonb", '{"{\\"a\\": 1}","[1, 2]",NULL}', [{"a": 1}, [1, 2], None]),
    ("json", '{"\\"s\\"",3}', ["s", 3]),
    ("bytea", '{"\\\\x00ff","\\\\x",NULL}', [b"\x00\xff", b"", None]),
    ("bpchar", '{"ab  ",abcd}', ["ab  ", "abcd"]), ("varchar", '{" lead"}', [" lead"]), ("name", "{pg}", ["pg"]),
])
def test_arrays_decode_their_elements_with_quoting_nulls_and_nesting(pg_type: str, text: str, expected: Any) -> None:
    value = decode(ARRAY[pg_type], text)
    assert same_nested(value, expected), f"{value!r}, expected {expected!r}"


def same_nested(value: Any, expected: Any) -> bool:
    if isinstance(expected, list):
        return (type(value) is list and len(value) == len(expected)
                and all(same_nested(v, e) for v, e in zip(value, expected, strict=True)))
    return value is None if expected is None else exactly(value, expected)


@pytest.mark.parametrize("text", ["1,2", "{1,2", '{"open}', "{1,2}x", "{{1},2x}"])
def test_malformed_arrays_raise(text: str) -> None:
    with pytest.raises((ValueError, IndexError)):
        parse_array(text, int)


# --- user-defined types ---------------------------------------------------------------------------

MOOD = UserType(16400, "legacy", "mood", "e", category="E")
MOOD_ARRAY = UserType(16399, "legacy", "_mood", "b", element_oid=16400, category="A")
MONEY_DOMAIN = UserType(16410, "legacy", "amount", "d", base_oid=OID["numeric"], category="N")
MONEY_DOMAIN_ARRAY = UserType(16409, "legacy", "_amount", "b", element_oid=16410, category="A")
CITEXT = UserType(16420, "public", "citext", "b", category="S")
POINT3 = UserType(16430, "legacy", "point3", "c", category="C")
USER_TYPES = {t.oid: t for t in (MOOD, MOOD_ARRAY, MONEY_DOMAIN, MONEY_DOMAIN_ARRAY, CITEXT, POINT3)}


def test_enums_domains_their_arrays_and_string_types_decode_by_the_catalog() -> None:
    assert decode(MOOD.oid, "happy", USER_TYPES) == "happy"
    assert decode(MOOD_ARRAY.oid, "{sad,NULL,happy}", USER_TYPES) == ["sad", None, "happy"]
    assert exactly(decode(MONEY_DOMAIN.oid, "18.90", USER_TYPES), Decimal("18.90"))
    assert decode(MONEY_DOMAIN_ARRAY.oid, "{1.10,2}", USER_TYPES) == [Decimal("1.10"), Decimal(2)]
    assert decode(CITEXT.oid, "MiXeD", USER_TYPES) == "MiXeD"
    assert "enum legacy.mood" in column_decoder(MOOD.oid, USER_TYPES).expected


def test_user_types_the_decoder_was_not_told_about_are_refused_not_guessed() -> None:
    with pytest.raises(ValueError, match="load USER_TYPES_SQL"):
        decode(16400, "happy")
    with pytest.raises(ValueError, match="only enums, domains, arrays and string-like types"):
        decode(POINT3.oid, "(1,2,3)", USER_TYPES)


def test_user_type_rows_from_the_catalog_query() -> None:
    row = (16400, "legacy", "mood", "e", 0, 0, "E")
    assert UserType.from_row(row) == MOOD


def test_timestamptz_in_any_session_zone_is_the_same_instant() -> None:
    instant = datetime(2024, 2, 29, 11, 45, 30, 123456, tzinfo=UTC)
    for hours in (-12, -5, 0, 1, 5.5, 14):
        local = instant.astimezone(timezone(timedelta(hours=hours)))
        offset = local.strftime("%z")
        text = local.strftime("%Y-%m-%d %H:%M:%S.%f") + offset[:3] + (":" + offset[3:] if offset[3:] != "00" else "")
        assert exactly(decode(OID["timestamptz"], text), instant), text
