"""Dual publishing of OrderPlaced v1 and v2, end to end, then the end of the window.

A copy of mappings/ whose rules orders.opened and orders.placed also emit OrderPlaced v2 (the same data, the
total as {amount, currency: EUR}); legacy traffic on a real PostgreSQL of the test's own; the bridge on the
direct source (pgoutput) writing to the local event log. Every v1 event has a v2 twin from the same change;
a consumer speaking v2 that reads only the v1 events through upcast() folds the same totals as one reading
the v2 events, and both equal the database's. With retired_events naming v1, only v2 is published.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bridge.changes import SourcePosition
from bridge.contracts.registry import load_contracts
from bridge.contracts.upcast import upcast
from bridge.events import event_id
from bridge.errors import MappingError
from bridge.mapping.loader import load_mappings
from bridge.sinks.locallog_reader import LogRecord
from legacy_db.simulate import run_simulation
from tests.support.databases import create_legacy_database
from tests.support.direct_bridge import direct_settings, log_records, run_until_caught_up
from tests.support.local_stack import REPO_ROOT
from tests.support.private_postgres import private_postgres

V1, V2 = "restaurant.order.OrderPlaced.v1", "restaurant.order.OrderPlaced.v2"
SCHEMA = "urn:cdc-bridge:contract:restaurant.order.OrderPlaced:{}.0"

# The v2 emits added after each rule's v1 emit: the same data, the total built as an object.
OPENED_V1_END = "          total: {value: decimal(sum(line_totals)), when: op == 'c'}\n"
OPENED_V2 = """\
      - event: OrderPlaced
        version: 2
        when: after.status == 'PLACED'
        aggregate: {type: order, id: after.id}
        snapshot_time: after.placed_at
        data:
          orderId: after.id
          placedAt: after.placed_at
          lines: {value: lines, when: op == 'c'}
          total: {fields: {amount: decimal(sum(line_totals)), currency: {const: EUR}}, when: op == 'c'}
"""
PLACED_V1_END = "          total: {value: decimal(sum(line_totals)), when: len(opened_here) > 0}\n"
PLACED_V2 = """\
      - event: OrderPlaced
        version: 2
        aggregate: {type: order, id: after.id}
        data:
          orderId: after.id
          placedAt: after.placed_at
          lines: {value: lines, when: len(opened_here) > 0}
          total: {fields: {amount: decimal(sum(line_totals)), currency: {const: EUR}}, when: len(opened_here) > 0}
"""


def dual_mappings(tmp_path: Path) -> Path:
    """mappings/ (contracts included) copied, with the v2 emits added; the copy's restaurant.yaml."""
    folder = tmp_path / "mappings"
    shutil.copytree(REPO_ROOT / "mappings", folder, ignore=shutil.ignore_patterns("*.tests"))
    path = folder / "restaurant.yaml"
    text = path.read_text()
    assert text.count(OPENED_V1_END) == 1 and text.count(PLACED_V1_END) == 1, "restaurant.yaml changed: update the test"
    path.write_text(text.replace(OPENED_V1_END, OPENED_V1_END + OPENED_V2).replace(PLACED_V1_END, PLACED_V1_END + PLACED_V2))
    return path


@pytest.fixture(scope="module")
def legacy_dsn() -> Iterator[str]:
    """A PostgreSQL of this module's own (no Kafka needed) with the empty legacy schema; purged afterwards."""
    with private_postgres() as server:
        yield create_legacy_database(server.admin_dsn, "legacy_dual")


def placed(records: list[LogRecord]) -> list[tuple[LogRecord, str, dict[str, Any]]]:
    return [(r, r.header("ce_type") or "", json.loads(r.value)) for r in records
            if (r.header("ce_type") or "").startswith("restaurant.order.OrderPlaced.")]


def stem(record: LogRecord) -> str:
    """commit, change and position within it; the last part is the output index within the rule."""
    assert record.sequence is not None
    return record.sequence.rsplit("-", 1)[0]


def twin_id(record: LogRecord, major: int) -> str:
    """The id the bridge gives the same rule's event of `major` for the same change (one output index on)."""
    commit, change, seq, index = (int(part, 16) for part in (record.sequence or "").split("-"))
    return event_id("legacy-restaurant", SourcePosition(commit, change, seq), record.rule_id or "", major, index + 1)


def fold_totals(events: list[tuple[str, dict[str, Any]]]) -> dict[int, tuple[Decimal, str]]:
    """A v2 consumer's view: order -> (total amount, currency), from OrderPlaced v2 payloads."""
    totals: dict[int, tuple[Decimal, str]] = {}
    for event_type, data in events:
        assert event_type == V2, event_type
        if "total" in data:
            totals[data["orderId"]] = (Decimal(data["total"]["amount"]), data["total"]["currency"])
    return totals


def database_totals(dsn: str) -> dict[int, Decimal]:
    """Orders checked out in one transaction (created and placed at the same now()): sum of their lines."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT o.id, coalesce(sum(i.unit_price * i.quantity), 0) FROM orders o "
            "LEFT JOIN order_items i ON i.order_id = o.id WHERE o.placed_at = o.created_at GROUP BY o.id").fetchall()
    return {order_id: total for order_id, total in rows}


def test_order_placed_is_published_as_v1_and_v2_until_v1_is_retired(legacy_dsn: str, tmp_path: Path) -> None:
    mapping = dual_mappings(tmp_path)
    validated = subprocess.run([sys.executable, "-m", "bridge.cli", "mappings", "validate", str(mapping)],
                               capture_output=True, text=True, cwd=REPO_ROOT, check=False)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert "dual publishing: restaurant.order.OrderPlaced as v1 and v2" in validated.stdout, validated.stdout

    slot = f"dual_{uuid.uuid4().hex[:8]}"
    settings = direct_settings(legacy_dsn, slot, tmp_path).model_copy(update={"mappings": [mapping]})
    stats = run_until_caught_up(settings, legacy_dsn, during=lambda: run_simulation(legacy_dsn, seed=11, count=500))
    assert stats is not None
    records = log_records(settings)
    assert log_records(settings, dead_letters=True) == []
    events = placed(records)
    v1 = [(r, d) for r, t, d in events if t == V1]
    v2 = [(r, d) for r, t, d in events if t == V2]
    assert len(v1) == len(v2) > 20, (len(v1), len(v2))

    # Twins: the same change, the same rule, the next output index; another, deterministic id.
    v2_by_stem = {(stem(r), r.rule_id): (r, d) for r, d in v2}
    assert len(v2_by_stem) == len(v2)
    for record, data in v1:
        twin, twin_data = v2_by_stem[(stem(record), record.rule_id)]
        assert twin.id != record.id and twin.id == twin_id(record, 2)
        assert record.header("ce_subject") == twin.header("ce_subject")
        assert record.header("ce_dataschema") == SCHEMA.format(1) and twin.header("ce_dataschema") == SCHEMA.format(2)
        assert {k: v for k, v in twin_data.items() if k != "total"} == {k: v for k, v in data.items() if k != "total"}

    # A consumer speaking v2 reads only the v1 events, upcast; another reads the v2 events as published.
    registry = load_contracts(mapping.parent / "contracts")
    from_v1 = fold_totals([upcast(registry, V1, data) for _, data in v1])
    native = fold_totals([(V2, data) for _, data in v2])
    assert from_v1 == native
    expected = database_totals(legacy_dsn)
    assert len(expected) > 10, "the traffic checks orders out"
    # Orders deleted since (cancelled first) are gone from the database, not from the log.
    assert {order: native[order] for order in expected} == {order: (total, "EUR") for order, total in expected.items()}

    # The end of the window: v1 retired, the same slot, more traffic: v2 only.
    retired = settings.model_copy(update={"retired_events": [V1]})
    run_until_caught_up(retired, legacy_dsn, during=lambda: run_simulation(legacy_dsn, seed=12, count=200))
    later = placed(log_records(retired)[len(records):])
    assert later and {t for _, t, _ in later} == {V2}, {t for _, t, _ in later}
    print(f"dual window: {len(v1)} OrderPlaced v1+v2 pairs, {len(expected)} checkouts compared with the database; "
          f"after retiring v1: {len(later)} OrderPlaced v2")
    assert log_records(retired, dead_letters=True) == []
    totals = fold_totals([(t, d) for _, t, d in later])
    expected = database_totals(legacy_dsn)
    print(f"  {len(totals)} new checkouts after retiring v1")
    assert totals and all(totals[order] == (expected[order], "EUR") for order in totals if order in expected)


def test_settings_refuse_retiring_v1_when_no_rule_emits_a_later_major(tmp_path: Path) -> None:
    """Without the v2 emits, retiring v1 would silently stop publishing OrderPlaced: refused at load."""
    with pytest.raises(MappingError, match="retired_events"):
        load_mappings([REPO_ROOT / "mappings" / "restaurant.yaml"], retired=[V1])
