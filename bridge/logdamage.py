"""Telling a torn tail (a crash in the middle of an append: safe to cut) from damage (refuse, cut nothing).

Where a segment stops reading back (a record cut short, a checksum that fails, an impossible length),
the writer's discipline says what that can be. It appends whole batches and fsyncs each before it
acknowledges a record of it, and a segment gets a successor only once it is synced whole. So a crash can
leave bytes that are not a whole record only after the last synced batch, at the end of the last
segment: after kill -9 a prefix of the batch being written (whole records, then a cut-short one), after
a power loss possibly zeros or stale bytes. Nothing valid can follow such bytes. Hence:

- in a sealed segment, or in one whose writer closed it cleanly (its summary matches it), any bad
  record is damage: every byte of it was acknowledged;
- otherwise, a bad record followed anywhere later in the file by a whole, valid record (checksum and
  structure check out) is damage: it sits inside acknowledged data, and cutting there would delete
  every acknowledged record after it;
- otherwise it is a torn tail. Whole records of a torn batch before it are kept (never acknowledged,
  but a follower may have shown them, and a replay finds their ids and does not write them twice).

The one case this cannot tell apart: damage to the very last record(s) of a segment whose writer did
not close it cleanly looks exactly like a power loss during the last append; it is cut, with a warning.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.eventlog import (
    FRAME,
    KIND_DEAD_LETTER,
    KIND_EVENT,
    MAX_BODY,
    PREFIX,
    CorruptLogError,
    SegmentSummary,
    log_root,
    meta_size,
    open_segment,
)

log = logging.getLogger("bridge.locallog")

SCAN_CHUNK = 1 << 20
# A record's body starts with its kind (1 or 2) and a non-zero id length: the C regex engine finds those
# bytes fast in a garbage tail (zeros above all), and each candidate frame 8 bytes before is then checked.
_KIND_BYTE = re.compile(rb"[\x01\x02](?=[\x01-\xff])")
_LOOKAHEAD = FRAME.size + 2


def well_formed(body: bytes | memoryview) -> bool:
    """Does this body parse as a record (a known kind, lengths that add up, UTF-8 text)?"""
    try:
        kind, id_len, seq_len, meta_len = PREFIX.unpack_from(body)
        meta_start = PREFIX.size + id_len + seq_len
        if kind not in (KIND_EVENT, KIND_DEAD_LETTER) or id_len == 0 or meta_start + meta_len > len(body):
            return False
        bytes(body[PREFIX.size:meta_start]).decode()
        return meta_size(bytes(body[meta_start:meta_start + meta_len]), 0) == meta_len
    except (struct.error, UnicodeDecodeError):
        return False


def _checks_out(frame: bytes) -> bool:
    length, crc = FRAME.unpack_from(frame)
    body = memoryview(frame)[FRAME.size:FRAME.size + length]
    return len(body) == length and zlib.crc32(body, zlib.crc32(frame[:4])) == crc and well_formed(body)


def whole_record_at(file: Any, position: int, end: int) -> bool:
    """Is there a whole, valid record at `position` that ends by `end`?"""
    header = os.pread(file.fileno(), FRAME.size, position)
    if len(header) < FRAME.size:
        return False
    length, _crc = FRAME.unpack(header)
    if length < PREFIX.size or length > MAX_BODY or position + FRAME.size + length > end:
        return False
    return _checks_out(os.pread(file.fileno(), FRAME.size + length, position))


def next_valid_record(file: Any, start: int, end: int) -> int | None:
    """The byte position of the first whole, checksummed, well-formed record that starts in [start, end)
    and ends by `end`, or None. Reads with pread: the file may be truncated meanwhile (no mmap, no SIGBUS)."""
    fd = file.fileno()
    at = start
    while at + FRAME.size + PREFIX.size <= end:
        data = os.pread(fd, min(SCAN_CHUNK + _LOOKAHEAD, end - at), at)
        if not data:
            return None
        starts_here = min(SCAN_CHUNK, len(data))  # frames starting in [at, at + starts_here) are tried now
        for match in _KIND_BYTE.finditer(data, FRAME.size, starts_here + FRAME.size + 1):
            where = match.start() - FRAME.size
            length, _crc = FRAME.unpack_from(data, where)
            if length < PREFIX.size or length > MAX_BODY or at + where + FRAME.size + length > end:
                continue
            frame = data[where:where + FRAME.size + length]
            if len(frame) < FRAME.size + length:
                frame = os.pread(fd, FRAME.size + length, at + where)
            if _checks_out(frame):
                return at + where
        at += starts_here
    return None


def describe_frame(file: Any, position: int, size: int) -> str:
    """Why the frame at `position` is not a whole, valid record."""
    remaining = size - position
    if remaining == 0:
        return "the file ends here, before records its summary counts"
    if remaining < FRAME.size:
        return f"a record cut short: the file ends {remaining} byte(s) into its frame header"
    (length, _crc) = FRAME.unpack(os.pread(file.fileno(), FRAME.size, position))
    if length < PREFIX.size or length > MAX_BODY:
        return f"an impossible record length ({length})"
    if FRAME.size + length > remaining:
        return f"a record cut short: it claims {length} bytes, the file holds {remaining - FRAME.size} more"
    return "a record whose checksum fails"


@dataclass(frozen=True, slots=True)
class BadFrame:
    """Where a segment stops reading back, and what that means."""

    segment: Path
    position: int  # byte where the first record that is not whole and valid starts
    offset: int | None  # the offset that record has (or would have); None: unknown, after earlier damage
    size: int  # the segment's size when inspected
    reason: str
    resumes_at: int | None  # byte of the next whole, valid record after it; None: nothing valid follows
    sealed: bool  # a later segment exists: this one was synced whole
    closed_cleanly: bool  # its summary matches: its writer closed it, every byte acknowledged

    @property
    def torn_tail(self) -> bool:
        return self.resumes_at is None and not self.sealed and not self.closed_cleanly

    @property
    def torn_bytes(self) -> int:
        return self.size - self.position

    def why_damage(self) -> str:
        if self.resumes_at is not None:
            return f"valid records follow from byte {self.resumes_at}, so this is not a torn tail left by a crash"
        if self.sealed:
            return "in a sealed segment, synced whole before its successor was created"
        return "in a segment its writer closed cleanly, so every record of it was acknowledged"

    def describe(self) -> str:
        """`<segment> byte P (offset O): <reason>; <why>` (the form `log verify` prints too)."""
        offset = "unknown: after earlier damage" if self.offset is None else self.offset
        return f"{self.segment} byte {self.position} (offset {offset}): {self.reason}; {self.why_damage()}"

    def error(self) -> CorruptLogError:
        if self.sealed:
            remedy = (f"restore {self.segment.name} from a backup; the log is read and written again once every "
                      "segment is whole")
        else:
            remedy = (f"restore {self.segment.name} from a backup, or keep the records before the damage by cutting "
                      f"the segment there (copy it aside first; `truncate -s {self.position} {self.segment}`): the "
                      f"records from offset {self.offset} on are then gone from the log")
        return CorruptLogError(
            f"event log damaged: {self.describe()}; nothing was cut. Run `cdc-bridge log verify --log "
            f"{log_root(self.segment)}` for the whole log, then {remedy}")


def inspect_stop(file: Any, segment: Path, position: int, offset: int | None, *, sealed: bool,
                 closed_cleanly: bool) -> BadFrame | None:
    """What the bytes from `position` on (where whole records stopped, at `offset`) are; None when a whole
    record is there now (it was being written: read on)."""
    size = os.fstat(file.fileno()).st_size
    if whole_record_at(file, position, size):
        return None
    return BadFrame(segment, position, offset, size, describe_frame(file, position, size),
                    next_valid_record(file, position + 1, size), sealed, closed_cleanly)


def gap_error(segment: Path, expected: int) -> CorruptLogError:
    """Segment `segment` does not start where the one before it ends (or the log does not start at 0)."""
    return CorruptLogError(
        f"event log damaged: {segment}: should start at offset {expected}, where the segment before it ends (or "
        f"the log begins): segments are missing or were renamed; nothing was cut. Run `cdc-bridge log verify --log "
        f"{log_root(segment)}`, then restore the missing segments from a backup")


def inspect_scanned(path: Path, scanned: SegmentSummary, *, sealed: bool, closed_cleanly: bool) -> BadFrame:
    """What stopped the writer's scan of `path` after the records summarised in `scanned`."""
    with open_segment(path, scanned.base_offset) as file:
        bad = inspect_stop(file, path, scanned.size, scanned.base_offset + scanned.count, sealed=sealed,
                           closed_cleanly=closed_cleanly)
    if bad is None:  # the writer holds the lock: only another program can have changed the file
        raise CorruptLogError(f"{path} changed while the bridge opened it; is another program writing it? "
                              "Nothing was cut")
    return bad


def cut_torn_tail(path: Path, scanned: SegmentSummary, *, closed_cleanly: bool) -> int:
    """Cut what follows the last whole record of the active segment if it is a torn tail, and return the bytes
    cut; raise CorruptLogError, cutting nothing, if it is damage."""
    bad = inspect_scanned(path, scanned, sealed=False, closed_cleanly=closed_cleanly)
    if not bad.torn_tail:
        raise bad.error()
    log.warning("event log: cutting a torn tail (an append a crash interrupted; never acknowledged)",
                extra={"segment": str(path), "bytes": bad.torn_bytes, "at": bad.position, "offset": bad.offset,
                       "reason": bad.reason})
    with open(path, "r+b") as file:
        file.truncate(bad.position)
        os.fsync(file.fileno())
    return bad.torn_bytes
