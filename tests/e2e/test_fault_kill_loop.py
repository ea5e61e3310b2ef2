"""Fault suite, part 1: kill -9 the bridge over and over while the legacy app writes, on both sources.

Each round starts `cdc-bridge run`, lets it live for a random moment (sometimes not even long enough to
finish starting, sometimes long enough to publish and commit), and kills it with SIGKILL: no drain, no
final commit, no status to the server. After the last round a bridge runs to the end. The published
events, folded by the reference consumer, must equal the legacy rows exactly, nothing may be
dead-lettered, and every event published more than once must carry the same id, key, bytes and headers.
The seed of each run is printed, so a failure can be replayed.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from legacy_db.simulate import run_simulation
from tests.conftest import PUBLISHERS, DebeziumCapture
from tests.e2e.test_debezium_to_domain_events import Run
from tests.support.direct_run import DirectRun
from tests.support.bridge_process import BridgeProcess, wait_caught_up
from tests.support.event_checks import (
    assert_ordered_per_aggregate,
    assert_repeats_identical,
    assert_state_matches,
    fold,
)
from tests.support.local_stack import StackInfo

KILLS = 20
# A bridge lives this long before its SIGKILL: the short end dies while connecting or joining the group,
# the long end after several commits (commit_interval_s is 0.5 in the e2e config).
LIFETIME_S = (0.3, 3.0)


def _kill_loop(start: Callable[[], BridgeProcess], rng: random.Random, kills: int) -> list[int]:
    """Start and SIGKILL the bridge `kills` times; returns the exit codes of bridges that died by themselves."""
    early_exits = []
    for _ in range(kills):
        bridge = start()
        time.sleep(rng.uniform(*LIFETIME_S))
        if bridge.alive():
            bridge.kill()
        else:
            early_exits.append(bridge.process.returncode if bridge.process else -1)
    return early_exits


def _traffic(dsn: str, seed: int, result: dict) -> threading.Thread:
    # About as long as the kill rounds take, so every round kills a bridge with work in hand.
    return threading.Thread(target=lambda: result.update(report=run_simulation(dsn, seed=seed, count=2400, rate=60)))


@pytest.fixture
def seed() -> int:
    value = random.SystemRandom().randrange(1 << 30)
    print(f"fault suite seed: {value}")
    return value


@pytest.mark.parametrize(("kafka_client", "separate_process"), PUBLISHERS)
def test_twenty_kills_of_the_direct_bridge_lose_nothing(stack: StackInfo, fresh_legacy_db: str, tmp_path: Path,
                                                        seed: int, kafka_client: str, separate_process: bool) -> None:
    run = DirectRun(stack.bootstrap_servers, fresh_legacy_db, tmp_path, client=kafka_client,
                    separate_process=separate_process)
    rng = random.Random(seed)
    result: dict = {}
    traffic = _traffic(run.dsn, seed, result)
    final: BridgeProcess | None = None
    try:
        first = run.bridge()
        # The kills are about streaming. (An initial snapshot interrupted while rows are deleted leaves events of
        # rows its redo no longer has, which this fold would keep; tests/integration/test_pgoutput_initial_snapshot.py
        # tests the interrupted snapshot.)
        run.wait_for_snapshot(first)
        first.kill()
        traffic.start()
        early = _kill_loop(run.bridge, rng, KILLS)
        traffic.join(timeout=180)
        assert "report" in result, "the simulated traffic did not finish"
        final = run.bridge()
        run.wait_caught_up(final)
        assert final.stop() == 0, final.log()[-3000:]
    finally:
        if final is not None and final.alive():
            final.kill()
        run.drop_slot()
    assert early == [], f"bridges exited by themselves during the kill rounds: {early}\n{run.log.read_text()[-3000:]}"
    records = run.events()
    unique = assert_repeats_identical(records)
    assert run.dead_letters() == []
    assert_ordered_per_aggregate(records)
    assert_state_matches(fold(unique), run.dsn)


@pytest.mark.parametrize(("kafka_client", "separate_process"), PUBLISHERS)
def test_twenty_kills_of_the_debezium_bridge_lose_nothing(stack: StackInfo, debezium_capture: DebeziumCapture,
                                                          tmp_path: Path, seed: int, kafka_client: str,
                                                          separate_process: bool) -> None:
    run = Run(stack, debezium_capture, tmp_path, client=kafka_client, separate_process=separate_process)
    rng = random.Random(seed)
    result: dict = {}
    traffic = _traffic(debezium_capture.dsn, seed, result)
    final: BridgeProcess | None = None
    try:
        traffic.start()
        early = _kill_loop(run.bridge, rng, KILLS)
        traffic.join(timeout=180)
        assert "report" in result, "the simulated traffic did not finish"
        run.wait_for_debezium({tx.xid for tx in result["report"].transactions})
        final = run.bridge()
        wait_caught_up(final, stack.bootstrap_servers, run.group, run.source_topics)
        assert final.stop() == 0, final.log()[-3000:]
    finally:
        if final is not None and final.alive():
            final.kill()
    assert early == [], f"bridges exited by themselves during the kill rounds: {early}\n{run.log.read_text()[-3000:]}"
    records = run.events()
    unique = assert_repeats_identical(records)
    assert run.dead_letters() == []
    assert_ordered_per_aggregate(records)
    assert_state_matches(fold(unique), debezium_capture.dsn)
