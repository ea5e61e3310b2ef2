"""The restricted expression language of mapping files, compiled once at load into Python closures.

An expression is Python syntax parsed with :mod:`ast`, and only a whitelist of node types is accepted:
literals, names from a fixed set given by the caller, attribute and subscript reads on row mappings,
comparisons, boolean logic, arithmetic, ``in``, conditional expressions, list/tuple/set displays and calls
of the pure functions in :data:`FUNCTIONS`. Every accepted node becomes a closure over already compiled
children; user text is never passed to ``eval``/``exec`` and attribute reads are mapping lookups, never
``getattr``, so a mapping cannot import, call arbitrary code, reach dunder attributes, files, the network
or a clock. Anything else is an :class:`ExprError` at load time.

Money stays exact: decimal literals (``1.10``) are ``Decimal``, ``/`` on integers and decimals divides
decimally, and decimal arithmetic runs in one fixed context rather than the thread's (which anyone may
change), so the same change always yields the same bytes.

At run time a closure raises :class:`EvalError` (or :class:`UnknownValue` for an unchanged TOAST value);
the translator turns it into a ``TranslationError`` naming the rule and the field.
"""

from __future__ import annotations

import ast
import decimal
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from difflib import get_close_matches
from typing import Any
from uuid import UUID

from bridge.changes import UNKNOWN
from bridge.events import to_json_value

MAX_LENGTH = 2000  # characters; also keeps CPython's parser far from its own recursion limits
MAX_NODES = 400
MAX_DEPTH = 40
MAX_EXPONENT = 64

#: One context for every decimal operation: precise enough for numeric(38,x), traps instead of NaN/Infinity.
DECIMAL_CONTEXT = decimal.Context(
    prec=38, rounding=decimal.ROUND_HALF_EVEN, Emax=999_999, Emin=-999_999,
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)

Getter = Callable[[Any], Any]


class ExprError(Exception):
    """An expression does not compile; the loader adds file, line, rule and field."""


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


@dataclass(frozen=True, slots=True)
class NameSpec:
    """A name an expression may use: how to read it, and (when known) which attributes it has."""

    getter: Getter
    attrs: frozenset[str] | None = None  # None: not checked at load
    attrs_are: str = "field"  # for messages: "column", "table"
    owner: str = ""  # for messages: "orders" (unknown column 'x' of orders)


@dataclass(frozen=True, slots=True)
class Expression:
    text: str
    evaluate: Getter
    names: frozenset[str]  # every name it reads, so the loader knows e.g. who needs `before`


def compile_expression(text: str, names: Mapping[str, NameSpec]) -> Expression:
    """Parse, check and compile ``text``; raises ExprError saying what is wrong and what is allowed."""
    if not isinstance(text, str):
        raise ExprError(f"expected an expression (a string), got {type(text).__name__}")
    source = text.strip()
    if not source:
        raise ExprError("empty expression")
    if len(source) > MAX_LENGTH:
        raise ExprError(f"expression is {len(source)} characters long (at most {MAX_LENGTH})")
    tree = _parse(source)
    compiler = _Compiler(source, names)
    return Expression(source, compiler.compile(tree.body, 0), frozenset(compiler.used))


def _parse(source: str) -> ast.Expression:
    attempts = [source] + ([f"(\n{source}\n)"] if "\n" in source else [])  # YAML block scalars span lines
    error: BaseException | None = None
    for attempt in attempts:
        try:
            return ast.parse(attempt, mode="eval")
        except SyntaxError as exc:
            error = exc
        except (ValueError, RecursionError, MemoryError) as exc:
            raise ExprError(f"invalid expression: {exc}") from None
    assert isinstance(error, SyntaxError)
    where = f" at column {error.offset}" if error.offset and len(attempts) == 1 else ""
    raise ExprError(f"invalid expression: {error.msg}{where}") from None


def equality_probe(text: str, row: str = "row") -> tuple[str, str] | None:
    """For a collect's ``where`` like ``row.order_id == after.id and ...``: ("order_id", "after.id").

    Lets the collect look rows up in a per-transaction hash index instead of scanning the transaction
    for every change (quadratic in big transactions). The whole ``where`` still decides; this only
    narrows the candidates. Call it on text that compile_expression accepted.
    """
    body = _parse(text.strip()).body
    for part in body.values if isinstance(body, ast.BoolOp) and isinstance(body.op, ast.And) else [body]:
        if isinstance(part, ast.Compare) and len(part.ops) == 1 and isinstance(part.ops[0], ast.Eq):
            for side, other in ((part.left, part.comparators[0]), (part.comparators[0], part.left)):
                if (isinstance(side, ast.Attribute) and isinstance(side.value, ast.Name) and side.value.id == row
                        and not any(isinstance(n, ast.Name) and n.id == row for n in ast.walk(other))):
                    return side.attr, ast.unparse(other)
    return None


# -- run-time helpers ------------------------------------------------------------------------------------

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
    return _numeric_add(a, b)


_numeric_add = _numeric("add", operator.add, DECIMAL_CONTEXT.add, operator.add)


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


_BINARY: dict[type, Callable[[Any, Any], Any]] = {
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


_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
    ast.In: _contains, ast.NotIn: lambda a, b: not _contains(a, b),
}

# -- the compiler ----------------------------------------------------------------------------------------

_FORBIDDEN = {
    ast.Lambda: "lambda is not allowed in mapping expressions",
    ast.ListComp: "comprehensions are not allowed; gather rows of the transaction with a collect field",
    ast.SetComp: "comprehensions are not allowed; gather rows of the transaction with a collect field",
    ast.DictComp: "comprehensions are not allowed; gather rows of the transaction with a collect field",
    ast.GeneratorExp: "comprehensions are not allowed; gather rows of the transaction with a collect field",
    ast.JoinedStr: "f-strings are not allowed; build strings with + and str()",
    ast.FormattedValue: "f-strings are not allowed; build strings with + and str()",
    ast.NamedExpr: "assignment expressions (:=) are not allowed; use a let entry of the rule",
    ast.Await: "await is not allowed", ast.Yield: "yield is not allowed", ast.YieldFrom: "yield is not allowed",
    ast.Starred: "* unpacking is not allowed",
    ast.Slice: "slices are not allowed",
    ast.Dict: "object literals are not allowed; build objects with the fields of a payload or collect",
}


class _Compiler:
    def __init__(self, source: str, names: Mapping[str, NameSpec]) -> None:
        self.source = source
        self.names = names
        self.used: set[str] = set()
        self.count = 0

    def compile(self, node: ast.AST, depth: int) -> Getter:
        self.count += 1
        if self.count > MAX_NODES:
            raise ExprError(f"expression is too large (more than {MAX_NODES} parts); split it with let entries")
        if depth > MAX_DEPTH:
            raise ExprError(f"expression is nested too deeply (more than {MAX_DEPTH} levels)")
        handler = _HANDLERS.get(type(node))
        if handler is None:
            raise ExprError(_FORBIDDEN.get(type(node)) or f"{type(node).__name__} is not allowed in mapping "
                            "expressions (allowed: literals, names, .field, [index], comparisons, and/or/not, "
                            "arithmetic, in, x if c else y, and the listed functions)")
        return handler(self, node, depth + 1)

    def text(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.source, node) or ast.unparse(node)

    def constant(self, node: ast.Constant, depth: int) -> Getter:
        value: Any = node.value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ExprError(f"the number {self.text(node)} is out of range")
            value = Decimal(repr(value))  # 1.10 means the exact decimal, as money needs
        elif value is not None and not isinstance(value, (bool, int, str)):
            raise ExprError(f"{type(value).__name__} literals are not allowed (use strings, numbers, "
                            "true/false as True/False, or None)")
        return lambda scope: value

    def name(self, node: ast.Name, depth: int) -> Getter:
        spec = self.names.get(node.id)
        if spec is None:
            raise ExprError(self.unknown_name(node.id))
        self.used.add(node.id)
        return spec.getter

    def unknown_name(self, name: str) -> str:
        if name in FUNCTIONS:
            return f"'{name}' is a function: call it, e.g. {name}(...)"
        hint = get_close_matches(name, list(self.names), n=1)
        return (f"unknown name '{name}' (expected one of {', '.join(self.names)})"
                + (f"; did you mean '{hint[0]}'?" if hint else ""))

    def attribute(self, node: ast.Attribute, depth: int) -> Getter:
        attr = node.attr
        if attr.startswith("_"):
            raise ExprError(f"attribute '{attr}' is not allowed: names starting with '_' are never readable")
        base = node.value
        if isinstance(base, ast.Name) and base.id in self.names:
            spec = self.names[base.id]
            if spec.attrs is not None and attr not in spec.attrs:
                hint = get_close_matches(attr, sorted(spec.attrs), n=1)
                owner = f" of {spec.owner}" if spec.owner else ""
                raise ExprError(
                    f"unknown {spec.attrs_are} '{attr}'{owner} in {base.id}.{attr} (expected one of "
                    f"{', '.join(sorted(spec.attrs)) or 'nothing'})" + (f"; did you mean '{hint[0]}'?" if hint else ""))
        read = self.compile(base, depth)
        where = self.text(node)
        return lambda scope: read_field(read(scope), attr, where)

    def subscript(self, node: ast.Subscript, depth: int) -> Getter:
        read = self.compile(node.value, depth)
        index = self.compile(node.slice, depth)
        where = self.text(node)
        return lambda scope: read_field(read(scope), index(scope), where)

    def compare(self, node: ast.Compare, depth: int) -> Getter:
        for op, right in zip(node.ops, node.comparators):
            if isinstance(op, (ast.Is, ast.IsNot)) and not _is_none(right):
                raise ExprError("'is' / 'is not' may only compare with None; use == for values")
        first = self.compile(node.left, depth)
        pairs = [(_COMPARE[type(op)], self.compile(r, depth)) for op, r in zip(node.ops, node.comparators)]
        text = self.text(node)

        def compare(scope: Any) -> bool:
            left = first(scope)
            for op, get_right in pairs:
                right = get_right(scope)
                try:
                    if not op(left, right):
                        return False
                except TypeError:
                    raise EvalError(f"cannot compare {type_name(left)} with {type_name(right)} in '{text}'") from None
                left = right
            return True

        return compare

    def boolop(self, node: ast.BoolOp, depth: int) -> Getter:
        parts = [self.compile(v, depth) for v in node.values]
        if isinstance(node.op, ast.And):
            def all_of(scope: Any) -> Any:
                value = None
                for part in parts:
                    value = part(scope)
                    if not value:
                        return value
                return value
            return all_of

        def any_of(scope: Any) -> Any:
            value = None
            for part in parts:
                value = part(scope)
                if value:
                    return value
            return value
        return any_of

    def unaryop(self, node: ast.UnaryOp, depth: int) -> Getter:
        operand = self.compile(node.operand, depth)
        if isinstance(node.op, ast.Not):
            return lambda scope: not operand(scope)
        if isinstance(node.op, (ast.USub, ast.UAdd)):
            negate = isinstance(node.op, ast.USub)

            def sign(scope: Any) -> Any:
                value = operand(scope)
                if type(value) is Decimal:
                    return DECIMAL_CONTEXT.minus(value) if negate else value
                if type(value) in (int, float):
                    return -value if negate else value
                raise EvalError(f"cannot negate a {type_name(value)}")
            return sign
        raise ExprError("bitwise ~ is not allowed")

    def binop(self, node: ast.BinOp, depth: int) -> Getter:
        if isinstance(node.op, ast.Pow):
            return self.power(node, depth)
        op = _BINARY.get(type(node.op))
        if op is None:
            raise ExprError(f"operator {type(node.op).__name__} is not allowed (allowed: + - * / // % ** & |)")
        left, right = self.compile(node.left, depth), self.compile(node.right, depth)
        return lambda scope: op(left(scope), right(scope))

    def power(self, node: ast.BinOp, depth: int) -> Getter:
        exponent = node.right
        if not (isinstance(exponent, ast.Constant) and type(exponent.value) is int
                and 0 <= exponent.value <= MAX_EXPONENT):
            raise ExprError(f"the exponent of ** must be an integer literal from 0 to {MAX_EXPONENT}, "
                            f"not '{self.text(exponent)}'")
        base, n = self.compile(node.left, depth), exponent.value

        def power(scope: Any) -> Any:
            value = base(scope)
            if type(value) is int:
                return value**n
            if type(value) is Decimal:
                return DECIMAL_CONTEXT.power(value, n)
            raise EvalError(f"cannot raise a {type_name(value)} to a power")
        return power

    def ifexp(self, node: ast.IfExp, depth: int) -> Getter:
        test, body, orelse = (self.compile(n, depth) for n in (node.test, node.body, node.orelse))
        return lambda scope: body(scope) if test(scope) else orelse(scope)

    def sequence(self, node: ast.List | ast.Tuple | ast.Set, depth: int) -> Getter:
        items = [self.compile(e, depth) for e in node.elts]
        if isinstance(node, ast.Set):
            if all(isinstance(e, ast.Constant) for e in node.elts):
                frozen = frozenset(item(None) for item in items)
                return lambda scope: frozen

            def make_set(scope: Any) -> frozenset[Any]:
                try:
                    return frozenset(item(scope) for item in items)
                except TypeError:
                    raise EvalError("a set can only hold strings, numbers and null") from None
            return make_set
        kind = list if isinstance(node, ast.List) else tuple
        return lambda scope: kind(item(scope) for item in items)

    def call(self, node: ast.Call, depth: int) -> Getter:
        if not isinstance(node.func, ast.Name):
            # Report what is wrong inside first (a lambda, an unknown function such as __import__).
            self.compile(node.func.value if isinstance(node.func, ast.Attribute) else node.func, depth)
            raise ExprError(f"only the listed functions can be called, e.g. lower(x), not methods or other "
                            f"values: '{self.text(node)}' (functions: {', '.join(FUNCTIONS)})")
        name = node.func.id
        spec = FUNCTIONS.get(name)
        if spec is None:
            hint = get_close_matches(name, list(FUNCTIONS), n=1)
            raise ExprError(f"unknown function '{name}' (expected one of {', '.join(FUNCTIONS)})"
                            + (f"; did you mean '{hint[0]}'?" if hint else ""))
        if node.keywords:
            raise ExprError(f"{name}() takes no keyword arguments")
        impl, lowest, highest = spec
        if not lowest <= len(node.args) <= highest:
            wanted = str(lowest) if lowest == highest else f"{lowest} to {highest}"
            raise ExprError(f"{name}() takes {wanted} arguments, got {len(node.args)}")
        args = [self.compile(a, depth) for a in node.args]
        if name == "known":
            inner = args[0]

            def known(scope: Any) -> bool:
                try:
                    inner(scope)
                except UnknownValue:
                    return False
                return True
            return known
        if name == "coalesce":  # lazy: later arguments are not read once one is non-null
            def coalesce(scope: Any) -> Any:
                for arg in args:
                    value = arg(scope)
                    if value is not None:
                        return value
                return None
            return coalesce
        if len(args) == 1:
            only = args[0]
            return lambda scope: impl(only(scope))
        return lambda scope: impl(*(arg(scope) for arg in args))


def _is_none(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


_HANDLERS: dict[type, Callable[[_Compiler, Any, int], Getter]] = {
    ast.Constant: _Compiler.constant, ast.Name: _Compiler.name, ast.Attribute: _Compiler.attribute,
    ast.Subscript: _Compiler.subscript, ast.Compare: _Compiler.compare, ast.BoolOp: _Compiler.boolop,
    ast.UnaryOp: _Compiler.unaryop, ast.BinOp: _Compiler.binop, ast.IfExp: _Compiler.ifexp,
    ast.List: _Compiler.sequence, ast.Tuple: _Compiler.sequence, ast.Set: _Compiler.sequence,
    ast.Call: _Compiler.call,
}

# -- the functions -----------------------------------------------------------------------------------------
# Pure, total on their documented inputs, and null-propagating where a nullable column is the usual input.


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
        if value != int(value):
            raise EvalError(f"int({value!r}): not a whole number; use round() first")
        return int(value)
    if type(value) is str:
        try:
            return int(value.strip())
        except ValueError:
            raise EvalError(f"int({value!r}): not a whole number") from None
    raise EvalError(f"int() cannot convert a {type_name(value)}")


def _fn_str(value: Any) -> str | None:
    if value is None or type(value) is str:
        return value
    if type(value) is bool:
        return "true" if value else "false"
    if isinstance(value, (int, Decimal, float, UUID)):
        return str(value)
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
    if value is None:
        return None
    if type(value) is Decimal:
        try:
            return value.quantize(Decimal(1).scaleb(-places), context=DECIMAL_CONTEXT)
        except decimal.InvalidOperation:
            raise EvalError(f"round({value}, {places}): too many digits") from None
    if type(value) in (int, float):
        return round(value, places)
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
        total = _numeric_add(total, value)
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


def _never(value: Any) -> Any:  # known() and coalesce() are compiled specially
    raise AssertionError("unreachable")


#: name -> (implementation, fewest arguments, most arguments)
FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int]] = {
    "decimal": (_fn_decimal, 1, 1), "int": (_fn_int, 1, 1), "str": (_fn_str, 1, 1), "bool": (_fn_bool, 1, 1),
    "lower": (_text("lower", str.lower), 1, 1), "upper": (_text("upper", str.upper), 1, 1),
    "strip": (_text("strip", str.strip), 1, 1), "round": (_fn_round, 1, 2), "coalesce": (_never, 1, 16),
    "len": (_fn_len, 1, 1), "sum": (_fn_sum, 1, 1), "min": (_extreme("min", min), 1, 16),
    "max": (_extreme("max", max), 1, 16), "abs": (_fn_abs, 1, 1), "get": (_fn_get, 2, 3),
    "known": (_never, 1, 1),
}
