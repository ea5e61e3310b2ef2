"""Which partitions to pause so that none is read far ahead of the transaction next in commit order.

A backlog's topics are fetched about equally by bytes, not by transactions: a topic with few rows per
transaction (customers) reaches the end of the backlog long before one with many (order_items), and
every row read ahead waits in the transaction assembler until the transactions before it complete. So
memory grew with the backlog. A partition is paused once `limit` of its records are read but not done
(read and not yet acknowledged, counted from its oldest such record), and resumed below half of that.

Never paused: a partition that the transaction next in commit order (the head) still needs, i.e. one of
a table whose rows the head's END counts but which have not all arrived, or the transaction topic while
no END waits. Each partition holds its records in commit order, so a partition read ahead of the head
has already delivered the head's rows; pausing it cannot hold the head back, and the head always
completes (or stalls as it would without pausing, which check_stalled reports). When what the head
needs cannot be told (`needed` is None), nothing is paused.

Pure: the caller observes the consumer and applies the decision (KafkaConsumer.pause / resume).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Set
from dataclasses import dataclass

# Records per partition read since its oldest unfinished one before it is paused (held in the assembler or
# delivered and awaiting acknowledgement, at about 4 KB each once decoded). A partition paused here still
# holds half of it to hand, hundreds of transactions of a table that has few rows per transaction, so the
# pause never starves the assembler; the partitions the head needs are never paused.
DEFAULT_LIMIT = 2_000


@dataclass(frozen=True, slots=True)
class Decision:
    pause: frozenset[Hashable]
    resume: frozenset[Hashable]


class ReadAhead:
    """Decide, after each poll, which partitions to pause and which to resume."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 2:
            raise ValueError(f"the read-ahead limit must be at least 2 records, got {limit}")
        self.limit = limit

    def decide(self, ahead: Mapping[Hashable, int], needed: Set[Hashable] | None,
               paused: Set[Hashable]) -> Decision:
        """`ahead`: per assigned partition, records read and not yet done; `needed`: partitions the head
        still needs (None: unknown, so all of them); `paused`: the partitions paused now."""
        pause, resume = set(), set()
        for partition, count in ahead.items():
            keep_reading = needed is None or partition in needed
            if partition in paused:
                if keep_reading or count <= self.limit // 2:
                    resume.add(partition)
            elif not keep_reading and count >= self.limit:
                pause.add(partition)
        # A paused partition no longer assigned (or with nothing read) is resumed: nothing keeps it paused.
        resume |= {partition for partition in paused if partition not in ahead}
        return Decision(frozenset(pause), frozenset(resume))
