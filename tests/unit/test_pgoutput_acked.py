"""The acknowledged position kept on disk (bridge/sources/pgoutput/acked.py): used only for the same cluster,
timeline and slot, and never when it is ahead of the server's WAL, so it can only ever skip what this bridge
already published."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from bridge.errors import ConfigurationError
from bridge.sources.pgoutput.acked import AcknowledgedPositions
from bridge.sources.pgoutput.stream import SystemIdentity

CLUSTER = SystemIdentity(system_id="7300000000000000001", timeline=1, flushed_lsn=0x5000)


def test_a_saved_position_is_recalled_for_the_same_cluster_timeline_and_slot(tmp_path: Path) -> None:
    path = tmp_path / "state" / "prior-rows.acknowledged.json"
    AcknowledgedPositions(path).save(CLUSTER, "cdc_bridge", 0x4000)
    AcknowledgedPositions(path).save(CLUSTER, "other_slot", 0x3000)
    positions = AcknowledgedPositions(path)  # a new process
    assert positions.recall(CLUSTER, "cdc_bridge") == 0x4000
    assert positions.recall(CLUSTER, "other_slot") == 0x3000
    assert positions.recall(CLUSTER, "new_slot") == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporary file left behind"


def test_another_cluster_timeline_or_history_never_skips_anything(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    positions = AcknowledgedPositions(tmp_path / "acked.json")
    positions.save(CLUSTER, "cdc_bridge", 0x4000)
    assert positions.recall(SystemIdentity("7399999999999999999", 1, 0x9000), "cdc_bridge") == 0
    assert positions.recall(SystemIdentity(CLUSTER.system_id, 2, 0x9000), "cdc_bridge") == 0  # promoted
    with caplog.at_level(logging.WARNING):
        assert positions.recall(SystemIdentity(CLUSTER.system_id, 1, 0x3FFF), "cdc_bridge") == 0  # restored backup
    assert "ahead of the server's WAL" in caplog.text


def test_a_position_only_moves_forward_on_disk_and_a_broken_file_is_ignored(tmp_path: Path,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "acked.json"
    positions = AcknowledgedPositions(path)
    positions.save(CLUSTER, "cdc_bridge", 0x4000)
    before = path.stat().st_mtime_ns
    positions.save(CLUSTER, "cdc_bridge", 0x4000)  # no progress: no write
    assert path.stat().st_mtime_ns == before
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert AcknowledgedPositions(path).recall(CLUSTER, "cdc_bridge") == 0
    assert "unreadable" in caplog.text


def test_an_unwritable_place_is_a_configuration_error_naming_the_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigurationError, match="source.acknowledged_path"):
        AcknowledgedPositions(blocker / "acked.json").save(CLUSTER, "cdc_bridge", 0x4000)
