"""Which position the direct source may report as flushed (bridge/sources/pgoutput/progress.py): commits in
order once done, and a keepalive's WAL end once everything received before it is done, never earlier."""

from __future__ import annotations

from bridge.changes import SourcePosition
from bridge.sources.pgoutput.progress import Progress


def release(progress: Progress, commit_lsn: int):  # noqa: ANN201
    return progress.release(commit_lsn, SourcePosition(commit_lsn, commit_lsn - 10))


def test_a_commit_is_safe_once_it_and_all_before_it_are_done() -> None:
    progress = Progress(100)
    first, second = release(progress, 200), release(progress, 300)
    progress.done(second)
    progress.advance()
    assert progress.acknowledged == 100 and progress.last_safe is None
    progress.done(first)
    progress.advance()
    assert progress.acknowledged == 300 and progress.last_safe == SourcePosition(300, 290)
    assert progress.not_done == 0


def test_an_idle_bridge_confirms_a_keepalive_at_once() -> None:
    progress = Progress(100)
    assert progress.keepalive(500, in_transaction=False)
    assert progress.acknowledged == 500
    assert not progress.keepalive(400, in_transaction=False), "never backwards"
    assert not progress.keepalive(600, in_transaction=True), "a transaction half received may commit before it"
    assert progress.acknowledged == 500


def test_a_keepalive_waits_for_what_was_received_before_it() -> None:
    """B, C received, keepalive K1 (WAL end 400); D received, K2 (600). Nothing moves past a transaction
    received but not done: the psycopg2 flaw this guards against."""
    progress = Progress(100)
    b, c = release(progress, 200), release(progress, 300)
    assert not progress.keepalive(400, in_transaction=False)
    d = release(progress, 500)
    assert not progress.keepalive(600, in_transaction=False)
    progress.done(b)
    progress.advance()
    assert progress.acknowledged == 200
    progress.done(c)
    progress.advance()
    assert progress.acknowledged == 400, "all before K1 done: its WAL end is safe, D's commit is not"
    progress.done(d)
    progress.advance()
    assert progress.acknowledged == 600


def test_keepalives_with_nothing_received_between_them_are_one() -> None:
    progress = Progress(100)
    b = release(progress, 200)
    for wal_end in (300, 350, 400):
        progress.keepalive(wal_end, in_transaction=False)
    progress.done(b)
    progress.advance()
    assert progress.acknowledged == 400


def test_a_keepalive_waits_for_the_commit_that_takes_done_transactions() -> None:
    """Done is not enough: the pipeline makes the prior-row store durable, then commits (advance). A position
    reported in between would let a crash skip transactions whose rows the store never wrote."""
    progress = Progress(100)
    b = release(progress, 200)
    progress.done(b)
    assert not progress.keepalive(400, in_transaction=False)
    assert progress.acknowledged == 100
    progress.advance()
    assert progress.acknowledged == 400
    assert progress.keepalive(500, in_transaction=False)
