"""A transaction translated in slices gives exactly the events of translating it whole, byte for byte.

The restaurant mappings on one large checkout-style transaction: an order whose lines OrderPlaced collects
across every slice, lines updated and deleted after earlier slices wrote them (their old rows come from the
prior-row store the earlier slices were recorded in), an order deleted after its lines (the line deletes must
see it, slices later), rows that existed before the transaction, an unchanged TOAST value, and a delete whose
old row nobody has (a dead letter). Also for the same transaction spilled to disk by the direct source.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.changes import UNKNOWN, Transaction
from bridge.mapping.loader import load_mappings
from bridge.mapping.prior_rows import InMemoryPriorRows
from bridge.mapping.translate import TranslationResult, translate, translate_in_slices
from bridge.sources.pgoutput.changes import PgOutputAssembler
from bridge.sources.pgoutput.spill import SpillPolicy
from bridge.state import PriorRowStore
from tests.support.restaurant_pgoutput import PRIMARY_KEYS, assemble, dele, frames, ins, relations, upd

REPO = Path(__file__).resolve().parents[2]
RESTAURANT = load_mappings([REPO / "mappings" / "restaurant.yaml"])
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LINES = 40
MENU = {"name": "Soup", "description": "long text", "price": "4.50", "category": "soup", "tags": "{hot}",
        "is_available": "t", "updated_on": "2026-03-01 12:00:00"}
ORDER = {"customer_id": "1", "status": "OPEN", "updated_on": "2026-03-01 12:00:00"}
CUSTOMER = {"email": "a@example.com", "full_name": "Ann", "preferences": '{"spicy": true}',
            "updated_on": "2026-03-01 12:00:00", "is_deleted": "f"}


def line(line_id: int, order_id: int, quantity: int = 1) -> bytes:
    return ins("order_items", id=str(line_id), order_id=str(order_id), menu_item_id="1", quantity=str(quantity),
               unit_price="4.50")


def earlier_transaction() -> list[bytes]:
    """What the store saw before: a menu item, and an order with two lines."""
    return [ins("menu_items", id="9", **MENU | {"price": "3.00"}), ins("orders", id="50", **ORDER),
            line(500, 50), line(501, 50)]


def large_transaction(lines: int = LINES) -> list[bytes | tuple[int, bytes]]:
    messages: list[bytes | tuple[int, bytes]] = [
        ins("customers", id="1", **CUSTOMER),
        ins("menu_items", id="1", **MENU),
        upd("menu_items", id="9", **MENU | {"price": "3.50"}),  # old price from the store
        ins("orders", id="1", **ORDER),
    ]
    for line_id in range(1, lines + 1):
        step = 0 if line_id % 7 == 0 else 0x40  # some lines share a WAL record, as COPY's do
        messages.append((step, line(line_id, 1, 1 + line_id % 3)))
    messages += [
        upd("order_items", id="2", order_id="1", menu_item_id="1", quantity="7", unit_price="4.50"),
        dele("order_items", 3),
        upd("orders", id="1", **ORDER | {"status": "PLACED", "placed_at": "2026-03-01 12:00:05+00"}),
        ins("orders", id="2", **ORDER | {"status": "PLACED", "placed_at": "2026-03-01 12:00:06+00"}),
        line(1001, 2), line(1002, 2, 3),
        dele("order_items", 500), dele("order_items", 501), dele("orders", 50),  # lines first, no cascade
        upd("menu_items", id="1", **MENU | {"price": "5.00", "description": UNKNOWN}),  # TOAST left out
        upd("menu_items", id="1", **MENU | {"name": "Soup II", "price": "5.00", "description": UNKNOWN}),
        upd("customers", id="1", **CUSTOMER | {"updated_on": "2026-03-01 12:00:09"}),  # touched only
        upd("customers", id="1", **CUSTOMER | {"is_deleted": "t", "updated_on": "2026-03-01 12:00:09"}),
        dele("order_items", 999),  # nobody has its old row: a dead letter
    ]
    return messages


def transactions(spill_dir: Path | None = None, limit: int = 7) -> tuple[Transaction, Transaction]:
    assembler = PgOutputAssembler(primary_keys=PRIMARY_KEYS,
                                  spill=None if spill_dir is None else SpillPolicy(limit, spill_dir))
    for payload in relations():
        assembler.feed(0x100, payload)
    [earlier] = assemble(assembler, frames(10, earlier_transaction(), start=0x1000, when=T0))
    [large] = assemble(assembler, frames(11, large_transaction(), start=0x8000, when=T0))
    return earlier, large


def seeded_store(path: Path, earlier: Transaction) -> PriorRowStore:
    store = PriorRowStore(path)
    store.record(earlier)
    store.flush()
    return store


def outcome(results: Iterable[TranslationResult]) -> dict[str, Any]:
    events: list[tuple[Any, ...]] = []
    letters: list[tuple[str, str, str]] = []
    counts: dict[str, Counter[str]] = {"unmatched": Counter(), "ignored": Counter(), "rule_hits": Counter()}
    for result in results:
        events += [(event.headers(), event.key(), event.value()) for event in result.events]
        letters += [(letter.rule_id, str(letter.change.position), letter.error) for letter in result.dead_letters]
        for name, counter in counts.items():
            counter.update(getattr(result, name))
    return {"events": events, "letters": letters, **counts}


def whole(tx: Transaction, store: Any) -> dict[str, Any]:
    return outcome([translate(tx, RESTAURANT, source_id="legacy", prior_rows=store)])


def sliced(tx: Transaction, store: Any, size: int) -> dict[str, Any]:
    return outcome(part.result for part in translate_in_slices(tx, RESTAURANT, source_id="legacy", prior_rows=store,
                                                               slice_changes=size))


def test_the_whole_transaction_gives_what_the_scenario_is_about(tmp_path: Path) -> None:
    earlier, large = transactions()
    result = translate(large, RESTAURANT, source_id="legacy", prior_rows=seeded_store(tmp_path / "s", earlier))
    by_type = Counter(event.type.split(".")[2] for event in result.events)
    placed = [event.data for event in result.events if event.type.endswith("OrderPlaced.v1")]
    assert [len(data.get("lines", [])) for data in placed] == [LINES, 2]  # collected across the transaction
    assert [e.data["oldPrice"] for e in result.events if "PriceChanged" in e.type] == [3, 4.5]
    assert [e.data["oldQuantity"] for e in result.events if "QuantityChanged" in e.type] == [3]
    assert [e.data["orderId"] for e in result.events if "ItemRemoved" in e.type] == [1]  # not 500/501: deleted_with_order
    assert by_type["OrderDeleted"] == 1 and by_type["CustomerDeactivated"] == 1
    assert [letter.change.key for letter in result.dead_letters] == [{"id": 999}]
    assert result.ignored["customers"] == 1 and result.ignored["order_items"] == 4


@pytest.mark.parametrize("size", [1, 2, 5, 13, 1000])
def test_slices_give_the_events_of_the_whole_transaction_byte_for_byte(tmp_path: Path, size: int) -> None:
    earlier, large = transactions()
    expected = whole(large, seeded_store(tmp_path / "whole", earlier))
    assert sliced(large, seeded_store(tmp_path / "sliced", earlier), size) == expected


@pytest.mark.parametrize("size", [3, 1000])
def test_a_transaction_spilled_to_disk_gives_the_same_events_whole_and_in_slices(tmp_path: Path, size: int) -> None:
    earlier, in_memory = transactions()
    expected = whole(in_memory, seeded_store(tmp_path / "memory", earlier))
    earlier, spilled = transactions(tmp_path / "spill")
    assert type(spilled.changes) is not tuple
    assert whole(spilled, seeded_store(tmp_path / "whole", earlier)) == expected
    assert sliced(spilled, seeded_store(tmp_path / "sliced", earlier), size) == expected
    spilled.changes.close()  # type: ignore[union-attr]


def test_without_a_store_the_overlay_spans_the_slices(tmp_path: Path) -> None:
    _, large = transactions()
    expected = whole(large, None)
    assert len(expected["letters"]) > 1  # rows from before the transaction are missing now
    assert sliced(large, None, 4) == expected


def test_an_in_memory_store_serves_slices_too() -> None:
    earlier, large = transactions()
    stores = [InMemoryPriorRows(), InMemoryPriorRows()]
    for store in stores:
        store.record(earlier)
    assert sliced(large, stores[1], 6) == whole(large, stores[0])


TX_VIEW_MAPPING = """
version: 1
namespace: shop
rules:
  - id: orders.seen
    table: orders
    ops: [c, u, d]
    emit:
      - event: OrderSeen
        aggregate: {type: order, id: key.id}
        data:
          lines: len(tx.order_items)
          orders: len(tx.orders)
          firstLine: tx.order_items[0].after.id
          nothing: len(tx.customer_addresses)
"""


def test_tx_in_expressions_sees_the_whole_transaction_in_slices_and_on_disk(tmp_path: Path) -> None:
    (tmp_path / "view.yaml").write_text(TX_VIEW_MAPPING)
    mappings = load_mappings([tmp_path / "view.yaml"])
    _, in_memory = transactions()
    _, spilled = transactions(tmp_path / "spill")

    def run(tx: Transaction, size: int | None) -> list[bytes]:
        if size is None:
            return [e.value() for e in translate(tx, mappings, source_id="legacy").events]
        return [e.value() for part in translate_in_slices(tx, mappings, source_id="legacy", prior_rows=None,
                                                           slice_changes=size) for e in part.result.events]

    expected = run(in_memory, None)
    assert len(expected) == 4 and b'"lines":47' in expected[0]
    assert run(in_memory, 3) == run(spilled, None) == run(spilled, 3) == expected
    spilled.changes.close()  # type: ignore[union-attr]


def test_each_slice_is_recorded_before_the_next_is_translated(tmp_path: Path) -> None:
    earlier, large = transactions()
    store = seeded_store(tmp_path / "s", earlier)
    slices = translate_in_slices(large, RESTAURANT, source_id="legacy", prior_rows=store, slice_changes=10)
    first = next(slices)
    assert store.buffered == 0  # not yet: a caller that stops at this slice leaves it unrecorded
    second = next(slices)
    assert store.buffered == len(first.changes) and not first.last
    rest = list(slices)
    assert rest[-1].last and sum(len(p.changes) for p in [first, second, *rest]) == len(large.changes)
    assert store.buffered == len(large.changes)  # the last one too, when the iteration ended


TOAST_MAPPING = """
version: 1
namespace: shop
rules:
  - id: menu_items.renamed
    table: menu_items
    ops: [u]
    when: after.name == 'Soup II' and before.description != None
    emit:
      - event: Renamed
        aggregate: {type: menu_item, id: after.id}
        data: {description: before.description}
"""


def test_an_unchanged_toast_value_is_known_to_later_slices_as_to_later_changes(tmp_path: Path) -> None:
    """The first update leaves description out and no rule reads its old row; the second reads it. Whole, the
    overlay must fill it from the insert, as the store does when an earlier slice is recorded there."""
    (tmp_path / "toast.yaml").write_text(TOAST_MAPPING)
    mappings = load_mappings([tmp_path / "toast.yaml"])
    assembler = PgOutputAssembler(primary_keys=PRIMARY_KEYS)
    for payload in relations():
        assembler.feed(0x100, payload)
    [tx] = assemble(assembler, frames(12, [
        ins("menu_items", id="1", **MENU),
        upd("menu_items", id="1", **MENU | {"price": "5.00", "description": UNKNOWN}),
        upd("menu_items", id="1", **MENU | {"name": "Soup II", "description": UNKNOWN})], start=0x1000, when=T0))
    stores = [PriorRowStore(tmp_path / "whole"), PriorRowStore(tmp_path / "sliced")]
    whole_events = translate(tx, mappings, source_id="legacy", prior_rows=stores[0]).events
    sliced_events = [e for part in translate_in_slices(tx, mappings, source_id="legacy", prior_rows=stores[1],
                                                       slice_changes=1) for e in part.result.events]
    assert [e.data for e in whole_events] == [{"description": "long text"}]
    assert [e.value() for e in sliced_events] == [e.value() for e in whole_events]
