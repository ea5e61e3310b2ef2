"""Reading the local event log: from any offset, the newest N, or following it as it grows.

Readers take no lock and never disturb the writer. They see only whole records (length and CRC
checked); a record still being written, or torn by a crash, ends what a reader sees for now, and a
follower polls the file size cheaply (one fstat per poll) until more arrives. When a segment has a
successor, it is complete: a follower reads it to its end and moves on. Damage (bridge/logdamage.py:
a bad record with valid ones after it, or in a segment known whole) raises CorruptLogError naming the
file, byte and offset, instead of quietly ending the log there.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.errors import ConfigurationError
from bridge.eventlog import (
    EVENTS,
    FRAME,
    PREFIX,
    SEGMENT_HEADER,
    FrameScanner,
    decode_meta,
    list_segments,
    load_summary,
    open_segment,
    segment_name,
)
from bridge.logdamage import BadFrame, gap_error, inspect_stop


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One record read back: an event (kind 1) or a dead letter (kind 2), with its offset."""

    offset: int
    kind: int
    id: str
    sequence: str | None
    headers: tuple[tuple[str, bytes], ...]
    key: bytes | None
    value: bytes
    aggregate_type: str | None
    rule_id: str | None

    @classmethod
    def decode(cls, offset: int, body: bytes) -> LogRecord:
        kind, id_len, seq_len, meta_len = PREFIX.unpack_from(body)
        start = PREFIX.size
        meta_start = start + id_len + seq_len
        headers, key, aggregate_type, rule_id = decode_meta(body, meta_start)
        return cls(offset=offset, kind=kind, id=body[start:start + id_len].decode(),
                   sequence=body[start + id_len:meta_start].decode() if seq_len else None,
                   headers=headers, key=key, value=body[meta_start + meta_len:],
                   aggregate_type=aggregate_type, rule_id=rule_id)

    def header(self, name: str) -> str | None:
        for header_name, value in self.headers:
            if header_name == name:
                return value.decode("utf-8", "replace")
        return None

    @property
    def type(self) -> str | None:
        return self.header("ce_type")

    @property
    def subject(self) -> str | None:
        return self.header("ce_subject")

    @property
    def time(self) -> str | None:
        return self.header("ce_time")

    @property
    def aggregate_id(self) -> str | None:
        return None if self.key is None else self.key.decode("utf-8", "replace")

    def data(self) -> Any:
        return json.loads(self.value)


class LogNotFound(ConfigurationError):
    """The directory given is not (or not yet) an event log."""


class EventLogReader:
    """Reads one log (`events` or `dead-letters`) of an event-log directory."""

    def __init__(self, directory: Path | str, *, log: str = EVENTS) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise LogNotFound(
                f"no event log at {self.directory}: the directory does not exist. The bridge creates it when "
                "it runs with the local log sink; give the log's directory with --log DIR")
        self.log_dir = self.directory / log
        if not self.log_dir.is_dir():
            raise LogNotFound(f"{self.directory} is not a cdc-bridge event log: it has no {log}/ directory")

    def end_offset(self) -> int:
        """The offset the next appended record will get (= the number of whole records now)."""
        segments = list_segments(self.log_dir)
        if not segments:
            return 0
        base, path = segments[-1]
        summary = load_summary(path, base)
        if summary is not None:
            return base + summary.count
        with open_segment(path) as file:
            return base + sum(1 for _ in FrameScanner(file, SEGMENT_HEADER.size))

    def read(self, start: int = 0, stop: int | None = None) -> Iterator[LogRecord]:
        """Records from offset `start` (inclusive) to `stop` (exclusive) or to what is there now."""
        cursor = Cursor(self.log_dir, start)
        try:
            for record in cursor.available():
                if stop is not None and record.offset >= stop:
                    return
                yield record
        finally:
            cursor.close()

    def follow(self, start: int = 0, *, poll_interval_s: float = 0.2,
               stop: threading.Event | None = None) -> Iterator[LogRecord]:
        """Records from `start` on, waiting for new ones, until `stop` is set (or the caller stops)."""
        cursor = Cursor(self.log_dir, start)
        stop = stop or threading.Event()
        try:
            while not stop.is_set():
                got = False
                for record in cursor.available():
                    got = True
                    yield record
                if not got:
                    stop.wait(poll_interval_s)
        finally:
            cursor.close()

    def last(self, count: int, predicate: Callable[[LogRecord], bool] | None = None) -> tuple[list[LogRecord], int]:
        """The newest `count` records that satisfy `predicate`, in log order, and the offset after the
        newest record read (where a follower goes on). Reads segments newest first, only as far back as needed."""
        segments = list_segments(self.log_dir)
        if not segments:
            return [], 0
        found: list[LogRecord] = []
        end = None
        for base, _path in reversed(segments):
            cursor = Cursor(self.log_dir, base, single_segment=True)
            try:
                records = [r for r in cursor.available() if predicate is None or predicate(r)]
            finally:
                cursor.close()
            if end is None:
                end = cursor.offset
            found = records + found
            if len(found) >= count:
                break
        return (found[-count:] if count else []), end or 0


class Cursor:
    """A reading position (segment, byte, offset) in one log; `available()` yields what is there now."""

    def __init__(self, log_dir: Path, offset: int, *, single_segment: bool = False) -> None:
        self.log_dir = log_dir
        self.offset = offset  # the next offset to yield
        self._single_segment = single_segment
        self._file: Any = None
        self._base = 0
        self._position = 0
        self._next = 0  # the offset of the record at self._position
        self._tail_seen: tuple[int, int] | None = None  # (position, size) last found to be a torn tail

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def available(self) -> Iterator[LogRecord]:
        while True:
            if self._file is None and not self._open_segment_holding(self.offset):
                return
            before = self._next
            status = yield from self._read_on()
            if self._next != before and not self._single_segment:
                continue
            later = [(base, path) for base, path in list_segments(self.log_dir) if base > self._base]
            if not later:
                # The last segment: a torn tail (or a record being written) ends what there is for now.
                if self._tail_grew_whole(status):
                    continue
                return
            # A later segment exists, so this one is complete: read its rest and check it ended whole.
            status = yield from self._read_on(final=True)
            if status != "end" and (bad := self._inspect(sealed=True)) is not None:
                raise bad.error()
            if later[0][0] != self._next:
                raise gap_error(later[0][1], self._next)
            if self._single_segment:
                return
            self.close()
            self._open(*later[0], ordinal_target=self.offset)

    def _tail_grew_whole(self, status: str) -> bool:
        """At the end of the last segment: True if a whole record is there now (read on); False for a torn
        tail or a record still being written (wait); raises CorruptLogError if it is damage."""
        if status == "end":
            return False
        before = os.fstat(self._file.fileno())
        seen = (self._position, before.st_size)
        if seen == self._tail_seen:
            return False  # inspected already, and nothing changed since: still a tail
        bad = self._inspect(sealed=False)
        if bad is None:
            return True
        after = os.fstat(self._file.fileno())
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            return False  # written or cut (a new writer) while inspected: look again at the next poll
        if not bad.torn_tail:
            raise bad.error()
        self._tail_seen = seen
        return False

    def _inspect(self, *, sealed: bool) -> BadFrame | None:
        path = self.log_dir / segment_name(self._base)
        return inspect_stop(self._file, path, self._position, self._next, sealed=sealed,
                            closed_cleanly=not sealed and load_summary(path, self._base) is not None)

    def _read_on(self, final: bool = False) -> Generator[LogRecord, None, str]:
        """Whole records from the current position; returns why it stopped (see FrameScanner.status)."""
        if not final and os.fstat(self._file.fileno()).st_size <= self._position:
            return "end"  # one fstat: nothing was appended since the last look
        scanner = FrameScanner(self._file, self._position)
        for position, body in scanner:
            offset = self._next
            self._next += 1
            self._position = position + FRAME.size + len(body)
            if offset >= self.offset:
                self.offset = offset + 1
                yield LogRecord.decode(offset, body)
        return scanner.status

    def _open_segment_holding(self, offset: int) -> bool:
        segments = list_segments(self.log_dir)
        candidates = [(base, path) for base, path in segments if base <= offset] or segments[:1]
        if not candidates:
            return False
        self._open(*candidates[-1], ordinal_target=offset)
        return True

    def _open(self, base: int, path: Path, *, ordinal_target: int) -> None:
        self._file = open_segment(path, base)
        self._tail_seen = None
        self._base, self._next, self._position = base, base, SEGMENT_HEADER.size
        summary = load_summary(path, base)
        if summary is not None and ordinal_target > base:
            ordinal, self._position = summary.position_of(ordinal_target - base)
            self._next = base + ordinal
