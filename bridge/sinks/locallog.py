"""The local event log sink: durable, append-only, each event once per id, no server.

The default sink when no Kafka is configured. `publish` encodes the record, rules out a duplicate and
assigns its offset at once; a background thread appends what has accumulated and fsyncs it as one batch
(at most every `fsync_interval_ms`, sooner on `flush()`), and only then calls the batch's `on_delivery`
callbacks: the bridge commits a source position only after that, so an acknowledged event is on disk.

Exactly once per id, durably and in bounded memory: the bridge replays after a crash with the same ids,
and an id always comes with the same `sequence` (both derive from the change's position). The writer
keeps in memory the ids of the active segment only, plus each sealed segment's sequence range. An id
can be in a sealed segment only if its sequence falls in that segment's range; in a log appended in
commit order, a new event's sequence is above every sealed range and the check costs one set lookup,
while a replay (sequences just behind the head) finds its ids in the active set or in one recently
sealed segment, whose ids are read back from disk on demand and cached (`cached_segments` of them).
Events out of commit order (a backfill after streaming) stay exact, they only read more segments back.
Memory is bounded by the ids of 1 + cached_segments segments, whatever the log's length: about 90
bytes per id, so ~14 MB for a 64 MiB segment of ~450-byte records. Dead letters are named by a hash of
their content and ordered by their change's position; see `dead_letter_sequence` for those without one.

Opening recovers from a crash: a torn tail (an append the crash interrupted, never acknowledged) is cut;
anything else that does not read back refuses to open, and nothing is cut (bridge/logdamage.py).
One writer per log directory, enforced by an exclusive lock on `writer.lock` (which holds the
writer's pid); readers (bridge/sinks/locallog_reader.py) need no lock. Files are owner-only.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from bridge.errors import BridgeError, DeliveryError, RecordTooLarge
from bridge.eventlog import (
    MAX_BODY,
    DEAD_LETTERS,
    EVENTS,
    KIND_DEAD_LETTER,
    KIND_EVENT,
    CorruptLogError,
    SegmentSummary,
    acquire_writer_lock,
    create_segment,
    dead_letter_sequence,
    encode_meta,
    encode_record,
    id_key,
    list_segments,
    load_summary,
    make_private_dir,
    scan_segment,
    segment_name,
    summary_path,
    write_summary,
)
from bridge.logdamage import cut_torn_tail, gap_error, inspect_scanned
from bridge.events import DomainEvent
from bridge.ports import DeliveryCallback
from bridge.sinks.dead_letters import encode_dead_letter

log = logging.getLogger("bridge.locallog")

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
# The largest headers + key + value of one record; a larger one is reported as RecordTooLarge (the
# pipeline dead-letters it, bounded) rather than failing the log. The rest of a body is a few hundred bytes.
MAX_RECORD_BYTES = MAX_BODY - 4096


class Unencodable(Exception):
    """A record cannot be encoded (a value with no JSON form, a field too long); the log is unchanged."""


class LocalLogEventSink:
    """An EventSink writing to an event-log directory (created if missing)."""

    def __init__(self, directory: Path | str, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 fsync_interval_ms: float = 5.0, cached_segments: int = 1,
                 dead_letter_dir: Path | str | None = None) -> None:
        self.directory = Path(directory)
        make_private_dir(self.directory)
        self._lock_fds = [acquire_writer_lock(self.directory)]
        letters_dir = Path(dead_letter_dir) if dead_letter_dir is not None else self.directory / DEAD_LETTERS
        try:
            if letters_dir.resolve().parent != self.directory.resolve():  # elsewhere: it needs its own lock
                make_private_dir(letters_dir)
                self._lock_fds.append(acquire_writer_lock(letters_dir))
            self._events = SegmentLog(self.directory / EVENTS, segment_bytes, cached_segments)
            try:
                self._dead_letters = SegmentLog(letters_dir, segment_bytes, cached_segments)
            except BaseException:
                self._events.close()
                raise
        except BaseException:
            for fd in self._lock_fds:
                os.close(fd)
            raise
        self._interval_s = fsync_interval_ms / 1000
        self._mutex = threading.Lock()
        self._work = threading.Condition(self._mutex)  # the syncer waits here for records
        self._progress = threading.Condition(self._mutex)  # flush() waits here for acknowledgements
        self._callbacks: list[DeliveryCallback] = []
        self._published = 0  # callbacks ever queued
        self._acknowledged = 0  # callbacks ever answered (in queue order)
        self._urgent = False
        self._stopping = False
        self._closed = False
        self._failure: DeliveryError | None = None
        self._syncer = threading.Thread(target=self._sync_loop, name="locallog-sync", daemon=True)
        self._syncer.start()

    @classmethod
    def from_settings(cls, section: Any) -> LocalLogEventSink:
        """From the `sink` section of kind locallog: path, fsync_interval_ms, and if present
        dead_letter_path, segment_bytes, cached_segments."""
        options = {name: getattr(section, name) for name in ("segment_bytes", "cached_segments")
                   if getattr(section, name, None) is not None}
        return cls(section.path, fsync_interval_ms=section.fsync_interval_ms,
                   dead_letter_dir=getattr(section, "dead_letter_path", None), **options)

    @property
    def end_offset(self) -> int:
        """The offset the next new event will get."""
        with self._mutex:
            return self._events.next_offset

    @property
    def torn_bytes_dropped(self) -> int:
        """Bytes of a torn tail (a crashed writer's unacknowledged partial append) cut when this writer opened."""
        return self._events.torn_bytes + self._dead_letters.torn_bytes

    def publish(self, event: DomainEvent, on_delivery: DeliveryCallback) -> None:
        def encode() -> bytes:
            meta = encode_meta(event.headers(), event.key(), event.aggregate_type, event.rule_id)
            value = event.value()
            self._check_size(len(meta) + len(value))
            return encode_record(KIND_EVENT, event.id, event.sequence, meta, value)

        self._append(self._events, event.id, event.sequence, encode, on_delivery)

    def publish_dead_letter(self, record: dict[str, Any], key: bytes | None, on_delivery: DeliveryCallback) -> None:
        value = encode_dead_letter(record)
        # A replayed change yields the same dead letter: its content names it, so it is kept once too,
        # and the change's position orders it like an event's sequence (see dead_letter_sequence).
        named = b"%d:" % len(key) + key if key is not None else b"-:"
        letter_id = str(uuid.UUID(bytes=hashlib.blake2b(named + value, digest_size=16).digest()))
        rule = record.get("rule")

        def encode() -> bytes:
            meta = encode_meta([("content-type", b"application/json")], key, None,
                               rule if isinstance(rule, str) else None)
            self._check_size(len(meta) + len(value))
            return encode_record(KIND_DEAD_LETTER, letter_id, sequence, meta, value)

        sequence = dead_letter_sequence(record)
        self._append(self._dead_letters, letter_id, sequence, encode, on_delivery)

    def _check_size(self, size: int) -> None:
        if size > MAX_RECORD_BYTES:
            raise RecordTooLarge(size, MAX_RECORD_BYTES, f"the event log at {self.directory}")

    def _append(self, segment_log: SegmentLog, record_id: str, sequence: str | None, encode: Callable[[], bytes],
                on_delivery: DeliveryCallback) -> None:
        key = id_key(record_id)
        with self._mutex:
            failure = self._failure
            if failure is None and self._closed:
                failure = DeliveryError(f"the event log at {self.directory} is closed")
            if failure is None:
                # A duplicate is not written again, but it is acknowledged only after the next sync, which
                # covers the original when that was appended moments ago.
                try:
                    segment_log.append(key, sequence, encode)
                except Unencodable as exc:  # this record only; nothing was appended
                    failure = (exc.__cause__ if isinstance(exc.__cause__, RecordTooLarge) else
                               DeliveryError(f"record {record_id} cannot go into the event log: {exc}"))
                except (OSError, CorruptLogError) as exc:  # reading a sealed segment's ids back failed
                    failure = self._failure = DeliveryError(f"event log at {self.directory}: {exc}")
                else:
                    self._callbacks.append(on_delivery)
                    self._published += 1
                    if len(self._callbacks) == 1:
                        self._work.notify()
        if failure is not None:
            on_delivery(failure)

    def flush(self, timeout_s: float) -> None:
        """Return once everything published so far is on disk and acknowledged."""
        deadline = time.monotonic() + timeout_s
        with self._mutex:
            target = self._published
            self._urgent = True
            self._work.notify()
            while self._acknowledged < target and self._failure is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeliveryError(f"the event log at {self.directory} did not sync "
                                        f"{target - self._acknowledged} event(s) within {timeout_s:g}s")
                self._progress.wait(remaining)
            if self._failure is not None:
                raise self._failure

    def close(self) -> None:
        """Sync and acknowledge what is pending, stop the syncer, release the lock. Idempotent."""
        if self._closed:
            return
        try:
            self.flush(60.0)
        except DeliveryError as exc:
            log.error("closing the event log with unsynced events", extra={"error": str(exc)})
        with self._mutex:
            self._closed = self._stopping = True
            self._work.notify()
        self._syncer.join()
        clean = self._failure is None
        self._events.close(clean=clean)
        self._dead_letters.close(clean=clean)
        for fd in self._lock_fds:
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _sync_loop(self) -> None:
        last_sync = time.monotonic()
        while True:
            with self._mutex:
                while not self._callbacks and not self._stopping:
                    self._work.wait()
                if not self._callbacks:
                    return
                # Let a batch gather: one fsync per interval keeps throughput high (group commit).
                linger = last_sync + self._interval_s - time.monotonic()
                if linger > 0 and not self._urgent and not self._stopping:
                    self._work.wait(linger)
                events, letters = self._events.take(), self._dead_letters.take()
                callbacks, self._callbacks = self._callbacks, []
                self._urgent = False
            error = None
            try:
                self._events.write(events)
                self._dead_letters.write(letters)
            except OSError as exc:
                # After a failed write or fsync the file's state is unknown (the page cache may have
                # dropped the data): stop here; a restart recovers from what is really on disk.
                error = DeliveryError(f"could not write or sync the event log at {self.directory}: {exc}; "
                                      "the bridge stops, and a restart resumes from the last synced event")
            last_sync = time.monotonic()
            for callback in callbacks:
                try:
                    callback(error)
                except Exception:  # a callback's bug must not stop every later acknowledgement
                    log.exception("on_delivery callback failed")
            with self._mutex:
                if error is not None and self._failure is None:
                    self._failure = error
                self._acknowledged += len(callbacks)
                self._progress.notify_all()


class _Seal:
    """In the write queue: the segment so far is complete; go on in a new one at `next_base`."""

    __slots__ = ("next_base", "summary")

    def __init__(self, summary: SegmentSummary, next_base: int) -> None:
        self.summary = summary
        self.next_base = next_base


class SegmentLog:
    """One log of segment files (events, or dead letters): recovery on open, dedup, offsets, writing.

    `append` and `take` run under the sink's mutex; `write` runs on the syncer thread only.
    """

    def __init__(self, log_dir: Path, segment_bytes: int, cached_segments: int) -> None:
        self.log_dir = log_dir
        self._segment_bytes = segment_bytes
        self._cached_segments = max(cached_segments, 1)
        make_private_dir(log_dir)
        for leftover in log_dir.glob("*.tmp"):  # a segment or summary that never got its final name
            leftover.unlink()
        segments = list_segments(log_dir) or [(0, create_segment(log_dir, 0))]
        self._sealed: list[SegmentSummary] = []
        self._sealed_max: str | None = None
        expected = segments[0][0]
        for base, path in segments[:-1]:
            self._check_contiguous(base, expected)
            summary = load_summary(path, base)
            if summary is None:
                summary, status = scan_segment(path, base)
                if status != "end":
                    raise inspect_scanned(path, summary, sealed=True, closed_cleanly=False).error()
                write_summary(path, summary)
            self._add_sealed(summary)
            expected = base + summary.count
        base, path = segments[-1]
        self._check_contiguous(base, expected)
        self._active_ids: set[bytes | str] = set()
        closed_cleanly = load_summary(path, base) is not None
        self._active, status = scan_segment(path, base, self._active_ids)
        self.torn_bytes = cut_torn_tail(path, self._active, closed_cleanly=closed_cleanly) if status != "end" else 0
        # This writer appends from here on: a summary of the segment from an earlier clean close no longer holds.
        summary_path(path).unlink(missing_ok=True)
        self._active.durable = False
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self.next_offset = base + self._active.count
        self._pending: list[bytes | _Seal] = []
        self._cache: OrderedDict[int, set[bytes | str]] = OrderedDict()  # sealed base -> its ids

    def _check_contiguous(self, base: int, expected: int) -> None:
        if base != expected:
            raise gap_error(self.log_dir / segment_name(base), expected)

    def _add_sealed(self, summary: SegmentSummary) -> None:
        self._sealed.append(summary)
        if summary.max_sequence is not None and (self._sealed_max is None or summary.max_sequence > self._sealed_max):
            self._sealed_max = summary.max_sequence

    def contains(self, key: bytes | str, sequence: str | None) -> bool:
        if key in self._active_ids:
            return True
        if sequence is None:  # unordered (an undecodable record's dead letter): recent segments only
            return any(key in ids for ids in self._cache.values())
        if self._sealed_max is None or sequence > self._sealed_max:
            return False  # the common case: newer than anything sealed
        return any(summary.may_hold(sequence) and key in self._ids_of(summary) for summary in reversed(self._sealed))

    def _ids_of(self, summary: SegmentSummary) -> set[bytes | str]:
        ids = self._cache.get(summary.base_offset)
        if ids is not None:
            self._cache.move_to_end(summary.base_offset)
            return ids
        # Only segments fully on disk ever leave the cache, so reading one back is complete, unless damaged:
        # then ids would be missing and a replayed event could be written twice, so that is refused.
        ids: set[bytes | str] = set()
        path = self.log_dir / segment_name(summary.base_offset)
        scanned, status = scan_segment(path, summary.base_offset, ids)
        if status != "end" or scanned.count != summary.count:
            raise inspect_scanned(path, scanned, sealed=True, closed_cleanly=False).error()
        self._cache[summary.base_offset] = ids
        self._trim_cache()
        return ids

    def _trim_cache(self) -> None:
        for base in list(self._cache):
            if len(self._cache) <= self._cached_segments:
                return
            if self._sealed_by_base(base).durable:
                del self._cache[base]

    def _sealed_by_base(self, base: int) -> SegmentSummary:
        for summary in reversed(self._sealed):
            if summary.base_offset == base:
                return summary
        raise KeyError(base)

    def append(self, key: bytes | str, sequence: str | None, encode: Callable[[], bytes]) -> int | None:
        """The new record's offset, or None when its id is already in the log (or on its way there).

        `encode` makes the record's bytes; a duplicate is never encoded (replays cost a set lookup)."""
        if self.contains(key, sequence):
            return None
        try:
            record = encode()
        except (ValueError, BridgeError) as exc:
            raise Unencodable(str(exc)) from exc
        if self._active.count and self._active.size + len(record) > self._segment_bytes:
            self._roll()
        active = self._active
        active.note(sequence, active.size)
        active.size += len(record)
        self._active_ids.add(key)
        self._pending.append(record)
        self.next_offset += 1
        return self.next_offset - 1

    def _roll(self) -> None:
        sealed = self._active
        self._add_sealed(sealed)
        self._cache[sealed.base_offset] = self._active_ids
        self._trim_cache()
        self._active_ids = set()
        self._active = SegmentSummary(self.next_offset, durable=False)
        self._pending.append(_Seal(sealed, self.next_offset))

    def take(self) -> list[bytes | _Seal]:
        pending, self._pending = self._pending, []
        return pending

    def write(self, items: list[bytes | _Seal]) -> None:
        """Append and fsync; on a seal, finish the segment durably before its successor appears."""
        batch: list[bytes] = []
        for item in items:
            if isinstance(item, bytes):
                batch.append(item)
                continue
            self._write_all(b"".join(batch))
            batch = []
            os.fdatasync(self._fd)
            os.close(self._fd)
            segment = self.log_dir / segment_name(item.summary.base_offset)
            write_summary(segment, item.summary)
            self._fd = os.open(create_segment(self.log_dir, item.next_base), os.O_WRONLY | os.O_APPEND)
            item.summary.durable = True
        if batch:
            self._write_all(b"".join(batch))
            os.fdatasync(self._fd)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def close(self, *, clean: bool = False) -> None:
        """Close the active segment; when `clean` (everything written and synced), leave its summary, which
        says the segment is whole up to here (see bridge/logdamage.py)."""
        with contextlib.suppress(OSError):  # already closed when a failed write stopped mid-rollover
            whole = clean and not self._pending and os.fstat(self._fd).st_size == self._active.size
            os.close(self._fd)
            if whole:
                write_summary(self.log_dir / segment_name(self._active.base_offset), self._active)
