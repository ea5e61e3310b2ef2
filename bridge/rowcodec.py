"""Rows of the prior-row store as JSON text with tagged exact types: data that round-trips, never code.

A row is a JSON object of its columns. Values JSON spells exactly (str, bool, null, int within int64,
finite float, lists) are written as they are; every other value type a row can hold is a one-key object
whose key is a tag: ``{"$decimal": "1.50"}`` (the Decimal's own text: scale, exponent, NaN, Infinity),
``{"$int": "-1f"}`` (hex: no size limit), ``{"$float": "nan"}``, ``{"$bytes": base64}``, ``{"$uuid": ...}``,
``{"$date" | "$time" | "$datetime": ISO 8601 with offset}``, ``{"$tuple": [...]}``, ``{"$unknown": null}``.
Keys of a JSON value (json/jsonb columns) or a column name that start with ``$`` get one more ``$`` on
the way in and lose it on the way out, so a user's ``{"$decimal": "1"}`` is never read as a tag.

Decoding builds only these value types (json.loads plus a table of constructors): a tampered file can
hold wrong values, but nothing in it can run.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Mapping
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from uuid import UUID

from bridge.changes import UNKNOWN

_INT64 = 2**63  # ints beyond go as hex: JSON readers disagree there, and Python's str(int) has a limit
_ESCAPE = "$"
MAX_NESTING = 200  # levels of lists and objects in one value (sources refuse beyond bridge.nesting.MAX_DEPTH, 100)


class UnstorableValue(TypeError):
    """A column holds a value the store cannot write exactly (a type no row should hold, or nested too deeply)."""

    def __init__(self, column: str, reason: str) -> None:
        super().__init__(f"column {column!r} holds {reason}")
        self.column = column
        self.reason = reason


def encode_row(row: Mapping[str, Any]) -> str:
    """The row as JSON text; UnstorableValue naming the column when a value cannot be written exactly."""
    # Most rows hold only values one pass of the C encoder writes as _encode would (its default hook tags
    # the scalars JSON has no type for); the rest (nested values, ints beyond int64, '$' names, NaN) are
    # written the long way, with the same text.
    plain = type(row) is dict  # (the C encoder would hand any other mapping to the hook)
    for column, value in row.items() if plain else ():
        kind = type(value)
        if kind in _ONE_PASS or (kind is int and -_INT64 < value < _INT64):
            if column[:1] != _ESCAPE:
                continue
        elif kind is list and all(type(item) is str for item in value) and column[:1] != _ESCAPE:
            continue  # text[] columns (tags): common, and plain
        plain = False
        break
    if plain:
        try:
            return _DUMPS_ONE_PASS(row)
        except ValueError:  # a NaN or infinite float: tagged below
            pass
    encoded = {}
    for column, value in row.items():
        name = _ESCAPE + column if column[:1] == _ESCAPE else column
        kind = type(value)
        if kind is str or value is None or kind is bool:  # most columns: no call (this is on the hot path)
            encoded[name] = value
            continue
        try:
            encoded[name] = _encode(value, 0)
        except (TypeError, ValueError) as exc:
            raise UnstorableValue(column, str(exc)) from None
    return _DUMPS(encoded)


def encode_storable(row: Mapping[str, Any]) -> tuple[str, Mapping[str, Any], list[UnstorableValue]]:
    """encode_row, with each column it cannot write stored as UNKNOWN: (text, the row as stored, why).

    A rule that later needs such an old value then fails on that change (dead letter, named), rather than
    the store failing on every restart; the caller logs why.
    """
    problems: list[UnstorableValue] = []
    while True:
        try:
            return encode_row(row), row, problems
        except UnstorableValue as exc:
            problems.append(exc)
            row = {**row, exc.column: UNKNOWN}


def decode_row(text: str | bytes) -> dict[str, Any]:
    """The row `encode_row` wrote; ValueError (or TypeError) when the text is not such a row."""
    row = _LOADS(text.decode() if isinstance(text, bytes) else text)
    if type(row) is not dict:
        raise ValueError(f"a stored row is a JSON object, not {type(row).__name__}")
    return row


# Built once: json.dumps/loads with options build a new encoder/decoder per call (a third of the time).
_DUMPS = json.JSONEncoder(ensure_ascii=True, check_circular=False, allow_nan=False, separators=(",", ":")).encode


def _encode(value: Any, depth: int) -> Any:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        return value if -_INT64 < value < _INT64 else {"$int": format(value, "x")}
    if kind is dict or kind is list or kind is tuple:
        if depth >= MAX_NESTING:
            raise ValueError(f"a value nested more than {MAX_NESTING} levels deep")
        if kind is list:
            return [_encode(item, depth + 1) for item in value]
        if kind is tuple:
            return {"$tuple": [_encode(item, depth + 1) for item in value]}
        encoded = {}
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"an object key of type {type(key).__name__}")
            encoded[_ESCAPE + key if key[:1] == _ESCAPE else key] = _encode(item, depth + 1)
        return encoded
    encode = _SCALARS.get(kind)
    if encode is None:
        raise TypeError(f"a {kind.__name__} value, a type no row holds")
    return encode(value)


_SCALARS: dict[type, Callable[[Any], Any]] = {
    float: lambda value: value if math.isfinite(value) else {"$float": repr(value)},
    Decimal: lambda value: {"$decimal": str(value)},
    bytes: lambda value: {"$bytes": base64.b64encode(value).decode("ascii")},
    UUID: lambda value: {"$uuid": str(value)},
    date: lambda value: {"$date": value.isoformat()},
    time: lambda value: {"$time": value.isoformat()},
    datetime: lambda value: {"$datetime": value.isoformat()},
    type(UNKNOWN): lambda value: {"$unknown": None},
}


# Values the one-pass encoder takes as they are (JSON's own: str, bool, None, float, and ints checked for size
# by the caller) or through its default hook (_SCALARS: exact types only, as _encode looks them up).
_ONE_PASS = frozenset({str, bool, type(None), *_SCALARS})
_DUMPS_ONE_PASS = json.JSONEncoder(ensure_ascii=True, check_circular=False, allow_nan=False, separators=(",", ":"),
                                   default=lambda value: _SCALARS[type(value)](value)).encode


def _text(value: Any) -> str:
    if type(value) is not str:
        raise ValueError(f"expected text in a tagged value, got {type(value).__name__}")
    return value


def _decode_tuple(value: Any) -> tuple[Any, ...]:
    if type(value) is not list:
        raise ValueError("expected a list in a $tuple")
    return tuple(value)


def _decode_unknown(value: Any) -> Any:
    if value is not None:
        raise ValueError("expected null in a $unknown")
    return UNKNOWN


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "$decimal": lambda value: Decimal(_text(value)),
    "$int": lambda value: int(_text(value), 16),
    "$float": lambda value: float(_text(value)),
    "$bytes": lambda value: base64.b64decode(_text(value), validate=True),
    "$uuid": lambda value: UUID(_text(value)),
    "$date": lambda value: date.fromisoformat(_text(value)),
    "$time": lambda value: time.fromisoformat(_text(value)),
    "$datetime": lambda value: datetime.fromisoformat(_text(value)),
    "$tuple": _decode_tuple,
    "$unknown": _decode_unknown,
}


def _decode_object(obj: dict[str, Any]) -> Any:
    # json.loads calls this innermost object first, so a tag's payload is already decoded.
    if len(obj) == 1:
        [(key, value)] = obj.items()
        if key[:1] == _ESCAPE and key[1:2] != _ESCAPE:
            decode = _DECODERS.get(key)
            if decode is None:
                raise ValueError(f"unknown tag {key!r}")
            return decode(value)
    for key in obj:
        if key[:1] == _ESCAPE:  # escaped keys: drop the one '$' the encoder added
            return {k[1:] if k[:1] == _ESCAPE else k: v for k, v in obj.items()}
    return obj


_LOADS = json.JSONDecoder(object_hook=_decode_object).decode
