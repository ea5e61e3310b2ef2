"""The closure compiler mapping expressions had before they were compiled to Python source, kept for tests.

Only the differential test (tests/unit/test_mapping_codegen.py) and nothing in bridge/ uses it: each node
of the checked tree becomes a closure over its children's closures, as bridge/mapping/expr.py did until
issue 11. It shares the parser, the limits and the helpers of values.py with the shipped compiler, so a
difference between the two is a difference of the code generator.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from decimal import Decimal
from difflib import get_close_matches
from typing import Any

from bridge.mapping.expr import (
    _FORBIDDEN,
    _ROW_NAMES,
    MAX_DEPTH,
    MAX_EXPONENT,
    MAX_LENGTH,
    MAX_NODES,
    ExprError,
    NameSpec,
    _degree,
    _is_constant,
    _is_none,
    _parse,
)
from bridge.mapping.functions import FUNCTIONS
from bridge.mapping.values import (
    BINARY_OPERATORS,
    MAX_INT_BITS,
    EvalError,
    ResultTooLarge,
    UnknownValue,
    contains,
    negate,
    positive,
    power,
    read_field,
    type_name,
)

Getter = Callable[[Any], Any]

COMPARISONS: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
    ast.In: contains, ast.NotIn: lambda a, b: not contains(a, b),
}


def compile_with_closures(text: str, names: Mapping[str, NameSpec]) -> Getter:
    """The old compile_expression(text, names).evaluate."""
    source = text.strip()
    if not source:
        raise ExprError("empty expression")
    if len(source) > MAX_LENGTH:
        raise ExprError(f"expression is {len(source)} characters long (at most {MAX_LENGTH})")
    return _Compiler(source, names).compile(_parse(source).body, 0)


class _Compiler:
    def __init__(self, source: str, names: Mapping[str, NameSpec]) -> None:
        self.source = source
        self.names = names
        self.used: set[str] = set()
        self.columns: set[tuple[str, str]] = set()
        self._row_bases: set[int] = set()  # Name nodes read as `name.column`, not as whole rows
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
        getter = handler(self, node, depth + 1)
        if not isinstance(node, ast.Constant) and _is_constant(node):
            self.probe(node, getter)
        return getter

    def probe(self, node: ast.AST, getter: Getter) -> None:
        """Compute a part that reads no name once, now: if it is too large for any change, say so at load.
        Other failures stay run-time errors of the field (the part may sit in a branch never taken)."""
        try:
            getter(None)
        except ResultTooLarge as exc:
            text, message = self.text(node), str(exc)
            where = "" if message.startswith(f"'{text}'") else f"'{text}': "
            raise ExprError(f"{where}{message}, whatever the change (this part reads no column: computed at "
                            "load)") from None
        except Exception:  # noqa: BLE001 - reported when a change evaluates it
            pass

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
        if spec.attrs_are in _ROW_NAMES and spec.owner and id(node) not in self._row_bases:
            self.columns.add((spec.owner, "*"))
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
            if spec.attrs_are in _ROW_NAMES and spec.owner:
                self.columns.add((spec.owner, attr))
                self._row_bases.add(id(base))
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
        pairs = [(COMPARISONS[type(op)], self.compile(r, depth)) for op, r in zip(node.ops, node.comparators)]
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
        if isinstance(node.op, ast.USub):
            return lambda scope: negate(operand(scope))
        if isinstance(node.op, ast.UAdd):
            return lambda scope: positive(operand(scope))
        raise ExprError("bitwise ~ is not allowed")

    def binop(self, node: ast.BinOp, depth: int) -> Getter:
        if isinstance(node.op, ast.Pow):
            return self.power(node, depth)
        if isinstance(node.op, ast.Mult):
            self.check_degree(node)
        op = BINARY_OPERATORS.get(type(node.op))
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
        self.check_degree(node)
        base, n, text = self.compile(node.left, depth), exponent.value, self.text(node)
        return lambda scope: power(base(scope), n, text)  # values.power: the old closure's body, moved there

    def check_degree(self, node: ast.AST) -> None:
        degree = _degree(node)
        if degree > MAX_INT_BITS:
            raise ExprError(f"'{self.text(node)}' raises to the power {degree} (exponents of nested ** multiply, "
                            f"factors add): any integer above 1 would exceed {MAX_INT_BITS} bits; at most "
                            f"{MAX_INT_BITS}")

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


_HANDLERS: dict[type, Callable[[_Compiler, Any, int], Getter]] = {
    ast.Constant: _Compiler.constant, ast.Name: _Compiler.name, ast.Attribute: _Compiler.attribute,
    ast.Subscript: _Compiler.subscript, ast.Compare: _Compiler.compare, ast.BoolOp: _Compiler.boolop,
    ast.UnaryOp: _Compiler.unaryop, ast.BinOp: _Compiler.binop, ast.IfExp: _Compiler.ifexp,
    ast.List: _Compiler.sequence, ast.Tuple: _Compiler.sequence, ast.Set: _Compiler.sequence,
    ast.Call: _Compiler.call,
}
