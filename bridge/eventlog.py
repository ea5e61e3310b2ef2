"""The local event log's on-disk format: segment files of length-prefixed, CRC-checked records.

A log directory holds one writer's lock file and two logs, `events/` and `dead-letters/`, each a run of
segment files named by the offset of their first record (`00000000000000000000.log`). An offset is a
record's ordinal in its log: stable forever, since records are only ever appended.

    segment  := MAGIC (8 bytes) | base offset (u64 LE) | record*
    record   := body length (u32 LE) | CRC-32 of (length bytes + body) (u32 LE) | body
    body     := kind (u8) | id length (u8) | sequence length (u8) | meta length (u32 LE)
                | id | sequence | meta | value
    meta     := key length (i32 LE, -1: no key) | aggregate type length (u8) | rule id length (u8)
                | header count n (u8) | n header name lengths (u8) | n header value lengths (u32 LE)
                | key | aggregate type | rule id | header names | header values

All integers little-endian, all text UTF-8. `value` is exactly the bytes Kafka would carry
(`DomainEvent.value()`: the event's data as JSON), and the headers are the CloudEvents `ce_*` headers
with their exact bytes, so a record read back is the Kafka record byte for byte. (The meta section is
binary rather than JSON because encoding it is on the bridge's hot path: about 5x cheaper.)

A writer appends whole batches and fsyncs each before it acknowledges any record in it, so a crash
(kill -9, power loss) can leave bytes that are not a whole record only after the last synced batch, at the
end of the last segment: a torn tail, never acknowledged. Anything else that does not read back is
damage. bridge/logdamage.py tells the two apart: readers stop before a torn tail (a follower waits: it may
be a record being written) and the next writer cuts it; damage stops readers and writers with an error
naming the file, byte and offset, and nothing is cut.

A sealed segment gets a summary file (`<base>.summary.json`: count, size, sequence range, a sparse
offset-to-byte index); it is a cache that is rebuilt from the segment when missing or stale. A writer
closing cleanly writes one for the active segment too, and removes it when it opens the log again: while
it matches, the segment is known whole, so a bad record anywhere in it is damage, even at its end.

Files are created owner-only (0600) and directories 0700: the events carry customer data.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.errors import ConfigurationError, DamagedFileError
from bridge.private_files import FILE_MODE, make_private_directories

MAGIC = b"CDCBLOG1"
SEGMENT_HEADER = struct.Struct("<8sQ")
FRAME = struct.Struct("<II")
PREFIX = struct.Struct("<BBBI")
LENGTH = struct.Struct("<I")
MAX_BODY = 64 * 1024 * 1024  # a longer length field is garbage, not a record
KIND_EVENT = 1
KIND_DEAD_LETTER = 2
EVENTS = "events"
DEAD_LETTERS = "dead-letters"
LOCK_FILE = "writer.lock"
SPARSE_EVERY = 1024  # one sparse-index entry per this many records
READ_CHUNK = 1 << 20
DEFAULT_LOG_DIR = Path(".state/bridge/events")


class LogLockedError(ConfigurationError):
    """Another process (named by its pid) is writing this event log."""




class CorruptLogError(DamagedFileError):
    """Part of the log does not read back (a checksum fails, a segment is missing): not a torn tail."""


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}.log"


def summary_path(segment: Path) -> Path:
    return segment.with_name(segment.name.removesuffix(".log") + ".summary.json")


def list_segments(log_dir: Path) -> list[tuple[int, Path]]:
    """(base offset, path) of every segment, oldest first."""
    try:
        names = os.listdir(log_dir)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        stem = name.removesuffix(".log")
        if name.endswith(".log") and len(stem) == 20 and stem.isdigit():
            found.append((int(stem), log_dir / name))
    return sorted(found)


def segment_header(base_offset: int) -> bytes:
    return SEGMENT_HEADER.pack(MAGIC, base_offset)


def encode_record(kind: int, record_id: str, sequence: str | None, meta: bytes, value: bytes) -> bytes:
    id_bytes = record_id.encode()
    sequence_bytes = sequence.encode() if sequence else b""
    if len(id_bytes) > 255 or len(sequence_bytes) > 255:
        raise ValueError(f"record id and sequence must be at most 255 bytes: {record_id!r}, {sequence!r}")
    body = b"".join((PREFIX.pack(kind, len(id_bytes), len(sequence_bytes), len(meta)),
                     id_bytes, sequence_bytes, meta, value))
    if len(body) > MAX_BODY:
        raise ValueError(f"record {record_id} is {len(body)} bytes; the log takes at most {MAX_BODY}")
    length = LENGTH.pack(len(body))
    return length + LENGTH.pack(zlib.crc32(body, zlib.crc32(length))) + body


_META_HEAD = struct.Struct("<iBBB")
_header_layouts: dict[tuple[str, ...], tuple[struct.Struct, bytes, list[int]]] = {}
_length_layouts: dict[int, struct.Struct] = {}


def encode_meta(headers: list[tuple[str, bytes]], key: bytes | None, aggregate_type: str | None,
                rule_id: str | None) -> bytes:
    names, values = zip(*headers) if headers else ((), ())
    layout = _header_layouts.get(names)
    if layout is None:  # events repeat the same header names: lay them out once
        encoded = [name.encode() for name in names]
        if len(encoded) > 255 or any(len(name) > 255 for name in encoded):
            raise ValueError("at most 255 headers, each name at most 255 bytes")
        layout = (struct.Struct(f"<iBBB{len(names)}B{len(names)}I"), b"".join(encoded), [len(n) for n in encoded])
        if len(_header_layouts) < 64:
            _header_layouts[names] = layout
    packer, joined_names, name_lengths = layout
    aggregate = aggregate_type.encode() if aggregate_type else b""
    rule = rule_id.encode() if rule_id else b""
    if len(aggregate) > 255 or len(rule) > 255:
        raise ValueError(f"aggregate type and rule id must be at most 255 bytes: {aggregate_type!r}, {rule_id!r}")
    return b"".join((packer.pack(-1 if key is None else len(key), len(aggregate), len(rule), len(names),
                                 *name_lengths, *map(len, values)),
                     key or b"", aggregate, rule, joined_names, *values))


def decode_meta(body: bytes, at: int) -> tuple[tuple[tuple[str, bytes], ...], bytes | None, str | None, str | None]:
    """(headers, key, aggregate type, rule id) from the meta section starting at `at`."""
    key_len, aggregate_len, rule_len, count = _META_HEAD.unpack_from(body, at)
    lengths_layout = _length_layouts.get(count)
    if lengths_layout is None:
        lengths_layout = _length_layouts[count] = struct.Struct(f"<{count}B{count}I")
    lengths = lengths_layout.unpack_from(body, at + _META_HEAD.size)
    at += _META_HEAD.size + lengths_layout.size
    key = None
    if key_len >= 0:
        key, at = body[at:at + key_len], at + key_len
    aggregate_type = body[at:at + aggregate_len].decode() or None
    at += aggregate_len
    rule_id = body[at:at + rule_len].decode() or None
    at += rule_len
    names = []
    for length in lengths[:count]:
        names.append(body[at:at + length].decode())
        at += length
    headers = []
    for name, length in zip(names, lengths[count:]):
        headers.append((name, body[at:at + length]))
        at += length
    return tuple(headers), key, aggregate_type, rule_id


def meta_size(body: bytes, at: int) -> int:
    """The length of the meta section starting at `at`, from its own length fields (struct.error when they
    do not fit in `body`): a record is well formed when this equals its stated meta length."""
    key_len, aggregate_len, rule_len, count = _META_HEAD.unpack_from(body, at)
    lengths_layout = _length_layouts.get(count) or struct.Struct(f"<{count}B{count}I")
    lengths = lengths_layout.unpack_from(body, at + _META_HEAD.size)
    if key_len < -1:
        raise struct.error("negative key length")
    return _META_HEAD.size + lengths_layout.size + max(key_len, 0) + aggregate_len + rule_len + sum(lengths)


def body_id_and_sequence(body: bytes) -> tuple[str, str | None]:
    """The two fields deduplication needs, without parsing the rest."""
    _, id_len, seq_len, _ = PREFIX.unpack_from(body)
    start = PREFIX.size
    sequence = body[start + id_len:start + id_len + seq_len].decode() if seq_len else None
    return body[start:start + id_len].decode(), sequence


class FrameScanner:
    """The valid records of one open segment file from a byte position, up to the first that is not.

    After iterating, `end` is the position after the last valid record and `status` says why it
    stopped: "end" (the file ends on a record boundary), "partial" (a record is cut short: being
    written, or torn by a crash) or "bad" (a complete record fails its checksum or has an impossible
    length: torn by a crash when at the end of the last segment, corruption anywhere else).
    """

    def __init__(self, file: Any, position: int) -> None:
        self._file = file
        self.end = position
        self.status = "end"

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        self._file.seek(self.end)
        buffer = b""
        buffer_start = self.end
        crc32, unpack_frame = zlib.crc32, FRAME.unpack_from
        while chunk := self._file.read(READ_CHUNK):
            buffer = buffer + chunk if buffer else chunk
            at, size = 0, len(buffer)
            while size - at >= FRAME.size:
                length, crc = unpack_frame(buffer, at)
                if length < PREFIX.size or length > MAX_BODY:
                    self.status = "bad"
                    return
                stop = at + FRAME.size + length
                if stop > size:
                    break
                body = buffer[at + FRAME.size:stop]
                if crc32(body, crc32(buffer[at:at + 4])) != crc:
                    self.status = "bad"
                    return
                yield buffer_start + at, body
                at = stop
                self.end = buffer_start + at
            buffer = buffer[at:]
            buffer_start += at
        self.status = "partial" if buffer else "end"


def open_segment(path: Path, base_offset: int | None = None) -> Any:
    """Open a segment for reading and check its header (and base offset, if given); returns the file
    (positioned after the header)."""
    file = open(path, "rb")  # noqa: SIM115 (the caller owns it)
    header = file.read(SEGMENT_HEADER.size)
    problem = None
    if len(header) < SEGMENT_HEADER.size or SEGMENT_HEADER.unpack(header)[0] != MAGIC:
        problem = "it does not start with a cdc-bridge segment header"
    elif base_offset is not None and (written := SEGMENT_HEADER.unpack(header)[1]) != base_offset:
        problem = f"its name says it starts at offset {base_offset}, its header says it starts at offset {written}"
    if problem is not None:
        file.close()
        raise CorruptLogError(f"event log damaged: {path}: {problem}; nothing was cut. Restore the segment "
                              f"from a backup (`cdc-bridge log verify --log {log_root(path)}` checks the whole log)")
    return file


def log_root(segment: Path) -> Path:
    """The directory to give `cdc-bridge log verify --log` for this segment."""
    return segment.parent.parent if segment.parent.name in (EVENTS, DEAD_LETTERS) else segment.parent


@dataclass(slots=True)
class SegmentSummary:
    """What a segment holds, without its records: enough to find an offset or rule out an id."""

    base_offset: int
    count: int = 0
    size: int = SEGMENT_HEADER.size
    min_sequence: str | None = None
    max_sequence: str | None = None
    sparse: list[int] = field(default_factory=list)  # byte position of ordinal i*SPARSE_EVERY
    durable: bool = True  # False while the writer still has records of it to write

    def note(self, sequence: str | None, position: int) -> None:
        if self.count % SPARSE_EVERY == 0:
            self.sparse.append(position)
        self.count += 1
        if sequence is not None:
            if self.min_sequence is None or sequence < self.min_sequence:
                self.min_sequence = sequence
            if self.max_sequence is None or sequence > self.max_sequence:
                self.max_sequence = sequence

    def may_hold(self, sequence: str) -> bool:
        """Could a record with this sequence be here? (An id always comes with the same sequence.)"""
        return self.min_sequence is not None and self.min_sequence <= sequence <= self.max_sequence  # type: ignore[operator]

    def position_of(self, ordinal: int) -> tuple[int, int]:
        """The nearest indexed (ordinal, byte position) at or before `ordinal`."""
        slot = min(ordinal // SPARSE_EVERY, len(self.sparse) - 1)
        if slot < 0:
            return 0, SEGMENT_HEADER.size
        return slot * SPARSE_EVERY, self.sparse[slot]

    def to_json(self) -> str:
        return json.dumps({"format": 1, "base_offset": self.base_offset, "count": self.count, "size": self.size,
                           "min_sequence": self.min_sequence, "max_sequence": self.max_sequence,
                           "sparse_every": SPARSE_EVERY, "sparse": self.sparse})


def load_summary(segment: Path, base_offset: int) -> SegmentSummary | None:
    """The stored summary if it matches the segment as it is now, else None (then: scan)."""
    try:
        stored = json.loads(summary_path(segment).read_text())
        size = segment.stat().st_size
    except (OSError, ValueError):
        return None
    if (not isinstance(stored, dict) or stored.get("format") != 1 or stored.get("base_offset") != base_offset
            or stored.get("size") != size or stored.get("sparse_every") != SPARSE_EVERY):
        return None
    return SegmentSummary(base_offset, stored["count"], size, stored["min_sequence"], stored["max_sequence"],
                          list(stored["sparse"]))


def scan_segment(segment: Path, base_offset: int, ids: set[Any] | None = None) -> tuple[SegmentSummary, str]:
    """Summarise a segment by reading it (and collect id keys into `ids`); returns (summary, status)."""
    summary = SegmentSummary(base_offset)
    with open_segment(segment, base_offset) as file:
        scanner = FrameScanner(file, SEGMENT_HEADER.size)
        for position, body in scanner:
            record_id, sequence = body_id_and_sequence(body)
            summary.note(sequence, position)
            if ids is not None:
                ids.add(id_key(record_id))
        summary.size = scanner.end
        return summary, scanner.status


def id_key(record_id: str) -> bytes | str:
    """A compact, exact set key: 16 bytes for a canonical (lowercase) UUID, the string itself otherwise.

    Two different ids never share a key: canonical UUID text and its 16 bytes are in one-to-one
    correspondence, and a str never equals a bytes.
    """
    if len(record_id) == 36 and record_id[8] == record_id[13] == record_id[18] == record_id[23] == "-":
        digits = record_id.replace("-", "")
        if len(digits) == 32 and (digits.islower() or digits.isdigit()):
            try:
                key = bytes.fromhex(digits)
            except ValueError:
                return record_id
            if len(key) == 16:  # fromhex skips whitespace: "ab cd..." would be shorter
                return key
    return record_id


def create_segment(log_dir: Path, base_offset: int) -> Path:
    """A new, empty segment; it appears under its name only complete (header written and synced)."""
    path = log_dir / segment_name(base_offset)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.write(fd, segment_header(base_offset))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temporary, path)
    fsync_dir(log_dir)
    return path


def write_summary(segment: Path, summary: SegmentSummary) -> None:
    # A cache: rebuilt from the segment if lost or stale, so it needs no fsync of its own.
    target = summary_path(segment)
    temporary = target.with_name(target.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w") as file:
        file.write(summary.to_json())
    os.replace(temporary, target)


def make_private_dir(directory: Path) -> bool:
    """Create `directory` (and missing parents) owner-only; True if it was created (then its parent is
    synced, so the new entry survives a crash). An existing directory keeps its mode: the operator's choice."""
    if directory.is_dir():
        return False
    make_private_directories(directory)
    fsync_dir(directory.parent)
    return True


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dead_letter_sequence(record: dict[str, Any]) -> str | None:
    """The failed change's position as fixed-width hex (sorts in commit order), when the letter has one.

    Without one (a record that could not be decoded at all) the letter is checked for duplicates
    against the active and cached dead-letter segments only: reading every older segment back for
    each new letter would make a storm of undecodable records grind the bridge to a halt.
    """
    change = record.get("change")
    if isinstance(change, dict) and all(isinstance(change.get(k), int) for k in ("commit_lsn", "change_lsn", "seq")):
        return f"{change['commit_lsn']:016X}-{change['change_lsn']:016X}-{change['seq']:04X}"
    return None


def acquire_writer_lock(directory: Path) -> int:
    """Take the log's exclusive writer lock (released when the process ends, even by kill -9).

    A holder that is already exiting is waited for, up to EXITING_HOLDER_WAIT_S: a sink process
    (sink.separate_process) killed with its bridge has no parent to wait for it, and the bridge restarted
    at once would otherwise find the lock still held while the dying process's threads end.
    """
    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    deadline = time.monotonic() + EXITING_HOLDER_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            if _exiting(holder) and time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            os.close(fd)
            raise LogLockedError(
                f"the event log {directory} is being written by another process (pid {holder}, lock {path}); "
                "stop that bridge first, or give this one its own log directory") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


EXITING_HOLDER_WAIT_S = 5.0
_SIGKILL_BIT = 1 << (9 - 1)  # signal 9 in /proc's pending-signal masks


def _exiting(holder: str) -> bool:
    """The lock's holder (the pid it wrote) is ending as far as /proc shows: killed (SIGKILL pending), its
    main thread a zombie while its other threads still close its files, or gone."""
    try:
        status = dict(line.split(":\t", 1) for line in Path(f"/proc/{int(holder)}/status").read_text().splitlines()
                      if ":\t" in line)
    except (ValueError, OSError):
        return holder.isdigit()  # no such process any more: the lock goes with its last thread
    pending = int(status.get("ShdPnd", "0"), 16) | int(status.get("SigPnd", "0"), 16)
    return status.get("State", "")[:1] in ("Z", "X") or bool(pending & _SIGKILL_BIT)
