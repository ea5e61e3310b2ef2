"""translate(): rules matched by table, op and predicate; events built exactly; failures located."""

from __future__ import annotations

import textwrap
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from bridge.changes import (
    UNKNOWN,
    LogicalMessage,
    Op,
    RowChange,
    SourcePosition,
    Transaction,
)
from bridge.events import encode_data, event_id, sequence_of
from bridge.mapping.loader import load_mappings
from bridge.mapping.spec import CompiledMappings
from bridge.mapping.prior_rows import InMemoryPriorRows
from bridge.mapping.translate import translate

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
HEADER = """\
namespace: shop
tables:
  items:
    columns: {id: integer, name: text, price: "numeric(10,2)", description: text, tags: "text[]",
              is_deleted: boolean, updated_on: timestamp}
  lines:
    columns: {id: bigint, item_id: integer, qty: integer, price: "numeric(10,2)"}
rules:
"""
ITEM = {"id": 1, "name": "soup", "price": Decimal("6.50"), "description": "long", "tags": ["vegan"],
        "is_deleted": False, "updated_on": datetime(2024, 5, 1, 14, 0)}


def mappings(tmp_path: Path, rules: str, header: str = HEADER) -> CompiledMappings:
    path = tmp_path / "shop.yaml"
    path.write_text(header + textwrap.indent(textwrap.dedent(rules), "  "))
    return load_mappings([path])


def change(op: str, table: str, after: dict[str, Any] | None = None, before: dict[str, Any] | None = None, *,
           lsn: int = 1, key: dict[str, Any] | None = None, old_key: dict[str, Any] | None = None) -> RowChange:
    row = after or before
    if key is None and row is not None and op != "t":
        key = {"id": row["id"]}
    return RowChange(Op(op), "public", table, key, before, after, SourcePosition(900, lsn), T0, 42, old_key=old_key)


def tx(*changes: RowChange) -> Transaction:
    return Transaction(42, 900, T0, changes)


def run(m: CompiledMappings, *changes: RowChange, prior: InMemoryPriorRows | None = None):
    return translate(tx(*changes), m, source_id="test", prior_rows=prior)


TOUCHED = """\
    - {id: items.touched, table: items, ops: [u], when: "changed == {'updated_on'}", ignore: true}
"""  # indented like the rules it is prepended to
CREATED = """\
- id: items.created
  table: items
  ops: [c]
  emit:
    - event: ItemCreated
      aggregate: {type: item, id: after.id}
      data:
        itemId: after.id
        title: upper(after.name)
        price: after.price
        priceText: str(after.price)
        currency: {const: EUR}
        kind: "'item'"
        revision: 3
        labels: {const: [a, b]}
        description: {value: after.description, optional: true}
        firstTag: {value: "after.tags[0]", when: len(after.tags) > 0}
"""


def test_an_event_carries_its_envelope_and_a_payload_built_field_by_field(tmp_path: Path) -> None:
    m = mappings(tmp_path, CREATED)
    result = run(m, change("c", "items", ITEM, lsn=7))
    [event] = result.events
    position = SourcePosition(900, 7)
    assert (event.type, event.subject, event.source, event.time) == (
        "shop.item.ItemCreated.v1", "item/1", "/cdc-bridge/test", T0)
    assert event.id == event_id("test", position, "items.created", 1, 0)
    assert event.sequence == sequence_of(position, 0)
    assert (event.aggregate_type, event.aggregate_id, event.rule_id, event.position) == ("item", "1", "items.created",
                                                                                         position)
    assert event.data == {"itemId": 1, "title": "SOUP", "price": Decimal("6.50"), "priceText": "6.50",
                          "currency": "EUR", "kind": "item", "revision": 3, "labels": ["a", "b"],
                          "description": "long", "firstTag": "vegan"}
    assert list(event.data) == ["itemId", "title", "price", "priceText", "currency", "kind", "revision", "labels",
                                "description", "firstTag"], "payload keys keep the mapping's order"
    assert (result.unmatched, result.ignored, result.dead_letters) == ({}, {}, [])


def test_optional_and_conditional_fields_are_left_out(tmp_path: Path) -> None:
    m = mappings(tmp_path, CREATED)
    [event] = run(m, change("c", "items", {**ITEM, "description": UNKNOWN, "tags": []})).events
    assert "description" not in event.data and "firstTag" not in event.data
    first, second = run(m, change("c", "items", ITEM), change("c", "items", {**ITEM, "id": 2}, lsn=2)).events
    first.data["labels"].append("mutated")
    assert second.data["labels"] == ["a", "b"], "constants are not shared between events"


def test_using_an_unknown_value_is_a_translation_error_naming_rule_field_and_column(tmp_path: Path) -> None:
    m = mappings(tmp_path, """\
    - id: items.described
      table: items
      ops: [u]
      when: after.description != ''
      emit: [{event: E, aggregate: {type: item, id: after.id}}]
    - id: items.copied
      table: items
      ops: [u]
      emit: [{event: F, aggregate: {type: item, id: after.id}, data: {text: after.description}}]
    - id: items.whole_row
      table: items
      ops: [u]
      emit: [{event: G, aggregate: {type: item, id: after.id}, data: {row: after}}]
    """)
    result = run(m, change("u", "items", {**ITEM, "description": UNKNOWN}))
    assert result.events == []
    assert [(d.rule_id, d.error) for d in result.dead_letters] == [
        ("items.described", ("rule 'items.described', field 'when': after.description is unknown (an unchanged TOAST "
                            "value the change stream did not carry); test it with known(after.description) or mark "
                            "the field optional: true")),
        ("items.copied", ("rule 'items.copied', field 'emit[0].data.text': after.description is unknown (an unchanged "
                         "TOAST value the change stream did not carry); test it with known(after.description) or "
                         "mark the field optional: true")),
        ("items.whole_row", ("rule 'items.whole_row', field 'emit[0].data.row': the value is unknown (an unchanged "
                            "TOAST value the change stream did not carry); leave it out or mark the field optional: "
                            "true")),
    ]
    assert result.unmatched == {}, "a failed change is dead-lettered, not unmatched"


def test_ignore_rules_are_tried_first_and_count_as_ignored(tmp_path: Path) -> None:
    m = mappings(tmp_path, TOUCHED + """\
    - id: items.changed
      table: items
      ops: [u]
      when: "'name' in changed or 'updated_on' in changed"
      emit: [{event: ItemChanged, aggregate: {type: item, id: after.id}}]
    """)
    touched = change("u", "items", {**ITEM, "updated_on": datetime(2024, 6, 1)}, ITEM)
    renamed = change("u", "items", {**ITEM, "name": "stew"}, ITEM, lsn=2)
    priced = change("u", "items", {**ITEM, "price": Decimal("1.00")}, ITEM, lsn=3)
    unmapped = change("c", "lines", {"id": 5, "item_id": 1, "qty": 1, "price": Decimal("1.00")}, lsn=4)
    result = run(m, touched, renamed, priced, unmapped)
    assert [e.type for e in result.events] == ["shop.item.ItemChanged.v1"]
    assert result.ignored == {"items": 1}
    assert result.unmatched == {"items": 1, "lines": 1}  # a rule looked but did not match; no rule at all
    assert result.rule_hits == {"items.touched": 1, "items.changed": 1}


def test_snapshot_reads_emit_only_through_rules_for_r_and_truncates_reach_mappings(tmp_path: Path) -> None:
    m = mappings(tmp_path, CREATED + textwrap.dedent("""\
    - id: items.cleared
      table: items
      ops: [t]
      emit: [{event: CatalogueCleared, aggregate: {type: catalogue, id: "'all'"}, data: {operation: op}}]
    """))
    result = run(m, change("r", "items", ITEM), change("t", "items", lsn=2))
    assert [(e.type, e.subject, dict(e.data)) for e in result.events] == [
        ("shop.catalogue.CatalogueCleared.v1", "catalogue/all", {"operation": "t"})]
    assert result.unmatched == {"items": 1}
    m_with_r = mappings(tmp_path, CREATED.replace("ops: [c]", "ops: [c, r]"))
    assert [e.type for e in run(m_with_r, change("r", "items", ITEM)).events] == ["shop.item.ItemCreated.v1"]


def test_rules_are_independent_and_events_come_in_change_then_rule_order(tmp_path: Path) -> None:
    m = mappings(tmp_path, """\
    - id: lines.added
      table: lines
      ops: [c]
      emit:
        - {event: LineAdded, aggregate: {type: item, id: after.item_id}, data: {line: after.id}}
        - {event: LineCounted, aggregate: {type: item, id: after.item_id}, data: {line: after.id}}
    - id: lines.audited
      table: lines
      ops: [c]
      emit: [{event: LineAudited, aggregate: {type: audit, id: str(after.id)}}]
    """)
    a = change("c", "lines", {"id": 5, "item_id": 1, "qty": 1, "price": Decimal(1)}, lsn=1)
    b = change("c", "lines", {"id": 6, "item_id": 1, "qty": 1, "price": Decimal(1)}, lsn=2)
    events = run(m, a, b).events
    assert [(e.type.split(".")[2], e.data.get("line")) for e in events] == [
        ("LineAdded", 5), ("LineCounted", 5), ("LineAudited", None),
        ("LineAdded", 6), ("LineCounted", 6), ("LineAudited", None)]
    assert events[1].id == event_id("test", a.position, "lines.added", 1, 1)  # output index within the rule
    assert events[2].id == event_id("test", a.position, "lines.audited", 1, 0)
    assert [e.sequence for e in events[:3]] == [sequence_of(a.position, i) for i in range(3)]
    assert len({e.id for e in events}) == 6 and sorted(e.sequence for e in events) == [e.sequence for e in events]


def test_collect_and_each_gather_the_rows_of_the_same_transaction(tmp_path: Path) -> None:
    m = mappings(tmp_path, """\
    - id: items.stocked
      table: items
      ops: [c]
      let:
        lines:
          collect:
            table: lines
            where: row.item_id == after.id
            fields: {lineId: row.id, qty: row.qty, price: row.price}
        amounts: {collect: {table: lines, ops: [c, u], where: row.item_id == after.id, value: row.price * row.qty}}
      emit:
        - event: ItemStocked
          aggregate: {type: item, id: after.id}
          data: {lines: lines, total: sum(amounts), lineCount: len(tx.lines)}
        - event: LineStocked
          each: lines
          aggregate: {type: item, id: after.id}
          data: {lineId: item.lineId, qty: item.qty}
    """)
    item = change("c", "items", ITEM, lsn=1)
    other = change("c", "lines", {"id": 9, "item_id": 2, "qty": 1, "price": Decimal("9.99")}, lsn=2)
    first = change("c", "lines", {"id": 10, "item_id": 1, "qty": 2, "price": Decimal("1.25")}, lsn=3)
    second = change("u", "lines", {"id": 11, "item_id": 1, "qty": 3, "price": Decimal("2.00")}, lsn=4)
    stocked, line = run(m, item, other, first, second).events[:2]
    assert stocked.data == {"lines": [{"lineId": 10, "qty": 2, "price": Decimal("1.25")}],
                            "total": Decimal("8.50"), "lineCount": 3}
    assert line.data == {"lineId": 10, "qty": 2}
    assert line.id == event_id("test", item.position, "items.stocked", 1, 1)


def test_a_failing_rule_is_dead_lettered_and_the_rest_translates_unless_its_policy_is_stop(tmp_path: Path) -> None:
    rules = """\
    - id: items.fragile
      table: items
      ops: [c]
      emit: [{event: Fragile, aggregate: {type: item, id: after.id}, data: {n: int(after.name)}}]
    - id: items.sturdy
      table: items
      ops: [c]
      emit: [{event: Sturdy, aggregate: {type: item, id: after.id}}]
    """
    m = mappings(tmp_path, rules)
    result = run(m, change("c", "items", ITEM), change("c", "items", {**ITEM, "id": 2, "name": "7"}, lsn=2))
    assert [e.type.split(".")[2] for e in result.events] == ["Sturdy", "Fragile", "Sturdy"]
    [letter] = result.dead_letters
    assert (letter.rule_id, letter.change.position.change_lsn, letter.on_error) == ("items.fragile", 1, "dead_letter")
    assert letter.error == "rule 'items.fragile', field 'emit[0].data.n': int('soup'): not a whole number"
    stopping = mappings(tmp_path, rules.replace("ops: [c]\n      emit: [{event: Fragile",
                                                "ops: [c]\n      on_error: stop\n      emit: [{event: Fragile"))
    [letter] = run(stopping, change("c", "items", ITEM)).dead_letters
    assert (letter.rule_id, letter.on_error) == ("items.fragile", "stop"), "the caller stops: translate never raises"


def test_predicates_must_be_boolean_and_aggregate_ids_present(tmp_path: Path) -> None:
    m = mappings(tmp_path, """\
    - {id: items.a, table: items, ops: [c], when: after.name, emit: [{event: A, aggregate: {type: item, id: after.id}}]}
    - {id: items.b, table: items, ops: [c], emit: [{event: B, aggregate: {type: item, id: after.description}}]}
    """)
    result = run(m, change("c", "items", {**ITEM, "description": None}))
    assert [d.error for d in result.dead_letters] == [
        "rule 'items.a', field 'when': must be true or false, got str 'soup'",
        ("rule 'items.b', field 'emit[0].aggregate.id': an aggregate id must be a non-empty string or a number, got null "
        "None")]


OLD_VALUES = """\
- id: items.repriced
  table: items
  ops: [u]
  when: "'price' in changed"
  emit: [{event: Repriced, aggregate: {type: item, id: after.id}, data: {old: before.price, new: after.price}}]
- id: lines.removed
  table: lines
  ops: [d]
  emit: [{event: LineRemoved, aggregate: {type: item, id: before.item_id}, data: {line: key.id}}]
"""


def test_old_values_come_from_the_change_the_transaction_or_the_prior_row_store(tmp_path: Path) -> None:
    m = mappings(tmp_path, OLD_VALUES)
    repriced = {**ITEM, "price": Decimal("7.00"), "description": UNKNOWN}
    # REPLICA IDENTITY FULL: the change has the whole old row.
    assert run(m, change("u", "items", repriced, ITEM)).events[0].data == {"old": Decimal("6.50"), "new": Decimal("7.00")}
    # Within one transaction, a later change sees the earlier change's after image (the overlay).
    events = run(m, change("c", "items", ITEM), change("u", "items", repriced, lsn=2)).events
    assert events[0].data == {"old": Decimal("6.50"), "new": Decimal("7.00")}
    # Otherwise the prior-row store; a delete carries only the key.
    prior = InMemoryPriorRows()
    prior.put("public", "items", {"id": 1}, ITEM)
    prior.put("public", "lines", {"id": 10}, {"id": 10, "item_id": 1, "qty": 2, "price": Decimal(1)})
    events = run(m, change("u", "items", repriced), change("d", "lines", None, {"id": 10}, lsn=2), prior=prior).events
    assert [(e.subject, dict(e.data)) for e in events] == [
        ("item/1", {"old": Decimal("6.50"), "new": Decimal("7.00")}), ("item/1", {"line": 10})]


def test_without_old_values_the_rule_fails_saying_how_to_fix_it(tmp_path: Path) -> None:
    m = mappings(tmp_path, OLD_VALUES)
    result = run(m, change("u", "items", ITEM), change("d", "lines", None, {"id": 10}, lsn=2))
    assert [d.error for d in result.dead_letters] == [
        ("rule 'items.repriced', field 'when': needs the old row of public.items (id=1), but the change is an update "
        "without a before image (REPLICA IDENTITY DEFAULT) and neither this transaction nor a prior-row store has it; "
        "fix: ALTER TABLE public.items REPLICA IDENTITY FULL, or enable the prior-row store"),
        ("rule 'lines.removed', field 'emit[0].aggregate.id': needs the old row of public.lines (id=10), but the change "
        "is a delete with only the key (REPLICA IDENTITY DEFAULT) and neither this transaction nor a prior-row store "
        "has it; fix: ALTER TABLE public.lines REPLICA IDENTITY FULL, or enable the prior-row store")]


def test_a_primary_key_change_finds_the_old_row_under_the_old_key(tmp_path: Path) -> None:
    m = mappings(tmp_path, OLD_VALUES)
    prior = InMemoryPriorRows()
    prior.put("public", "items", {"id": 1}, ITEM)
    moved = change("u", "items", {**ITEM, "id": 2, "price": Decimal("8.00")}, key={"id": 2}, old_key={"id": 1})
    assert run(m, moved, prior=prior).events[0].data == {"old": Decimal("6.50"), "new": Decimal("8.00")}


def test_changed_holds_the_columns_an_insert_or_update_really_changed(tmp_path: Path) -> None:
    m = mappings(tmp_path, """\
    - id: items.any
      table: items
      ops: [c, u, d]
      emit: [{event: Seen, aggregate: {type: item, id: key.id}, data: {changed: changed}}]
    """)
    events = run(m, change("c", "items", {**ITEM, "description": UNKNOWN}),
                 change("u", "items", {**ITEM, "price": Decimal("6.5"), "description": UNKNOWN, "name": "x"}, lsn=2),
                 change("d", "items", None, {"id": 1}, lsn=3)).events
    assert [e.data["changed"] for e in events] == [
        ["id", "is_deleted", "name", "price", "tags", "updated_on"],  # sorted; unknown columns left out
        ["name"],  # 6.5 == 6.50; an unknown (unchanged TOAST) value is unchanged
        []]


def test_translation_is_deterministic(tmp_path: Path) -> None:
    m = mappings(tmp_path, CREATED)
    changes = [change("c", "items", {**ITEM, "id": i}, lsn=i) for i in range(1, 4)]
    first, again = run(m, *changes), run(mappings(tmp_path, CREATED), *changes)
    assert [(e.id, e.sequence, encode_data(e.data)) for e in first.events] == \
        [(e.id, e.sequence, encode_data(e.data)) for e in again.events]


def test_logical_messages_are_not_row_changes(tmp_path: Path) -> None:
    m = mappings(tmp_path, CREATED)
    message = RowChange(Op.MESSAGE, "", "", None, None, None, SourcePosition(900, 1), T0, None,
                        message=LogicalMessage("heartbeat", b"", False))
    result = run(m, message)
    assert (result.events, result.unmatched, result.ignored) == ([], {}, {})


def test_the_in_memory_prior_rows_keep_known_values_and_forget_deleted_rows() -> None:
    prior = InMemoryPriorRows()
    prior.remember_transaction(tx(change("r", "items", ITEM)))
    update = change("u", "items", {**ITEM, "price": Decimal(7), "description": UNKNOWN}, lsn=2)
    prior.remember(update)
    assert prior.before_image(change("u", "items", ITEM, lsn=3))["description"] == "long"  # TOAST filled in
    assert prior.before_image(change("u", "items", ITEM, lsn=3))["price"] == Decimal(7)
    prior.remember(change("u", "items", {**ITEM, "id": 5}, key={"id": 5}, old_key={"id": 1}, lsn=4))
    assert prior.before_image(change("u", "items", ITEM)) is None and len(prior) == 1
    prior.remember(change("d", "items", None, {"id": 5}, lsn=5))
    assert len(prior) == 0
    prior.remember(change("c", "items", ITEM))
    prior.remember(change("t", "items"))
    assert len(prior) == 0


def test_a_stopped_rule_dead_letters_every_change_it_is_registered_for_and_the_others_translate(
        tmp_path: Path) -> None:
    m = mappings(tmp_path, TOUCHED + """\
    - id: items.priced
      table: items
      ops: [c, u]
      when: after.price > 0
      emit: [{event: ItemPriced, aggregate: {type: item, id: after.id}, data: {price: after.price}}]
    - id: items.named
      table: items
      ops: [c]
      emit: [{event: ItemNamed, aggregate: {type: item, id: after.id}, data: {name: after.name}}]
    """)
    created = change("c", "items", {**ITEM, "price": "cheap"})  # `when` would fail on it: it is not run
    stopped = {"items.priced": "schema drift: public.items.price is declared numeric(10,2) ... now text"}
    result = translate(tx(created), m, source_id="test", stopped_rules=stopped)
    assert [e.type for e in result.events] == ["shop.item.ItemNamed.v1"]
    [letter] = result.dead_letters
    assert letter.rule_id == "items.priced" and letter.on_error == "dead_letter"
    assert letter.error == f"rule 'items.priced' is stopped: {stopped['items.priced']}"

    touched = change("u", "items", {**ITEM, "updated_on": datetime(2024, 6, 1)}, ITEM, lsn=2)
    result = translate(tx(touched), m, source_id="test", stopped_rules={"items.touched": "drift"})
    assert result.events == [] and [d.rule_id for d in result.dead_letters] == ["items.touched"]
    assert result.ignored == {}, "a stopped ignore rule cannot tell whether to ignore: the change is dead-lettered"


def test_each_rule_knows_the_columns_it_reads(tmp_path: Path) -> None:
    m = mappings(tmp_path, TOUCHED + """\
    - id: items.priced
      table: items
      ops: [u]
      when: before.price != after.price
      emit: [{event: ItemPriced, aggregate: {type: item, id: key.id}, data: {price: after.price}}]
    - id: items.with_lines
      table: items
      ops: [c]
      let:
        quantities: {collect: {table: lines, where: row.item_id == after.id, value: row.qty}}
      emit: [{event: ItemListed, aggregate: {type: item, id: after.id}, data: {row: after, qty: quantities}}]
    """)
    reads = {rule.id: rule.reads for rule in m.rules}
    assert reads["items.touched"] == {("items", "*")}  # `changed` compares the whole row
    assert reads["items.priced"] == {("items", "price"), ("items", "id")}
    assert reads["items.with_lines"] == {("items", "id"), ("items", "*"), ("lines", "item_id"), ("lines", "qty")}
    assert [r.id for r in m.rules_reading("lines", "qty")] == ["items.with_lines"]
    assert [r.id for r in m.rules_reading("lines", "price")] == []
    assert [r.id for r in m.rules_reading("items", "price")] == ["items.touched", "items.priced", "items.with_lines"]
