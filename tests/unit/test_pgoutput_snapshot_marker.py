"""The initial snapshot's marker file, and the decision a start of the direct source takes from it and the slot."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from bridge.errors import ConfigurationError
from bridge.mapping.loader import load_mappings
from bridge.settings import PgOutputSource, load_settings
from bridge.sources.pgoutput.snapshot_marker import (
    MarkerFile,
    SnapshotMarker,
    Start,
    marker_file,
    needs_system_id,
    plan_start,
)
from bridge.sources.pgoutput.source import PgOutputChangeSource
from tests.support.local_stack import REPO_ROOT

SLOT = "cdc_bridge"
SYSTEM = "7391048573910485739"


def marker(*, slot: str = SLOT, system_id: str = SYSTEM, epoch: int = 0, cut: int | None = 0x16B3748,
           complete: bool = False) -> SnapshotMarker:
    return SnapshotMarker(slot, system_id, epoch, cut, complete)


# --- the file --------------------------------------------------------------------------------------------

def test_a_marker_is_written_owner_only_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "state" / "prior-rows.snapshot.json"
    file = MarkerFile(path)
    assert file.read() is None
    file.write(marker())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {"slot": SLOT, "system_id": SYSTEM, "epoch": 0, "cut": "0/16B3748",
                                            "complete": False}
    file.write(marker().completed())
    assert file.read() == marker(complete=True)
    file.write(SnapshotMarker(SLOT, SYSTEM, 3))
    assert file.read() == SnapshotMarker(SLOT, SYSTEM, 3, None, False)
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporary file is left behind"


def test_restore_puts_back_the_previous_marker_or_none(tmp_path: Path) -> None:
    file = MarkerFile(tmp_path / "m.json")
    file.write(marker(epoch=4))
    file.restore(marker(epoch=1, complete=True))
    assert file.read() == marker(epoch=1, complete=True)
    file.restore(None)
    assert file.read() is None and not file.path.exists()


@pytest.mark.parametrize("content", ["{not json", "[]", '{"slot": "s"}', json.dumps(
    {"slot": "s", "system_id": "1", "epoch": -1, "cut": None, "complete": False}), json.dumps(
    {"slot": "s", "system_id": "1", "epoch": 0, "cut": "16B3748", "complete": False})])
def test_an_unreadable_marker_stops_the_start_saying_what_to_do(tmp_path: Path, content: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(content)
    with pytest.raises(ConfigurationError, match=r"marker .*m\.json is unreadable .*restore it, or delete it"):
        MarkerFile(path).read()


def test_an_unwritable_place_names_the_settings(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigurationError, match="source.acknowledged_path, else state.path"):
        MarkerFile(blocker / "m.json").write(marker())


def test_initial_without_a_place_for_the_marker_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"set state.path or source.acknowledged_path .* source.snapshot: never"):
        marker_file("initial", None)
    assert marker_file("never", None) is None
    kept = marker_file("never", Path("m.json"))
    assert isinstance(kept, MarkerFile) and kept.path == Path("m.json")


def test_a_source_with_initial_and_nowhere_to_keep_the_marker_stops_before_connecting() -> None:
    settings = PgOutputSource(dsn="postgresql://bridge@legacy-db.invalid:5432/restaurant")
    with pytest.raises(ConfigurationError, match=r"state.path or source.acknowledged_path.*source.snapshot: never"):
        PgOutputChangeSource(settings, ["customers"])


def test_the_marker_lives_beside_the_acknowledged_position_file(tmp_path: Path) -> None:
    source = PgOutputSource(dsn="postgresql://bridge@db/restaurant")
    assert source.snapshot == "initial"
    assert source.snapshot_file(tmp_path / "prior-rows.sqlite") == tmp_path / "prior-rows.snapshot.json"
    assert source.snapshot_file(None) is None
    kept = PgOutputSource(dsn="postgresql://bridge@db/restaurant", acknowledged_path=tmp_path / "acked.json")
    assert kept.snapshot_file(None) == kept.snapshot_file(tmp_path / "x.sqlite") == tmp_path / "acked.snapshot.json"


def test_snapshot_takes_initial_or_never_only(tmp_path: Path) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text("source: {kind: pgoutput, dsn: 'postgresql://bridge@db/restaurant', snapshot: always}\n")
    with pytest.raises(ConfigurationError, match="source.snapshot: Input should be 'initial' or 'never'"):
        load_settings(config)
    config.write_text("source: {kind: pgoutput, dsn: 'postgresql://bridge@db/restaurant', snapshot_batch_rows: 0}\n")
    with pytest.raises(ConfigurationError, match="source.snapshot_batch_rows"):
        load_settings(config)


def test_the_restaurant_tables_are_snapshot_parents_first() -> None:
    mappings = load_mappings([REPO_ROOT / "mappings" / "restaurant.yaml"])
    assert mappings.tables_in_rule_order() == ["customers", "customer_addresses", "menu_items", "orders",
                                               "order_items"]


# --- the decision ----------------------------------------------------------------------------------------

DECISIONS = [
    # snapshot, slot exists, marker, server's system id -> start, epoch
    ("initial", False, None, None, Start.SNAPSHOT, 0),
    ("initial", False, marker(epoch=0, complete=True), None, Start.SNAPSHOT, 1),  # the slot was dropped since
    ("initial", False, marker(epoch=2), None, Start.SNAPSHOT, 3),  # died before (or while) creating it
    ("initial", False, marker(slot="other", epoch=5), None, Start.SNAPSHOT, 0),
    ("initial", True, None, None, Start.STREAM, 0),  # a slot from before this feature, or an operator's
    ("initial", True, marker(complete=True), None, Start.STREAM, 1),
    ("initial", True, marker(epoch=1), SYSTEM, Start.REDO, 2),
    ("initial", True, marker(epoch=1, cut=None), SYSTEM, Start.REDO, 2),  # died as the slot was created
    ("initial", True, marker(system_id="42"), SYSTEM, Start.STREAM, 1),  # another cluster's marker
    ("initial", True, marker(slot="other"), None, Start.STREAM, 0),
    ("never", False, None, None, Start.CREATE, 0),
    ("never", False, marker(), None, Start.CREATE, 1),
    ("never", True, None, None, Start.STREAM, 0),
    ("never", True, marker(), None, Start.STREAM, 1),
]


@pytest.mark.parametrize(("snapshot", "exists", "found", "system_id", "start", "epoch"), DECISIONS)
def test_the_decision_table(snapshot: str, exists: bool, found: SnapshotMarker | None, system_id: str | None,
                            start: Start, epoch: int) -> None:
    plan = plan_start(snapshot, SLOT, slot_exists=exists, marker=found, system_id=system_id)
    assert (plan.start, plan.epoch) == (start, epoch)
    assert needs_system_id(snapshot, SLOT, slot_exists=exists, marker=found) == (system_id is not None)


def test_a_redo_says_which_snapshot_was_interrupted_and_that_it_is_redone() -> None:
    plan = plan_start("initial", SLOT, slot_exists=True, marker=marker(epoch=1), system_id=SYSTEM)
    assert plan.interrupted == marker(epoch=1)
    assert plan.warning is not None
    assert f"initial snapshot of slot '{SLOT}' (cut 0/16B3748, epoch 1) was interrupted" in plan.warning
    assert "is being redone" in plan.warning and "(epoch 2)" in plan.warning


def test_streaming_despite_an_interrupted_snapshot_is_said_out_loud() -> None:
    never = plan_start("never", SLOT, slot_exists=True, marker=marker(), system_id=None)
    assert never.warning is not None and "interrupted" in never.warning and "not published" in never.warning
    foreign = plan_start("initial", SLOT, slot_exists=True, marker=marker(system_id="42"), system_id=SYSTEM)
    assert foreign.warning is not None and "another cluster" in foreign.warning
    for quiet in (plan_start("initial", SLOT, slot_exists=True, marker=marker(complete=True), system_id=None),
                  plan_start("initial", SLOT, slot_exists=False, marker=None, system_id=None),
                  plan_start("never", SLOT, slot_exists=True, marker=marker(complete=True), system_id=None)):
        assert quiet.warning is None
