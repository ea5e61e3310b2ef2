"""The sink in a second process (sink.separate_process, bridge/sinks/process.py) against the same sink in one.

Real child processes and the real local event log: what the log holds must be byte for byte what the sink
in this process writes; errors keep their class, message and retryability; a child that dies fails every
outstanding delivery (retryably: the changes are read again); a parent that dies takes the child with it,
so the log's writer lock is free for the next bridge. The daemon end to end with it: the folded events
equal the legacy rows. (Kafka with a second process: tests/e2e/test_fault_kill_loop.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bridge.changes import SnapshotMark, SourcePosition
from bridge.errors import (
    BridgeError,
    ConfigurationError,
    DeliveryError,
    MappingError,
    RecordTooLarge,
    ServiceUnavailable,
)
from bridge.eventlog import CorruptLogError, LogLockedError
from bridge.events import DomainEvent
from bridge.settings import LocalLogSink
from bridge.eventlog import DEAD_LETTERS, EVENTS
from bridge.sinks.locallog_reader import EventLogReader, LogRecord
from bridge.sinks.opening import open_sink
from bridge.sinks.process import SinkProcess, error_from_wire, error_to_wire
from legacy_db.simulate import run_simulation
from tests.integration.test_pgoutput_initial_snapshot import assert_fold_is_the_legacy_state
from tests.support.bridge_process import sink_processes_of, wait_ended
from tests.support.direct_bridge import direct_settings, log_records, run_until_caught_up
from tests.support.local_stack import REPO_ROOT

MOMENT = datetime(2026, 12, 1, 15, 4, 5, 123456, tzinfo=timezone.utc)


def events(count: int) -> list[DomainEvent]:
    """Events with every kind of value and envelope a sink writes: decimals, times, nested lists, snapshot
    marks, contract revisions, text that needs escaping."""
    made = []
    for i in range(count):
        snapshot = SnapshotMark("initial", 0x1_0000_0000 + i, epoch=i % 2) if i % 5 == 0 else None
        made.append(DomainEvent(
            id=f"6f1c1f55-8f0e-5b8e-9a39-{i:012x}", type="restaurant.order.ItemAddedToOrder.v1",
            source="/cdc-bridge/legacy-restaurant", subject=f"order/{i % 17}", time=MOMENT + timedelta(seconds=i),
            sequence=f"{i:016X}-{i:016X}-0000-0000", aggregate_type="order", aggregate_id=str(i % 17),
            data={"orderId": i % 17, "price": Decimal("4.50") * i, "at": MOMENT, "day": date(2026, 1, 1 + i % 28),
                  "note": f"line \"{i}\" \\ é ☃\u2028", "lines": [{"qty": i, "tags": ["a", "b"]}], "none": None},
            rule_id="order_items.added", position=SourcePosition(1000 + i, 2000 + i, i % 3), snapshot=snapshot,
            dataschema="urn:cdc-bridge:contract:restaurant.order.ItemAddedToOrder:1.2" if i % 2 else None))
    return made


def letters(count: int) -> list[tuple[dict[str, Any], bytes | None]]:
    return [({"error": f"rule failed {i}", "rule": "orders.placed", "change": {"table": "orders", "after": {"id": i},
              "position": f"0/{i:X}"}}, f"orders/{i}".encode() if i % 2 else None) for i in range(count)]


class Outcomes:
    """Delivery callbacks that note what they were told, from any thread."""

    def __init__(self) -> None:
        self.results: list[BaseException | None] = []
        self._lock = threading.Lock()

    def __call__(self, error: BaseException | None) -> None:
        with self._lock:
            self.results.append(error)

    def wait_for(self, count: int, timeout_s: float = 60) -> list[BaseException | None]:
        deadline = time.monotonic() + timeout_s
        while len(self.results) < count:
            assert time.monotonic() < deadline, f"{len(self.results)} of {count} deliveries reported"
            time.sleep(0.01)
        return self.results


def publish_all(sink: Any, outcomes: Outcomes, count: int) -> None:
    for event in events(count):
        sink.publish(event, outcomes)
    for record, key in letters(count // 10):
        sink.publish_dead_letter(record, key, outcomes)


def written(directory: Path, log: str) -> list[LogRecord]:
    return list(EventLogReader(directory, log=log).read(0))


@pytest.fixture(autouse=True)
def no_sink_process_left() -> Any:
    yield
    assert sink_processes_of(os.getpid()) == [], "a test left a sink process running"


def test_the_log_holds_byte_for_byte_what_the_sink_in_this_process_writes(tmp_path: Path) -> None:
    count = 3000
    outcomes: dict[str, Outcomes] = {}
    for name in ("same", "separate"):
        section = LocalLogSink(path=tmp_path / name)
        sink = SinkProcess.open(section, []) if name == "separate" else open_sink(section, [])
        outcomes[name] = Outcomes()
        publish_all(sink, outcomes[name], count)
        sink.flush(30)
        assert outcomes[name].wait_for(count + count // 10) == [None] * (count + count // 10)
        sink.close()
    for log, expected_count in ((EVENTS, count), (DEAD_LETTERS, count // 10)):
        expected = written(tmp_path / "same", log)
        assert len(expected) == expected_count
        assert written(tmp_path / "separate", log) == expected


def test_a_record_the_sink_refuses_is_reported_as_the_sink_in_this_process_reports_it(tmp_path: Path) -> None:
    bad = events(3)
    bad[1] = DomainEvent(**{**{name: getattr(bad[1], name) for name in bad[1].__slots__},  # type: ignore[arg-type]
                            "data": {"tags": {"a", "b"}}})  # a set has no JSON form
    reported: dict[str, list[BaseException | None]] = {}
    for name in ("same", "separate"):
        section = LocalLogSink(path=tmp_path / name)
        sink = SinkProcess.open(section, []) if name == "separate" else open_sink(section, [])
        outcomes = Outcomes()
        for event in bad:
            sink.publish(event, outcomes)
        sink.flush(30)
        reported[name] = outcomes.wait_for(3)
        sink.close()
    same, separate = ([(type(e), str(e), getattr(e, "retryable", None)) for e in reported[name] if e is not None]
                      for name in ("same", "separate"))
    assert len(same) == 1 and "data.tags" in same[0][1]
    assert separate == same
    assert reported["separate"].count(None) == 2


def test_an_open_that_fails_raises_what_opening_in_this_process_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    section = LocalLogSink(path=blocker / "events")
    with pytest.raises(ConfigurationError) as here:
        open_sink(section, [])
    with pytest.raises(ConfigurationError) as there:
        SinkProcess.open(section, [])
    assert str(there.value) == str(here.value) and "sink.path" in str(there.value)
    assert there.value.exit_code == 2


def test_a_second_writer_is_refused_as_in_one_process(tmp_path: Path) -> None:
    section = LocalLogSink(path=tmp_path / "events")
    first = SinkProcess.open(section, [])
    try:
        with pytest.raises(ConfigurationError, match="being written by another process") as caught:
            SinkProcess.open(section, [])
        assert not caught.value.retryable
    finally:
        first.close()
    SinkProcess.open(section, []).close()  # closed: the lock is free again


def test_an_open_refused_is_reported_even_when_the_child_has_ended_before_the_reply_is_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The child answers "failed" and exits; by the time the reply is read, the reader has seen the end of its
    # output. The child's reason must win over "ended unexpectedly" (retryable: a typo would be waited for).
    reply = SinkProcess._reply

    def late(self: SinkProcess, timeout_s: float | None) -> tuple[Any, ...]:
        child = self._child
        assert child is not None
        child.wait(30)
        time.sleep(0.3)  # the reader has read the end of the child's output
        return reply(self, timeout_s)

    section = LocalLogSink(path=tmp_path / "events")
    first = SinkProcess.open(section, [])
    try:
        monkeypatch.setattr(SinkProcess, "_reply", late)
        with pytest.raises(ConfigurationError, match="being written by another process"):
            SinkProcess.open(section, [])
    finally:
        monkeypatch.undo()
        first.close()


def test_a_killed_sink_process_fails_every_outstanding_delivery_retryably(tmp_path: Path) -> None:
    # A long fsync interval keeps the deliveries outstanding until the kill.
    sink = SinkProcess.open(LocalLogSink(path=tmp_path / "events", fsync_interval_ms=60_000), [])
    outcomes = Outcomes()
    try:
        for event in events(200):
            sink.publish(event, outcomes)
        time.sleep(0.5)  # handed over, waiting for their fsync
        assert outcomes.results == []
        child = sink._child
        assert child is not None
        os.kill(child.pid, signal.SIGKILL)
        results = outcomes.wait_for(200, timeout_s=30)
        assert all(isinstance(error, DeliveryError) and error.retryable for error in results)
        assert "ended unexpectedly" in str(results[0]) and "read again" in str(results[0])
        with pytest.raises(DeliveryError, match="ended unexpectedly"):
            sink.publish(events(1)[0], outcomes)
        with pytest.raises(DeliveryError):
            sink.flush(5)
    finally:
        started = time.monotonic()
        sink.close()
        assert time.monotonic() - started < 5, "closing after the child died waited for it"


PARENT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from bridge.settings import LocalLogSink
    from bridge.sinks.process import SinkProcess
    sink = SinkProcess.open(LocalLogSink(path=Path(sys.argv[1])), [])
    print(sink._child.pid, flush=True)
    time.sleep(600)
""")


def test_the_sink_process_dies_with_its_parent_and_frees_the_log(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "events")], stdout=subprocess.PIPE,
                              cwd=REPO_ROOT)
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert sink_processes_of(parent.pid) == [child_pid]
        parent.kill()
        parent.wait(30)
        # At once, as a supervisor restarting the bridge would: the dying child's lock is waited for.
        open_sink(LocalLogSink(path=tmp_path / "events"), []).close()
        wait_ended([child_pid])
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(30)


@pytest.mark.parametrize("error", [
    RecordTooLarge(2_000_000, 1_048_576, "Kafka topic t (limit: sink.max_message_bytes)"),
    DeliveryError("Kafka did not acknowledge event x", retryable=False),
    DeliveryError("broker away"),
    ServiceUnavailable("no broker"),
    MappingError("restaurant.yaml:12: rule orders.placed: no field x"),
    LogLockedError("the event log is being written by another process"),
    CorruptLogError("segment 3 does not read back"),
])
def test_errors_cross_with_their_class_in_the_tree_message_and_retryability(error: BridgeError) -> None:
    crossed = error_from_wire(error_to_wire(error))
    assert str(crossed) == str(error) and crossed.retryable == error.retryable
    assert crossed.exit_code == error.exit_code
    nearest = next(kind for kind in type(error).__mro__ if kind.__module__ == "bridge.errors")
    assert type(crossed) is nearest
    if isinstance(error, RecordTooLarge):
        assert (crossed.size, crossed.limit, crossed.where) == (error.size, error.limit, error.where)  # type: ignore[attr-defined]


def test_any_other_exception_crosses_as_a_delivery_refused_for_good() -> None:
    crossed = error_from_wire(error_to_wire(OSError(28, "No space left on device")))
    assert type(crossed) is DeliveryError and not crossed.retryable
    assert "OSError" in str(crossed) and "No space left" in str(crossed)


def test_the_daemon_with_its_sink_in_a_second_process_publishes_the_legacy_state(fresh_legacy_db: str,
                                                                                   tmp_path: Path) -> None:
    legacy_db = fresh_legacy_db
    settings = direct_settings(legacy_db, f"sp_{os.getpid()}_{int(time.time())}", tmp_path)
    settings = settings.model_copy(update={"sink": settings.sink.model_copy(update={"separate_process": True})})
    stats = run_until_caught_up(settings, legacy_db, during=lambda: run_simulation(legacy_db, seed=7, count=400))
    records = log_records(settings)
    assert stats.events == len(records) > 400 and stats.acknowledged == stats.events
    assert len({r.id for r in records}) == len(records)
    assert log_records(settings, dead_letters=True) == []
    assert_fold_is_the_legacy_state(records, legacy_db)
