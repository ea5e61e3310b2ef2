"""The functions mapping expressions may call, e.g. ``lower(after.status)``: :data:`FUNCTIONS`.

Each entry names a pure Python implementation and how many arguments it takes; the expression compiler
checks calls against it at load time. ``known()`` and ``coalesce()`` are listed here for their names and
arity but compiled specially by the compiler (they must not evaluate their arguments eagerly).
"""

from __future__ import annotations

import decimal
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any
from uuid import UUID

from bridge.changes import UNKNOWN
from bridge.events import to_json_value
from bridge.mapping.values import (
    DECIMAL_CONTEXT,
    MAX_INT_BITS,
    EvalError,
    ResultTooLarge,
    UnknownValue,
    brief,
    checked_int,
    numeric_add,
    type_name,
)

# Pure, total on their documented inputs, and null-propagating where a nullable column is the usual input.
# Bounded like the operators: what would make an integer beyond MAX_INT_BITS is refused before the work.

_MAX_INT_DIGITS = len(str(2**MAX_INT_BITS))  # decimal digits of the largest integer allowed, and one more
MAX_ROUND_PLACES = 100  # round(x, places): |places| at most this (far beyond any decimal's 38 digits)


def _fn_decimal(value: Any) -> Decimal | None:
    if value is None or type(value) is Decimal:
        return value
    if type(value) is int:
        return Decimal(value)
    if type(value) is float:
        return Decimal(repr(value))
    if type(value) is str:
        try:
            return Decimal(value.strip())
        except decimal.InvalidOperation:
            raise EvalError(f"decimal({value!r}): not a number") from None
    raise EvalError(f"decimal() cannot convert a {type_name(value)}")


def _fn_int(value: Any) -> int | None:
    if value is None or type(value) is int:
        return value
    if type(value) in (Decimal, float):
        if type(value) is Decimal and value.is_finite() and value.adjusted() >= _MAX_INT_DIGITS:
            raise ResultTooLarge(f"int({brief(value)}): too large (at most {MAX_INT_BITS} bits)")
        try:
            whole = int(value)
        except (ValueError, OverflowError):  # NaN, infinity
            raise EvalError(f"int({brief(value)}): not a whole number") from None
        if value != whole:
            raise EvalError(f"int({brief(value)}): not a whole number; use round() first")
        return checked_int(whole, f"int({brief(value)})")
    if type(value) is str:
        text = value.strip()
        if len(text.lstrip("+-")) > _MAX_INT_DIGITS and text.lstrip("+-").isdigit():
            raise ResultTooLarge(f"int({brief(value)}): too large (at most {MAX_INT_BITS} bits)")
        try:
            return checked_int(int(text), f"int({brief(value)})")
        except ValueError:
            raise EvalError(f"int({brief(value)}): not a whole number") from None
    raise EvalError(f"int() cannot convert a {type_name(value)}")


def _fn_str(value: Any) -> str | None:
    if value is None or type(value) is str:
        return value
    if type(value) is bool:
        return "true" if value else "false"
    if isinstance(value, (int, Decimal, float, UUID)):
        try:
            return str(value)
        except ValueError:  # Python refuses to write an int of more than 4300 digits
            raise ResultTooLarge(f"str({brief(value)}): too large to write as text") from None
    if isinstance(value, (datetime, date, time)):
        return to_json_value(value)  # as events spell time
    raise EvalError(f"str() cannot convert a {type_name(value)}")


def _fn_bool(value: Any) -> bool | None:
    if value is None or type(value) is bool:
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    if type(value) is str and value.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.strip().lower()]
    raise EvalError(f"bool({value!r}): expected true/false, t/f, 1/0")


_BOOL_WORDS = {"true": True, "t": True, "1": True, "yes": True, "false": False, "f": False, "0": False, "no": False}


def _text(name: str, convert: Callable[[str], str]) -> Callable[[Any], Any]:
    def apply(value: Any) -> Any:
        if value is None or type(value) is str:
            return value if value is None else convert(value)
        raise EvalError(f"{name}() needs a string, got {type_name(value)}")
    return apply


def _fn_round(value: Any, places: Any = 0) -> Any:
    if type(places) is not int:
        raise EvalError(f"round(): the number of places must be an integer, got {type_name(places)}")
    if not -MAX_ROUND_PLACES <= places <= MAX_ROUND_PLACES:  # round(1, -10**9) would compute 10**(10**9)
        raise EvalError(f"round(): places must be from -{MAX_ROUND_PLACES} to {MAX_ROUND_PLACES}, got {brief(places)}")
    if value is None:
        return None
    if type(value) is Decimal:
        try:
            return value.quantize(Decimal(1).scaleb(-places), context=DECIMAL_CONTEXT)
        except ArithmeticError:
            raise EvalError(f"round({brief(value)}, {places}): too many digits (at most "
                            f"{DECIMAL_CONTEXT.prec})") from None
    if type(value) in (int, float):
        try:
            return round(value, places)
        except (ArithmeticError, ValueError) as exc:
            raise EvalError(f"round({brief(value)}, {places}): {type(exc).__name__}") from None
    raise EvalError(f"round() needs a number, got {type_name(value)}")


def _fn_len(value: Any) -> int:
    if isinstance(value, (str, list, tuple, set, frozenset, Mapping)):
        return len(value)
    raise EvalError(f"len() needs a string, list, set or object, got {type_name(value)}")


def _items(name: str, values: Any) -> list[Any]:
    if not isinstance(values, (list, tuple, set, frozenset)):
        raise EvalError(f"{name}() needs a list, got {type_name(values)}")
    return list(values)


def _fn_sum(values: Any) -> Any:
    total: Any = 0
    for value in _items("sum", values):
        total = numeric_add(total, value)
    return total


def _extreme(name: str, pick: Callable[..., Any]) -> Callable[..., Any]:
    def apply(*values: Any) -> Any:
        candidates = _items(name, values[0]) if len(values) == 1 else list(values)
        if not candidates:
            raise EvalError(f"{name}() of an empty list")
        try:
            return pick(candidates)
        except TypeError:
            kinds = ", ".join(sorted({type_name(v) for v in candidates}))
            raise EvalError(f"{name}(): cannot compare {kinds}") from None
    return apply


def _fn_abs(value: Any) -> Any:
    if type(value) is Decimal:
        return DECIMAL_CONTEXT.abs(value)
    if type(value) in (int, float):
        return abs(value)
    raise EvalError(f"abs() needs a number, got {type_name(value)}")


def _fn_get(obj: Any, key: Any, default: Any = None) -> Any:
    if obj is None:
        return default
    if not isinstance(obj, Mapping):
        raise EvalError(f"get() needs an object, got {type_name(obj)}")
    value = obj.get(key, default)
    if value is UNKNOWN:
        raise UnknownValue(f"get(..., {key!r})")
    return value


def _fn_as_utc(value: Any) -> datetime | None:
    """A legacy `timestamp` (no zone) read as UTC; an aware timestamp converted to UTC; null stays null."""
    if value is None:
        return None
    if type(value) is datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    raise EvalError(f"as_utc() needs a timestamp, got {type_name(value)}")


def _never(value: Any) -> Any:  # known() and coalesce() are compiled specially
    raise AssertionError("unreachable")


#: name -> (implementation, fewest arguments, most arguments)
FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int]] = {
    "decimal": (_fn_decimal, 1, 1), "int": (_fn_int, 1, 1), "str": (_fn_str, 1, 1), "bool": (_fn_bool, 1, 1),
    "lower": (_text("lower", str.lower), 1, 1), "upper": (_text("upper", str.upper), 1, 1),
    "strip": (_text("strip", str.strip), 1, 1), "round": (_fn_round, 1, 2), "coalesce": (_never, 1, 16),
    "len": (_fn_len, 1, 1), "sum": (_fn_sum, 1, 1), "min": (_extreme("min", min), 1, 16),
    "max": (_extreme("max", max), 1, 16), "abs": (_fn_abs, 1, 1), "get": (_fn_get, 2, 3),
    "known": (_never, 1, 1), "as_utc": (_fn_as_utc, 1, 1),
}
