"""What the values of the expression language do at run time: how they fail, are read and are combined.

A compiled expression raises :class:`EvalError` when it fails on a change (or :class:`UnknownValue` when it
meets an unchanged TOAST value); the translator turns that into a ``TranslationError`` naming the rule and
the field. :func:`read_field` is how ``a.b`` and ``a[b]`` read rows and JSON values (mapping lookups, never
``getattr``), the operator table gives ``+ - * / // % & |`` their meaning, and the helpers below give
``in``, failed comparisons, ``-`` and ``**`` theirs.

Money stays exact: ``/`` on integers and decimals divides decimally, and decimal arithmetic runs in one
fixed context rather than the thread's (which anyone may change), so the same change always yields the
same bytes.

Sizes are bounded, so a hostile or mistaken mapping cannot burn CPU or memory: an integer result may have
at most :data:`MAX_INT_BITS` bits (``*`` and ``**`` are checked *before* computing, from the bit lengths),
a decimal at most the context's 38 digits and exponent, a joined string :data:`MAX_TEXT_LENGTH`
characters and a joined list :data:`MAX_ITEMS` items; beyond, :class:`ResultTooLarge`.
"""

from __future__ import annotations

import ast
import decimal
import operator
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from bridge.changes import UNKNOWN

MAX_INT_BITS = 256  # integer results: about 77 digits, far beyond any id, count or amount in cents
MAX_TEXT_LENGTH = 2**24  # characters of a string an expression builds (16 Mi: no event is larger)
MAX_ITEMS = 2**20  # items of a list or tuple an expression builds

#: One context for every decimal operation: precise enough for numeric(38,x), traps instead of NaN/Infinity.
DECIMAL_CONTEXT = decimal.Context(
    prec=38, rounding=decimal.ROUND_HALF_EVEN, Emax=999_999, Emin=-999_999,
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)


class EvalError(Exception):
    """An expression failed on a change; the translator adds rule and field."""


class UnknownValue(EvalError):
    """A column holds UNKNOWN (an unchanged TOAST value): only known() and optional fields may meet it."""

    def __init__(self, where: str, advice: str = "") -> None:
        super().__init__(
            f"{where} is unknown (an unchanged TOAST value the change stream did not carry); "
            + (advice or f"test it with known({where}) or mark the field optional: true")
        )
        self.where = where


class ResultTooLarge(EvalError):
    """A result would exceed the bounds above; raised before the work, so the expression ends at once."""


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def brief(value: Any, limit: int = 40) -> str:
    """A value as a message quotes it: repr, cut short (a huge int's repr is slow, or refused by Python)."""
    if type(value) is int and value.bit_length() > 4 * limit:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def checked_int(value: int, what: str) -> int:
    """`value` if it is within MAX_INT_BITS, else ResultTooLarge naming `what` produced it."""
    if value.bit_length() > MAX_INT_BITS:
        raise ResultTooLarge(f"{what}: the result is too large ({value.bit_length()} bits, at most {MAX_INT_BITS})")
    return value


def int_power(base: int, exponent: int, what: str) -> int:
    """base ** exponent, refused before computing when it cannot fit: its bits are about bits(base) * exponent."""
    bits = base.bit_length()
    if bits > 1 and (bits - 1) * exponent >= MAX_INT_BITS:  # at least 2**((bits-1) * exponent)
        raise ResultTooLarge(f"{what}: the result would be too large (about {bits * exponent} bits, "
                             f"at most {MAX_INT_BITS})")
    return checked_int(base**exponent, what)


def _int_multiply(a: int, b: int) -> int:
    if a.bit_length() + b.bit_length() - 1 > MAX_INT_BITS:  # a product has at least this many bits
        raise ResultTooLarge(f"cannot multiply {brief(a)} and {brief(b)}: the result would be too large "
                             f"(about {a.bit_length() + b.bit_length()} bits, at most {MAX_INT_BITS})")
    return a * b


def read_field(obj: Any, name: Any, where: str) -> Any:
    """``obj.name`` / ``obj[name]`` on a row or JSON value; a null object reads as null (JSON navigation)."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        try:
            value = obj[name]
        except KeyError:
            raise EvalError(f"{where}: no {name!r} in this row/object (it has {', '.join(map(str, obj))})") from None
        except TypeError:
            raise EvalError(f"{where}: {type_name(name)} is not a valid key") from None
        if value is UNKNOWN:
            raise UnknownValue(where)
        return value
    if isinstance(obj, (list, tuple, str)) and type(name) is int:
        try:
            value = obj[name]
        except IndexError:
            raise EvalError(f"{where}: index {name} is out of range (length {len(obj)})") from None
        if value is UNKNOWN:
            raise UnknownValue(where)
        return value
    raise EvalError(f"{where}: cannot read {name!r} of a {type_name(obj)}")


def _dec(value: Any, verb: str, other: Any) -> Decimal:
    if type(value) is Decimal:
        return value
    if type(value) is int:
        return Decimal(value)
    raise EvalError(f"cannot {verb} {type_name(value)} and {type_name(other)}; cast with decimal() or int()")


def _numeric(verb: str, int_op: Callable[[Any, Any], Any], dec_op: Callable[[Any, Any], Any],
             float_op: Callable[[Any, Any], Any] | None = None) -> Callable[[Any, Any], Any]:
    """An arithmetic operator over int, Decimal (exact, fixed context) and float; never sequences."""

    def apply(a: Any, b: Any) -> Any:
        ta, tb = type(a), type(b)
        try:
            if ta is int and tb is int:
                result = int_op(a, b)
                if type(result) is int and result.bit_length() > MAX_INT_BITS:  # + and - of inputs near the bound
                    raise ResultTooLarge(f"cannot {verb} {brief(a)} and {brief(b)}: the result is too large "
                                         f"({result.bit_length()} bits, at most {MAX_INT_BITS})")
                return result
            if ta is Decimal or tb is Decimal:
                return dec_op(_dec(a, verb, b), _dec(b, verb, a))
            if float_op is not None and ta in (int, float) and tb in (int, float):
                return float_op(a, b)
        except decimal.Overflow:
            raise ResultTooLarge(f"cannot {verb} {brief(a)} and {brief(b)}: the result is too large "
                                 f"(decimals go up to 1E+{DECIMAL_CONTEXT.Emax})") from None
        except (ArithmeticError, ValueError) as exc:
            raise EvalError(f"cannot {verb} {brief(a)} and {brief(b)}: {type(exc).__name__}") from None
        raise EvalError(f"cannot {verb} {type_name(a)} and {type_name(b)}")

    return apply


def _add(a: Any, b: Any) -> Any:
    ta = type(a)
    if ta is type(b) and ta in (str, list, tuple):  # no repetition operator, but lets can join a result to itself
        limit, unit = (MAX_TEXT_LENGTH, "characters") if ta is str else (MAX_ITEMS, "items")
        if len(a) + len(b) > limit:
            raise ResultTooLarge(f"cannot join a {ta.__name__} of {len(a)} {unit} and one of {len(b)}: the result "
                                 f"would be too large (at most {limit} {unit})")
        return a + b
    return numeric_add(a, b)


numeric_add = _numeric("add", operator.add, DECIMAL_CONTEXT.add, operator.add)


def _sub(a: Any, b: Any) -> Any:
    if isinstance(a, (set, frozenset)) and isinstance(b, (set, frozenset)):
        return frozenset(a - b)
    return _numeric_sub(a, b)


_numeric_sub = _numeric("subtract", operator.sub, DECIMAL_CONTEXT.subtract, operator.sub)


def _int_div(a: int, b: int) -> Decimal:
    return DECIMAL_CONTEXT.divide(Decimal(a), Decimal(b))


def _set_op(verb: str, op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def apply(a: Any, b: Any) -> Any:
        if isinstance(a, (set, frozenset)) and isinstance(b, (set, frozenset)):
            return frozenset(op(a, b))
        raise EvalError(f"{verb} needs two sets, got {type_name(a)} and {type_name(b)}")

    return apply


#: The binary operators the compiler accepts, by ast node type (``**`` is compiled on its own).
BINARY_OPERATORS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: _add,
    ast.Sub: _sub,
    ast.Mult: _numeric("multiply", _int_multiply, DECIMAL_CONTEXT.multiply, operator.mul),
    ast.Div: _numeric("divide", _int_div, DECIMAL_CONTEXT.divide, operator.truediv),
    ast.FloorDiv: _numeric("divide", operator.floordiv, DECIMAL_CONTEXT.divide_int, operator.floordiv),
    ast.Mod: _numeric("take the remainder of", operator.mod, DECIMAL_CONTEXT.remainder, operator.mod),
    ast.BitAnd: _set_op("&", operator.and_),
    ast.BitOr: _set_op("|", operator.or_),
}


def contains(item: Any, container: Any) -> bool:
    """``item in container``, for the containers of the language only."""
    if isinstance(container, (set, frozenset, list, tuple, str, Mapping)):
        return item in container
    raise EvalError(f"'in' needs a set, list, string or object on its right, got {type_name(container)}")


def compare_error(left: Any, right: Any, text: str) -> EvalError:
    """What a comparison that Python refused (TypeError) raises instead."""
    return EvalError(f"cannot compare {type_name(left)} with {type_name(right)} in '{text}'")


def negate(value: Any) -> Any:
    """``-value`` of a number (a decimal in the fixed context)."""
    if type(value) is Decimal:
        return DECIMAL_CONTEXT.minus(value)
    if type(value) in (int, float):
        return -value
    raise EvalError(f"cannot negate a {type_name(value)}")


def positive(value: Any) -> Any:
    """``+value`` of a number: the number itself."""
    if type(value) in (Decimal, int, float):
        return value
    raise EvalError(f"cannot negate a {type_name(value)}")  # the closure compiler's wording, kept


def power(value: Any, exponent: int, text: str) -> Any:
    """``value ** exponent`` (an integer literal from 0 to 64, checked at load) within the bounds; `text`
    is the expression, for messages."""
    if type(value) is int:
        return int_power(value, exponent, f"'{text}'")
    if type(value) is Decimal:
        try:
            return DECIMAL_CONTEXT.power(value, exponent)
        except decimal.Overflow:
            raise ResultTooLarge(f"'{text}': the result is too large (decimals go up to "
                                 f"1E+{DECIMAL_CONTEXT.Emax})") from None
        except ArithmeticError as exc:
            raise EvalError(f"'{text}': {type(exc).__name__}") from None
    raise EvalError(f"cannot raise a {type_name(value)} to a power")
