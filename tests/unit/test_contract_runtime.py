"""Run time: every event a rule builds is checked against its contract before it can be published.

A payload that breaks its contract is never an event: the rule fails for that change (a DeadLetter naming
the rule, the contract revision, the field and why, with the rule's on_error policy), and the other rules
of the change and the other changes of the transaction still translate. A valid event names its exact
contract revision in `ce_dataschema`. `retired_events` ends a dual-publishing window, and golden cases
cannot expect an event that breaks its contract.
"""

from __future__ import annotations

import textwrap
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bridge.changes import Op, RowChange, SourcePosition, Transaction
from bridge.errors import MappingError
from bridge.mapping.golden import load_case_file
from bridge.mapping.loader import load_mappings
from bridge.mapping.translate import translate

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
ADDED_SCHEMA = "urn:cdc-bridge:contract:shop.item.ItemAdded:1.1"  # major 1, revision 1 (note: since 1)

ITEM_ADDED = """\
type: shop.item.ItemAdded
aggregate: item
description: An item was added.
majors:
  1:
    fields:
      itemId: {type: integer, description: The id.}
      name: {type: string, description: The name (never null).}
      count: {type: integer, description: How many.}
      priceText: {type: string, description: The price as text.}
      note: {type: string, optional: true, since: 1, description: A note.}
  2:
    upcast: [{rename: {itemId: id}}, {remove: [count, priceText]}]
    fields:
      id: {type: integer, description: The id.}
      name: {type: string, description: The name.}
"""
ITEM_AUDITED = """\
type: shop.item.ItemAudited
aggregate: item
description: An item was seen.
majors:
  1:
    fields:
      itemId: {type: integer, description: The id.}
"""
# Expressions (not plain column reads) are not judged at validate time: they can break the contract at run
# time. A non-positive qty gives a string where an integer is required; a non-positive price a Decimal
# where a string is; a NULL name a null where a non-nullable string is.
MAPPING = """\
namespace: shop
on_error: dead_letter
tables:
  items: {key: [id], columns: {id: integer, name: text, qty: integer, price: "numeric(10,2)"}}
rules:
  - id: items.added
    table: items
    ops: [c]
    emit:
      - event: ItemAdded
        aggregate: {type: item, id: after.id}
        data:
          itemId: after.id
          name: after.name
          count: after.qty if after.qty > 0 else str(after.qty)
          priceText: str(after.price) if after.price > 0 else after.price
  - id: items.audited
    table: items
    ops: [c]
    emit: [{event: ItemAudited, aggregate: {type: item, id: after.id}, data: {itemId: after.id}}]
"""
SECOND_MAJOR = """\
      - event: ItemAdded
        version: 2
        aggregate: {type: item, id: after.id}
        data: {id: after.id, name: "coalesce(after.name, '?')"}
"""
GOOD = {"id": 1, "name": "soup", "qty": 2, "price": Decimal("6.50")}


def project(tmp_path: Path, mapping: str = MAPPING) -> Path:
    folder = tmp_path / "contracts" / "item"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ItemAdded.yaml").write_text(ITEM_ADDED)
    (folder / "ItemAudited.yaml").write_text(ITEM_AUDITED)
    path = tmp_path / "shop.yaml"
    path.write_text(mapping)
    return path


def insert(lsn: int, **row: Any) -> RowChange:
    return RowChange(Op("c"), "public", "items", {"id": row["id"]}, None, {**GOOD, **row}, SourcePosition(900, lsn),
                     T0, 42)


def run(path: Path, *changes: RowChange, retired: tuple[str, ...] = ()):
    return translate(Transaction(42, 900, T0, changes), load_mappings([path], retired=retired), source_id="test")


@pytest.mark.parametrize(("row", "reason"), [
    ({"name": None}, "field 'name': Input should be a valid string (got null)"),
    ({"qty": -1}, "field 'count': Input should be a valid integer (got str '-1')"),
    ({"price": Decimal("0.00")}, "field 'priceText': Input should be a valid string (got Decimal Decimal('0.00'))"),
], ids=["null-in-required-field", "string-for-integer", "decimal-for-string"])
def test_a_payload_breaking_its_contract_is_dead_lettered_naming_rule_contract_field_and_reason(
        tmp_path: Path, row: dict[str, Any], reason: str) -> None:
    result = run(project(tmp_path), insert(1, id=7, **row))
    assert [e.type for e in result.events] == ["shop.item.ItemAudited.v1"], "the other rule of the change still emits"
    [letter] = result.dead_letters
    assert (letter.rule_id, letter.on_error, letter.change.key) == ("items.added", "dead_letter", {"id": 7})
    assert letter.error == f"event shop.item.ItemAdded.v1 does not obey its contract {ADDED_SCHEMA}: {reason}"


def test_other_changes_of_the_transaction_still_emit_and_a_valid_event_names_its_exact_revision(tmp_path: Path) -> None:
    result = run(project(tmp_path), insert(1, id=1), insert(2, id=2, name=None), insert(3, id=3, qty=-5),
                 insert(4, id=4))
    assert [(e.type.split(".")[2], e.subject) for e in result.events] == [
        ("ItemAdded", "item/1"), ("ItemAudited", "item/1"), ("ItemAudited", "item/2"), ("ItemAudited", "item/3"),
        ("ItemAdded", "item/4"), ("ItemAudited", "item/4")]
    assert [(d.rule_id, d.change.key) for d in result.dead_letters] == [("items.added", {"id": 2}),
                                                                       ("items.added", {"id": 3})]
    added = result.events[0]
    assert dict(added.data) == {"itemId": 1, "name": "soup", "count": 2, "priceText": "6.50"}
    assert added.dataschema == ADDED_SCHEMA
    assert dict(added.headers())["ce_dataschema"] == ADDED_SCHEMA.encode()
    assert dict(result.events[1].headers())["ce_dataschema"] == b"urn:cdc-bridge:contract:shop.item.ItemAudited:1.0"
    assert result.rule_hits == {"items.added": 2, "items.audited": 4}


def test_a_violation_under_policy_stop_is_a_dead_letter_the_caller_must_stop_on(tmp_path: Path) -> None:
    for mapping in (MAPPING.replace("on_error: dead_letter", "on_error: stop"),  # the file's policy
                    MAPPING.replace("    ops: [c]\n    emit:\n      - event: ItemAdded",
                                    "    ops: [c]\n    on_error: stop\n    emit:\n      - event: ItemAdded")):
        result = run(project(tmp_path, mapping), insert(1, id=7, name=None))
        [letter] = result.dead_letters
        assert (letter.rule_id, letter.on_error) == ("items.added", "stop"), mapping
        assert f"does not obey its contract {ADDED_SCHEMA}: field 'name'" in letter.error


def test_every_event_of_a_rule_is_withheld_when_one_breaks_its_contract(tmp_path: Path) -> None:
    path = project(tmp_path, MAPPING.replace("  - id: items.audited", SECOND_MAJOR + "  - id: items.audited"))
    result = run(path, insert(1, id=7, qty=0))
    assert [e.type for e in result.events] == ["shop.item.ItemAudited.v1"], "not v2 alone: the rule failed as a whole"
    assert [d.rule_id for d in result.dead_letters] == ["items.added"]


# -- retired_events ----------------------------------------------------------------------------------------------


def test_retiring_the_old_major_of_a_dual_published_event_drops_only_its_emit(tmp_path: Path) -> None:
    path = project(tmp_path, MAPPING.replace("  - id: items.audited", SECOND_MAJOR + "  - id: items.audited"))
    both = run(path, insert(1, id=1))
    assert [e.type for e in both.events] == ["shop.item.ItemAdded.v1", "shop.item.ItemAdded.v2",
                                             "shop.item.ItemAudited.v1"]
    mappings = load_mappings([path], retired=["shop.item.ItemAdded.v1"])
    assert {r.id: [e.type for e in r.emits if not e.retired] for r in mappings.rules} == {
        "items.added": ["shop.item.ItemAdded.v2"], "items.audited": ["shop.item.ItemAudited.v1"]}
    retired = run(path, insert(1, id=1), retired=("shop.item.ItemAdded.v1",))
    assert [(e.type, dict(e.data), e.dataschema) for e in retired.events] == [
        ("shop.item.ItemAdded.v2", {"id": 1, "name": "soup"}, "urn:cdc-bridge:contract:shop.item.ItemAdded:2.0"),
        ("shop.item.ItemAudited.v1", {"itemId": 1}, "urn:cdc-bridge:contract:shop.item.ItemAudited:1.0")]
    # v1's checks no longer apply: a row only v1 could not publish goes out as v2
    assert [e.type for e in run(path, insert(1, id=1, qty=0), retired=("shop.item.ItemAdded.v1",)).events] == [
        "shop.item.ItemAdded.v2", "shop.item.ItemAudited.v1"]


def test_retiring_the_old_major_keeps_the_ids_of_the_new_majors_events(tmp_path: Path) -> None:
    path = project(tmp_path, MAPPING.replace("  - id: items.audited", SECOND_MAJOR + "  - id: items.audited"))
    before = [e for e in run(path, insert(1, id=1)).events if e.type.endswith(".v2")]
    after = [e for e in run(path, insert(1, id=1), retired=("shop.item.ItemAdded.v1",)).events if e.type.endswith(".v2")]
    assert [(e.id, e.sequence) for e in after] == [(e.id, e.sequence) for e in before]


def test_retired_events_refuses_a_type_no_rule_emits_and_retiring_the_only_major(tmp_path: Path) -> None:
    path = project(tmp_path, MAPPING.replace("  - id: items.audited", SECOND_MAJOR + "  - id: items.audited"))
    with pytest.raises(MappingError) as raised:
        load_mappings([path], retired=["shop.item.ItemAdded"])  # without its major
    assert str(raised.value) == (
        "retired_events: no rule emits 'shop.item.ItemAdded' (they emit shop.item.ItemAdded.v1, shop.item.ItemAdded.v2, "
        "shop.item.ItemAudited.v1); name an event type with its major, as in ce_type")
    with pytest.raises(MappingError) as raised:
        load_mappings([path], retired=["shop.item.ItemAudited.v1"])
    assert str(raised.value) == (
        f"{path}:21: rule 'items.audited': retired_events names 'shop.item.ItemAudited.v1', but the rule publishes no "
        "later major of it: retiring it would stop the event; add the new major's emit first (dual publishing), or "
        "remove the emit")
    with pytest.raises(MappingError, match=r"rule 'items.added': retired_events names 'shop.item.ItemAdded.v1', but "
                                           r"the rule publishes no later major"):
        load_mappings([path], retired=["shop.item.ItemAdded.v1", "shop.item.ItemAdded.v2"])  # both: the event ends


# -- golden cases -------------------------------------------------------------------------------------------------


def test_a_golden_case_expecting_an_event_that_breaks_its_contract_does_not_load(tmp_path: Path) -> None:
    project(tmp_path)
    (tmp_path / "shop.tests").mkdir()
    case_file = tmp_path / "shop.tests" / "items.yaml"
    case_file.write_text(textwrap.dedent("""\
        cases:
          - name: added
            change: {op: c, table: items, after: {id: 1, name: soup, qty: 2, price: "6.50"}}
            expect:
              events:
                - {type: shop.item.ItemAudited.v1, data: {itemId: 1}}
                - type: shop.item.ItemAdded.v1
                  data: {itemId: 1, name: soup, count: "2", priceText: "6.50"}
        """))
    with pytest.raises(MappingError) as raised:
        load_case_file(case_file)
    assert str(raised.value) == (
        f"{case_file}:8: field 'cases[0].expect.events[1].data': case 'added': the expected shop.item.ItemAdded.v1 "
        f"does not obey its contract ({tmp_path}/contracts/item/ItemAdded.yaml): field 'count': Input should be a "
        "valid integer (got str '2')")
    case_file.write_text(case_file.read_text().replace('count: "2"', "count: 2"))
    [case] = load_case_file(case_file)
    assert case.name == "added"
