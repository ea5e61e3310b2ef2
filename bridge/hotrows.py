"""The newest entry of the prior-row store's recently used keys, in memory and bounded: a cache, never a copy of record.

An entry here is the newest the store holds for its key (in its unflushed buffer or its file), so a change
newer than it finds its old row without SQLite. What a key gets here must keep that true:

- a write newer than the cached entry replaces it; an older one (a replay) leaves it;
- a write of a key not cached is taken only if it is not older than anything ever stored (the file's newest
  entry when it was opened, and every write since): then nothing newer can exist for that key (an entry at
  the same position is replaced by it). During a replay after a crash that is false, and the key is left to
  SQLite until the stream has passed the point the file reached. When the file's newest entry is not known
  (UNKNOWN_NEWEST: a store too large to read at open), no such write is taken at all;
- what the file says is a key's newest entry is taken when nothing is buffered for it (`learn`).

Pruning never removes a key's newest entry, so it never makes an entry here wrong. Least recently used keys
are dropped beyond `capacity`: memory stays flat whatever the stream's size.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import Any

Stamp = tuple[int, int, int]  # a SourcePosition as (commit_lsn, change_lsn, seq): compares faster
NOTHING: Stamp = (-1, -1, -1)  # a key with no entry at all: older than any position
UNKNOWN_NEWEST: Stamp = (2**64, 0, 0)  # newer than any position: the file's newest entry was not looked for
Row = Mapping[str, Any] | None  # None: the row was deleted (or never existed)


class HotRows:
    """Per key, (stamp, row) of its newest stored entry; at most `capacity` keys, least recently used go."""

    def __init__(self, capacity: int, newest_stored: Stamp | None) -> None:
        self._capacity = capacity
        self._rows: OrderedDict[Hashable, tuple[Stamp, Row]] = OrderedDict()
        self._newest = newest_stored if newest_stored is not None else NOTHING  # of every entry ever stored

    def __len__(self) -> int:
        return len(self._rows)

    def newest(self, key: Hashable) -> tuple[Stamp, Row] | None:
        """The key's newest stored entry, or None when it is not held here (not: when it has none)."""
        entry = self._rows.get(key)
        if entry is not None:
            self._rows.move_to_end(key)
        return entry

    def wrote(self, key: Hashable, stamp: Stamp, row: Row) -> None:
        """The store now holds `row` for `key` at `stamp` (buffered or written)."""
        entry = self._rows.get(key)
        if entry is not None:
            if stamp >= entry[0]:  # equal: a replayed change rewrote its own entry (INSERT OR REPLACE)
                self._rows[key] = (stamp, row)
                self._rows.move_to_end(key)
        elif stamp >= self._newest:  # equal: the old key's and the new key's entries of a key change
            self._hold(key, stamp, row)
        if stamp > self._newest:
            self._newest = stamp

    def learn(self, key: Hashable, stamp: Stamp, row: Row) -> None:
        """The file's newest entry of `key` (NOTHING: it has none), read while nothing was buffered for it."""
        self._hold(key, stamp, row)

    def _hold(self, key: Hashable, stamp: Stamp, row: Row) -> None:
        if self._capacity <= 0:
            return
        self._rows[key] = (stamp, row)
        self._rows.move_to_end(key)
        while len(self._rows) > self._capacity:
            self._rows.popitem(last=False)
