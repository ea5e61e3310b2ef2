"""Damage in the local event log: only a torn tail (a crash in the middle of an append) is cut; a bad record
with valid records after it, or any bad record in a segment closed cleanly, is damage: the writer refuses to
open and readers stop with an error naming the file, byte and offset. Nothing acknowledged is ever cut."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.errors import BridgeError
from bridge.eventlog import (
    DEAD_LETTERS,
    EVENTS,
    SEGMENT_HEADER,
    CorruptLogError,
    FrameScanner,
    list_segments,
    summary_path,
)
from bridge.sinks.locallog import LocalLogEventSink
from bridge.sinks.locallog_reader import EventLogReader
from tests.unit.test_locallog import Acks, dead_letter, make_event, publish_all, read_all


def frames(segment: Path) -> list[tuple[int, int]]:
    """(byte position, frame size) of every whole record of a segment."""
    with open(segment, "rb") as file:
        return [(position, 8 + len(body)) for position, body in FrameScanner(file, SEGMENT_HEADER.size)]


def overwrite(path: Path, position: int, data: bytes) -> None:
    with open(path, "r+b") as file:
        file.seek(position)
        file.write(data)


def flipped(path: Path, position: int, count: int = 1) -> bytes:
    with open(path, "rb") as file:
        file.seek(position)
        return bytes(b ^ 0xFF for b in file.read(count))


def last_segment(log_dir: Path) -> Path:
    return list_segments(log_dir)[-1][1]


# Each: where to damage the active segment, given its records; returns (byte position, new bytes).
Damage = Callable[[Path, list[tuple[int, int]]], tuple[int, bytes]]
MID_SEGMENT_DAMAGE: dict[str, Damage] = {
    "4 bytes in the middle of the file": lambda path, fr: (path.stat().st_size // 2, b"\xde\xad\xbe\xef"),
    "a length field made huge": lambda path, fr: (fr[len(fr) // 2][0], struct.pack("<I", 50_000_000)),
    "a length field made a little longer": lambda path, fr: (fr[len(fr) // 2][0], struct.pack("<I", fr[0][1] + 3)),
    "a length field zeroed": lambda path, fr: (fr[len(fr) // 2][0], b"\0\0\0\0"),
    "a checksum byte": lambda path, fr: (fr[len(fr) // 2][0] + 5, flipped(path, fr[len(fr) // 2][0] + 5)),
    "a payload byte": lambda path, fr: (fr[len(fr) // 2][0] + 200, flipped(path, fr[len(fr) // 2][0] + 200)),
    "the second-to-last record": lambda path, fr: (fr[-2][0] + 40, flipped(path, fr[-2][0] + 40)),
    "the last record of a cleanly closed log": lambda path, fr: (fr[-1][0] + 40, flipped(path, fr[-1][0] + 40)),
}


DAMAGE_CASES = [pytest.param(damage, closed, id=f"{name}, closed {closed}")
                for name, damage in MID_SEGMENT_DAMAGE.items() for closed in ("cleanly", "by a crash")
                # that one cannot be told from a torn tail: see the test after this one
                if not (closed == "by a crash" and name == "the last record of a cleanly closed log")]


@pytest.mark.parametrize(("damage", "closed"), DAMAGE_CASES)
def test_a_damaged_record_before_the_end_refuses_to_open_and_nothing_is_cut(tmp_path: Path, damage: Damage,
                                                                            closed: str) -> None:
    events = [make_event(i) for i in range(600)]
    publish_all(tmp_path, events, fsync_interval_ms=0)  # many fsync batches
    segment = last_segment(tmp_path / EVENTS)
    if closed == "by a crash":  # no summary of a clean close: only the records after the damage give it away
        summary_path(segment).unlink(missing_ok=True)
    records = frames(segment)
    position, data = damage(segment, records)
    overwrite(segment, position, data)
    damaged_bytes = segment.read_bytes()
    first_bad = max(i for i, (start, _) in enumerate(records) if start <= position)

    with pytest.raises(CorruptLogError) as refused:
        LocalLogEventSink(tmp_path)
    message = str(refused.value)
    assert str(segment) in message
    assert f"byte {records[first_bad][0]}" in message and f"offset {first_bad}" in message
    assert "cdc-bridge log verify" in message and "nothing was cut" in message
    assert refused.value.exit_code == 2, "fix the input"
    assert segment.read_bytes() == damaged_bytes, "the writer cut nothing"

    seen: list[Any] = []
    with pytest.raises(CorruptLogError, match=f"offset {first_bad}"):
        seen.extend(EventLogReader(tmp_path).read())
    assert [r.id for r in seen] == [e.id for e in events[:first_bad]], "a clean prefix, then the error"
    with pytest.raises(CorruptLogError):
        EventLogReader(tmp_path).last(10)
    with pytest.raises(CorruptLogError):
        for _ in EventLogReader(tmp_path).follow(0, poll_interval_s=0.01):
            pass
    assert segment.read_bytes() == damaged_bytes


def test_damage_to_the_last_record_after_a_crash_cannot_be_told_from_a_torn_tail(tmp_path: Path) -> None:
    # The documented limit: with no clean close to vouch for the segment and nothing valid after it, a bad
    # last record looks exactly like a power loss during the last append. It is cut, and the cut is logged.
    events = [make_event(i) for i in range(20)]
    publish_all(tmp_path, events)
    segment = last_segment(tmp_path / EVENTS)
    summary_path(segment).unlink(missing_ok=True)
    last_start, _ = frames(segment)[-1]
    overwrite(segment, last_start + 40, flipped(segment, last_start + 40))
    with LocalLogEventSink(tmp_path) as sink:
        assert sink.end_offset == 19 and sink.torn_bytes_dropped > 0


def test_corruption_is_an_input_error_of_the_one_tree() -> None:
    assert issubclass(CorruptLogError, BridgeError)
    assert CorruptLogError.exit_code == 2 and not CorruptLogError.retryable


def test_a_damaged_dead_letter_log_refuses_to_open_too(tmp_path: Path) -> None:
    acks = Acks()
    with LocalLogEventSink(tmp_path, fsync_interval_ms=0) as sink:
        for i in range(200):
            sink.publish_dead_letter(dead_letter(i), b"public.orders", acks.callback())
            if i % 20 == 0:
                sink.flush(10)
        sink.flush(10)
    segment = last_segment(tmp_path / DEAD_LETTERS)
    records = frames(segment)
    overwrite(segment, records[50][0] + 30, flipped(segment, records[50][0] + 30))
    before = segment.read_bytes()
    with pytest.raises(CorruptLogError, match=f"{segment}.*byte {records[50][0]} .*offset 50"):
        LocalLogEventSink(tmp_path)
    with pytest.raises(CorruptLogError, match="offset 50"):
        read_all(tmp_path, DEAD_LETTERS)
    assert segment.read_bytes() == before


def test_a_damaged_sealed_segment_is_reported_by_readers_even_with_its_summary(tmp_path: Path) -> None:
    events = [make_event(i) for i in range(100)]
    publish_all(tmp_path, events, segment_bytes=8192)
    (_, first), *_ = list_segments(tmp_path / EVENTS)
    records = frames(first)
    overwrite(first, records[3][0] + 30, flipped(first, records[3][0] + 30))
    with pytest.raises(CorruptLogError, match=f"{first}.* byte {records[3][0]} .*offset 3"):
        read_all(tmp_path)
    with pytest.raises(CorruptLogError, match="offset 3"):
        list(EventLogReader(tmp_path).read(5))  # a start inside the damaged segment passes the damage too


def test_whole_records_of_a_torn_batch_are_kept_and_only_the_partial_one_is_cut(tmp_path: Path) -> None:
    # A crash in the middle of a batch: its first records are whole, the next is cut short. The whole ones
    # were never acknowledged, but a follower may have shown them already: they stay (and a replay keeps
    # them once); the partial one goes.
    events = [make_event(i) for i in range(40)]
    publish_all(tmp_path, events[:30])
    segment = last_segment(tmp_path / EVENTS)
    synced = segment.stat().st_size
    publish_all(tmp_path, events[30:])
    tail = segment.read_bytes()[synced:]
    with open(segment, "r+b") as file:
        file.truncate(synced)
    with open(segment, "ab") as file:
        file.write(tail[: len(tail) * 2 // 3])
    with LocalLogEventSink(tmp_path) as sink:
        kept = sink.end_offset
        assert 30 < kept < 40 and 0 < sink.torn_bytes_dropped
    publish_all(tmp_path, events)
    assert [r.id for r in read_all(tmp_path)] == [e.id for e in events]


@pytest.mark.parametrize("garbage", [b"\0" * 70_000, b"\xff" * 5000, bytes(range(256)) * 40])
def test_a_bad_record_with_nothing_valid_after_it_is_a_torn_tail(tmp_path: Path, garbage: bytes) -> None:
    # After a power loss the unsynced end of a file can hold zeros or stale bytes: never acknowledged, cut.
    events = [make_event(i) for i in range(20)]
    publish_all(tmp_path, events[:10])
    segment = last_segment(tmp_path / EVENTS)
    with open(segment, "ab") as file:
        file.write(garbage)
    assert len(read_all(tmp_path)) == 10
    publish_all(tmp_path, events)
    assert [r.id for r in read_all(tmp_path)] == [e.id for e in events]


class Follower:
    """A reader following the log on a thread: what it saw, and the error that stopped it, if any."""

    def __init__(self, log_dir: Path) -> None:
        self.seen: list[Any] = []
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, args=(log_dir,))

    def _follow(self, log_dir: Path) -> None:
        try:
            self.seen.extend(EventLogReader(log_dir).follow(0, poll_interval_s=0.01, stop=self._stop))
        except BaseException as exc:  # noqa: BLE001 (the test asserts on it)
            self.failures.append(exc)

    def wait_for(self, count: int, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.seen) < count and not self.failures and time.monotonic() < deadline:
            time.sleep(0.01)

    def __enter__(self) -> Follower:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_a_follower_waits_at_a_record_being_written_and_then_reads_it(tmp_path: Path) -> None:
    events = [make_event(i) for i in range(12)]
    publish_all(tmp_path, events)
    segment = last_segment(tmp_path / EVENTS)
    whole = segment.read_bytes()
    last_start = frames(segment)[-1][0]
    with open(segment, "r+b") as file:  # the last record is still being appended
        file.truncate(last_start + 20)
    with Follower(tmp_path) as follower:
        follower.wait_for(11)
        time.sleep(0.2)
        assert len(follower.seen) == 11 and not follower.failures, follower.failures
        with open(segment, "ab") as file:
            file.write(whole[last_start + 20:])
        follower.wait_for(12)
    assert not follower.failures, follower.failures
    assert [r.id for r in follower.seen] == [e.id for e in events]


def test_a_follower_stops_with_an_error_when_valid_records_appear_after_a_bad_one(tmp_path: Path) -> None:
    events = [make_event(i) for i in range(12)]
    publish_all(tmp_path, events)
    segment = last_segment(tmp_path / EVENTS)
    last_start, last_size = frames(segment)[-1]
    record_bytes = segment.read_bytes()[last_start:last_start + last_size]
    with Follower(tmp_path) as follower:
        follower.wait_for(12)
        with open(segment, "ab") as file:  # a damaged record, then a whole one: not something a writer leaves
            file.write(b"\x10\0\0\0" + b"\x99" * 30 + record_bytes)
        follower.wait_for(13)
    assert len(follower.seen) == 12
    assert len(follower.failures) == 1 and isinstance(follower.failures[0], CorruptLogError), follower.failures
    assert f"byte {last_start + last_size}" in str(follower.failures[0]) and "offset 12" in str(follower.failures[0])


def test_run_refuses_a_damaged_log_with_one_line_and_exit_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.unit.test_locallog import REPO

    log_dir = tmp_path / "log"
    publish_all(log_dir, [make_event(i) for i in range(300)], fsync_interval_ms=0)
    segment = last_segment(log_dir / EVENTS)
    overwrite(segment, segment.stat().st_size // 2, b"\xde\xad\xbe\xef")
    damaged_bytes = segment.read_bytes()
    config = tmp_path / "bridge.yaml"
    config.write_text(f"sink: {{kind: locallog, path: {log_dir}}}\nmappings: [{REPO / 'mappings' / 'restaurant.yaml'}]\n"
                      f"state: {{path: {tmp_path / 'prior-rows.sqlite'}}}\n")
    done = subprocess.run([sys.executable, "-m", "bridge.cli", "run", "--config", str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    *logged, line = done.stderr.strip().splitlines()
    assert all(entry.startswith("{") for entry in logged), logged  # log lines of the start (JSON), then the one error line
    assert line.startswith(f"cdc-bridge: event log damaged: {segment} byte ") and "nothing was cut" in line
    assert f"cdc-bridge log verify --log {log_dir}" in line
    assert segment.read_bytes() == damaged_bytes


def test_a_replay_needing_a_damaged_sealed_segment_fails_instead_of_writing_twice(tmp_path: Path) -> None:
    from bridge.errors import DeliveryError

    events = [make_event(i) for i in range(200)]
    publish_all(tmp_path, events, segment_bytes=4096)
    base, second = list_segments(tmp_path / EVENTS)[1]
    records = frames(second)
    overwrite(second, records[1][0] + 30, flipped(second, records[1][0] + 30))
    active = last_segment(tmp_path / EVENTS)
    active_bytes = active.read_bytes()
    acks = Acks()
    with LocalLogEventSink(tmp_path, segment_bytes=4096) as sink:  # its summary is intact: it opens
        sink.publish(events[base + 3], acks.callback())  # stored after the damage: its id cannot be read back
        with pytest.raises(DeliveryError):
            sink.flush(10)
    (error,) = acks.errors
    assert isinstance(error, DeliveryError) and f"{second} byte {records[1][0]} (offset {base + 1})" in str(error)
    with pytest.raises(CorruptLogError):
        read_all(tmp_path)
    assert active.read_bytes() == active_bytes, "nothing was appended"


def test_the_forward_scan_finds_a_valid_record_at_any_byte_across_read_chunks(tmp_path: Path, monkeypatch) -> None:
    import random

    from bridge import logdamage
    from bridge.eventlog import encode_meta, encode_record

    monkeypatch.setattr(logdamage, "SCAN_CHUNK", 64)
    record = encode_record(1, "id-1", "0001", encode_meta([("ce_id", b"id-1")], b"42", "order", "rule"), b"{}")
    garbage = random.Random(7).randbytes(300)
    path = tmp_path / "scan"
    for position in range(0, 200):
        path.write_bytes(garbage[:position] + record + garbage[:50])
        with open(path, "rb") as file:
            assert logdamage.next_valid_record(file, 0, path.stat().st_size) == position
            assert logdamage.next_valid_record(file, position + 1, path.stat().st_size) is None
    path.write_bytes(garbage[:10] + record[:-1])
    with open(path, "rb") as file:
        assert logdamage.next_valid_record(file, 0, path.stat().st_size) is None, "a record cut short is not valid"
