"""Crash safety of the local event log: a torn tail is never read as an event and is truncated on
reopen; a writer killed with SIGKILL at any moment leaves a log with no corruption, no duplicates, and
every event whose on_delivery fired."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.eventlog import EVENTS, list_segments
from bridge.sinks.locallog import LocalLogEventSink
from bridge.sinks.locallog_reader import EventLogReader
from tests.unit.test_locallog import REPO, make_event, publish_all, read_all


def _last_segment(log_dir: Path) -> Path:
    return list_segments(log_dir / EVENTS)[-1][1]


@pytest.mark.parametrize("cut", [1, 7, 9, 100])
def test_a_record_cut_short_is_never_read_and_is_truncated_on_reopen(tmp_path: Path, cut: int) -> None:
    events = [make_event(i) for i in range(30)]
    publish_all(tmp_path, events)
    segment = _last_segment(tmp_path)
    whole = segment.stat().st_size
    with open(segment, "r+b") as file:  # the writer died in the middle of writing the last record
        file.truncate(whole - cut)
    assert [r.id for r in read_all(tmp_path)] == [e.id for e in events[:29]]
    with LocalLogEventSink(tmp_path) as sink:
        assert 0 < sink.torn_bytes_dropped < 1000
        assert sink.end_offset == 29
    publish_all(tmp_path, events)  # the bridge replays: the lost event comes back once
    assert [(r.offset, r.id) for r in read_all(tmp_path)] == [(i, e.id) for i, e in enumerate(events)]


@pytest.mark.parametrize("garbage", [b"\0" * 4096, b"\x50\0\0\0" + os.urandom(200), os.urandom(3)])
def test_garbage_after_the_last_record_is_ignored_then_truncated(tmp_path: Path, garbage: bytes) -> None:
    # After a power loss a file can end in zeros or stale blocks where unsynced records were meant to be.
    events = [make_event(i) for i in range(10)]
    publish_all(tmp_path, events)
    segment = _last_segment(tmp_path)
    whole = segment.stat().st_size
    with open(segment, "ab") as file:
        file.write(garbage)
    assert len(read_all(tmp_path)) == 10
    more = [make_event(i) for i in range(10, 15)]
    publish_all(tmp_path, more)
    assert segment.stat().st_size > whole
    assert [(r.offset, r.id) for r in read_all(tmp_path)] == [(i, e.id) for i, e in enumerate(events + more)]


KILLABLE_WRITER = """
import sys
from tests.unit.test_locallog import make_event
from bridge.sinks.locallog import LocalLogEventSink
log_dir, start, segment_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sink = LocalLogEventSink(log_dir, segment_bytes=segment_bytes, fsync_interval_ms=2)
out = sys.stdout
def acknowledged(i):
    def on_delivery(error):
        if error is None:
            out.write(f"{i}\\n")
            out.flush()
    return on_delivery
print("open", sink.end_offset, flush=True)
for i in range(start, start + 10_000_000):
    sink.publish(make_event(i), acknowledged(i))
"""


def _run_until_acknowledged(log_dir: Path, start: int, segment_bytes: int, kill_after: int) -> set[int]:
    """Start a writer at event `start`, SIGKILL it once `kill_after` acks were printed; the acked events."""
    child = subprocess.Popen([sys.executable, "-c", KILLABLE_WRITER, str(log_dir), str(start), str(segment_bytes)],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    acknowledged: set[int] = set()
    try:
        opened = child.stdout.readline()
        assert opened.startswith("open"), child.stderr.read() if child.stderr else opened
        while len(acknowledged) < kill_after:
            line = child.stdout.readline()
            assert line, child.stderr.read() if child.stderr else "writer ended"
            acknowledged.add(int(line))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    rest = child.stdout.read()  # through the same buffer readline() filled, so no line is split
    child.stdout.close()
    if child.stderr is not None:
        child.stderr.close()
    acknowledged.update(int(line) for line in rest.split("\n")[:-1])  # the last piece may be a cut-off line
    return acknowledged


@pytest.mark.parametrize("segment_bytes", [16 * 1024, 4 * 1024 * 1024])
def test_a_writer_killed_at_any_moment_loses_no_acknowledged_event_and_duplicates_none(
        tmp_path: Path, segment_bytes: int) -> None:
    stop = threading.Event()
    followed: list[Any] = []

    def follow() -> None:  # a reader running through the crashes must never see a torn record
        followed.extend(EventLogReader(tmp_path).follow(0, poll_interval_s=0.01, stop=stop))

    publish_all(tmp_path, [])
    follower = threading.Thread(target=follow)
    follower.start()
    acknowledged: set[int] = set()
    start = 0
    try:
        for round_, kill_after in enumerate([1, 700, 2500, 40, 1500]):
            acknowledged |= _run_until_acknowledged(tmp_path, start, segment_bytes, kill_after)
            records = read_all(tmp_path)
            ids = [r.id for r in records]
            assert ids == [make_event(i).id for i in range(len(records))], f"round {round_}: a clean prefix"
            assert {make_event(i).id for i in acknowledged} <= set(ids), f"round {round_}: an acked event is lost"
            # Like the bridge: resume from a committed position somewhat before the last acknowledgement.
            start = max(0, max(acknowledged) - 300)
        deadline = time.monotonic() + 10
        while len(followed) < len(records) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        follower.join(5)
    assert len(records) > 3000
    if segment_bytes < 1024 * 1024:
        assert len(list_segments(tmp_path / EVENTS)) > 10, "kills happened around segment rollovers too"
    final = read_all(tmp_path)
    assert [(r.offset, r.id, r.value) for r in followed] == [(r.offset, r.id, r.value) for r in final]
    replayed = [make_event(i) for i in range(len(final) + 50)]
    publish_all(tmp_path, replayed, segment_bytes=segment_bytes)
    assert [r.id for r in read_all(tmp_path)] == [e.id for e in replayed]
