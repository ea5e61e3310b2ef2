"""Which position the direct source may report to the server as flushed, and no further.

    progress = Progress(start_lsn)
    handle = progress.release(commit_lsn, position)   # a transaction handed to the pipeline, in commit order
    progress.done(handle)                             # all its events acknowledged by the sink
    progress.keepalive(wal_end, in_transaction)       # a keepalive arrived
    progress.advance(); progress.acknowledged         # the newest safe position

A transaction's commit LSN is safe once it and every transaction released before it are done, and the
caller's commit (which first makes the prior-row store durable) has taken them with `advance`. A
keepalive's WAL end is safe once every transaction released before the keepalive is taken so, and no
transaction was half received when it came: the walsender sends each transaction at its commit, so all
that committed before that WAL end was already sent. Reporting it lets an idle bridge confirm all the WAL
(the slot holds none for it), and lets PostgreSQL shut down: a stopping walsender waits until its client
has confirmed everything it sent. Reporting it any earlier could confirm a transaction received but not
delivered, which a crash would lose (see stream.py on psycopg2).

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from bridge.changes import SourcePosition

# Keepalive positions waiting for earlier transactions to be done; dropping more only delays the slot.
MAX_WAITING_KEEPALIVES = 256


@dataclass(slots=True)
class Handle:
    """One released transaction; SourceUnit.handle."""

    commit_lsn: int
    position: SourcePosition
    done: bool = False


class Progress:
    def __init__(self, start_lsn: int) -> None:
        self.acknowledged = start_lsn  # everything before it is done: what the server may be told
        self.last_safe: SourcePosition | None = None  # the newest change position of a done prefix
        self._released: deque[Handle] = deque()
        self.not_done = 0  # asked every loop turn: kept as a count
        self._released_total = self._done_total = 0
        self._keepalives: deque[tuple[int, int]] = deque()  # (WAL end, transactions released before it)

    def release(self, commit_lsn: int, position: SourcePosition) -> Handle:
        handle = Handle(commit_lsn, position)
        self._released.append(handle)
        self.not_done += 1
        self._released_total += 1
        return handle

    def done(self, handle: Handle) -> None:
        if not handle.done:
            handle.done = True
            self.not_done -= 1

    def keepalive(self, wal_end: int, in_transaction: bool) -> bool:
        """Note a keepalive; True when it moved `acknowledged` at once (nothing was outstanding)."""
        if in_transaction or wal_end <= self.acknowledged:
            return False
        if not self._released:  # everything released is done and was taken by advance(): the caller's commit
            self._keepalives.clear()
            self.acknowledged = wal_end
            return True
        waiting = self._keepalives
        if waiting and waiting[-1][1] == self._released_total:
            waiting[-1] = (wal_end, self._released_total)  # no transaction between: the newer end covers both
        elif len(waiting) < MAX_WAITING_KEEPALIVES:
            waiting.append((wal_end, self._released_total))
        return False

    def advance(self) -> None:
        """Take the done prefix of the released transactions, and the keepalives it covers."""
        released = self._released
        while released and released[0].done:
            handle = released.popleft()
            self._done_total += 1
            self.acknowledged = max(self.acknowledged, handle.commit_lsn)
            self.last_safe = handle.position
        waiting = self._keepalives
        while waiting and waiting[0][1] <= self._done_total:
            self.acknowledged = max(self.acknowledged, waiting.popleft()[0])
