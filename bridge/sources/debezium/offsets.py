"""Which Kafka offsets may be committed: only those below the oldest record not yet fully handled.

Records are handled out of order (a transaction completes when its last row arrives, possibly on
another partition), but a Kafka commit says "everything below this offset is done". The tracker keeps,
per partition, the offsets consumed and not yet done; the committable offset is the lowest of them,
or one past the highest consumed when none is pending.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable


class OffsetTracker:
    def __init__(self) -> None:
        self._pending: dict[Hashable, deque[int]] = {}
        self._done: dict[Hashable, set[int]] = {}
        self._next: dict[Hashable, int] = {}  # one past the highest offset consumed

    def consumed(self, partition: Hashable, offset: int) -> None:
        """Register a record as read; it holds back commits until `done`."""
        queue = self._pending.setdefault(partition, deque())
        if queue and offset <= queue[-1]:
            raise ValueError(f"offset {offset} of {partition} consumed out of order (after {queue[-1]})")
        queue.append(offset)
        self._next[partition] = max(self._next.get(partition, 0), offset + 1)

    def done(self, records: Iterable[tuple[Hashable, int]]) -> None:
        """Mark records as fully handled (their events acknowledged, or nothing to publish)."""
        for partition, offset in records:
            queue = self._pending[partition]
            self._done.setdefault(partition, set()).add(offset)
            finished = self._done[partition]
            while queue and queue[0] in finished:
                finished.discard(queue.popleft())

    def committable(self) -> dict[Hashable, int]:
        """Per partition, the offset to commit (Kafka's convention: the next offset to read)."""
        result = {}
        for partition, next_offset in self._next.items():
            queue = self._pending[partition]
            result[partition] = queue[0] if queue else next_offset
        return result

    def pending_count(self) -> int:
        return sum(len(queue) for queue in self._pending.values())

    def ahead(self, partition: Hashable) -> int:
        """Records of `partition` read since its oldest one not yet done (done or not): its read-ahead."""
        queue = self._pending.get(partition)
        return len(queue) if queue else 0
