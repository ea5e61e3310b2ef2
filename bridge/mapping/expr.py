"""The restricted expression language of mapping files: parsed, checked, then compiled once at load.

An expression is Python syntax parsed with :mod:`ast`, and only a whitelist of node types is accepted:
literals, names from a fixed set given by the caller, attribute and subscript reads on row mappings,
comparisons, boolean logic, arithmetic, ``in``, conditional expressions, list/tuple/set displays and calls
of the pure functions in :data:`~bridge.mapping.functions.FUNCTIONS`. Anything else is an :class:`ExprError`
at load time. The checked tree is then written as the source of one Python function and compiled
(:mod:`bridge.mapping.codegen`): user text never becomes code there (names are read through the caller's
getters, constants are passed in, attribute reads are mapping lookups, never ``getattr``, and the function
sees no builtins), so a mapping cannot import, call arbitrary code, reach dunder attributes, files, the
network or a clock.

Money stays exact: decimal literals (``1.10``) are ``Decimal``, ``/`` on integers and decimals divides
decimally, and decimal arithmetic runs in one fixed context rather than the thread's (which anyone may
change), so the same change always yields the same bytes.

Results are bounded (see :mod:`bridge.mapping.values`), and what the text alone shows would exceed the
bounds is refused at load: powers of powers (``(x ** 64) ** 64`` is x ** 4096: more than 256 bits for any
integer above 1), and constant parts, which are computed once at load to find out.

At run time a compiled expression raises :class:`EvalError` (or :class:`UnknownValue` for an unchanged
TOAST value), or, compiled with a field guard, the guard's ``TranslationError`` naming the rule and the
field. What values do at run time (those errors, field reads, the operators) is in
:mod:`bridge.mapping.values`; the functions are in :mod:`bridge.mapping.functions`.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Any

from bridge.mapping.codegen import Guard, generate
from bridge.mapping.functions import FUNCTIONS
from bridge.mapping.values import BINARY_OPERATORS, MAX_INT_BITS, EvalError, ResultTooLarge, UnknownValue

# EvalError and UnknownValue live in bridge.mapping.values; users of the language get them here too.
__all__ = ["EvalError", "ExprError", "Expression", "Guard", "NameSpec", "UnknownValue", "compile_expression",
           "equality_probe"]

MAX_LENGTH = 2000  # characters; also keeps CPython's parser far from its own recursion limits
MAX_NODES = 400
MAX_DEPTH = 40
MAX_EXPONENT = 64

Getter = Callable[[Any], Any]


class ExprError(Exception):
    """An expression does not compile; the loader adds file, line, rule and field."""


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
    # (table, column) of every row column it reads, column "*" for a whole row (`after` passed on as a value):
    # a source that sees a column change type knows which rules it must stop.
    columns: frozenset[tuple[str, str]] = frozenset()
    code: str = ""  # the generated Python source of `evaluate` (no text of the mapping in it)


# NameSpec.attrs_are of names whose attributes are a table's columns (before, after, key, row).
_ROW_NAMES = frozenset({"column", "key column"})


def compile_expression(text: str, names: Mapping[str, NameSpec], guard: Guard | None = None) -> Expression:
    """Parse, check and compile ``text``; raises ExprError saying what is wrong and what is allowed.

    With a `guard`, the compiled function also checks its value and turns its failures into the guard's
    error (see :class:`~bridge.mapping.codegen.Guard`): one call per evaluation, not two.
    """
    if not isinstance(text, str):
        raise ExprError(f"expected an expression (a string), got {type(text).__name__}")
    source = text.strip()
    if not source:
        raise ExprError("empty expression")
    if len(source) > MAX_LENGTH:
        raise ExprError(f"expression is {len(source)} characters long (at most {MAX_LENGTH})")
    tree = _parse(source)
    checker = _Checker(source, names)
    checker.check(tree.body, 0)
    evaluate, code = generate(tree.body, source, names, guard)
    return Expression(source, evaluate, frozenset(checker.used), frozenset(checker.columns), code)


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


class _Checker:
    """Walks the parsed tree: refuses what the language does not have, notes the names and columns read,
    and computes each part that reads no name (see :meth:`probe`)."""

    def __init__(self, source: str, names: Mapping[str, NameSpec]) -> None:
        self.source = source
        self.names = names
        self.used: set[str] = set()
        self.columns: set[tuple[str, str]] = set()
        self._row_bases: set[int] = set()  # Name nodes read as `name.column`, not as whole rows
        self.count = 0

    def check(self, node: ast.AST, depth: int) -> None:
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
        handler(self, node, depth + 1)
        if not isinstance(node, ast.Constant) and _is_constant(node):
            self.probe(node)

    def probe(self, node: ast.AST) -> None:
        """Compute a part that reads no name once, now: if it is too large for any change, say so at load.
        Other failures stay run-time errors of the field (the part may sit in a branch never taken)."""
        evaluate, _ = generate(node, self.source, {})
        try:
            evaluate(None)
        except ResultTooLarge as exc:
            text, message = self.text(node), str(exc)
            where = "" if message.startswith(f"'{text}'") else f"'{text}': "
            raise ExprError(f"{where}{message}, whatever the change (this part reads no column: computed at "
                            "load)") from None
        except Exception:  # noqa: BLE001 - reported when a change evaluates it
            pass

    def text(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.source, node) or ast.unparse(node)

    def constant(self, node: ast.Constant, depth: int) -> None:
        value: Any = node.value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ExprError(f"the number {self.text(node)} is out of range")
        elif value is not None and not isinstance(value, (bool, int, str)):
            raise ExprError(f"{type(value).__name__} literals are not allowed (use strings, numbers, "
                            "true/false as True/False, or None)")

    def name(self, node: ast.Name, depth: int) -> None:
        spec = self.names.get(node.id)
        if spec is None:
            raise ExprError(self.unknown_name(node.id))
        self.used.add(node.id)
        if spec.attrs_are in _ROW_NAMES and spec.owner and id(node) not in self._row_bases:
            self.columns.add((spec.owner, "*"))

    def unknown_name(self, name: str) -> str:
        if name in FUNCTIONS:
            return f"'{name}' is a function: call it, e.g. {name}(...)"
        hint = get_close_matches(name, list(self.names), n=1)
        return (f"unknown name '{name}' (expected one of {', '.join(self.names)})"
                + (f"; did you mean '{hint[0]}'?" if hint else ""))

    def attribute(self, node: ast.Attribute, depth: int) -> None:
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
            if spec.attrs_are in _ROW_NAMES and spec.owner:
                self.columns.add((spec.owner, attr))
                self._row_bases.add(id(base))
        self.check(base, depth)

    def subscript(self, node: ast.Subscript, depth: int) -> None:
        self.check(node.value, depth)
        self.check(node.slice, depth)

    def compare(self, node: ast.Compare, depth: int) -> None:
        for op, right in zip(node.ops, node.comparators):
            if isinstance(op, (ast.Is, ast.IsNot)) and not _is_none(right):
                raise ExprError("'is' / 'is not' may only compare with None; use == for values")
        self.check(node.left, depth)
        for right in node.comparators:
            self.check(right, depth)

    def boolop(self, node: ast.BoolOp, depth: int) -> None:
        for value in node.values:
            self.check(value, depth)

    def unaryop(self, node: ast.UnaryOp, depth: int) -> None:
        self.check(node.operand, depth)
        if not isinstance(node.op, (ast.Not, ast.USub, ast.UAdd)):
            raise ExprError("bitwise ~ is not allowed")

    def binop(self, node: ast.BinOp, depth: int) -> None:
        if isinstance(node.op, ast.Pow):
            self.power(node, depth)
            return
        if isinstance(node.op, ast.Mult):
            self.check_degree(node)
        if type(node.op) not in BINARY_OPERATORS:
            raise ExprError(f"operator {type(node.op).__name__} is not allowed (allowed: + - * / // % ** & |)")
        self.check(node.left, depth)
        self.check(node.right, depth)

    def power(self, node: ast.BinOp, depth: int) -> None:
        exponent = node.right
        if not (isinstance(exponent, ast.Constant) and type(exponent.value) is int
                and 0 <= exponent.value <= MAX_EXPONENT):
            raise ExprError(f"the exponent of ** must be an integer literal from 0 to {MAX_EXPONENT}, "
                            f"not '{self.text(exponent)}'")
        self.check_degree(node)
        self.check(node.left, depth)

    def check_degree(self, node: ast.AST) -> None:
        degree = _degree(node)
        if degree > MAX_INT_BITS:
            raise ExprError(f"'{self.text(node)}' raises to the power {degree} (exponents of nested ** multiply, "
                            f"factors add): any integer above 1 would exceed {MAX_INT_BITS} bits; at most "
                            f"{MAX_INT_BITS}")

    def ifexp(self, node: ast.IfExp, depth: int) -> None:
        for part in (node.test, node.body, node.orelse):
            self.check(part, depth)

    def sequence(self, node: ast.List | ast.Tuple | ast.Set, depth: int) -> None:
        for item in node.elts:
            self.check(item, depth)

    def call(self, node: ast.Call, depth: int) -> None:
        if not isinstance(node.func, ast.Name):
            # Report what is wrong inside first (a lambda, an unknown function such as __import__).
            self.check(node.func.value if isinstance(node.func, ast.Attribute) else node.func, depth)
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
        _, lowest, highest = spec
        if not lowest <= len(node.args) <= highest:
            wanted = str(lowest) if lowest == highest else f"{lowest} to {highest}"
            raise ExprError(f"{name}() takes {wanted} arguments, got {len(node.args)}")
        for arg in node.args:
            self.check(arg, depth)


def _is_none(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _is_constant(node: ast.AST) -> bool:
    """Whether `node` reads no name (a function's name is not a read)."""
    functions = {id(n.func) for n in ast.walk(node) if isinstance(n, ast.Call)}
    return not any(isinstance(n, ast.Name) and id(n) not in functions for n in ast.walk(node))


def _degree(node: ast.AST) -> int:
    """The power to which an expression raises its operands: x ** 3 * x ** 2 is 5, (x ** 4) ** 8 is 32."""
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, ast.Pow) and isinstance(node.right, ast.Constant) and type(node.right.value) is int:
            return _degree(node.left) * node.right.value
        if isinstance(node.op, ast.Mult):
            return _degree(node.left) + _degree(node.right)
        if isinstance(node.op, (ast.Add, ast.Sub)):
            return max(_degree(node.left), _degree(node.right))
    if isinstance(node, ast.UnaryOp):
        return _degree(node.operand)
    if isinstance(node, ast.IfExp):
        return max(_degree(node.body), _degree(node.orelse))
    return 1


_HANDLERS: dict[type, Callable[[_Checker, Any, int], None]] = {
    ast.Constant: _Checker.constant, ast.Name: _Checker.name, ast.Attribute: _Checker.attribute,
    ast.Subscript: _Checker.subscript, ast.Compare: _Checker.compare, ast.BoolOp: _Checker.boolop,
    ast.UnaryOp: _Checker.unaryop, ast.BinOp: _Checker.binop, ast.IfExp: _Checker.ifexp,
    ast.List: _Checker.sequence, ast.Tuple: _Checker.sequence, ast.Set: _Checker.sequence,
    ast.Call: _Checker.call,
}
