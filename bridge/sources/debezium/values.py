"""Exact conversions of single Debezium JSON values into the Python values RowChange promises.

Each function takes one JSON value as the JsonConverter wrote it and returns the exact Python value,
or raises ValueError/TypeError saying what it expected; the record decoder adds topic, offset and
column. They are plain functions so that the per-schema plans (debezium.types) and the declared-type
plans (debezium.declared) share one implementation of every encoding.

Infinity. PostgreSQL's 'infinity'/'-infinity' dates and timestamps have no Python value; Debezium
encodes them as sentinels that depend on the unit (and, for dates, as an int32 overflow:
+infinity arrives as -2147472692 days, -infinity as -2147472691). The bridge decodes them to the
clearest values Python has: date.max/date.min, datetime.max/datetime.min (aware in UTC for
timestamptz), so ordering is preserved and a mapping can test `value == datetime.max`. The price: a
real 9999-12-31 23:59:59.999999 reads the same as +infinity. Any other value outside Python's range
(years 1..9999) raises, never clamps.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from bridge.nesting import loads_bounded

UTC = UTC
DEFAULT_PLACEHOLDER = "__debezium_unavailable_value"

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_EPOCH_NAIVE = datetime(1970, 1, 1)
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
_DAY_US = 86_400_000_000
_UTC_MAX = datetime.max.replace(tzinfo=UTC)
_UTC_MIN = datetime.min.replace(tzinfo=UTC)

# Debezium's infinity sentinels, as recorded from Debezium 3.6.1 (see tests/fixtures/debezium).
_DATE_INFINITY = {-2147472692: date.max, -2147472691: date.min}
_MS_INFINITY = {9223372036825200: datetime.max, -9223372036832400: datetime.min}
_US_INFINITY = {9223372036825200000: datetime.max, -9223372036832400000: datetime.min}
_NS_INFINITY = {9223372036854775807: datetime.max, -9223372036854775808: datetime.min}
_ISO_DATE_INFINITY = {"-5877611-06-21": date.max, "-5877611-06-22": date.min}
_ISO_TIMESTAMP_INFINITY = {"+294247-01-10T04:00:25.2": datetime.max, "-290308-12-21T19:59:27.6": datetime.min}
_ZONED_INFINITY = {"infinity": _UTC_MAX, "-infinity": _UTC_MIN}
_FLOAT_WORDS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


# --- primitives -------------------------------------------------------------------------------------


def require_int(value: Any) -> int:
    if value.__class__ is int:
        return value
    raise TypeError("expected a JSON integer")


def ranged_int(bits: int, type_name: str) -> Callable[[Any], int]:
    """A JSON integer that fits a signed `bits`-bit type: Connect's int8..int64, PostgreSQL's
    smallint/integer/bigint. JSON integers have no size; a value the column cannot hold is refused."""
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    def checked(value: Any) -> int:
        if value.__class__ is not int:
            raise TypeError("expected a JSON integer")
        if low <= value <= high:
            return value
        raise ValueError(f"out of range for {type_name}: {low}..{high}")
    return checked


def require_bool(value: Any) -> bool:
    if value is True or value is False:
        return value
    raise TypeError("expected true or false")


def require_str(value: Any) -> str:
    if value.__class__ is str:
        return value
    raise TypeError("expected a JSON string")


def to_float(value: Any) -> float:
    """FLOAT32/FLOAT64: a JSON number, or "NaN"/"Infinity"/"-Infinity" (Jackson quotes those)."""
    cls = value.__class__
    if cls is float:
        return value
    if cls is int:
        return float(value)
    if cls is str and value in _FLOAT_WORDS:
        return _FLOAT_WORDS[str(value)]
    raise TypeError("expected a JSON number or one of NaN, Infinity, -Infinity")


def b64_bytes(value: Any) -> bytes:
    try:
        return base64.b64decode(require_str(value), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"expected base64 ({exc})") from None


# --- decimals ---------------------------------------------------------------------------------------


def decimal_from_unscaled(value: Any, scale: int) -> Decimal:
    """Connect Decimal: base64 of the big-endian two's-complement unscaled integer; the scale is known."""
    unscaled = int.from_bytes(b64_bytes(value), "big", signed=True)
    return Decimal(f"{unscaled}E{-scale}")  # built from text: exact at any precision, keeps the scale


def decimal_from_variable_scale(value: Any) -> Decimal:
    """io.debezium.data.VariableScaleDecimal: {"scale": int, "value": base64 unscaled}."""
    if value.__class__ is not dict or value.keys() != {"scale", "value"}:
        raise TypeError('expected {"scale": <int>, "value": <base64>}')
    return decimal_from_unscaled(value["value"], require_int(value["scale"]))


def decimal_from_string(value: Any) -> Decimal:
    """decimal.handling.mode=string: "123.45"; NaN arrives as "NAN"."""
    try:
        return Decimal(require_str(value))
    except InvalidOperation:
        raise ValueError("expected a decimal number as text") from None


def decimal_from_double(value: Any) -> Decimal:
    """decimal.handling.mode=double: LOSSY. Debezium already rounded the numeric to the nearest binary64;
    Decimal(repr(x)) gives the shortest decimal that round-trips, e.g. 12.3 for numeric 12.30 (the
    scale is gone) and 1.2345678901234568E+29 for a 40-digit number (the digits are gone)."""
    return Decimal(repr(to_float(value)))


# --- dates and times --------------------------------------------------------------------------------


def date_from_days(value: Any) -> date:
    """io.debezium.time.Date and Connect Date: days since 1970-01-01."""
    days = require_int(value)
    if days in _DATE_INFINITY:
        return _DATE_INFINITY[days]
    try:
        return date.fromordinal(_EPOCH_ORDINAL + days)
    except (ValueError, OverflowError):
        raise ValueError("expected days since 1970-01-01 within years 1..9999") from None


def _time_from_micros(micros: int) -> time:
    if not 0 <= micros < _DAY_US:
        raise ValueError("expected a time of day in [00:00, 24:00) (24:00:00 has no datetime.time)")
    seconds, micro = divmod(micros, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return time(hour, minute, second, micro)


def time_from_millis(value: Any) -> time:
    return _time_from_micros(require_int(value) * 1000)


def time_from_micros(value: Any) -> time:
    return _time_from_micros(require_int(value))


def time_from_nanos(value: Any) -> time:
    micros, rest = divmod(require_int(value), 1000)
    if rest:
        raise ValueError("expected whole microseconds (PostgreSQL has no finer precision)")
    return _time_from_micros(micros)


def _naive_from_micros(micros: int) -> datetime:
    try:
        return _EPOCH_NAIVE + timedelta(microseconds=micros)
    except OverflowError:
        raise ValueError("expected a timestamp within years 1..9999") from None


def timestamp_from_millis(value: Any) -> datetime:
    """io.debezium.time.Timestamp / Connect Timestamp: ms since epoch of the wall clock read as UTC.

    timestamp WITHOUT time zone, so the result is naive: Debezium's 'UTC' is only an encoding."""
    millis = require_int(value)
    if millis in _MS_INFINITY:
        return _MS_INFINITY[millis]
    return _naive_from_micros(millis * 1000)


def timestamp_from_micros(value: Any) -> datetime:
    micros = require_int(value)
    if micros in _US_INFINITY:
        return _US_INFINITY[micros]
    return _naive_from_micros(micros)


def timestamp_from_nanos(value: Any) -> datetime:
    nanos = require_int(value)
    if nanos in _NS_INFINITY:
        return _NS_INFINITY[nanos]
    micros, rest = divmod(nanos, 1000)
    if rest:
        raise ValueError("expected whole microseconds (PostgreSQL has no finer precision)")
    return _naive_from_micros(micros)


def zoned_timestamp(value: Any) -> datetime:
    """io.debezium.time.ZonedTimestamp (timestamptz): ISO-8601 in UTC, e.g. 2024-02-29T11:45:30.123456Z."""
    text = require_str(value)
    if text in _ZONED_INFINITY:
        return _ZONED_INFINITY[text]
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("expected an ISO-8601 timestamp with a zone")
    return moment.astimezone(UTC)


def zoned_time(value: Any) -> time:
    """io.debezium.time.ZonedTime (timetz): ISO-8601 time normalised to UTC, e.g. 11:45:30.5Z."""
    moment = time.fromisoformat(require_str(value))
    if moment.tzinfo is None:
        raise ValueError("expected an ISO-8601 time with a zone")
    return moment


def _strip_z(text: str) -> str:
    # time.precision.mode=isostring appends "Z" to values that have no zone (date, time, timestamp).
    return text[:-1] if text.endswith("Z") else text


def iso_date(value: Any) -> date:
    text = _strip_z(require_str(value))
    if text in _ISO_DATE_INFINITY:
        return _ISO_DATE_INFINITY[text]
    return date.fromisoformat(text)


def iso_time(value: Any) -> time:
    moment = time.fromisoformat(_strip_z(require_str(value)))
    if moment.tzinfo is not None:
        raise ValueError("expected a wall-clock time (no offset other than Z)")
    return moment


def iso_timestamp(value: Any) -> datetime:
    text = _strip_z(require_str(value))
    if text in _ISO_TIMESTAMP_INFINITY:
        return _ISO_TIMESTAMP_INFINITY[text]
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is not None:
        raise ValueError("expected a wall-clock timestamp (no offset other than Z)")
    return moment


def micros_to_utc(micros: int) -> datetime:
    """Envelope timestamps (source.ts_us): aware UTC."""
    return _EPOCH_UTC + timedelta(microseconds=micros)


# --- other types ------------------------------------------------------------------------------------


def to_uuid(value: Any) -> uuid.UUID:
    return uuid.UUID(require_str(value))


def parse_json_text(value: Any) -> Any:
    """io.debezium.data.Json: json/jsonb arrive as a string holding the document (depth-bounded: see
    bridge.nesting)."""
    return loads_bounded(require_str(value))


def reject_duration(value: Any) -> Any:
    raise ValueError("io.debezium.time.MicroDuration approximates months as 30.4375 days, so it cannot be "
                     "decoded exactly; set interval.handling.mode=string on the connector")


# --- TOAST placeholders -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToastForms:
    """Every typed form of Debezium's unchanged-TOAST placeholder (UnchangedToastedPlaceholder.java).

    text: text, varchar, json, jsonb (not valid JSON), enum. bytes_b64: bytea (base64 of the text's
    bytes). Arrays: [text] for text[]; the text's byte values for int[]/bigint[]; [name-based UUID of
    the bytes] for uuid[]. A real array equal to one of these forms would be misread; with the default
    placeholder that is a 28-element int array spelling "__debezium_unavailable_value".
    """

    text: str
    bytes_b64: str
    text_array: tuple[str]
    byte_values: tuple[int, ...]
    uuid_array: tuple[str]

    def is_array_placeholder(self, values: list[Any]) -> bool:
        size = len(values)
        if size == 1:
            return values[0] == self.text or values[0] == self.uuid_array[0]
        return size == len(self.byte_values) and tuple(values) == self.byte_values


@lru_cache(maxsize=16)
def toast_forms(placeholder: str) -> ToastForms:
    raw = placeholder.encode()
    name_uuid = uuid.UUID(bytes=hashlib.md5(raw).digest(), version=3)  # Java's UUID.nameUUIDFromBytes
    return ToastForms(
        text=placeholder, bytes_b64=base64.b64encode(raw).decode(), text_array=(placeholder,),
        byte_values=tuple(raw), uuid_array=(str(name_uuid),),
    )
