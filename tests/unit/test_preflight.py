"""The preflight report and its file checks, without services: exit codes, grouping, the local log's writer
lock, unwritable paths and a prior-row store that is not one. (The database and Kafka checks run against
the real stack in tests/integration/test_preflight.py.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bridge.mapping.loader import load_mappings
from bridge.preflight import Report, check_local_log, enforce_at_start, stored_row_counts
from bridge.settings import LocalLogSink, Settings
from bridge.sinks.locallog import LocalLogEventSink
from bridge.state import PriorRowStore

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings" / "restaurant.yaml"


def test_exit_codes_separate_ok_warnings_input_errors_and_unreachable_services() -> None:
    report = Report()
    report.ok("source", "wal_level", "logical")
    assert report.exit_code == 0
    report.warn("sink", "topics", "missing")
    assert report.exit_code == 1
    report.unreachable("source", "source.dsn", "no answer")
    assert report.exit_code == 3
    report.error("tables", "public.orders", "no key")
    assert report.exit_code == 2
    text = report.as_text().splitlines()
    # Grouped in a fixed order, one line per finding, a verdict at the end.
    assert text[0] == "source:" and text[3] == "tables:" and text[5] == "sink:"
    assert text[-1] == "result: 2 error(s), 1 warning(s)"
    assert json.loads(report.as_json())["exit_code"] == 2


def test_a_local_log_held_by_another_writer_is_reported_with_its_pid(tmp_path: Path) -> None:
    sink_settings = LocalLogSink(path=tmp_path / "events")
    report = Report()
    check_local_log(report, sink_settings)
    assert [f.level for f in report.findings] == ["ok"]

    writer = LocalLogEventSink(tmp_path / "events")
    try:
        report = Report()
        check_local_log(report, sink_settings)
        [finding] = report.findings
        assert finding.level == "warning" and f"pid {os.getpid()}" in finding.message
    finally:
        writer.close()


def test_an_unwritable_log_directory_is_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"  # (a read-only folder would do for anyone but root, who writes everywhere)
    blocker.write_text("")
    report = Report()
    check_local_log(report, LocalLogSink(path=blocker / "events"))
    assert report.exit_code == 2 and "cannot be written" in report.findings[0].message


def test_an_unwritable_state_path_stops_run_with_the_setting_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import bridge.preflight_kafka
    from bridge.errors import ConfigurationError

    # Only the file checks here: the source's broker is asked in the integration tests.
    monkeypatch.setattr(bridge.preflight_kafka, "check_debezium_source", lambda report, settings, mappings: None)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    settings = Settings(mappings=[MAPPINGS], sink={"kind": "locallog", "path": str(tmp_path / "events")},
                        state={"path": str(blocker / "prior-rows.sqlite")})
    with pytest.raises(ConfigurationError, match=r"state\.path: the prior-row store .* cannot be written"):
        enforce_at_start(settings, load_mappings([MAPPINGS]), logging.getLogger("test"))

    settings = Settings(mappings=[MAPPINGS], sink={"kind": "locallog", "path": str(tmp_path / "events")},
                        state={"path": str(tmp_path / "prior-rows.sqlite")})
    writer = LocalLogEventSink(tmp_path / "events")  # warnings are logged, the start goes on
    try:
        with caplog.at_level(logging.WARNING):
            report = enforce_at_start(settings, load_mappings([MAPPINGS]), logging.getLogger("test"))
    finally:
        writer.close()
    assert report.exit_code == 1
    assert any("being written by another process" in r.getMessage() for r in caplog.records)


def test_an_unwritable_spill_path_of_the_direct_source_is_an_error(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import bridge.preflight_postgres
    from bridge.preflight import check

    monkeypatch.setattr(bridge.preflight_postgres, "check_direct_source", lambda report, settings, mappings: None)
    (tmp_path / "a-file").write_text("")
    settings = Settings(mappings=[MAPPINGS], source={"kind": "pgoutput", "dsn": "postgresql://u@h/db"},
                        sink={"kind": "locallog", "path": str(tmp_path / "events")},
                        state={"path": str(tmp_path / "prior-rows.sqlite")},
                        pipeline={"spill_path": str(tmp_path / "a-file" / "spill")})
    report = check(settings, load_mappings([MAPPINGS]))
    [finding] = [f for f in report.findings if f.subject == "pipeline.spill_path"]
    assert report.exit_code == 2 and "spill files of large transactions" in finding.message
    default = Settings(mappings=[MAPPINGS], source={"kind": "pgoutput", "dsn": "postgresql://u@h/db"},
                       sink={"kind": "locallog", "path": str(tmp_path / "events")},
                       state={"path": str(tmp_path / "state" / "prior-rows.sqlite")})
    assert default.pipeline.spill_directory(default.state.path) == tmp_path / "state" / "spill"
    assert check(default, load_mappings([MAPPINGS])).exit_code == 0


def test_store_counts_stop_at_the_limit_and_a_garbage_file_is_named(tmp_path: Path) -> None:
    from datetime import datetime, timezone

    from bridge.changes import Op, RowChange, SourcePosition, Transaction

    path = tmp_path / "prior.sqlite"
    store = PriorRowStore(path)
    changes = [RowChange(op=Op.CREATE, table="orders", schema="public", key={"id": i}, before=None,
                         after={"id": i}, position=SourcePosition(100 + i, 100 + i),
                         commit_time=datetime(2026, 1, 1, tzinfo=timezone.utc), xid=i) for i in range(5)]
    for change in changes:
        store.record(Transaction(xid=change.xid, commit_lsn=change.position.commit_lsn,
                                 commit_time=change.commit_time, changes=(change,)))
    store.close()
    assert stored_row_counts(path, ["orders", "menu_items"], {"orders": 10, "menu_items": 10}) == \
        {"orders": 5, "menu_items": 0}
    assert stored_row_counts(path, ["orders"], {"orders": 2}) == {"orders": 3}  # limit + 1: "more than 2"
    assert stored_row_counts(tmp_path / "none.sqlite", ["orders"], {}) == {"orders": 0}
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"\x00not sqlite at all" * 100)
    message = stored_row_counts(garbage, ["orders"], {"orders": 1})
    assert isinstance(message, str) and "not a readable prior-row store" in message and "move it away" in message
