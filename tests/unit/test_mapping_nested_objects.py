"""A payload field built as a nested object: ``{fields: {amount: ..., currency: {const: EUR}}, when: ...}``."""

from __future__ import annotations

import textwrap
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from bridge.changes import UNKNOWN, Op, RowChange, SourcePosition, Transaction
from bridge.errors import MappingError
from bridge.mapping.loader import load_mappings
from bridge.mapping.spec import CompiledMappings
from bridge.mapping.translate import translate

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
HEADER = """\
namespace: shop
tables:
  items:
    columns: {id: integer, name: text, price: "numeric(10,2)", description: text}
rules:
"""
RULE = """\
- id: items.created
  table: items
  ops: [c]
  emit:
    - event: ItemCreated
      aggregate: {type: item, id: after.id}
      data:
        itemId: after.id
        price:
          fields:
            amount: after.price
            currency: {const: EUR}
            doubled: after.price * 2
            note: {value: after.description, optional: true}
            detail: {fields: {name: upper(after.name)}, when: after.name != ''}
          when: after.price is not None
"""
CONTRACT = """\
type: shop.item.ItemCreated
aggregate: item
description: An item.
majors:
  1:
    fields:
      itemId: {type: integer, description: The id.}
      price:
        type: object
        optional: true
        description: The price.
        fields:
          amount: {type: decimal, description: The amount.}
          currency: {type: string, description: The currency.}
"""


def mappings(tmp_path: Path, rule: str, contract: str | None = None) -> CompiledMappings:
    path = tmp_path / "shop.yaml"
    path.write_text(HEADER + textwrap.indent(textwrap.dedent(rule), "  "))
    if contract is not None:
        (tmp_path / "contracts" / "item").mkdir(parents=True)
        (tmp_path / "contracts" / "item" / "ItemCreated.yaml").write_text(contract)
    return load_mappings([path])


def created(**row: object) -> Transaction:
    after = {"id": 1, "name": "soup", "price": Decimal("6.50"), "description": "long", **row}
    change = RowChange(Op("c"), "public", "items", {"id": 1}, None, after, SourcePosition(900, 1), T0, 42)
    return Transaction(42, 900, T0, (change,))


def test_a_nested_object_is_built_from_its_own_fields_in_order(tmp_path: Path) -> None:
    m = mappings(tmp_path, RULE)
    [event] = translate(created(), m, source_id="test").events
    assert event.data == {"itemId": 1, "price": {"amount": Decimal("6.50"), "currency": "EUR",
                                                 "doubled": Decimal("13.00"), "note": "long",
                                                 "detail": {"name": "SOUP"}}}
    assert list(event.data["price"]) == ["amount", "currency", "doubled", "note", "detail"]


def test_when_and_optional_leave_out_the_object_or_a_field_of_it(tmp_path: Path) -> None:
    m = mappings(tmp_path, RULE)
    [event] = translate(created(description=UNKNOWN, name=""), m, source_id="test").events
    assert event.data["price"] == {"amount": Decimal("6.50"), "currency": "EUR", "doubled": Decimal("13.00")}
    [event] = translate(created(price=None), m, source_id="test").events
    assert event.data == {"itemId": 1}


def test_a_failing_inner_field_names_its_path(tmp_path: Path) -> None:
    m = mappings(tmp_path, RULE.replace("upper(after.name)", "int(after.name)"))
    result = translate(created(), m, source_id="test")
    assert result.events == []
    [letter] = result.dead_letters
    assert "price.fields.detail.fields.name" in str(letter.error), letter.error


@pytest.mark.parametrize("change, expected", [
    ("fields: {amount: after.price, currency: {const: EUR}}\n          optional: true",
     "'optional' is for a 'value'"),
    ("fields: {amount: after.price}\n          value: after.price", "got value and fields"),
    ("fields: {amount: nope}", "unknown name 'nope'"),
])
def test_shape_and_expression_problems_are_located(tmp_path: Path, change: str, expected: str) -> None:
    rule = RULE.replace("""fields:
            amount: after.price
            currency: {const: EUR}
            doubled: after.price * 2
            note: {value: after.description, optional: true}
            detail: {fields: {name: upper(after.name)}, when: after.name != ''}""", change)
    with pytest.raises(MappingError) as raised:
        mappings(tmp_path, rule)
    assert expected in str(raised.value) and "shop.yaml:" in str(raised.value)


def test_the_object_fits_its_contract(tmp_path: Path) -> None:
    rule = RULE.replace("            doubled: after.price * 2\n", "").replace(
        "            note: {value: after.description, optional: true}\n", "").replace(
        "            detail: {fields: {name: upper(after.name)}, when: after.name != ''}\n", "")
    m = mappings(tmp_path, rule, CONTRACT)
    [event] = translate(created(), m, source_id="test").events
    assert event.data["price"] == {"amount": Decimal("6.50"), "currency": "EUR"}
    assert event.dataschema == "urn:cdc-bridge:contract:shop.item.ItemCreated:1.0"


@pytest.mark.parametrize("fields, expected", [
    ("{amount: after.price, currency: {const: EUR}, extra: after.name}", "field 'extra' is not in the contract's object"),
    ("{amount: after.price}", "requires field 'currency', but 'fields' never sets it"),
    ("{amount: after.name, currency: {const: EUR}}", "after.name is text, which cannot fit a decimal field"),
    ("{amount: after.price, currency: {const: 3}}", "the constant 3 cannot fit a string field"),
    ("{amount: after.price, currency: {const: EUR, when: after.id > 1}}", "may be left out, but the contract's object"),
])
def test_contract_misfits_inside_the_object_are_reported(tmp_path: Path, fields: str, expected: str) -> None:
    rule = """\
    - id: items.created
      table: items
      ops: [c]
      emit:
        - event: ItemCreated
          aggregate: {type: item, id: after.id}
          data: {itemId: after.id, price: {fields: %s}}
    """ % fields
    with pytest.raises(MappingError) as raised:
        mappings(tmp_path, rule, CONTRACT)
    assert expected in str(raised.value), raised.value


def test_fields_where_the_contract_has_a_scalar_is_reported(tmp_path: Path) -> None:
    rule = """\
    - id: items.created
      table: items
      ops: [c]
      emit:
        - event: ItemCreated
          aggregate: {type: item, id: after.id}
          data: {itemId: {fields: {a: after.id}}}
    """
    with pytest.raises(MappingError) as raised:
        mappings(tmp_path, rule, CONTRACT)
    assert "'fields' builds an object, but the contract field is an integer field" in str(raised.value)
