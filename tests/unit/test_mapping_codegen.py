"""The code generator of mapping expressions: hostile text never becomes code, and it computes what the
closure compiler it replaced computed (tests/support/closure_expr.py), value for value, error for error."""

from __future__ import annotations

import ast
import random
import re
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bridge.changes import UNKNOWN
from bridge.errors import TranslationError
from bridge.mapping.closures import guard, must_be_bool, publishable
from bridge.mapping.compiled import OMIT
from bridge.mapping.expr import MAX_DEPTH, MAX_NODES, EvalError, ExprError, NameSpec, UnknownValue, compile_expression
from tests.support.closure_expr import compile_with_closures

# Every identifier the generator writes: temporaries, parameters (constants, names, functions, the guard's
# check, error and unknown result), its own functions, the scope and the helpers (upper case).
_OURS = re.compile(r"^(v\d+|[KNFCEU]\d+|fv\d+|s|expr|make|error|[A-Z]+)$")
_NODES = (ast.Module, ast.Expr, ast.FunctionDef, ast.arguments, ast.arg, ast.Return, ast.Assign, ast.Name, ast.Load,
          ast.Store, ast.Call, ast.If, ast.IfExp, ast.Try, ast.ExceptHandler, ast.Raise, ast.Compare, ast.UnaryOp,
          ast.Not, ast.Is, ast.IsNot, ast.In, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.List, ast.Tuple,
          ast.Attribute, ast.Constant)


def assert_safe(code: str) -> None:
    """The generated source holds no text of the mapping: no quote, no string, no name but ours, no
    attribute but dict.get, no statement but assignments, ifs, trys and returns."""
    assert not set(code) & set("'\"\\#"), code
    for node in ast.walk(ast.parse(code)):
        assert isinstance(node, _NODES), (type(node).__name__, code)
        if isinstance(node, ast.Name):
            assert _OURS.match(node.id), (node.id, code)
        elif isinstance(node, ast.arg):
            assert _OURS.match(node.arg), (node.arg, code)
        elif isinstance(node, ast.FunctionDef):
            assert _OURS.match(node.name) and not node.decorator_list, code
        elif isinstance(node, ast.Attribute):
            assert node.attr == "get", code
        elif isinstance(node, ast.Constant):
            assert node.value is None or node.value is True or node.value is False, code
        elif isinstance(node, ast.ExceptHandler):
            assert node.name in (None, "error"), code


def names_for(*names: str) -> dict[str, NameSpec]:
    return {name: NameSpec(lambda scope, n=name: scope[n]) for name in names}


def run(text: str, **values: Any) -> Any:
    compiled = compile_expression(text, names_for(*values))
    assert_safe(compiled.code)
    return compiled.evaluate(values)


# -- hostile text aimed at the generator ---------------------------------------------------------------------

QUOTED = ["'", '"', '"""', "'''", "\\", "\\'", "\n", "\r\n", "\x00", "a'); import os; ('", '"""; import os; """',
          "\\x27", "{}", "{0}", "%s", "#", "\u2028", "é€😀", "s", "v1", "K0", "READ", "__builtins__"]


@pytest.mark.parametrize("value", QUOTED, ids=[repr(v) for v in QUOTED])
def test_strings_with_quotes_newlines_and_backslashes_are_values_never_code(value: str) -> None:
    literal = repr(value)  # a Python string literal spelling exactly `value`
    assert run(f"x + {literal}", x="<") == "<" + value
    assert run(f"{literal} in x", x={value: 1}) is True
    assert run(f"after[{literal}]", after={value: "found"}) == "found"
    assert run(f"coalesce(x, {literal})", x=None) == value
    assert run(f"{{x, {literal}}}", x=1) == frozenset({1, value})


def test_a_triple_quoted_block_scalar_spanning_lines_is_one_value() -> None:
    assert run('x + """a\n\'b\'\n"c"\\n"""', x="") == "a\n'b'\n\"c\"\n"


SHADOWS = ["v1", "v2", "K0", "K1", "N0", "F0", "C0", "E0", "U0", "f0", "s", "make", "expr", "error", "READ", "TYPE",
           "DICT", "UNKNOWN", "CAUGHT", "CMPERR", "EVALERROR", "FROZENSET", "POW", "ADD"]


def test_names_that_shadow_generated_identifiers_and_helpers_read_their_own_values() -> None:
    values = {name: i * 10 for i, name in enumerate(SHADOWS, start=1)}
    text = " + ".join(SHADOWS)
    assert run(text, **values) == sum(values.values())
    # and as row names: their attributes are still mapping lookups of their own values
    rows = {name: {"id": i} for i, name in enumerate(SHADOWS)}
    assert run(" + ".join(f"{name}.id" for name in SHADOWS), **rows) == sum(range(len(SHADOWS)))
    assert run("len(TYPE) + len(READ)", TYPE=[1, 2], READ="abc") == 5


@pytest.mark.parametrize("text, message", [
    ("__builtins__", "unknown name '__builtins__'"),
    ("__builtins__.open('/etc/passwd')", "unknown name '__builtins__'"),
    ("__import__('os')", "unknown function '__import__'"),
    ("READ(x, 'a', 'b')", "unknown function 'READ'"),
    ("TYPE(x)", "unknown function 'TYPE'"),
    ("make(x)", "unknown function 'make'"),
    ("x.__class__", "attribute '__class__' is not allowed"),
    ("x.get('a')", "not methods"),
    ("x.__dict__['a']", "attribute '__dict__' is not allowed"),
    ("known(x.__globals__)", "attribute '__globals__' is not allowed"),
    ("coalesce(x, (lambda: 1)())", "lambda is not allowed"),
    ("known([y for y in x])", "comprehensions are not allowed"),
    ("{y for y in x}", "comprehensions are not allowed"),
    ("len((y := x))", "assignment expressions"),
    ("x + f'{x}'", "f-strings are not allowed"),
    ("coalesce(*x)", "* unpacking is not allowed"),
    ("[1, *x]", "* unpacking is not allowed"),
    ("len(**x)", "takes no keyword arguments"),
    ("x if x else (yield x)", "yield is not allowed"),
    ("x[::-1]", "slices are not allowed"),
])
def test_hostile_expressions_are_refused_before_any_code_is_written(text: str, message: str) -> None:
    with pytest.raises(ExprError, match=re.escape(message)):
        compile_expression(text, names_for("x"))


def test_dunder_keys_are_mapping_lookups_and_nothing_else() -> None:
    with pytest.raises(EvalError, match=r"no '__class__' in this row"):
        run("x['__class__']", x={"id": 1})
    assert run("x['__class__']", x={"__class__": "plain data"}) == "plain data"
    with pytest.raises(EvalError, match=r"cannot read '__len__' of a str"):
        run("x['__len__']", x="abc")
    with pytest.raises(EvalError, match=r"cannot read '__globals__' of a int"):
        run("x[y]", x=1, y="__globals__")
    with pytest.raises(EvalError, match=r"cannot read 'get' of a list"):
        run("x['get']", x=[1])


def test_the_generated_function_sees_no_builtins_and_only_its_parameters() -> None:
    compiled = compile_expression("len(x) + 1", names_for("x"))
    assert compiled.evaluate.__globals__ == {"__builtins__": {}}
    assert compiled.evaluate.__code__.co_names == ()  # every outside value is a closure cell we passed
    assert_safe(compiled.code)


def test_every_expression_of_the_restaurant_mappings_compiles_to_safe_code(monkeypatch: pytest.MonkeyPatch) -> None:
    import bridge.mapping.compile as rule_compiler
    from bridge.mapping.loader import load_mappings

    shipped, seen = rule_compiler.compile_expression, []

    def recording(text: str, names: Any, guard: Any = None) -> Any:
        seen.append(shipped(text, names, guard))
        return seen[-1]

    monkeypatch.setattr(rule_compiler, "compile_expression", recording)
    load_mappings([Path(__file__).resolve().parents[2] / "mappings" / "restaurant.yaml"])
    assert len(seen) > 100, len(seen)
    for compiled in seen:
        assert_safe(compiled.code)


def test_nesting_at_the_limits_compiles_and_computes_as_the_closures_did() -> None:
    depth = MAX_DEPTH  # the deepest tree accepted: the innermost part sits at this depth
    cases = [
        "known(" * depth + "x" + ")" * depth,  # every level a try: split into functions of their own
        "{" * depth + "x" + "}" * depth,  # sets built at run time, each in a try
        "coalesce(" * depth + "x" + ")" * depth,
        "(" * (depth - 1) + "x" + " + 1)" * (depth - 1),
        "not " * depth + "x",
        "(x if x else " * (depth - 1) + "0" + ")" * (depth - 1),  # in the else branch
        "(" * (depth - 1) + "x" + " if x else 0)" * (depth - 1),  # in the then branch
        "(" * (depth - 1) + "x" + " if x else y)" * (depth - 1),  # in the then branch
        "len([" * (depth // 2) + "x" + "])" * (depth // 2),
        " or ".join(["x"] * (MAX_NODES - 1)),  # one BoolOp and 399 names: ifs one after another
        " and ".join(["x"] * 330),  # (as many as 2,000 characters hold)
        "<".join(["x"] * (MAX_NODES - 1)),  # a chain of 398 comparisons
        "coalesce(" + ", ".join(["y"] * 15) + ", x)",
    ]
    for text in cases:
        compiled = compile_expression(text, names_for("x", "y"))
        assert_safe(compiled.code)
        old = compile_with_closures(text, names_for("x", "y"))
        for scope in ({"x": 1, "y": None}, {"x": 0, "y": None}):
            assert outcome(compiled.evaluate, scope) == outcome(old, scope), text
    with pytest.raises(ExprError, match="nested too deeply"):
        compile_expression("known(" * (depth + 1) + "x" + ")" * (depth + 1), names_for("x"))


def test_known_deep_inside_tries_still_catches_only_the_unknown_value() -> None:
    text = "{" * 12 + "known(x.a) if known(x.b) else x.c" + "}" * 12
    compiled = compile_expression(text, names_for("x"))
    assert "def f" in compiled.code  # moved to functions of their own beyond the nesting of tries allowed
    row = {"a": 1, "b": UNKNOWN, "c": "c"}
    assert outcome(compiled.evaluate, {"x": row}) == outcome(compile_with_closures(text, names_for("x")), {"x": row})
    with pytest.raises(UnknownValue):  # x.c is read outside any known(): the sets around it do not catch it
        compiled.evaluate({"x": {"a": 1, "b": UNKNOWN, "c": UNKNOWN}})


# -- the differential test: the generator against the closure compiler ------------------------------------------

_FUNCTIONS = {"known": 1, "coalesce": 3, "len": 1, "str": 1, "int": 1, "decimal": 1, "lower": 1, "round": 2,
              "min": 2, "max": 1, "sum": 1, "abs": 1, "get": 3, "bool": 1, "upper": 1, "strip": 1}
_CONSTANTS = ["0", "1", "2", "-3", "7", "2 ** 200", "1.10", "0.01", "'a'", "'updated_on'", "\"it's\"", "''",
              "None", "True", "False", "'\\n\"'", "[]", "()"]
_OPS = ["+", "-", "*", "/", "//", "%", "&", "|"]
_COMPARE = ["==", "!=", "<", "<=", ">", ">=", "in", "not in"]


def random_expression(rng: random.Random, depth: int = 0) -> str:
    if depth >= 4 or rng.random() < 0.25:
        return rng.choice(_CONSTANTS + ["x", "y", "z", "after", "changed", "after.a", "after.b", "after.c",
                                        "after['a']", "x[0]", "y['k']", "changed"])
    part = lambda: random_expression(rng, depth + 1)  # noqa: E731
    kind = rng.randrange(12)
    if kind == 0:
        return f"({part()} {rng.choice(_OPS)} {part()})"
    if kind == 1:
        chain = " ".join(f"{part()} {rng.choice(_COMPARE)}" for _ in range(rng.randint(1, 3)))
        return f"({chain} {part()})"
    if kind == 2:
        joiner = rng.choice([" and ", " or "])
        return "(" + joiner.join(part() for _ in range(rng.randint(2, 4))) + ")"
    if kind == 3:
        return "(" + rng.choice(["not ", "-", "+"]) + part() + ")"
    if kind == 4:
        return f"({part()} ** {rng.choice([0, 1, 2, 3, 64])})"
    if kind == 5:
        return f"({part()} if {part()} else {part()})"
    if kind == 6:
        items = ", ".join(part() for _ in range(rng.randint(0, 3)))
        one = "," if items and "," not in items else ""
        return rng.choice([f"[{items}]", f"({items}{one})", "{" + (items or part()) + "}"])
    if kind == 7:
        return "(" + part() + rng.choice([" is None", " is not None"]) + ")"
    if kind in (8, 9):
        name = rng.choice(list(_FUNCTIONS))
        count = rng.randint(1, _FUNCTIONS[name])
        return f"{name}({', '.join(part() for _ in range(count))})"
    if kind == 10:
        return f"{part()}[{part()}]"
    return part() + "." + rng.choice(["a", "b", "k"])


_VALUES = [0, 1, -2, 3, 2**255, True, False, None, Decimal("1.50"), Decimal("-0.01"), Decimal("9E+999990"), "a", "",
           "it's", [1, 2], [], (1, "a"), {"k": 1}, {"k": UNKNOWN}, frozenset({"a", "updated_on"}), frozenset(),
           datetime(2024, 1, 2, tzinfo=timezone.utc), 1.5, UNKNOWN]


def random_scope(rng: random.Random) -> dict[str, Any]:
    def value() -> Any:
        return rng.choice(_VALUES)
    after = rng.choice([None, {"a": value(), "b": value(), "c": value()}, {"a": UNKNOWN, "b": 1, "c": None}])
    return {"x": value(), "y": value(), "z": value(), "after": after,
            "changed": rng.choice([frozenset({"updated_on"}), frozenset({"a", "updated_on"}), frozenset()])}


def outcome(evaluate: Any, scope: Any) -> tuple[str, Any]:
    """What evaluating gives: ("value", type, value) or ("error", type, message)."""
    try:
        value = evaluate(scope)
    except Exception as exc:  # noqa: BLE001 - the kind and message are what is compared
        return ("error", (type(exc).__name__, str(exc)))
    return ("value", (type(value).__name__, value))


def closure_guard(evaluate: Any, rule_id: str, field_name: str, *, check: Any = None, optional: bool = False) -> Any:
    """closures.guard as it wrapped a closure before guards were compiled into the expression."""
    prefix = f"rule '{rule_id}', field '{field_name}'"

    def guarded(scope: Any) -> Any:
        try:
            value = evaluate(scope)
            return value if check is None else check(value)
        except UnknownValue as exc:
            if optional:
                return OMIT
            raise TranslationError(f"{prefix}: {exc}") from None
        except EvalError as exc:
            raise TranslationError(f"{prefix}: {exc}") from None
        except (TypeError, ValueError, ArithmeticError, LookupError, RecursionError) as exc:
            raise TranslationError(f"{prefix}: {type(exc).__name__}: {exc}") from None

    return guarded


def compiled_or_refused(compile_fn: Any, text: str) -> tuple[str, Any]:
    try:
        return ("compiled", compile_fn(text))
    except ExprError as exc:
        return ("refused", str(exc))


def test_random_expressions_give_the_same_values_and_errors_as_the_closure_compiler() -> None:
    rng = random.Random(11)
    names = names_for("x", "y", "z", "after", "changed")
    compared = refused = failed = 0
    for _ in range(2000):
        text = random_expression(rng)
        new = compiled_or_refused(lambda t: compile_expression(t, names), text)
        old = compiled_or_refused(lambda t: compile_with_closures(t, names), text)
        assert new[0] == old[0], (text, new, old)
        if new[0] == "refused":
            assert new[1] == old[1], text
            refused += 1
            continue
        assert_safe(new[1].code)
        check, optional = rng.choice([None, publishable, must_be_bool]), rng.random() < 0.5
        guarded = compile_expression(text, names, guard("r.id", "f", check=check, optional=optional))
        assert_safe(guarded.code)
        old_guarded = closure_guard(old[1], "r.id", "f", check=check, optional=optional)
        for _ in range(4):
            scope = random_scope(rng)
            got, expected = outcome(new[1].evaluate, scope), outcome(old[1], scope)
            assert got == expected, (text, scope, got, expected)
            failed += got[0] == "error"
            compared += 1
            assert outcome(guarded.evaluate, scope) == outcome(old_guarded, scope), text  # as a rule's field
    # the grammar reaches every outcome: values, run-time errors, load-time refusals
    assert compared > 5000 and failed > 700 and compared - failed > 1000 and refused > 10, (compared, failed, refused)
