"""Exact Python values from the text format pgoutput sends, chosen once per column by type OID.

    column_decoder(type_oid, user_types) -> ColumnDecoder(decode, expected)

`decode` turns one non-NULL text value into the value RowChange promises (see bridge.changes): the
same Python value, of the same type, that the Debezium decoder (bridge.sources.debezium.values)
produces for the same column, so a change gives the same domain events whichever source carried it.
`decode` is None for text-like types: the str is already the value, and skipping the call is the
single biggest saving when decoding wide rows.

The decoding session must use PostgreSQL's default output settings: DateStyle ISO, bytea_output hex,
IntervalStyle irrelevant (interval is refused). TimeZone does not matter: timestamptz and timetz
offsets are parsed and converted to UTC (SESSION_SETTINGS holds the options to set anyway).

Choices, where PostgreSQL has values Python lacks:
- numeric NaN, Infinity, -Infinity become Decimal('NaN'), Decimal('Infinity'), Decimal('-Infinity'):
  exact, and what Debezium gives with decimal.handling.mode=string. (Debezium's default "precise"
  mode sends null for NaN and strips an unconstrained numeric's trailing zeros; those are Debezium's
  losses, so the two sources differ there; see tests/integration/test_pgoutput_decoding.py.)
- date/timestamp 'infinity' and '-infinity' become date.max/min and datetime.max/min (aware UTC for
  timestamptz): the Debezium decoder's policy. Years outside 1..9999 (and BC) raise, never clamp.
- time '24:00:00' raises (datetime.time stops at 23:59:59.999999), as in the Debezium decoder.
- timetz is normalised to UTC (an aware time with tzinfo UTC), as Debezium's ZonedTime is.
- interval and money raise: interval has no exact Python value (months vary), and money's text
  depends on lc_monetary. Types without a decoder raise only when a non-NULL value arrives.
- An array's lower-bound decoration ('[0:1]={1,2}') is dropped: a Python list starts at 0.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

from bridge.nesting import loads_bounded  # a jsonb nested too deep would crash the event encoder

Decode = Callable[[str], Any]

# Options for the decoding session (`options=` of a libpq connection) that make text output parseable.
SESSION_SETTINGS = "-c DateStyle=ISO -c TimeZone=UTC -c bytea_output=hex -c extra_float_digits=1"

# Every non-built-in type, for enums, domains, arrays of them and string-like extension types.
USER_TYPES_SQL = """
SELECT t.oid, n.nspname, t.typname, t.typtype, t.typbasetype, t.typelem, t.typcategory, t.typtypmod
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE t.oid >= 16384
"""


@dataclass(frozen=True, slots=True)
class UserType:
    """One row of USER_TYPES_SQL: what the decoder must know about a type PostgreSQL did not build in."""

    oid: int
    namespace: str
    name: str
    kind: str  # pg_type.typtype: 'e' enum, 'd' domain, 'b' base, 'c' composite, 'r' range, 'm' multirange
    base_oid: int = 0  # a domain's underlying type
    element_oid: int = 0  # an array type's element type
    category: str = ""  # pg_type.typcategory: 'A' array, 'S' string, 'E' enum, ...
    base_modifier: int = -1  # a domain's type modifier of its base type: numeric(10,2) for `amount`

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> UserType:
        oid, namespace, name, kind, base_oid, element_oid, category, *modifier = row
        return cls(int(oid), namespace, name, str(kind), int(base_oid), int(element_oid), str(category),
                   int(modifier[0]) if modifier and modifier[0] is not None else -1)


FIRST_USER_OID = 16384  # PostgreSQL's FirstNormalObjectId: every type created after initdb has an OID above


def needs_catalog(type_oid: int, user_types: Mapping[int, UserType]) -> bool:
    """A type created after initdb (an enum, a domain) that USER_TYPES_SQL has not told the decoder about."""
    return type_oid >= FIRST_USER_OID and type_oid not in user_types


def array_element_oid(type_oid: int) -> int | None:
    """The element type of a built-in array type, None for anything else."""
    return _ARRAYS.get(type_oid)


@dataclass(frozen=True, slots=True)
class ColumnDecoder:
    decode: Decode | None  # None: the text is the value
    expected: str  # what the text should look like, for error messages


# --- scalars ----------------------------------------------------------------------------------------


def to_bool(text: str) -> bool:
    if text == "t":
        return True
    if text == "f":
        return False
    raise ValueError("expected 't' or 'f'")


def to_decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        raise ValueError("expected a numeric as text") from None


_DATE_INFINITY = {"infinity": date.max, "-infinity": date.min}
_TS_INFINITY = {"infinity": datetime.max, "-infinity": datetime.min}
_TSTZ_INFINITY = {"infinity": datetime.max.replace(tzinfo=UTC), "-infinity": datetime.min.replace(tzinfo=UTC)}
_RANGE_HINT = "within years 1..9999 (Python's range; BC and later years have no Python value)"


def to_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        if text in _DATE_INFINITY:
            return _DATE_INFINITY[text]
        raise ValueError(f"expected an ISO date (DateStyle ISO) {_RANGE_HINT}") from None


def to_timestamp(text: str) -> datetime:
    """timestamp WITHOUT time zone: naive, the wall clock as written."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        if text in _TS_INFINITY:
            return _TS_INFINITY[text]
        raise ValueError(f"expected an ISO timestamp (DateStyle ISO) {_RANGE_HINT}") from None
    if moment.tzinfo is not None:
        raise ValueError("expected a timestamp without an offset")
    return moment


def to_timestamptz(text: str) -> datetime:
    """timestamptz: aware in UTC whatever the session's TimeZone was."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        if text in _TSTZ_INFINITY:
            return _TSTZ_INFINITY[text]
        raise ValueError(f"expected an ISO timestamp with offset (DateStyle ISO) {_RANGE_HINT}") from None
    tz = moment.tzinfo
    if tz is UTC:
        return moment
    if tz is None:
        raise ValueError("expected a timestamp with an offset")
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"expected a timestamp {_RANGE_HINT} once converted to UTC") from None


def to_time(text: str) -> time:
    try:
        moment = time.fromisoformat(text)
    except ValueError:
        raise ValueError("expected a time of day in [00:00, 24:00) (24:00:00 has no datetime.time)") from None
    if moment.tzinfo is not None:
        raise ValueError("expected a time without an offset")
    return moment


_TIMETZ_DAY = date(2000, 1, 2)  # any date: only the time of day survives


def to_timetz(text: str) -> time:
    """timetz: the same instant of day in UTC (an aware time), as Debezium's ZonedTime normalises it."""
    try:
        moment = time.fromisoformat(text)
    except ValueError:
        raise ValueError("expected a time with offset, e.g. 13:45:30.5+02") from None
    if moment.tzinfo is None:
        raise ValueError("expected a time with an offset")
    if moment.tzinfo is UTC:
        return moment
    return datetime.combine(_TIMETZ_DAY, moment).astimezone(UTC).timetz()


def to_bytes(text: str) -> bytes:
    if text.startswith("\\x"):
        return bytes.fromhex(text[2:])
    raise ValueError("expected bytea in hex format ('\\x...'); set bytea_output = 'hex' for the decoding session")


def _unsupported(what: str, why: str) -> Decode:
    def refuse(text: str) -> Any:
        raise ValueError(f"{what} has no exact decoder: {why}")
    return refuse


# --- arrays -----------------------------------------------------------------------------------------


def parse_array(text: str, element: Decode | None) -> list[Any]:
    """PostgreSQL's array text: {a,"b c","q\\"d",NULL}, nested {{1,2},{3,4}}, [lo:hi]={...} decorations.

    array_out quotes every element that is empty, holds a delimiter, brace, quote, backslash or space,
    or reads NULL in any case; so an unquoted NULL is SQL NULL and a quoted one is the text 'NULL'.
    """
    if text[:1] == "[":
        text = text[text.index("=") + 1:]
    if text[:1] != "{" or text[-1:] != "}":
        raise ValueError("expected an array literal in braces")
    if '"' not in text and "{" not in text[1:]:  # flat and unquoted: the common case, done with split
        inner = text[1:-1]
        if not inner:
            return []
        if element is None:
            return [None if item == "NULL" else item for item in inner.split(",")]
        return [None if item == "NULL" else element(item) for item in inner.split(",")]
    values, end = _parse_level(text, 0, element)
    if end != len(text):
        raise ValueError(f"unexpected text after the array at offset {end}")
    return values


def _parse_level(text: str, pos: int, element: Decode | None) -> tuple[list[Any], int]:
    """One brace level starting at text[pos] == '{'; returns the values and the offset after '}'."""
    values: list[Any] = []
    pos += 1
    if text[pos] == "}":
        return values, pos + 1
    while True:
        char = text[pos]
        if char == "{":
            nested, pos = _parse_level(text, pos, element)
            values.append(nested)
        elif char == '"':
            item, pos = _quoted(text, pos + 1)
            values.append(item if element is None else element(item))
        else:
            end = pos
            while text[end] not in ",}":
                end += 1
            item = text[pos:end]
            pos = end
            values.append(None if item == "NULL" else item if element is None else element(item))
        char = text[pos]
        if char == ",":
            pos += 1
        elif char == "}":
            return values, pos + 1
        else:
            raise ValueError(f"expected ',' or '}}' at offset {pos}, got {char!r}")


def _quoted(text: str, pos: int) -> tuple[str, int]:
    """A quoted element from just after its opening quote; backslash escapes the next character."""
    parts = []
    while True:
        quote = text.index('"', pos)
        backslash = text.find("\\", pos, quote)
        if backslash < 0:
            parts.append(text[pos:quote])
            return "".join(parts), quote + 1
        parts.append(text[pos:backslash])
        parts.append(text[backslash + 1])
        pos = backslash + 2


def _array_of(element: ColumnDecoder) -> ColumnDecoder:
    decode = element.decode

    def array(text: str) -> list[Any]:
        return parse_array(text, decode)
    return ColumnDecoder(array, f"an array literal of {element.expected}")


# --- by type OID ------------------------------------------------------------------------------------

_TEXT = ColumnDecoder(None, "text")
_SCALARS: dict[int, ColumnDecoder] = {
    16: ColumnDecoder(to_bool, "a boolean ('t' or 'f')"),
    17: ColumnDecoder(to_bytes, "bytea as hex ('\\x...')"),
    18: _TEXT,  # "char"
    19: _TEXT,  # name
    20: ColumnDecoder(int, "an int8"),
    21: ColumnDecoder(int, "an int2"),
    23: ColumnDecoder(int, "an int4"),
    25: _TEXT,  # text
    26: ColumnDecoder(int, "an oid"),
    114: ColumnDecoder(loads_bounded, "a JSON document (json)"),
    142: _TEXT,  # xml
    650: _TEXT,  # cidr
    700: ColumnDecoder(float, "a float4"),
    701: ColumnDecoder(float, "a float8"),
    774: _TEXT,  # macaddr8
    790: ColumnDecoder(_unsupported("money", "its text depends on lc_monetary; cast the column to numeric"),
                       "money"),
    829: _TEXT,  # macaddr
    869: _TEXT,  # inet
    1042: _TEXT,  # bpchar: blank-padded as stored, like Debezium's
    1043: _TEXT,  # varchar
    1082: ColumnDecoder(to_date, "an ISO date"),
    1083: ColumnDecoder(to_time, "an ISO time"),
    1114: ColumnDecoder(to_timestamp, "an ISO timestamp"),
    1184: ColumnDecoder(to_timestamptz, "an ISO timestamp with offset"),
    1186: ColumnDecoder(_unsupported("interval", "months and days have no fixed length in Python's timedelta"),
                        "interval"),
    1266: ColumnDecoder(to_timetz, "an ISO time with offset"),
    1700: ColumnDecoder(to_decimal, "a numeric"),
    2950: ColumnDecoder(uuid.UUID, "a UUID"),
    3802: ColumnDecoder(loads_bounded, "a JSON document (jsonb)"),
}
_ARRAYS: dict[int, int] = {  # array type OID -> element type OID
    1000: 16, 1001: 17, 1002: 18, 1003: 19, 1016: 20, 1005: 21, 1007: 23, 1009: 25, 1028: 26, 199: 114,
    143: 142, 651: 650, 1021: 700, 1022: 701, 775: 774, 791: 790, 1040: 829, 1041: 869, 1014: 1042,
    1015: 1043, 1182: 1082, 1183: 1083, 1115: 1114, 1185: 1184, 1187: 1186, 1270: 1266, 1231: 1700,
    2951: 2950, 3807: 3802,
}


def column_decoder(type_oid: int, user_types: Mapping[int, UserType] | None = None) -> ColumnDecoder:
    """The decoder for one column type; built once per relation, used for every value."""
    user_types = user_types or {}
    return _decoder(type_oid, user_types, 0)


def _decoder(type_oid: int, user_types: Mapping[int, UserType], depth: int) -> ColumnDecoder:
    if depth > 8:
        raise ValueError(f"type OID {type_oid}: domains nest too deep")
    found = _SCALARS.get(type_oid)
    if found is not None:
        return found
    element_oid = _ARRAYS.get(type_oid)
    if element_oid is not None:
        return _array_of(_SCALARS[element_oid])
    user = user_types.get(type_oid)
    if user is None:
        what = f"type OID {type_oid}"
        why = ("a user-defined type the decoder was not told about: load USER_TYPES_SQL into user_types"
               if type_oid >= 16384 else "a built-in type the bridge does not decode")
        return ColumnDecoder(_unsupported(what, why), what)
    label = f"{user.namespace}.{user.name}"
    if user.kind == "e":
        return ColumnDecoder(None, f"a label of enum {label}")
    if user.kind == "d" and user.base_oid:
        return _decoder(user.base_oid, user_types, depth + 1)
    if user.category == "A" and user.element_oid:
        return _array_of(_decoder(user.element_oid, user_types, depth + 1))
    if user.kind == "b" and user.category == "S":  # string-like extension types (citext, ...)
        return ColumnDecoder(None, f"text of {label}")
    return ColumnDecoder(_unsupported(f"type {label} (OID {type_oid}, typtype {user.kind!r})",
                                      "only enums, domains, arrays and string-like types are decoded"), label)
