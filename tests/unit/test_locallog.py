"""The local event log: byte-identical read-back, acknowledgement only after fsync, once per id across
reopens, offsets, segment rollover, the writer lock. Crash safety is in test_locallog_crash.py."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bridge.changes import SourcePosition
from bridge.errors import DeliveryError
from bridge.eventlog import (
    DEAD_LETTERS,
    EVENTS,
    SPARSE_EVERY,
    CorruptLogError,
    LogLockedError,
    id_key,
    list_segments,
    summary_path,
)
from bridge.events import DomainEvent, event_id, sequence_of
from bridge.sinks.locallog import LocalLogEventSink
from bridge.sinks.locallog_reader import EventLogReader, LogNotFound

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def make_event(i: int, *, aggregate_type: str = "order", name: str = "OrderOpened", aggregate_id: str | None = None,
               data: dict[str, Any] | None = None, commit: int | None = None) -> DomainEvent:
    """The i-th event of a deterministic stream; `commit` overrides its place in commit order."""
    position = SourcePosition(commit if commit is not None else 0x1000 + i, 0x1000 + i, 0)
    return DomainEvent(
        id=event_id("shop-db", position, f"rule.{name}", 1, 0), type=f"shop.{aggregate_type}.{name}.v1",
        source="/cdc-bridge/shop-db", subject=f"{aggregate_type}/{aggregate_id or i}",
        time=T0 + timedelta(seconds=i), sequence=sequence_of(position, 0), aggregate_type=aggregate_type,
        aggregate_id=aggregate_id or str(i), data=data if data is not None else {"id": i, "total": f"{i}.50"},
        rule_id=f"rule.{name}", position=position)


class Acks:
    """Collects on_delivery results (they arrive on the sink's thread)."""

    def __init__(self) -> None:
        self.results: list[tuple[str, Exception | None]] = []
        self._lock = threading.Lock()

    def callback(self, label: str = "") -> Callable[[Exception | None], None]:
        def on_delivery(error: Exception | None) -> None:
            with self._lock:
                self.results.append((label, error))
        return on_delivery

    @property
    def errors(self) -> list[Exception]:
        return [error for _, error in self.results if error is not None]


def publish_all(log_dir: Path, events: list[DomainEvent], **options: Any) -> Acks:
    acks = Acks()
    with LocalLogEventSink(log_dir, **options) as sink:
        for event in events:
            sink.publish(event, acks.callback(event.id))
        sink.flush(30)
    assert not acks.errors
    assert len(acks.results) == len(events)
    return acks


def read_all(log_dir: Path, log: str = EVENTS) -> list[Any]:
    return list(EventLogReader(log_dir, log=log).read())


def test_events_read_back_exactly_as_kafka_would_carry_them(tmp_path: Path) -> None:
    events = [make_event(0), make_event(1, aggregate_type="menu_item", name="MenuItemPriceChanged",
                                        data={"name": "Crème brûlée", "price": "7.10", "tags": ["sweet", "cold"]}),
              make_event(2, aggregate_id="ü/42", data={})]
    publish_all(tmp_path, events)
    records = read_all(tmp_path)
    assert [r.offset for r in records] == [0, 1, 2]
    for record, event in zip(records, events):
        assert record.value == event.value()
        assert list(record.headers) == event.headers()
        assert record.key == event.key()
        assert (record.id, record.sequence, record.aggregate_type, record.rule_id) == (
            event.id, event.sequence, event.aggregate_type, event.rule_id)
        assert (record.type, record.subject, record.data()) == (event.type, event.subject, dict(event.data))


def dead_letter(i: int) -> dict[str, Any]:
    return {"kind": "translation_failed", "source_id": "shop-db", "rule": "orders.placed", "error": "total is unknown",
            "change": {"table": "public.orders", "op": "u", "commit_lsn": 0x2000 + i, "change_lsn": 0x2000 + i, "seq": 0}}


def test_dead_letters_go_to_their_own_log_once_each_with_their_bytes(tmp_path: Path) -> None:
    acks = Acks()
    with LocalLogEventSink(tmp_path) as sink:
        sink.publish_dead_letter(dead_letter(1), b"\xffpublic.orders", acks.callback())
        sink.publish_dead_letter(dead_letter(1), b"\xffpublic.orders", acks.callback())  # a replay: same letter
        sink.publish_dead_letter({**dead_letter(1), "error": "other"}, None, acks.callback())
        for _ in range(2):  # a record with no change position: kept once as well
            sink.publish_dead_letter({"kind": "undecodable", "error": "bad JSON", "record": {"value": "{"}}, None,
                                     acks.callback())
        sink.flush(10)
    assert len(acks.results) == 5 and not acks.errors
    letters = read_all(tmp_path, DEAD_LETTERS)
    assert [r.offset for r in letters] == [0, 1, 2]
    assert letters[0].key == b"\xffpublic.orders" and letters[1].key is None
    assert letters[0].data() == dead_letter(1) and letters[0].rule_id == "orders.placed"
    assert letters[0].sequence == "0000000000002001-0000000000002001-0000" and letters[2].sequence is None
    assert read_all(tmp_path) == []


def test_replayed_dead_letters_are_kept_once_across_reopens_and_segments(tmp_path: Path) -> None:
    def publish_letters(numbers: range) -> None:
        acks = Acks()
        with LocalLogEventSink(tmp_path, segment_bytes=2048) as sink:
            for i in numbers:
                sink.publish_dead_letter(dead_letter(i), b"public.orders", acks.callback())
            sink.flush(10)
        assert len(acks.results) == len(numbers) and not acks.errors

    publish_letters(range(60))
    assert len(list_segments(tmp_path / DEAD_LETTERS)) > 5
    publish_letters(range(10, 80))
    assert [r.data() for r in read_all(tmp_path, DEAD_LETTERS)] == [dead_letter(i) for i in range(80)]


def test_on_delivery_fires_only_after_the_fsync_that_covers_the_event(tmp_path: Path, monkeypatch) -> None:
    timeline: list[str] = []
    real_fdatasync = os.fdatasync

    def recording_fdatasync(fd: int) -> None:
        real_fdatasync(fd)
        timeline.append("synced")

    monkeypatch.setattr(os, "fdatasync", recording_fdatasync)
    with LocalLogEventSink(tmp_path, fsync_interval_ms=60_000) as sink:  # no timed sync within the test
        for i in range(5):
            sink.publish(make_event(i), lambda error, i=i: timeline.append(f"ack {i} {error}"))
        time.sleep(0.3)
        assert timeline == [], "nothing is acknowledged before it is synced"
        sink.flush(10)
        assert timeline == ["synced"] + [f"ack {i} None" for i in range(5)]
        sink.publish(make_event(2), lambda error: timeline.append(f"dup {error}"))  # already durable
        sink.flush(10)
    assert timeline[-1] == "dup None"


def test_timed_syncs_acknowledge_without_flush(tmp_path: Path) -> None:
    acks = Acks()
    with LocalLogEventSink(tmp_path, fsync_interval_ms=5) as sink:
        for i in range(100):
            sink.publish(make_event(i), acks.callback())
        deadline = time.monotonic() + 5
        while len(acks.results) < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(acks.results) == 100 and not acks.errors


def test_each_id_is_appended_once_within_a_session_and_across_reopens(tmp_path: Path) -> None:
    first = [make_event(i) for i in range(50)]
    acks = Acks()
    with LocalLogEventSink(tmp_path) as sink:
        for event in first + first[10:20]:  # duplicates while the originals are still pending
            sink.publish(event, acks.callback())
        sink.flush(10)
    assert len(acks.results) == 60 and not acks.errors
    # The bridge restarts and replays from its last committed position, then goes on.
    replay = first[30:] + [make_event(i) for i in range(50, 80)]
    publish_all(tmp_path, replay)
    records = read_all(tmp_path)
    assert [r.id for r in records] == [e.id for e in first] + [make_event(i).id for i in range(50, 80)]
    assert [r.offset for r in records] == list(range(80))


def test_dedup_reaches_into_sealed_segments_and_stays_exact(tmp_path: Path) -> None:
    events = [make_event(i) for i in range(400)]
    publish_all(tmp_path, events, segment_bytes=4096)
    assert len(list_segments(tmp_path / EVENTS)) > 20
    # A replay from far back, out of order, with one cached segment: every id is found on disk.
    new_in_the_past = make_event(1000, commit=0x1000 + 5)  # a new id whose sequence lies in a sealed range
    acks = Acks()
    with LocalLogEventSink(tmp_path, segment_bytes=4096, cached_segments=1) as sink:
        for event in events[::-1] + events[100:150] + [new_in_the_past]:
            sink.publish(event, acks.callback())
        sink.flush(10)
        log = sink._events  # private state: the memory bound is the point of this test
        assert len(log._cache) <= 1 and len(log._active_ids) == log._active.count
    assert not acks.errors
    records = read_all(tmp_path)
    assert [r.id for r in records] == [e.id for e in events] + [new_in_the_past.id]


def test_segments_roll_over_and_offsets_stay_contiguous(tmp_path: Path) -> None:
    events = [make_event(i) for i in range(3 * SPARSE_EVERY)]
    publish_all(tmp_path, events[:1000], segment_bytes=512 * 1024)
    publish_all(tmp_path, events[1000:], segment_bytes=512 * 1024)  # the reopened writer goes on
    segments = list_segments(tmp_path / EVENTS)
    assert len(segments) >= 3
    bases = [base for base, _ in segments]
    for (base, path), next_base in zip(segments, bases[1:]):
        assert summary_path(path).exists(), "every sealed segment has its summary"
        assert path.stat().st_size <= 512 * 1024
        assert [r.offset for r in EventLogReader(tmp_path).read(base, next_base)] == list(range(base, next_base))
    assert summary_path(segments[-1][1]).exists(), "a clean close leaves the active segment's summary too"
    with LocalLogEventSink(tmp_path, segment_bytes=512 * 1024):
        assert not summary_path(segments[-1][1]).exists(), "a writer appending to it removes it"
    assert [r.id for r in read_all(tmp_path)] == [e.id for e in events]


@pytest.mark.parametrize("with_summaries", [True, False])
def test_readers_start_at_any_offset(tmp_path: Path, with_summaries: bool) -> None:
    events = [make_event(i) for i in range(2 * SPARSE_EVERY + 300)]
    publish_all(tmp_path, events, segment_bytes=600 * 1024)
    if not with_summaries:
        for _, path in list_segments(tmp_path / EVENTS):
            summary_path(path).unlink(missing_ok=True)
    reader = EventLogReader(tmp_path)
    end = len(events)
    assert reader.end_offset() == end
    boundaries = [base for base, _ in list_segments(tmp_path / EVENTS)]
    for start in sorted({0, 1, SPARSE_EVERY - 1, SPARSE_EVERY, SPARSE_EVERY + 7, end - 1, end, end + 5, *boundaries,
                         *(b - 1 for b in boundaries if b)}):
        got = [(r.offset, r.id) for r in reader.read(start)]
        assert got == [(i, events[i].id) for i in range(start, end)], start
    assert [r.offset for r in reader.read(10, 15)] == [10, 11, 12, 13, 14]
    shown, after = reader.last(3)
    assert [r.offset for r in shown] == [end - 3, end - 2, end - 1] and after == end


def test_a_reader_of_something_that_is_not_a_log_says_so(tmp_path: Path) -> None:
    with pytest.raises(LogNotFound, match="does not exist"):
        EventLogReader(tmp_path / "missing")
    with pytest.raises(LogNotFound, match="no events/"):
        EventLogReader(tmp_path)


def test_a_damaged_record_inside_a_sealed_segment_is_reported_not_skipped(tmp_path: Path) -> None:
    publish_all(tmp_path, [make_event(i) for i in range(100)], segment_bytes=8192)
    (_, first), *_ = list_segments(tmp_path / EVENTS)
    summary_path(first).unlink()
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError, match=r"00000000000000000000.log byte \d+ \(offset \d+\)"):
        read_all(tmp_path)
    with pytest.raises(CorruptLogError, match=r"00000000000000000000.log byte \d+ \(offset \d+\)"):
        LocalLogEventSink(tmp_path)


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    with LocalLogEventSink(tmp_path), pytest.raises(LogLockedError, match=f"pid {os.getpid()}"):
        LocalLogEventSink(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", ("import sys, time; from bridge.sinks.locallog import LocalLogEventSink;"
                                "s = LocalLogEventSink(sys.argv[1]); print('locked', flush=True); time.sleep(60)"),
         str(tmp_path)],
        stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(LogLockedError, match=f"pid {holder.pid}\\b"):
            LocalLogEventSink(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    with LocalLogEventSink(tmp_path):  # the lock died with its holder
        pass


def test_publishing_after_close_is_a_delivery_error(tmp_path: Path) -> None:
    sink = LocalLogEventSink(tmp_path)
    sink.close()
    sink.close()
    acks = Acks()
    sink.publish(make_event(0), acks.callback())
    assert len(acks.errors) == 1 and isinstance(acks.errors[0], DeliveryError)


def test_id_keys_are_compact_and_never_collide() -> None:
    canonical = make_event(1).id
    assert id_key(canonical) == bytes.fromhex(canonical.replace("-", ""))
    assert id_key(canonical.upper()) == canonical.upper()  # not canonical: kept as text, so distinct
    assert id_key("not-a-uuid") == "not-a-uuid"
    spaced = "ab cdef0-2345-6789-abcd-ef0123456789"
    assert id_key(spaced) == spaced


WRITER = """
import sys, time
from tests.unit.test_locallog import make_event
from bridge.sinks.locallog import LocalLogEventSink
sink = LocalLogEventSink(sys.argv[1], segment_bytes=int(sys.argv[3]))
for i in range(int(sys.argv[2])):
    sink.publish(make_event(i), lambda error: None)
    if i % 50 == 0:
        time.sleep(0.01)
sink.close()
"""


def test_a_follower_sees_what_another_process_appends(tmp_path: Path) -> None:
    publish_all(tmp_path, [])  # the log exists before the follower starts
    stop = threading.Event()
    seen: list[Any] = []

    def follow() -> None:
        seen.extend(EventLogReader(tmp_path).follow(0, poll_interval_s=0.02, stop=stop))

    follower = threading.Thread(target=follow)
    follower.start()
    try:
        writer = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path), "600", "16384"], cwd=REPO, timeout=60,
                                capture_output=True, text=True, check=False)
        assert writer.returncode == 0, writer.stderr
        deadline = time.monotonic() + 10
        while len(seen) < 600 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        follower.join(5)
    assert len(list_segments(tmp_path / EVENTS)) > 5, "the follower crossed segment boundaries"
    assert [(r.offset, r.id) for r in seen] == [(i, make_event(i).id) for i in range(600)]


def test_a_segment_is_synced_before_its_successor_appears(tmp_path: Path, monkeypatch) -> None:
    timeline: list[tuple[str, str]] = []
    real_fdatasync, real_rename = os.fdatasync, os.rename

    def fdatasync(fd: int) -> None:
        real_fdatasync(fd)
        timeline.append(("synced", Path(os.readlink(f"/proc/self/fd/{fd}")).name))

    def rename(source: Any, target: Any) -> None:
        real_rename(source, target)
        timeline.append(("appeared", Path(target).name))

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "rename", rename)
    publish_all(tmp_path, [make_event(i) for i in range(100)], segment_bytes=8192)
    segments = [path.name for _, path in list_segments(tmp_path / EVENTS)]
    assert len(segments) > 3
    for previous, successor in itertools.pairwise(segments):
        assert timeline.index(("synced", previous)) < timeline.index(("appeared", successor))


def test_ids_of_segments_not_yet_written_stay_in_memory(tmp_path: Path) -> None:
    # Many rollovers queued before the first sync: dedup must not look for them on disk yet.
    acks = Acks()
    events = [make_event(i) for i in range(200)]
    with LocalLogEventSink(tmp_path, segment_bytes=4096, cached_segments=1, fsync_interval_ms=60_000) as sink:
        for event in events + events[:3]:
            sink.publish(event, acks.callback())
        assert acks.results == []
        sink.flush(10)
    assert len(acks.results) == 203 and not acks.errors
    assert [r.id for r in read_all(tmp_path)] == [e.id for e in events]


def test_an_event_that_cannot_be_encoded_fails_alone(tmp_path: Path) -> None:
    from bridge.changes import UNKNOWN

    acks = Acks()
    with LocalLogEventSink(tmp_path) as sink:
        sink.publish(make_event(0, data={"price": UNKNOWN}), acks.callback("bad"))
        sink.publish(make_event(1), acks.callback("good"))
        sink.flush(10)
    (bad_label, bad), (good_label, good) = acks.results
    assert (bad_label, good_label, good) == ("bad", "good", None)
    assert isinstance(bad, DeliveryError) and "data.price is unknown" in str(bad)
    assert [r.id for r in read_all(tmp_path)] == [make_event(1).id]


def test_built_from_the_locallog_sink_settings(tmp_path: Path) -> None:
    from bridge.settings import Settings

    settings = Settings(sink={"kind": "locallog", "path": str(tmp_path / "log"), "fsync_interval_ms": 1,
                              "dead_letter_path": str(tmp_path / "letters")})
    acks = Acks()
    with LocalLogEventSink.from_settings(settings.sink) as sink:
        sink.publish(make_event(0), acks.callback())
        sink.publish_dead_letter(dead_letter(0), None, acks.callback())
        sink.flush(10)
        with pytest.raises(LogLockedError, match="letters"):  # the separate dead-letter log is locked too
            LocalLogEventSink(tmp_path / "other", dead_letter_dir=tmp_path / "letters")
    assert len(acks.results) == 2 and not acks.errors
    assert [r.id for r in read_all(tmp_path / "log")] == [make_event(0).id]
    assert [r.data() for r in EventLogReader(tmp_path, log="letters").read()] == [dead_letter(0)]
    assert not (tmp_path / "log" / DEAD_LETTERS).exists()


def test_files_are_owner_only_and_directories_it_creates_too(tmp_path: Path) -> None:
    # The log holds customer data (names, emails): nobody but its owner may read it, whatever the umask.
    previous = os.umask(0o022)
    try:
        log_dir = tmp_path / "state" / "events"
        letters_dir = tmp_path / "letters"
        publish_all(log_dir, [make_event(i) for i in range(60)], segment_bytes=4096)
        with LocalLogEventSink(log_dir, segment_bytes=4096) as sink:
            sink.publish_dead_letter(dead_letter(0), None, lambda error: None)
            sink.flush(10)
        with LocalLogEventSink(tmp_path / "other", dead_letter_dir=letters_dir) as sink:
            sink.publish_dead_letter(dead_letter(1), None, lambda error: None)
            sink.flush(10)
    finally:
        os.umask(previous)
    directories = [log_dir, log_dir / EVENTS, log_dir / DEAD_LETTERS, letters_dir, tmp_path / "other"]
    files = [path for directory in directories for path in directory.iterdir() if path.is_file()]
    assert {path.name for path in files} >= {"writer.lock", "00000000000000000000.log",
                                              "00000000000000000000.summary.json"}
    assert len([path for path in files if path.name.endswith(".summary.json")]) > 5
    assert {oct(path.stat().st_mode & 0o777) for path in directories} == {"0o700"}
    assert {f"{path.name} {path.stat().st_mode & 0o777:o}" for path in files} == {f"{path.name} 600" for path in files}
