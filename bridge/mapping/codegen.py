"""Python source generated from a checked expression, compiled once into one function of the scope.

:mod:`bridge.mapping.expr` parses and checks an expression; this module turns the checked tree into the
text of a Python function and compiles it. What a mapping wrote never becomes code: every name is read
through the caller's getter, every constant (strings, numbers, the texts quoted in error messages) is
passed in by position, attribute and subscript reads are mapping lookups (:func:`read_field`, or
``dict.get`` on a plain dict), and every identifier in the source is one made here (``v3``, ``K0``,
``N1``...). So the source holds no quote, no user word, and can reach nothing but its parameters: it is
compiled with empty builtins, and only the helpers of :data:`_HELPERS` and the caller's getters, constants
and functions are passed to it.

The generated function does what the nodes did as nested closures, in the same order: operands left to
right, ``and``/``or``/``if``/chained comparisons/``coalesce`` short-circuit, ``known`` catches only an
unknown value, and every error message is the one the closure compiler gave. Each part's value is held in
a local (``v0``, ``v1``...); ``and``/``or``/comparison chains are written as successive ``if``s, not
nested ones, so a long chain never nests deeper than its tree. A part that needs a ``try`` of its own
(``known``, a set built at run time) inside too many others becomes a function of its own, keeping the
compiled code within CPython's limit of nested blocks.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import CodeType
from typing import Any

from bridge.changes import UNKNOWN
from bridge.mapping.functions import FUNCTIONS
from bridge.mapping.values import (
    BINARY_OPERATORS,
    EvalError,
    UnknownValue,
    contains,
    compare_error,
    negate,
    positive,
    power,
    read_field,
)

Getter = Callable[[Any], Any]

# What a guard turns into its own error: ours, and what Python raises on values no check foresaw.
CAUGHT = (EvalError, TypeError, ValueError, ArithmeticError, LookupError, RecursionError)

# What the generated source may call besides the caller's getters and the functions it names: fixed
# identifiers (upper case, so never one of the v/K/N/F/f names generated below) -> value.
_HELPERS: dict[str, Any] = {
    "TYPE": type, "DICT": dict, "FROZENSET": frozenset, "HASH": hash, "UNKNOWN": UNKNOWN, "READ": read_field,
    "CONTAINS": contains, "CMPERR": compare_error, "NEG": negate, "POS": positive, "POW": power,
    "EVALERROR": EvalError, "UNKNOWNVALUE": UnknownValue, "TYPEERROR": TypeError, "CAUGHT": CAUGHT,
    "ADD": BINARY_OPERATORS[ast.Add], "SUB": BINARY_OPERATORS[ast.Sub], "MUL": BINARY_OPERATORS[ast.Mult],
    "DIV": BINARY_OPERATORS[ast.Div], "FLOORDIV": BINARY_OPERATORS[ast.FloorDiv], "MOD": BINARY_OPERATORS[ast.Mod],
    "AND": BINARY_OPERATORS[ast.BitAnd], "OR": BINARY_OPERATORS[ast.BitOr],
}
_BINARY = {ast.Add: "ADD", ast.Sub: "SUB", ast.Mult: "MUL", ast.Div: "DIV", ast.FloorDiv: "FLOORDIV",
           ast.Mod: "MOD", ast.BitAnd: "AND", ast.BitOr: "OR"}
# Comparisons Python spells itself; `in` / `not in` go through CONTAINS, which refuses non-containers.
_COMPARE = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_SET_ERROR = "a set can only hold strings, numbers and null"
# Try blocks nested in one generated function before a part moves to a function of its own (CPython
# refuses more than 20 nested blocks; a part may add two).
_MAX_TRIES = 8


@dataclass(frozen=True, slots=True)
class Guard:
    """What a guarded function does with its value and its failures (the rule compiler's field guard).

    The value goes through ``check`` (which may refuse it with an EvalError), unless its type is one of
    ``passes``, the types whose values the check returns unchanged; an EvalError or a Python error
    of the kinds below becomes ``fail(error)``, raised instead; an unknown value gives ``unknown`` when it
    is not None (an optional field), else fails too.
    """

    fail: Callable[[Exception], Exception]
    check: Getter | None = None
    unknown: Any = None
    passes: frozenset[type] = frozenset()  # types `check` returns as they are: not called for them


class _Function:
    """The lines of one generated function and how deep its try blocks are at the current line."""

    def __init__(self, name: str) -> None:
        self.name, self.lines, self.indent, self.tries = name, [f"def {name}(s):"], 1, 0

    def line(self, text: str) -> None:
        self.lines.append("    " * self.indent + text)


class _Generator:
    """Writes one checked expression as Python source, with the tables of what the source refers to."""

    def __init__(self, source: str, names: Mapping[str, Any]) -> None:
        self.source = source
        self.names = names
        self.params: dict[str, Any] = {}  # identifier in the source -> the value passed in for it
        self._by_id: dict[tuple[str, int], str] = {}  # (kind, id(value)) -> identifier, to pass each once
        self.temps = 0
        self.functions: list[_Function] = []
        self.fn = _Function("expr")

    # -- identifiers -----------------------------------------------------------------------------------------

    def param(self, kind: str, value: Any) -> str:
        key = (kind, id(value))
        name = self._by_id.get(key)
        if name is None:
            name = self._by_id[key] = f"{kind}{len(self.params)}"
            self.params[name] = value
        return name

    def const(self, value: Any) -> str:
        if value is None or value is True or value is False:
            return repr(value)  # None, True, False: our spelling of three singletons
        return self.param("K", value)

    def temp(self) -> str:
        self.temps += 1
        return f"v{self.temps}"

    def text(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.source, node) or ast.unparse(node)

    # -- the whole function ------------------------------------------------------------------------------------

    def generate(self, node: ast.AST, guard: Guard | None) -> str:
        if guard is None:
            self.fn.line(f"return {self.emit(node)}")
        else:  # one try around it all, as closures.guard wrapped the closures
            self.fn.line("try:")
            self.fn.indent, self.fn.tries = 2, 1
            result = self.emit(node)
            if guard.check is not None and guard.passes:  # the check's common case, without the call
                self.fn.line(f"if TYPE({result}) in {self.param('K', guard.passes)}:")
                self.fn.line(f"    return {result}")
            self.fn.line(f"return {result}" if guard.check is None else f"return {self.param('C', guard.check)}({result})")
            self.fn.indent = 1
            self.fn.line("except UNKNOWNVALUE as error:")
            if guard.unknown is not None:
                self.fn.line(f"    return {self.param('U', guard.unknown)}")
            else:
                self.fn.line(f"    raise {self.param('E', guard.fail)}(error) from None")
            self.fn.line("except CAUGHT as error:")
            self.fn.line(f"    raise {self.param('E', guard.fail)}(error) from None")
        functions = [*self.functions, self.fn]
        parameters = ", ".join(list(_HELPERS) + list(self.params))
        lines = [f"def make({parameters}):"]
        for function in functions:
            lines.extend("    " + line for line in function.lines)
        lines.append("    return expr")
        return "\n".join(lines) + "\n"

    def emit(self, node: ast.AST) -> str:
        """Write the statements computing `node`; return the identifier (or None/True/False) holding it."""
        handler = _HANDLERS.get(type(node))
        if handler is None:  # expr.py checked the tree; this is a second whitelist, not a message for users
            raise AssertionError(f"no code for {type(node).__name__}")
        return handler(self, node)

    def in_own_function(self, node: ast.AST, handler: Callable[[_Generator, Any], str]) -> str:
        """`node` computed by a function of its own (its try blocks then start from none)."""
        outer, own = self.fn, _Function(f"f{self.temp()}")  # named before the functions nested in it
        self.fn = own
        own.line(f"return {handler(self, node)}")
        self.functions.append(own)  # after those nested in it: each is defined before it is called
        self.fn = outer
        target = self.temp()
        outer.line(f"{target} = {own.name}(s)")
        return target

    # -- one handler per node type -----------------------------------------------------------------------------

    def constant(self, node: ast.Constant) -> str:
        value = node.value
        return self.const(Decimal(repr(value)) if isinstance(value, float) else value)

    def name(self, node: ast.Name) -> str:
        target = self.temp()
        self.fn.line(f"{target} = {self.param('N', self.names[node.id].getter)}(s)")
        return target

    def attribute(self, node: ast.Attribute) -> str:
        return self.read(self.emit(node.value), self.const(node.attr), self.const(self.text(node)), plain=True)

    def subscript(self, node: ast.Subscript) -> str:
        base = self.emit(node.value)
        index = self.emit(node.slice)
        plain = isinstance(node.slice, ast.Constant) and type(node.slice.value) is str
        return self.read(base, index, self.const(self.text(node)), plain=plain)

    def read(self, base: str, key: str, where: str, *, plain: bool) -> str:
        """base[key] as read_field reads it; with a string key, a plain dict is read in place (the common
        case: a row's column), anything else (a miss, an unknown value, a list) by read_field."""
        target = self.temp()
        if plain:
            self.fn.line(f"{target} = {base}.get({key}, UNKNOWN) if TYPE({base}) is DICT else UNKNOWN")
            self.fn.line(f"if {target} is UNKNOWN:")
            self.fn.indent += 1
        self.fn.line(f"{target} = READ({base}, {key}, {where})")
        if plain:
            self.fn.indent -= 1
        return target

    def compare(self, node: ast.Compare) -> str:
        left = self.emit(node.left)
        target = self.temp()
        text = self.const(self.text(node))
        for i, (op, right_node) in enumerate(zip(node.ops, node.comparators)):
            if i:  # the next comparison only when all before it held, as Python chains them
                self.fn.line(f"if {target}:")
                self.fn.indent += 1
            right = self.emit(right_node)
            if isinstance(op, (ast.Is, ast.IsNot)):  # with None only (checked): never fails
                self.fn.line(f"{target} = {left} {'is' if isinstance(op, ast.Is) else 'is not'} {right}")
            else:
                if isinstance(op, ast.In):
                    test = f"CONTAINS({left}, {right})"
                elif isinstance(op, ast.NotIn):
                    test = f"not CONTAINS({left}, {right})"
                else:
                    test = f"True if {left} {_COMPARE[type(op)]} {right} else False"
                self.fn.line("try:")
                self.fn.line(f"    {target} = {test}")
                self.fn.line("except TYPEERROR:")
                self.fn.line(f"    raise CMPERR({left}, {right}, {text}) from None")
            if i:
                self.fn.indent -= 1
            left = right
        return target

    def boolop(self, node: ast.BoolOp) -> str:
        target = self.temp()
        return self.successive(target, f"if {target}:" if isinstance(node.op, ast.And) else f"if not {target}:",
                               node.values)

    def successive(self, target: str, test: str, parts: list[ast.expr]) -> str:
        """`target` = the first part, then each next part while `test` holds: one `if` after another, not
        nested (once the result is decided, every later test fails too)."""
        for i, part in enumerate(parts):
            if i:
                self.fn.line(test)
                self.fn.indent += 1
            self.fn.line(f"{target} = {self.emit(part)}")
            if i:
                self.fn.indent -= 1
        return target

    def unaryop(self, node: ast.UnaryOp) -> str:
        operand = self.emit(node.operand)
        target = self.temp()
        if isinstance(node.op, ast.Not):
            self.fn.line(f"{target} = not {operand}")
        else:
            self.fn.line(f"{target} = {'NEG' if isinstance(node.op, ast.USub) else 'POS'}({operand})")
        return target

    def binop(self, node: ast.BinOp) -> str:
        left = self.emit(node.left)
        target = self.temp()
        if isinstance(node.op, ast.Pow):
            assert isinstance(node.right, ast.Constant) and type(node.right.value) is int  # checked by expr.py
            self.fn.line(f"{target} = POW({left}, {self.const(node.right.value)}, {self.const(self.text(node))})")
            return target
        right = self.emit(node.right)
        self.fn.line(f"{target} = {_BINARY[type(node.op)]}({left}, {right})")
        return target

    def ifexp(self, node: ast.IfExp) -> str:
        test = self.emit(node.test)
        target = self.temp()
        self.fn.line(f"if {test}:")
        for branch in (node.body, None, node.orelse):
            if branch is None:
                self.fn.line("else:")
                continue
            self.fn.indent += 1
            self.fn.line(f"{target} = {self.emit(branch)}")
            self.fn.indent -= 1
        return target

    def sequence(self, node: ast.List | ast.Tuple | ast.Set) -> str:
        if isinstance(node, ast.Set):
            if all(isinstance(e, ast.Constant) for e in node.elts):
                return self.const(frozenset(_constant_value(e) for e in node.elts))
            return self.guarded(node, _Generator.run_time_set)
        items = [self.emit(e) for e in node.elts]
        target = self.temp()
        if isinstance(node, ast.List):
            self.fn.line(f"{target} = [{', '.join(items)}]")
        else:
            self.fn.line(f"{target} = ({', '.join(items)}{',' if len(items) == 1 else ''})")
        return target

    def run_time_set(self, node: ast.Set) -> str:
        target = self.temp()
        self.fn.line("try:")
        self.fn.indent += 1
        self.fn.tries += 1
        items = []
        for element in node.elts:  # inside the try; each hashed before the next is computed, as a set is built
            items.append(self.emit(element))
            self.fn.line(f"HASH({items[-1]})")
        self.fn.line(f"{target} = FROZENSET(({', '.join(items)},))")
        self.fn.tries -= 1
        self.fn.indent -= 1
        self.fn.line("except TYPEERROR:")
        self.fn.line(f"    raise EVALERROR({self.const(_SET_ERROR)}) from None")
        return target

    def call(self, node: ast.Call) -> str:
        assert isinstance(node.func, ast.Name)  # checked by expr.py
        name = node.func.id
        if name == "known":
            return self.guarded(node, _Generator.known)
        if name == "coalesce":  # lazy: later arguments are not read once one is non-null
            target = self.temp()
            return self.successive(target, f"if {target} is None:", node.args)
        args = [self.emit(a) for a in node.args]
        target = self.temp()
        self.fn.line(f"{target} = {self.param('F', FUNCTIONS[name][0])}({', '.join(args)})")
        return target

    def known(self, node: ast.Call) -> str:
        target = self.temp()
        self.fn.line("try:")
        self.fn.indent += 1
        self.fn.tries += 1
        self.emit(node.args[0])
        self.fn.line(f"{target} = True")
        self.fn.tries -= 1
        self.fn.indent -= 1
        self.fn.line("except UNKNOWNVALUE:")
        self.fn.line(f"    {target} = False")
        return target

    def guarded(self, node: ast.AST, handler: Callable[[_Generator, Any], str]) -> str:
        """A part that wraps its operands in a try: here, or in a function of its own when tries nest deep."""
        if self.fn.tries >= _MAX_TRIES:
            return self.in_own_function(node, handler)
        return handler(self, node)


def _constant_value(node: ast.Constant) -> Any:
    return Decimal(repr(node.value)) if isinstance(node.value, float) else node.value


_HANDLERS: dict[type, Callable[[_Generator, Any], str]] = {
    ast.Constant: _Generator.constant, ast.Name: _Generator.name, ast.Attribute: _Generator.attribute,
    ast.Subscript: _Generator.subscript, ast.Compare: _Generator.compare, ast.BoolOp: _Generator.boolop,
    ast.UnaryOp: _Generator.unaryop, ast.BinOp: _Generator.binop, ast.IfExp: _Generator.ifexp,
    ast.List: _Generator.sequence, ast.Tuple: _Generator.sequence, ast.Set: _Generator.sequence,
    ast.Call: _Generator.call,
}


@functools.lru_cache(maxsize=2048)
def _compile(text: str, filename: str) -> CodeType:
    """Our text only (see the module docstring), compiled once per process: mappings loaded again, and the
    many small parts computed at load, give the same text. The file name, never run, tells profiles and
    tracebacks which expression a frame is (and keeps profilers from merging all of them into one entry)."""
    return compile(text, filename, "exec")


def generate(node: ast.AST, source: str, names: Mapping[str, Any], guard: Guard | None = None) -> tuple[Getter, str]:
    """The function computing checked expression `node` (parsed from `source`; `names`: name -> NameSpec)
    from a scope, guarded by `guard` if given, and its generated source (for tests and for reading)."""
    generator = _Generator(source, names)
    text = generator.generate(node, guard)
    namespace: dict[str, Any] = {"__builtins__": {}}
    exec(_compile(text, f"<expression {source[:80]!r}>"), namespace)
    make = namespace.pop("make")  # its globals keep nothing but the empty builtins
    return make(*_HELPERS.values(), *generator.params.values()), text
