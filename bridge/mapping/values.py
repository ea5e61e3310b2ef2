"""What the values of the expression language do at run time: how they fail, are read and are combined.

A compiled expression raises :class:`EvalError` when it fails on a change (or :class:`UnknownValue` when it
meets an unchanged TOAST value); the translator turns that into a ``TranslationError`` naming the rule and
the field. :func:`read_field` is how ``a.b`` and ``a[b]`` read rows and JSON values (mapping lookups, never
``getattr``), and the operator tables give ``+ - * / // % & |``, comparisons and ``in`` their meaning.

Money stays exact: ``/`` on integers and decimals divides decimally, and decimal arithmetic runs in one
fixed context rather than the thread's (which anyone may change), so the same change always yields the
same bytes.
"""

from __future__ import annotations

import ast
import decimal
import operator
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from bridge.changes import UNKNOWN

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


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


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
                return int_op(a, b)
            if ta is Decimal or tb is Decimal:
                return dec_op(_dec(a, verb, b), _dec(b, verb, a))
            if float_op is not None and ta in (int, float) and tb in (int, float):
                return float_op(a, b)
        except (ArithmeticError, ValueError) as exc:
            raise EvalError(f"cannot {verb} {a!r} and {b!r}: {type(exc).__name__}") from None
        raise EvalError(f"cannot {verb} {type_name(a)} and {type_name(b)}")

    return apply


def _add(a: Any, b: Any) -> Any:
    ta = type(a)
    if ta is type(b) and ta in (str, list, tuple):  # joining bounded inputs; no repetition, so no blow-up
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
    ast.Mult: _numeric("multiply", operator.mul, DECIMAL_CONTEXT.multiply, operator.mul),
    ast.Div: _numeric("divide", _int_div, DECIMAL_CONTEXT.divide, operator.truediv),
    ast.FloorDiv: _numeric("divide", operator.floordiv, DECIMAL_CONTEXT.divide_int, operator.floordiv),
    ast.Mod: _numeric("take the remainder of", operator.mod, DECIMAL_CONTEXT.remainder, operator.mod),
    ast.BitAnd: _set_op("&", operator.and_),
    ast.BitOr: _set_op("|", operator.or_),
}


def _contains(item: Any, container: Any) -> bool:
    if isinstance(container, (set, frozenset, list, tuple, str, Mapping)):
        return item in container
    raise EvalError(f"'in' needs a set, list, string or object on its right, got {type_name(container)}")


#: The comparison operators, by ast node type.
COMPARISONS: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
    ast.In: _contains, ast.NotIn: lambda a, b: not _contains(a, b),
}
