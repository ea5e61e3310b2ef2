"""Upcasters: declarative steps, registered functions, chains of majors, and what `contracts check` reports."""

from __future__ import annotations

import copy
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest

from bridge.contracts.registry import ContractRegistry, load_contracts
from bridge.contracts.upcast import register, upcast, upcast_problems, upcaster_for
from bridge.errors import ContractError, ContractViolation

REPO = Path(__file__).resolve().parents[2]
V1 = "shop.order.Paid.v1"

MAJOR_1 = """\
  1:
    fields:
      orderId: {type: integer, description: The order.}
      total: {type: decimal, optional: true, description: The total.}
      note: {type: string, optional: true, description: A note.}
      lines:
        type: list
        optional: true
        description: The lines.
        items:
          type: object
          fields:
            price: {type: decimal, description: The price.}
    examples:
      - {data: {orderId: 1, total: "9.50", note: hi, lines: [{price: "9.50"}]}}
      - {data: {orderId: 2}}
"""
TOTAL_OBJECT = """\
      total:
        type: object
        optional: true
        description: The total.
        fields:
          amount: {type: decimal, description: The amount.}
          currency: {type: string, description: The currency.}
"""
LINES_UNIT_PRICE = """\
      lines:
        type: list
        optional: true
        description: The lines.
        items:
          type: object
          fields:
            unitPrice: {type: decimal, description: The price.}
"""


def registry(tmp_path: Path, majors: str) -> ContractRegistry:
    folder = tmp_path / "contracts"
    (folder / "order").mkdir(parents=True, exist_ok=True)
    (folder / "order" / "Paid.yaml").write_text(
        "type: shop.order.Paid\naggregate: order\ndescription: Paid.\nmajors:\n" + majors)
    return load_contracts(folder)


def major_2(upcast_steps: str, fields: str) -> str:
    return MAJOR_1 + "  2:\n    upcast:\n" + textwrap.indent(textwrap.dedent(upcast_steps), "      ") + \
        "    fields:\n      orderId: {type: integer, description: The order.}\n" + fields


def test_move_to_a_path_below_the_moved_name_and_default_inside_it(tmp_path: Path) -> None:
    reg = registry(tmp_path, major_2("""\
        - move: {total: total.amount}
        - default: {total.currency: EUR}
        - remove: [note]
        - rename: {lines.price: lines.unitPrice}
        """, TOTAL_OBJECT + LINES_UNIT_PRICE))
    data = {"orderId": 1, "total": "9.50", "note": "hi", "lines": [{"price": "9.50"}, {"price": "1.00"}]}
    original = copy.deepcopy(data)
    assert upcast(reg, V1, data) == ("shop.order.Paid.v2", {
        "orderId": 1, "total": {"amount": "9.50", "currency": "EUR"},
        "lines": [{"unitPrice": "9.50"}, {"unitPrice": "1.00"}]})
    assert data == original, "the caller's payload is not changed"


def test_steps_on_absent_fields_do_nothing(tmp_path: Path) -> None:
    reg = registry(tmp_path, major_2("""\
        - move: {total: total.amount}
        - default: {total.currency: EUR}
        - remove: [note]
        - rename: {lines.price: lines.unitPrice}
        """, TOTAL_OBJECT + LINES_UNIT_PRICE))
    assert upcast(reg, V1, {"orderId": 2}) == ("shop.order.Paid.v2", {"orderId": 2}), \
        "no total: no object is made for the default"


def test_default_keeps_a_value_that_is_there_and_a_rename_stays_in_its_object(tmp_path: Path) -> None:
    reg = registry(tmp_path, major_2("""\
        - default: {note: none, orderId: 99}
        """, "      note: {type: string, description: A note.}\n"))
    up = upcaster_for(reg.major("shop.order.Paid.v2"))  # type: ignore[arg-type]
    assert up({"orderId": 1}) == {"orderId": 1, "note": "none"}
    assert up({"orderId": 1, "note": "x"}) == {"orderId": 1, "note": "x"}
    reg = registry(tmp_path / "other", major_2("- rename: {lines.price: unitPrice}\n", LINES_UNIT_PRICE))
    with pytest.raises(ContractError, match=r"Paid\.yaml:\d+: .*upcast step 1 \(rename lines\.price -> unitPrice\): "
                                            r"a rename keeps the field in its object \(lines\); use move"):
        upcaster_for(reg.major("shop.order.Paid.v2"))  # type: ignore[arg-type]


def test_a_move_through_a_value_that_is_not_an_object_names_the_step(tmp_path: Path) -> None:
    reg = registry(tmp_path, major_2("- move: {orderId: note.id}\n", "      note: {type: json, description: x}\n"))
    with pytest.raises(ContractViolation, match=r"upcast step 1 \(move orderId -> note\.id\): 'note' is str, "
                                                r"not an object"):
        upcast(reg, V1, {"orderId": 1, "note": "hi"})


@register("test_upcast.cents")
def _cents(data: dict[str, Any]) -> dict[str, Any]:
    """What a declarative step cannot say: a computed value."""
    if "total" in data:
        data["totalCents"] = int(float(data.pop("total")) * 100)
    return data


def test_a_registered_function_is_a_step(tmp_path: Path) -> None:
    reg = registry(tmp_path, major_2("""\
        - function: test_upcast.cents
        - remove: [note, lines]
        """, "      totalCents: {type: integer, optional: true, description: Cents.}\n"))
    assert upcast(reg, V1, {"orderId": 1, "total": "9.50", "note": "x"}) == (
        "shop.order.Paid.v2", {"orderId": 1, "totalCents": 950})
    assert upcast_problems(reg) == []


def test_registering_another_function_under_a_taken_name_is_refused() -> None:
    with pytest.raises(ContractError, match="already registered"):
        register("test_upcast.cents")(lambda data: data)


def test_majors_chain_one_at_a_time_and_each_result_is_checked(tmp_path: Path) -> None:
    reg = registry(tmp_path, major_2("""\
        - move: {total: total.amount}
        - default: {total.currency: EUR}
        - remove: [note, lines]
        """, TOTAL_OBJECT) + """\
  3:
    upcast:
      - rename: {orderId: id}
      - rename: {total.amount: total.value}
    fields:
      id: {type: integer, description: The order.}
      total:
        type: object
        optional: true
        description: The total.
        fields:
          value: {type: decimal, description: The amount.}
          currency: {type: string, description: The currency.}
""")
    assert upcast(reg, V1, {"orderId": 1, "total": "9.50"}) == (
        "shop.order.Paid.v3", {"id": 1, "total": {"value": "9.50", "currency": "EUR"}})
    assert upcast(reg, V1, {"orderId": 1, "total": "9.50"}, to_major=2) == (
        "shop.order.Paid.v2", {"orderId": 1, "total": {"amount": "9.50", "currency": "EUR"}})
    assert upcast(reg, "shop.order.Paid.v3", {"id": 4}) == ("shop.order.Paid.v3", {"id": 4})
    with pytest.raises(ContractError, match="upcasting only goes up"):
        upcast(reg, "shop.order.Paid.v3", {"id": 4}, to_major=1)
    with pytest.raises(ContractError, match="no contract major"):
        upcast(reg, "shop.order.Paid.v9", {})
    assert upcast_problems(reg) == []


def test_the_repositorys_order_placed_v1_examples_become_valid_v2_payloads() -> None:
    reg = load_contracts(REPO / "mappings" / "contracts")
    v1 = reg.major("restaurant.order.OrderPlaced.v1")
    assert v1 is not None and v1.spec.examples
    results = [upcast(reg, v1.event_type, example.data, to_major=2) for example in v1.spec.examples]
    assert results[0] == ("restaurant.order.OrderPlaced.v2", {
        **v1.spec.examples[0].data, "total": {"amount": "25.25", "currency": "EUR"}})
    assert results[1] == ("restaurant.order.OrderPlaced.v2", v1.spec.examples[1].data)
    assert upcast_problems(reg) == []


def test_an_unknown_function_names_the_contract_file_and_the_name(tmp_path: Path) -> None:
    reg = registry(tmp_path, major_2("- function: nobody.registered.this\n",
                                     "      total: {type: decimal, optional: true, description: x}\n"))
    with pytest.raises(ContractError) as raised:
        upcast(reg, V1, {"orderId": 1})
    message = str(raised.value)
    assert f"{tmp_path / 'contracts' / 'order' / 'Paid.yaml'}:" in message
    assert "no upcaster function named 'nobody.registered.this' is registered" in message
    [problem] = upcast_problems(reg)
    assert "Paid.yaml:" in problem and "'nobody.registered.this'" in problem


def test_an_upcast_giving_an_invalid_payload_is_reported_with_the_field(tmp_path: Path) -> None:
    # Forgot the currency: the v2 object requires it.
    reg = registry(tmp_path, major_2("- move: {total: total.amount}\n- remove: [note, lines]\n", TOTAL_OBJECT))
    with pytest.raises(ContractViolation) as raised:
        upcast(reg, V1, {"orderId": 1, "total": "9.50"})
    message = str(raised.value)
    assert "Paid.yaml:" in message and "shop.order.Paid v1 to v2" in message
    assert "urn:cdc-bridge:contract:shop.order.Paid:2.0: field 'total.currency': required" in message
    [problem] = upcast_problems(reg)
    assert "example 0 of v1 upcast to v2" in problem and "field 'total.currency'" in problem, problem
    assert upcast(reg, V1, {"orderId": 2}) == ("shop.order.Paid.v2", {"orderId": 2}), "the example without a total is fine"


def test_contracts_check_refuses_an_upcaster_that_breaks_the_previous_majors_examples(tmp_path: Path) -> None:
    from bridge.contracts.check import check_contracts

    folder = tmp_path / "contracts"
    shutil.copytree(REPO / "mappings" / "contracts", folder)
    assert check_contracts(folder) == []
    contract = folder / "order" / "OrderPlaced.yaml"
    text = contract.read_text()
    without_currency = text.replace("      - default: {total.currency: EUR}\n", "")
    assert without_currency != text, "the OrderPlaced v2 upcast has its default step"
    contract.write_text(without_currency)
    found = check_contracts(folder)
    assert found and all("upcast to v2" in p and "total.currency" in p for p in found), found
