"""Validate time: every emit of a mapping must fit its contract (bridge/mapping/contract_fit.py), each problem
one line naming the mapping file and line, the rule, the field and what does not fit.

Each test writes a small mapping (shop.yaml) and a contracts/ folder next to it into tmp_path and loads them
with `check_files`, as `cdc-bridge mappings validate` does.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from bridge.mapping.commands import mappings_group
from bridge.mapping.loader import check_files, load_mappings

HEADER = """\
namespace: shop
tables:
  items:
    columns: {id: integer, name: text, code: text, price: "numeric(10,2)", tags: "text[]", made: timestamp,
              added: timestamptz}
  lines:
    columns: {id: bigint, item_id: integer, qty: integer, note: text, price: "numeric(10,2)"}
rules:
"""
# The rules start at line 9 of shop.yaml: an added_rule's `event:` is at line 13, its first data field at 16.
ADDED_FIELDS: dict[str, Any] = {
    "itemId": {"type": "integer", "description": "The id."},
    "name": {"type": "string", "description": "The name."},
}


def contract(folder: Path, name: str, fields: dict[str, Any], *, aggregate: str = "item", majors: tuple[int, ...] = (1,),
             text: str | None = None) -> Path:
    """contracts/<aggregate>/<name>.yaml with the same fields in each major (or the raw `text`)."""
    path = folder / "contracts" / aggregate / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    if text is None:
        document: dict[str, Any] = {"type": f"shop.{aggregate}.{name}", "aggregate": aggregate,
                                    "description": f"{name} happened.",
                                    "majors": {m: {"fields": fields} for m in majors}}
        for number in majors[1:]:
            document["majors"][number]["upcast"] = [{"remove": ["nothing"]}]
        text = yaml.safe_dump(document, sort_keys=False)
    path.write_text(text)
    return path


def mapping(folder: Path, rules: str) -> Path:
    path = folder / "shop.yaml"
    path.write_text(HEADER + textwrap.indent(textwrap.dedent(rules), "  "))
    return path


def problems(folder: Path, rules: str) -> list[str]:
    [report] = check_files([mapping(folder, rules)])
    return report.problems


def one_problem(folder: Path, rules: str) -> str:
    found = problems(folder, rules)
    assert len(found) == 1, found
    return found[0]


def added_rule(data: str, *, extra: str = "") -> str:
    """items.added emitting ItemAdded with `data` (YAML lines at the data's indentation)."""
    return f"""\
- id: items.added
  table: items
  ops: [c]{extra}
  emit:
    - event: ItemAdded
      aggregate: {{type: item, id: after.id}}
      data:
{textwrap.indent(textwrap.dedent(data), " " * 8)}"""


# -- each kind of problem ------------------------------------------------------------------------------------


def test_an_event_without_a_contract_names_the_contract_file_to_add(tmp_path: Path) -> None:
    contract(tmp_path, "ItemAdded", ADDED_FIELDS)
    found = one_problem(tmp_path, added_rule("itemId: after.id\nname: after.name\n").replace("ItemAdded", "ItemGone"))
    assert found == (f"{tmp_path}/shop.yaml:13: rule 'items.added', field 'emit[0].event': no contract for "
                     f"shop.item.ItemGone.v1: add {tmp_path}/contracts/item/ItemGone.yaml (see the README's "
                     "Contracts section)")


def test_an_emit_of_a_major_the_contract_lacks_names_the_majors_it_has(tmp_path: Path) -> None:
    contract(tmp_path, "ItemAdded", ADDED_FIELDS)
    found = one_problem(tmp_path, added_rule("itemId: after.id\nname: after.name\n").replace(
        "- event: ItemAdded\n", "- event: ItemAdded\n      version: 2\n"))
    assert found.startswith(f"{tmp_path}/shop.yaml:14: rule 'items.added', field 'emit[0].version': ")
    assert found.endswith(f"contract shop.item.ItemAdded ({tmp_path}/contracts/item/ItemAdded.yaml) has no major 2 "
                          "(it has 1): add major 2 to it")


def test_a_payload_field_the_contract_lacks(tmp_path: Path) -> None:
    contract(tmp_path, "ItemAdded", ADDED_FIELDS)
    found = one_problem(tmp_path, added_rule("itemId: after.id\nname: after.name\ncolour: after.code\n"))
    assert found.startswith(f"{tmp_path}/shop.yaml:18: rule 'items.added', field 'emit[0].data.colour': field 'colour' "
                            "is not in contract shop.item.ItemAdded.v1")
    assert "it has itemId, name): add it there as an optional field with since: 1, or leave it out" in found


def test_a_required_field_the_rule_never_sets(tmp_path: Path) -> None:
    contract(tmp_path, "ItemAdded", ADDED_FIELDS)
    found = one_problem(tmp_path, added_rule("itemId: after.id\n"))
    assert found == (f"{tmp_path}/shop.yaml:15: rule 'items.added', field 'emit[0].data': contract "
                     "shop.item.ItemAdded.v1 requires field 'name', but the rule never sets it: add 'name' to the "
                     "emit's data")


def test_a_required_field_set_only_under_when_or_optional(tmp_path: Path) -> None:
    contract(tmp_path, "ItemAdded", ADDED_FIELDS)
    found = one_problem(tmp_path, added_rule("itemId: after.id\nname: {value: after.name, when: after.id > 1}\n"))
    assert found.startswith(f"{tmp_path}/shop.yaml:17: rule 'items.added', field 'emit[0].data.name': field 'name' "
                            "may be left out (when), but contract shop.item.ItemAdded.v1 requires it: mark it "
                            f"optional in {tmp_path}/contracts/item/ItemAdded.yaml")
    found = one_problem(tmp_path, added_rule("itemId: after.id\nname: {value: after.name, optional: true}\n"))
    assert "field 'emit[0].data.name': field 'name' may be left out (optional), but contract" in found
    # The contract's own optional field may be conditional.
    contract(tmp_path, "ItemAdded", {**ADDED_FIELDS, "name": {**ADDED_FIELDS["name"], "optional": True}})
    assert problems(tmp_path, added_rule("itemId: after.id\nname: {value: after.name, when: after.id > 1}\n")) == []


def test_a_text_column_into_an_integer_field(tmp_path: Path) -> None:
    contract(tmp_path, "ItemAdded", ADDED_FIELDS)
    found = one_problem(tmp_path, added_rule("itemId: after.code\nname: after.name\n"))
    assert found == (f"{tmp_path}/shop.yaml:16: rule 'items.added', field 'emit[0].data.itemId': after.code is text, "
                     "which cannot fit an integer field")


def test_a_timestamp_without_time_zone_into_a_timestamp_field(tmp_path: Path) -> None:
    contract(tmp_path, "ItemAdded", {**ADDED_FIELDS, "at": {"type": "timestamp", "description": "When."}})
    found = one_problem(tmp_path, added_rule("itemId: after.id\nname: after.name\nat: after.made\n"))
    assert found == (f"{tmp_path}/shop.yaml:18: rule 'items.added', field 'emit[0].data.at': after.made is timestamp "
                     "without time zone, which cannot fit a timestamp field")
    # with time zone fits; so does the naive one made aware (an expression: left to the run-time check)
    assert problems(tmp_path, added_rule("itemId: after.id\nname: after.name\nat: after.added\n")) == []
    assert problems(tmp_path, added_rule("itemId: after.id\nname: after.name\nat: as_utc(after.made)\n")) == []


def test_a_text_array_into_a_list_of_integers(tmp_path: Path) -> None:
    contract(tmp_path, "ItemAdded", {**ADDED_FIELDS, "tags": {"type": "list", "items": {"type": "integer"},
                                                              "description": "Tags."}})
    found = one_problem(tmp_path, added_rule("itemId: after.id\nname: after.name\ntags: after.tags\n"))
    assert found == (f"{tmp_path}/shop.yaml:18: rule 'items.added', field 'emit[0].data.tags': after.tags is text[], "
                     "which cannot fit a list of an integer field")
    contract(tmp_path, "ItemAdded", {**ADDED_FIELDS, "tags": {"type": "string", "description": "Tags."}})
    assert "after.tags is text[], which cannot fit a string field" in one_problem(
        tmp_path, added_rule("itemId: after.id\nname: after.name\ntags: after.tags\n"))


LINES_FIELD = {"type": "list", "description": "The lines.", "items": {"type": "object", "fields": {
    "lineId": {"type": "integer", "description": "The line."},
    "price": {"type": "decimal", "description": "Its price."}}}}


def test_a_collect_of_rows_whose_column_cannot_fit_the_contract_object_field(tmp_path: Path) -> None:
    contract(tmp_path, "ItemAdded", {**ADDED_FIELDS, "lines": LINES_FIELD})
    found = one_problem(tmp_path, added_rule("""\
        itemId: after.id
        name: after.name
        lines:
          collect:
            table: lines
            where: row.item_id == after.id
            fields: {lineId: row.id, price: row.note}
        """))
    assert found == (f"{tmp_path}/shop.yaml:22: rule 'items.added', field 'emit[0].data.lines.collect.fields.price': "
                     "row.note is text, which cannot fit a decimal field")
    # a collect of values (not objects) into a list of integers
    contract(tmp_path, "ItemAdded", {**ADDED_FIELDS, "notes": {"type": "list", "items": {"type": "integer"},
                                                               "description": "Notes."}})
    found = one_problem(tmp_path, added_rule("""\
        itemId: after.id
        name: after.name
        notes: {collect: {table: lines, where: row.item_id == after.id, value: row.note}}
        """))
    assert found == (f"{tmp_path}/shop.yaml:18: rule 'items.added', field 'emit[0].data.notes.collect.value': "
                     "row.note is text, which cannot fit an integer field")


def test_item_fields_of_an_each_over_a_collect_let_are_checked_at_their_column(tmp_path: Path) -> None:
    contract(tmp_path, "LineAdded", {"itemId": {"type": "integer", "description": "The item."},
                                     "lineId": {"type": "integer", "description": "The line."},
                                     "qty": {"type": "integer", "description": "How many."}})
    rule = """\
        - id: items.added
          table: items
          ops: [c]
          let:
            lines:
              collect:
                table: lines
                where: row.item_id == after.id
                fields: {lineId: row.id, qty: row.note}
          emit:
            - event: LineAdded
              each: lines
              aggregate: {type: item, id: after.id}
              data: {itemId: after.id, lineId: item.lineId, qty: item.qty}
        """
    found = one_problem(tmp_path, rule)
    assert found == (f"{tmp_path}/shop.yaml:22: rule 'items.added', field 'emit[0].data.qty': item.qty: row.note is "
                     "text, which cannot fit an integer field")
    assert problems(tmp_path, rule.replace("qty: row.note", "qty: row.qty")) == []


def test_a_constant_of_the_wrong_type(tmp_path: Path) -> None:
    contract(tmp_path, "ItemAdded", {**ADDED_FIELDS, "kind": {"type": "enum", "values": ["food", "drink"],
                                                              "description": "Kind."}})
    found = one_problem(tmp_path, added_rule("itemId: {const: '7'}\nname: after.name\nkind: {const: food}\n"))
    assert found == (f"{tmp_path}/shop.yaml:16: rule 'items.added', field 'emit[0].data.itemId.const': the constant "
                     "'7' cannot fit an integer field")
    found = one_problem(tmp_path, added_rule("itemId: after.id\nname: after.name\nkind: {const: toy}\n"))
    assert found.endswith("field 'emit[0].data.kind.const': the constant 'toy' cannot fit an enum field (food, drink)")
    found = one_problem(tmp_path, added_rule("itemId: after.id\nname: {const: null}\nkind: {const: food}\n"))
    assert found.endswith("field 'emit[0].data.name.const': the constant None cannot fit a string field")


def test_a_problem_in_a_contract_file_is_reported_at_its_own_file_and_line(tmp_path: Path) -> None:
    contract(tmp_path, "ItemAdded", {}, text=textwrap.dedent("""\
        type: shop.item.ItemAdded
        aggregate: item
        description: An item was added.
        majors:
          1:
            fields:
              itemId: {type: integer, description: The id.}
              name: {type: strng, description: The name.}
        """))
    [report] = check_files([mapping(tmp_path, added_rule("itemId: after.id\nname: after.name\n"))])
    [found] = report.problems
    assert found.startswith(f"{tmp_path}/contracts/item/ItemAdded.yaml:8: ")
    assert "field 'majors[1].fields.name.type'" in found and "'strng'" in found
    assert report.rules == ()


# -- what loads -------------------------------------------------------------------------------------------------


def test_a_fitting_mapping_loads_and_every_emit_carries_its_check_and_dataschema(tmp_path: Path) -> None:
    contract(tmp_path, "ItemAdded", {**ADDED_FIELDS, "tags": {"type": "list", "items": {"type": "string"},
                                                              "description": "Tags."},
                                     "note": {"type": "string", "optional": True, "since": 1, "description": "N."},
                                     "lines": {**LINES_FIELD, "optional": True}})
    contract(tmp_path, "ItemPriced", {"itemId": {"type": "integer", "description": "The id."},
                                      "price": {"type": "decimal", "nullable": True, "description": "Price."}},
             majors=(1, 2))
    path = mapping(tmp_path, added_rule("""\
        itemId: after.id
        name: after.name
        tags: after.tags
        note: {value: after.code, when: after.code is not None}
        lines: {collect: {table: lines, where: row.item_id == after.id, fields: {lineId: row.id, price: row.price}}}
        """) + textwrap.dedent("""\
        - id: items.priced
          table: items
          ops: [u]
          emit:
            - {event: ItemPriced, aggregate: {type: item, id: after.id}, data: {itemId: after.id, price: after.price}}
            - event: ItemPriced
              version: 2
              aggregate: {type: item, id: after.id}
              data: {itemId: after.id, price: after.price}
        """))
    [report] = check_files([path])
    assert report.problems == [] and report.contracts == str(tmp_path / "contracts")
    mappings = load_mappings([path])
    emits = {(rule.id, emit.type): emit for rule in mappings.rules for emit in rule.emits}
    assert set(emits) == {("items.added", "shop.item.ItemAdded.v1"), ("items.priced", "shop.item.ItemPriced.v1"),
                          ("items.priced", "shop.item.ItemPriced.v2")}
    assert {key: emit.dataschema for key, emit in emits.items()} == {
        ("items.added", "shop.item.ItemAdded.v1"): "urn:cdc-bridge:contract:shop.item.ItemAdded:1.1",  # note: since 1
        ("items.priced", "shop.item.ItemPriced.v1"): "urn:cdc-bridge:contract:shop.item.ItemPriced:1.0",
        ("items.priced", "shop.item.ItemPriced.v2"): "urn:cdc-bridge:contract:shop.item.ItemPriced:2.0"}
    assert all(callable(emit.check) for emit in emits.values())
    done = CliRunner().invoke(mappings_group, ["validate", str(path)])
    assert done.exit_code == 0, done.output
    assert done.output.splitlines()[1:3] == [
        f"  every emit fits its contract in {tmp_path}/contracts; events are checked against it before they are "
        "published",
        "  dual publishing: shop.item.ItemPriced as v1 and v2 (a migration window; the retired_events setting ends it)"]


def test_a_mapping_without_a_contracts_folder_loads_unchecked_and_validate_says_so(tmp_path: Path) -> None:
    path = mapping(tmp_path, added_rule("itemId: after.code\nname: after.name\nanything: after.tags\n"))
    [report] = check_files([path])
    assert report.problems == [] and report.contracts is None
    [rule] = load_mappings([path]).rules
    assert [(emit.check, emit.dataschema) for emit in rule.emits] == [(None, None)]
    done = CliRunner().invoke(mappings_group, ["validate", str(path)])
    assert done.exit_code == 0, done.output
    assert done.output.splitlines()[1] == (
        f"  no contracts folder next to it ({tmp_path}/contracts): its events are published unchecked (see the "
        "README's Contracts section)")
