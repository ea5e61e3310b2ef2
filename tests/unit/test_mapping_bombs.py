"""Hostile expressions that would burn CPU or memory (huge powers, products, conversions, growing strings)
end at once: refused at load when the mapping alone shows it, else an error naming rule and field."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bridge.changes import Op, RowChange, SourcePosition, Transaction
from bridge.errors import MappingError
from bridge.mapping.expr import EvalError, ExprError, NameSpec, compile_expression
from bridge.mapping.loader import load_mappings
from bridge.mapping.translate import translate
from bridge.mapping.values import DECIMAL_CONTEXT, MAX_INT_BITS

NAMES = ("after", "x", "y")
BIG = 2**200  # allowed, but its square is not


def run(text: str, **values: Any) -> Any:
    names = {name: NameSpec(lambda scope, n=name: scope[n]) for name in NAMES}
    return compile_expression(text, names).evaluate(values)


def test_arithmetic_within_the_bounds_still_computes() -> None:
    assert run("(after.id + 9) ** 64", after={"id": 1}) == 10**64
    assert run("x * x", x=2**127) == 2**254
    assert run("x ** 64", x=15) == 15**64 and run("x ** 60", x=17) == 17**60  # near the limit, exact
    assert run("-x ** 3", x=2**80) == -(2**240)
    assert run("sum(x)", x=[2**250, 2**250]) == 2**251
    assert run("int(x)", x=Decimal("1E+70")) == 10**70
    assert run("round(x, -2)", x=12345) == 12300 and run("round(x, 2)", x=Decimal("1.005")) == Decimal("1.00")
    assert run("x ** 64", x=Decimal("6.50")) == DECIMAL_CONTEXT.power(Decimal("6.50"), 64)  # 38 digits
    assert run("x + x", x="ab" * 1000) == "ab" * 2000


RUN_TIME_BOMBS = [
    ("abs(abs(after.id + x) ** 64) ** 2", {"after": {"id": 1}, "x": 9}, "too large"),  # abs() hides the degree
    ("x ** 64", {"x": BIG}, "too large"),
    ("x ** 2", {"x": BIG}, "too large"),
    ("x * x", {"x": BIG}, "too large"),
    ("x * y * y * y", {"x": 3, "y": 2**100}, "too large"),
    ("-x * x", {"x": BIG}, "too large"),
    ("x + x", {"x": 2**MAX_INT_BITS - 1}, "too large"),
    ("x - y", {"x": -(2**MAX_INT_BITS - 1), "y": 2**MAX_INT_BITS - 1}, "too large"),
    ("sum(x)", {"x": [2**255] * 4}, "too large"),
    ("x ** 64", {"x": Decimal("1E+999990")}, "too large"),
    ("x * x", {"x": Decimal("9E+999990")}, "too large"),
    ("int(x)", {"x": Decimal("1E+999999")}, "too large"),
    ("int(x)", {"x": 1e308}, "too large"),
    ("int(x)", {"x": float("inf")}, "not a whole number"),
    ("int(x)", {"x": Decimal("NaN")}, "not a whole number"),
    ("int(x)", {"x": "9" * 5000}, "too large"),
    ("int(x)", {"x": "9x" * 5000}, "not a whole number"),
    ("int(x)", {"x": "9" * 100}, "too large"),
    ("str(x)", {"x": 10**5000}, "too large"),  # beyond Python's int-to-text limit: a clean error
    ("round(x, -1000000000)", {"x": 12345}, "places"),
    ("round(x, 1000000000)", {"x": Decimal("1.5")}, "places"),
    ("round(x, -1000000000)", {"x": Decimal("1.5")}, "places"),
    ("round(x, 40)", {"x": Decimal("1.5")}, "too many digits"),
    ("x + x", {"x": "ab" * (2**23)}, "too large"),
    ("x + y", {"x": [0] * (2**20), "y": [1]}, "too large"),
    ("x + y", {"x": (0,) * (2**20), "y": (1,)}, "too large"),
    ("x / y", {"x": BIG, "y": Decimal("1E-999990")}, "too large"),
]


@pytest.mark.parametrize("text, values, message", RUN_TIME_BOMBS, ids=[b[0] + " " + str(i) for i, b in enumerate(RUN_TIME_BOMBS)])
def test_a_bomb_on_values_ends_at_once_with_an_error(text: str, values: dict[str, Any], message: str) -> None:
    with pytest.raises(EvalError) as caught:
        run(text, **values)
    assert message in str(caught.value), str(caught.value)
    assert len(str(caught.value)) < 400, "a message quotes values briefly"


LOAD_TIME_BOMBS = [
    ("((((after.id + 9) ** 64) ** 64) ** 64) ** 64", "raises to the power 16777216"),
    ("(after.id ** 64) ** 64", "raises to the power 4096"),
    ("(after.id ** 16) * (after.id ** 16) ** 16", "raises to the power 272"),
    ("((9 ** 64) ** 64) ** 64", "raises to the power 262144"),
    ("(2 ** 64) ** 5", "raises to the power 320"),
    ("int('9' * 3)", "cannot multiply"),  # a constant that fails is left to run time: not a bomb
    ("(99 ** 64) * (99 ** 64)", "too large"),  # constants: computed once at load, refused there
    ("str(1000 ** 10 * 1000 ** 10 * 1000 ** 10)", "too large"),
    ("'ab' + 'cd' if (7 ** 64) * (7 ** 64) > 0 else ''", "too large"),
]


@pytest.mark.parametrize("text, message", LOAD_TIME_BOMBS)
def test_a_bomb_the_mapping_alone_shows_is_refused_at_load(text: str, message: str) -> None:
    names = {name: NameSpec(lambda scope, n=name: scope[n]) for name in NAMES}
    if message == "cannot multiply":
        with pytest.raises(EvalError, match=message):
            compile_expression(text, names).evaluate({})
        return
    with pytest.raises(ExprError, match=message):
        compile_expression(text, names)


# -- in mapping files: located at load, dead-lettered (named) at run time -------------------------------------

HEADER = """\
namespace: evil
tables:
  items: {columns: {id: bigint, name: text, price: "numeric(10,2)"}}
rules:
  - id: items.bomb
    table: items
    ops: [c]
"""
T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)


def _mapping(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "evil.yaml"
    path.write_text(HEADER + textwrap.indent(body, "    "))
    return path


def test_the_reported_bomb_is_refused_by_mappings_validate_with_file_line_rule_and_field(tmp_path: Path) -> None:
    path = _mapping(tmp_path, textwrap.dedent("""\
        emit:
          - event: Boom
            aggregate: {type: item, id: after.id}
            data:
              name: after.name
              n: ((((after.id+9)**64)**64)**64)**64
        """))
    with pytest.raises(MappingError, match=r"evil\.yaml:13: rule 'items\.bomb', field 'emit\[0\]\.data\.n': .*power"):
        load_mappings([path])
    done = subprocess.run([sys.executable, "-m", "bridge.cli", "mappings", "validate", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "evil.yaml:13: rule 'items.bomb', field 'emit[0].data.n'" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_bombs_on_row_values_and_growing_lets_are_dead_letters_naming_rule_and_field(tmp_path: Path) -> None:
    lets = {"s0": "after.name"} | {f"s{i}": f"s{i - 1} + s{i - 1}" for i in range(1, 40)}  # doubles 39 times
    path = _mapping(tmp_path, "let:\n" + "".join(f"  {name}: {text}\n" for name, text in lets.items())
                    + textwrap.dedent("""\
                        emit:
                          - event: Boom
                            aggregate: {type: item, id: after.id}
                            data:
                              big: after.id ** 64
                              text: s39
                        """))
    mappings = load_mappings([path])
    row = {"id": 2**63 - 1, "name": "x" * 1000, "price": Decimal("1.00")}
    change = RowChange(Op.CREATE, "public", "items", {"id": row["id"]}, None, row, SourcePosition(9, 8), T0, 7)
    result = translate(Transaction(7, 9, T0, (change,)), mappings, source_id="test")
    assert result.events == []
    [letter] = result.dead_letters
    assert letter.rule_id == "items.bomb"
    assert letter.error.startswith("rule 'items.bomb', field 'emit[0].data.big': "), letter.error
    assert "too large" in letter.error
    small = {**row, "id": 3}  # the power is fine now; the growing text is not
    change = RowChange(Op.CREATE, "public", "items", {"id": 3}, None, small, SourcePosition(9, 8), T0, 7)
    [letter] = translate(Transaction(7, 9, T0, (change,)), mappings, source_id="test").dead_letters
    assert letter.error.startswith("rule 'items.bomb', field 'let.s"), letter.error
    assert "too large" in letter.error
