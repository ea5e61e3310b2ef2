"""When the Debezium source asks for a new group join: only after a join was really lost (nothing assigned
although subscribed topics exist, for a while), and not over and over."""

from __future__ import annotations

from bridge.sources.debezium.join_watch import JoinWatch


def test_a_consumer_left_unassigned_while_its_topics_exist_rejoins_after_the_grace_and_then_rarely() -> None:
    watch = JoinWatch(unassigned_for_s=20, nudge_every_s=60)
    assert not watch.should_rejoin(0, assigned=False, topics_exist=True)
    assert not watch.should_rejoin(19, assigned=False, topics_exist=True)  # a join may still be under way
    assert watch.should_rejoin(21, assigned=False, topics_exist=True)
    assert not watch.should_rejoin(50, assigned=False, topics_exist=True)  # just asked
    assert watch.should_rejoin(82, assigned=False, topics_exist=True)


def test_no_rejoin_while_assigned_or_while_no_topic_exists_and_the_clock_restarts() -> None:
    watch = JoinWatch(unassigned_for_s=20, nudge_every_s=60)
    for now in (0, 30, 60):
        assert not watch.should_rejoin(now, assigned=True, topics_exist=True)
        assert not watch.should_rejoin(now + 1, assigned=False, topics_exist=False)  # Debezium has not written yet
    assert not watch.should_rejoin(100, assigned=False, topics_exist=True)
    assert not watch.should_rejoin(115, assigned=False, topics_exist=True)
    assert not watch.should_rejoin(116, assigned=True, topics_exist=True)  # the join completed after all
    assert not watch.should_rejoin(130, assigned=False, topics_exist=True)  # a new period starts here
    assert watch.should_rejoin(151, assigned=False, topics_exist=True)
