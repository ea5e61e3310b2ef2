"""The restricted expression language: what it computes, and everything it refuses at load time."""

from __future__ import annotations

import decimal
import textwrap
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bridge.changes import UNKNOWN
from bridge.errors import MappingError
from bridge.mapping.expr import (
    EvalError,
    ExprError,
    NameSpec,
    UnknownValue,
    compile_expression,
    equality_probe,
)
from bridge.mapping.loader import load_mappings

NAMES = ("after", "before", "changed", "x", "y")


def run(text: str, **values: Any) -> Any:
    """Compile ``text`` with the names given and evaluate it; a scope here is just the dict of values."""
    names = {name: NameSpec(lambda scope, n=name: scope[n]) for name in (*NAMES, *values)}
    return compile_expression(text, names).evaluate(values)


def compile_only(text: str) -> None:
    compile_expression(text, {name: NameSpec(lambda scope, n=name: scope[n]) for name in NAMES})


# -- what it computes ------------------------------------------------------------------------------------------

def test_money_stays_exact_decimal() -> None:
    assert run("after.price * after.quantity", after={"price": Decimal("6.50"), "quantity": 3}) == Decimal("19.50")
    assert run("1.10 + 2.20") == Decimal("3.30")
    assert run("7 / 2") == Decimal("3.5")
    assert run("x - 0.01", x=Decimal("10.00")) == Decimal("9.99")
    assert run("-x", x=Decimal("1.50")) == Decimal("-1.50")
    assert run("x ** 2", x=Decimal("1.5")) == Decimal("2.25")


def test_decimal_arithmetic_ignores_the_threads_context() -> None:
    saved = decimal.getcontext().prec
    decimal.getcontext().prec = 3  # someone else's setting must not change our bytes
    try:
        assert run("x * y", x=Decimal("12345.67"), y=3) == Decimal("37037.01")
        assert run("sum(x)", x=[Decimal("12345.67"), Decimal("0.01")]) == Decimal("12345.68")
        assert run("round(x, 1)", x=Decimal("12345.65")) == Decimal("12345.6")  # half-even
    finally:
        decimal.getcontext().prec = saved


def test_comparisons_membership_sets_and_conditionals() -> None:
    assert run("'status' in changed and changed == {'status', 'updated_on'}", changed=frozenset({"status", "updated_on"}))
    assert run("len(changed & {'name', 'tags'}) > 0", changed=frozenset({"tags", "updated_on"}))
    assert run("changed - {'updated_on'}", changed=frozenset({"tags", "updated_on"})) == frozenset({"tags"})
    assert run("1 < x <= 3", x=3) is True and run("1 < x <= 3", x=4) is False
    assert run("'big' if x > 10 else 'small'", x=11) == "big"
    assert run("x is None and y is not None", x=None, y=0) is True
    assert run("x not in [1, 2]", x=3) is True
    assert run("(x, y)", x=1, y=2) == (1, 2)


def test_null_images_and_json_navigate_to_null() -> None:
    assert run("before.status", before=None) is None  # before of an insert
    assert run("after.preferences.diet", after={"preferences": None}) is None
    assert run("after.preferences['diet'][0]", after={"preferences": {"diet": ["vegan"]}}) == "vegan"
    assert run("get(after.preferences, 'spice', 0)", after={"preferences": {}}) == 0


def test_functions() -> None:
    assert run("decimal('12.50')") == Decimal("12.50") and run("decimal(3)") == Decimal(3)
    assert run("int(x)", x=Decimal("4.00")) == 4 and run("int(' 7 ')") == 7
    assert run("str(x)", x=Decimal("1.50")) == "1.50" and run("str(True)") == "true"
    assert run("str(x)", x=datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)) == "2024-01-02T03:04:05.000000Z"
    assert run("bool('t')") is True and run("bool(0)") is False
    assert run("lower('ABC') + upper('d') + strip('  e ')") == "abcDe"
    assert run("round(x, 2)", x=Decimal("2.675")) == Decimal("2.68") and run("round(2.5)") == Decimal(2)
    assert run("coalesce(x, y, 3)", x=None, y=None) == 3
    assert run("len(x) + len('ab')", x=[1, 2, 3]) == 5
    assert run("sum(x)", x=[Decimal("1.10"), Decimal("2.20"), 3]) == Decimal("6.30") and run("sum([])") == 0
    assert run("min(x)", x=[3, 1, 2]) == 1 and run("max(1, 5, 2)") == 5
    assert run("abs(x)", x=Decimal("-2.50")) == Decimal("2.50")


def test_casts_pass_null_through() -> None:
    for function in ("decimal", "int", "str", "bool", "lower", "upper", "strip", "round"):
        assert run(f"{function}(x)", x=None) is None, function


@pytest.mark.parametrize("text, values, message", [
    ("int(x)", {"x": Decimal("2.5")}, "not a whole number"),
    ("decimal('abc')", {}, "not a number"),
    ("x * 3", {"x": "ab"}, "cannot multiply str and int"),  # no string repetition: no memory bombs
    ("x * y", {"x": [1], "y": 10**6}, "cannot multiply list and int"),
    ("x + 1", {"x": "a"}, "cannot add str and int"),
    ("x / 0", {"x": 1}, "DivisionByZero"),
    ("x < 1", {"x": "a"}, "cannot compare str with int"),
    ("x in 5", {"x": 1}, "'in' needs"),
    ("after.nope", {"after": {"id": 1}}, "no 'nope' in this row"),
    ("lower(x)", {"x": 1}, "lower() needs a string"),
    ("x + 1.5", {"x": 1.5}, "cannot add float and Decimal"),
])
def test_run_time_errors_say_what_went_wrong(text: str, values: dict[str, Any], message: str) -> None:
    with pytest.raises(EvalError) as caught:
        run(text, **values)
    assert message in str(caught.value)


def test_unknown_values_raise_unless_asked_with_known() -> None:
    row = {"description": UNKNOWN, "name": "Soup"}
    with pytest.raises(UnknownValue) as caught:
        run("after.description + '!'", after=row)
    assert "after.description is unknown" in str(caught.value) and "known(after.description)" in str(caught.value)
    assert run("known(after.description)", after=row) is False
    assert run("known(after.name) and not known(after.description)", after=row) is True
    assert run("after.description if known(after.description) else after.name", after=row) == "Soup"
    with pytest.raises(UnknownValue):
        run("after['description']", after=row)


def test_coalesce_is_lazy() -> None:
    assert run("coalesce(after.name, after.description)", after={"name": "a", "description": UNKNOWN}) == "a"


def test_equality_probe_finds_the_join_column() -> None:
    assert equality_probe("row.order_id == after.id") == ("order_id", "after.id")
    assert equality_probe("after.order_id == row.id and row.status == 'PLACED'") == ("id", "after.order_id")
    assert equality_probe("row.a == row.b") is None
    assert equality_probe("row.a != after.id or row.b == 1") is None


# -- what it refuses, at compile time ----------------------------------------------------------------------------

HOSTILE = [
    ("__import__('os').system('touch /tmp/cdc-bridge-pwned')", "unknown function '__import__'"),
    ("().__class__.__bases__", "attribute '__bases__' is not allowed"),
    ("after.__class__", "attribute '__class__' is not allowed"),
    ("after.__globals__", "attribute '__globals__' is not allowed"),
    ("after._private", "names starting with '_' are never readable"),
    ("10**10**10", "the exponent of ** must be an integer literal from 0 to 64"),
    ("2 ** 100", "the exponent of ** must be an integer literal from 0 to 64"),
    ("x ** y", "the exponent of ** must be an integer literal"),
    ("(lambda: 1)()", "lambda is not allowed"),
    ("lambda: 1", "lambda is not allowed"),
    ("f'{after.id!r:>{10**8}}'", "f-strings are not allowed"),
    ("'{0.__class__}'.format(after)", "not methods"),
    ("[x for x in after]", "comprehensions are not allowed"),
    ("{x: 1 for x in after}", "comprehensions are not allowed"),
    ("sum(x for x in [1] * 10**9)", "comprehensions are not allowed"),
    ("[c for c in ().__class__.__base__.__subclasses__()]", "comprehensions are not allowed"),
    ("open('/etc/passwd')", "unknown function 'open'"),
    ("eval('1')", "unknown function 'eval'"),
    ("getattr(after, '__class__')", "unknown function 'getattr'"),
    ("globals()", "unknown function 'globals'"),
    ("now()", "unknown function 'now'"),
    ("after.status.upper()", "not methods"),
    ("(x := 1)", "assignment expressions"),
    ("[*after]", "* unpacking is not allowed"),
    ("after[0:2]", "slices are not allowed"),
    ("{'a': 1}", "object literals are not allowed"),
    ("b'bytes'", "bytes literals are not allowed"),
    ("1j", "complex literals are not allowed"),
    ("1e400", "the number 1e400 is out of range"),
    ("x if True else y; import os", "invalid expression"),
    ("import os", "invalid expression"),
    ("~x", "bitwise ~ is not allowed"),
    ("x << 2", "operator LShift is not allowed"),
    ("x is 1", "'is' / 'is not' may only compare with None"),
    ("len(x=1)", "takes no keyword arguments"),
    ("len()", "len() takes 1 arguments, got 0"),
    ("aftr.id", "unknown name 'aftr' (expected one of after, before, changed, x, y); did you mean 'after'?"),
    ("sum", "'sum' is a function: call it"),
    ("[" + "1, " * 450 + "1]", "too large"),
    ("[" * 60 + "1" + "]" * 60, "nested too deeply"),
    ("1 + " * 1000 + "1", "characters long"),
    ("", "empty expression"),
]


@pytest.mark.parametrize("text, message", HOSTILE, ids=[t[:40] for t, _ in HOSTILE])
def test_hostile_expressions_do_not_compile(text: str, message: str) -> None:
    with pytest.raises(ExprError) as caught:
        compile_only(text)
    assert message in str(caught.value)


def test_a_hostile_mapping_file_is_rejected_at_load_with_every_problem_located(tmp_path: Path) -> None:
    """Each hostile expression, in a real mapping file: MappingError names file, line, rule and field."""
    fields = "\n".join(f"          f{i}: {_yaml_string(text)}" for i, (text, _) in enumerate(HOSTILE[:30]))
    path = tmp_path / "hostile.yaml"
    path.write_text(textwrap.dedent("""\
        namespace: evil
        tables:
          orders: {columns: {id: bigint, status: text}}
        rules:
          - id: orders.evil
            table: orders
            ops: [c]
            emit:
              - event: Evil
                aggregate: {type: order, id: after.id}
                data:
        """) + fields + "\n")
    from bridge.mapping.loader import check_files

    [report] = check_files([path])
    assert len(report.problems) == 30, report.problems
    for i, ((text, message), problem) in enumerate(zip(HOSTILE, report.problems)):
        assert problem.startswith(f"{path}:{12 + i}: rule 'orders.evil', field 'emit[0].data.f{i}': "), problem
        assert message.split(" (expected")[0].replace("x, y", "") in problem or message in problem, (message, problem)
    with pytest.raises(MappingError, match=r"hostile.yaml:12: rule 'orders.evil', field 'emit\[0\].data.f0': unknown "
                                           r"function '__import__'.*\(and 29 more"):
        load_mappings([path])
    assert not Path("/tmp/cdc-bridge-pwned").exists()


def _yaml_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
