"""compat.compare on schema dicts: every kind of change, and the shapes it refuses instead of guessing."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from bridge.contracts.compat import compare, read_shape
from bridge.contracts.registry import load_contracts
from bridge.contracts.schema import revision_schema
from bridge.errors import ContractError

REPO_CONTRACTS = Path(__file__).resolve().parents[2] / "mappings" / "contracts"
FIX = "keep major 1 as published and publish the change as major 2, with an upcaster from v1"


def base() -> dict[str, Any]:
    """A schema shaped like what models.py emits: closed objects, $defs, nullable, enum, list of objects."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:cdc-bridge:contract:shop.order.OrderPlaced:1.0",
        "title": "shop.order.OrderPlaced.v1", "description": "Checked out.",
        "x-aggregate": "order", "x-revision": 0,
        "type": "object", "additionalProperties": False,
        "properties": {
            "orderId": {"type": "integer", "description": "id"},
            "status": {"enum": ["PLACED", "PAID"], "type": "string", "description": "status"},
            "placedAt": {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}], "description": "when"},
            "note": {"type": "string", "description": "note"},
            "extra": {"description": "any JSON value"},
            "lines": {"type": "array", "items": {"$ref": "#/$defs/Line"}, "description": "lines"},
        },
        "required": ["orderId", "status", "placedAt", "lines"],
        "$defs": {"Line": {"type": "object", "additionalProperties": False, "title": "Line",
                           "properties": {"sku": {"type": "string"}, "price": {"type": "string", "format": "decimal"},
                                          "quantity": {"type": "integer"}},
                           "required": ["sku", "price", "quantity"]}},
    }


def changed(edit) -> list:  # type: ignore[no-untyped-def]
    new = base()
    edit(new)
    return compare(base(), new)


def only_breaking(changes: list) -> list:
    return [c for c in changes if c.breaking]


def test_identical_schemas_have_no_changes() -> None:
    assert compare(base(), base()) == []


def test_every_real_contract_is_understood() -> None:
    for major in load_contracts(REPO_CONTRACTS).majors():
        read_shape(revision_schema(major))


def test_optional_field_added_is_compatible() -> None:
    changes = changed(lambda s: s["properties"].update(coupon={"type": "string", "description": "c"}))
    assert [(c.path, c.kind, c.breaking) for c in changes] == [("coupon", "optional_field_added", False)]


def test_documentation_changes_are_compatible() -> None:
    def edit(s: dict[str, Any]) -> None:
        s["description"] = "Checked out, reworded."
        s["properties"]["placedAt"]["description"] = "when, reworded"
        s["$defs"]["Line"]["properties"]["sku"]["description"] = "new description"
    changes = changed(edit)
    assert {c.kind for c in changes} == {"documentation"} and not only_breaking(changes)
    assert {c.path for c in changes} == {"", "placedAt", "lines[].sku"}


def _remove(s: dict[str, Any], name: str) -> None:
    del s["properties"][name]
    s["required"] = [r for r in s["required"] if r != name]


EDITS = {
    "field_removed (optional)": (lambda s: _remove(s, "note"), "note", "field_removed", "optional field removed"),
    "field_removed (required)": (lambda s: _remove(s, "orderId"), "orderId", "field_removed", "required field removed"),
    "field_renamed": (lambda s: (s["properties"].update(orderNo=s["properties"].pop("orderId")),
                                 s["required"].append("orderNo"), s["required"].remove("orderId")),
                      "orderId", "field_renamed", "renamed from 'orderId' to 'orderNo'?"),
    "type_changed decimal->integer": (lambda s: s["$defs"]["Line"]["properties"].update(price={"type": "integer"}),
                                      "lines[].price", "type_changed", "type changed from decimal (as a string) to integer"),
    "type_changed text->decimal": (lambda s: s["properties"]["note"].update(format="decimal"), "note", "type_changed",
                                   "type changed from string to decimal (as a string)"),
    "type_changed integer->number": (lambda s: s["properties"].update(orderId={"type": "number", "description": "id"}),
                                     "orderId", "type_changed", "type changed from integer to number"),
    "type_changed format": (lambda s: s["properties"]["placedAt"]["anyOf"][0].update(format="date"),
                            "placedAt", "type_changed", "format date-time) to string (format date)"),
    "optional_made_required": (lambda s: s["required"].append("note"), "note", "optional_made_required",
                               "optional made required"),
    "required_made_optional": (lambda s: s["required"].remove("orderId"), "orderId", "required_made_optional",
                               "required made optional"),
    "required_field_added": (lambda s: (s["properties"].update(currency={"type": "string"}), s["required"].append("currency")),
                             "currency", "required_field_added", "required field added"),
    "nullable_added": (lambda s: s["properties"].update(orderId={"anyOf": [{"type": "integer"}, {"type": "null"}]}),
                       "orderId", "nullable_added", "nullable added"),
    "nullable_removed": (lambda s: s["properties"].update(placedAt={"type": "string", "format": "date-time", "description": "when"}),
                         "placedAt", "nullable_removed", "nullable removed"),
    "enum_narrowed": (lambda s: s["properties"]["status"].update(enum=["PLACED"]), "status", "enum_narrowed",
                      "enum narrowed: values ['PAID'] removed"),
    "enum_widened": (lambda s: s["properties"]["status"]["enum"].append("SHIPPED"), "status", "enum_widened",
                     "enum widened: values ['SHIPPED'] added"),
    "item_type_changed": (lambda s: s["properties"]["lines"].update(items={"type": "string"}), "lines[]",
                          "item_type_changed", "list item type changed from object to string"),
    "nested required_field_added": (lambda s: (s["$defs"]["Line"]["properties"].update(tax={"type": "string"}),
                                               s["$defs"]["Line"]["required"].append("tax")),
                                    "lines[].tax", "required_field_added", "required field added"),
    "json -> integer": (lambda s: s["properties"].update(extra={"type": "integer", "description": "x"}),
                        "extra", "type_changed", "from any JSON value to integer"),
}


@pytest.mark.parametrize("name", list(EDITS))
def test_breaking_change_named_with_field_kind_and_fix(name: str) -> None:
    edit, path, kind, phrase = EDITS[name]
    found = only_breaking(changed(edit))
    assert [(c.path, c.kind) for c in found] == [(path, kind)], found
    message = found[0].message
    assert message.startswith(f"shop.order.OrderPlaced major 1, field '{path}': ")
    assert phrase in message and FIX in message


def test_a_rename_points_at_the_new_field() -> None:
    edit = EDITS["field_renamed"][0]
    assert [(c.path, c.new_path) for c in changed(edit)] == [("orderId", "orderNo")]


def test_breaking_in_both_directions() -> None:
    """FULL: a removal is breaking whichever schema is the old one, an optional addition neither way."""
    new = base()
    _remove(new, "note")
    assert only_breaking(compare(base(), new)) and not only_breaking(compare(new, base()))
    assert [c.kind for c in compare(new, base())] == ["optional_field_added"]


def test_nested_object_change_names_the_parent() -> None:
    def edit(s: dict[str, Any]) -> None:
        s["properties"]["address"] = {"$ref": "#/$defs/Address", "description": "a"}
        s["required"].append("address")
    old = base()
    edit(old)
    old["$defs"]["Address"] = {"type": "object", "additionalProperties": False,
                               "properties": {"city": {"type": "string"}}, "required": ["city"]}
    new = copy.deepcopy(old)
    new["$defs"]["Address"]["properties"]["city"] = {"type": "integer"}
    assert [(c.path, c.kind) for c in compare(old, new)] == [("address.city", "type_changed")]


UNSUPPORTED = {
    "oneOf": (lambda s: s["properties"].update(x={"oneOf": [{"type": "string"}, {"type": "integer"}]}),
              "/properties/x/oneOf", "oneOf"),
    "patternProperties": (lambda s: s.update(patternProperties={"^x": {"type": "string"}}),
                          "/patternProperties", "patternProperties"),
    "additionalProperties true": (lambda s: s.update(additionalProperties=True),
                                  "/additionalProperties", "additionalProperties: true"),
    "additionalProperties schema": (lambda s: s["$defs"]["Line"].update(additionalProperties={"type": "string"}),
                                    "/$defs/Line/additionalProperties", "additionalProperties: a schema"),
    "open object": (lambda s: s["$defs"]["Line"].pop("additionalProperties"),
                    "/$defs/Line/additionalProperties", "additionalProperties: absent (an open object)"),
    "anyOf of two non-null types": (lambda s: s["properties"].update(x={"anyOf": [{"type": "string"}, {"type": "integer"}]}),
                                    "/properties/x/anyOf", "anyOf that is not [X, {type: null}]"),
    "remote $ref": (lambda s: s["properties"].update(x={"$ref": "https://example.com/schemas/x.json"}),
                    "/properties/x/$ref", "$ref 'https://example.com/schemas/x.json'"),
    "allOf": (lambda s: s["properties"].update(x={"allOf": [{"type": "string"}]}), "/properties/x/allOf", "allOf"),
    "const": (lambda s: s["properties"].update(x={"const": 3}), "/properties/x/const", "const"),
    "type list": (lambda s: s["properties"].update(x={"type": ["string", "null"]}), "/properties/x/type", "type as a list"),
    "prefixItems": (lambda s: s["properties"]["lines"].update(prefixItems=[{"type": "string"}]),
                    "/properties/lines/prefixItems", "prefixItems"),
    "unknown format": (lambda s: s["properties"].update(x={"type": "string", "format": "email"}),
                       "/properties/x/format", "format 'email'"),
    "minimum": (lambda s: s["properties"]["orderId"].update(minimum=1), "/properties/orderId/minimum", "minimum"),
}


@pytest.mark.parametrize("name", list(UNSUPPORTED))
@pytest.mark.parametrize("side", ["old", "new"])
def test_unsupported_shape_is_refused(name: str, side: str) -> None:
    edit, pointer, keyword = UNSUPPORTED[name]
    odd = base()
    edit(odd)
    with pytest.raises(ContractError) as caught:
        compare(odd, base()) if side == "old" else compare(base(), odd)
    assert str(caught.value).startswith(f"unsupported schema shape at {pointer}: {keyword}")
    assert "the checker cannot decide compatibility, so it refuses" in str(caught.value)


def test_one_value_enum_as_pydantic_writes_it_is_understood() -> None:
    old = base()
    old["properties"]["status"] = {"const": "PLACED", "type": "string"}
    new = copy.deepcopy(old)
    new["properties"]["status"] = {"enum": ["PLACED", "PAID"], "type": "string"}
    assert [c.kind for c in compare(old, new)] == ["enum_widened"]
