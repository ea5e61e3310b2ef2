"""Notice a consumer left without partitions of topics that exist, and say when to ask for a new group join.

kafka-python 3.0.12 can lose the end of a group join: when a poll's timeout expires while the leader's
SyncGroup is in flight, and the join was started because subscribed topics appeared after the subscribe
(Debezium creates them when it first writes), the consumer's "rejoin needed" check turns false once the
assignment is computed, so the finished join is never taken up and its partitions are never assigned.
The bridge then reads nothing, for good, while looking healthy (seen in about 1 start in 4 on this machine
with a group whose topics did not exist yet). The cure is to ask the coordinator to join again; this
module decides when, from what the source observes, so that the decision is testable without Kafka.
"""

from __future__ import annotations

# A join of a one-member group takes milliseconds to a few seconds; one of several members may wait for the
# others up to their session timeout. Past this, with nothing assigned, a join was lost.
UNASSIGNED_FOR_S = 20.0
# At most one nudge per this long: a legitimately slow rebalance is disturbed at most this often.
NUDGE_EVERY_S = 30.0


class JoinWatch:
    """Feed each poll's observation; `should_rejoin` is true when a lost join should be retried."""

    def __init__(self, *, unassigned_for_s: float = UNASSIGNED_FOR_S, nudge_every_s: float = NUDGE_EVERY_S) -> None:
        self._unassigned_for_s = unassigned_for_s
        self._nudge_every_s = nudge_every_s
        self._unassigned_since: float | None = None
        self._last_nudge: float | None = None

    def should_rejoin(self, now: float, *, assigned: bool, topics_exist: bool) -> bool:
        """`assigned`: the consumer holds at least one partition; `topics_exist`: a subscribed topic has
        partitions in the consumer's metadata (so a completed join would have assigned something)."""
        if assigned or not topics_exist:
            self._unassigned_since = None
            return False
        if self._unassigned_since is None:
            self._unassigned_since = now
            return False
        if now - self._unassigned_since < self._unassigned_for_s:
            return False
        if self._last_nudge is not None and now - self._last_nudge < self._nudge_every_s:
            return False
        self._last_nudge = now
        return True
