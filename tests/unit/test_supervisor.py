"""The supervisor's logic with a fake clock: backoff, the outage limit, a stop during the wait, which
errors are waited for, and the waiting line."""

from __future__ import annotations

import logging
from collections.abc import Callable
from itertools import islice

import pytest

from bridge.errors import BridgeError, ConfigurationError, DeliveryError, ServiceUnavailable
from bridge.pipeline import PipelineStopped
from bridge.supervisor import Supervisor, backoff_delays


class FakeTime:
    """A clock that moves only when the supervisor waits; a stop may be requested at a given time."""

    def __init__(self, stop_at: float | None = None) -> None:
        self.now = 1000.0
        self.stop_at = stop_at
        self.waits: list[float] = []
        self._set = False

    def clock(self) -> float:
        return self.now

    def wall_clock(self) -> float:
        return 1_790_000_000.0 + self.now

    # threading.Event's interface, as the supervisor uses it
    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        if self.stop_at is not None and self.now + timeout >= self.stop_at:
            self.now = max(self.now, self.stop_at)
            self._set = True
            return True
        self.now += timeout
        return False


def supervisor(fake: FakeTime, limit_s: float = 60.0) -> Supervisor:
    return Supervisor(stop=fake, limit_s=limit_s, blame=lambda error: "Kafka at k1:9092",  # type: ignore[arg-type]
                      clock=fake.clock, wall_clock=fake.wall_clock, report_interval_s=5.0,
                      report_in_background=False)


def runs(*outcomes: BridgeError | None, each_takes_s: float = 0.0, fake: FakeTime | None = None,
         on_run: Callable[[int], None] | None = None) -> tuple[Callable[[], None], list[int]]:
    """A run that fails with the given errors in turn (None: returns normally)."""
    calls: list[int] = []

    def run() -> None:
        calls.append(len(calls))
        if fake is not None:
            fake.now += each_takes_s
        if on_run is not None:
            on_run(len(calls) - 1)
        outcome = outcomes[min(len(calls) - 1, len(outcomes) - 1)]
        if outcome is not None:
            raise outcome

    return run, calls


def waiting_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("waiting for")]


def test_backoff_doubles_from_one_second_up_to_thirty() -> None:
    assert list(islice(backoff_delays(), 8)) == [1, 2, 4, 8, 16, 30, 30, 30]


def test_a_retryable_stop_is_waited_out_with_backoff_and_the_run_started_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "bridge.supervisor")
    fake = FakeTime()
    down = ServiceUnavailable("no Kafka broker answers at k1:9092")
    run, calls = runs(down, down, down, None)
    sup = supervisor(fake)
    sup.supervise(run)
    assert len(calls) == 4, "three failures, then the run that went on until stopped"
    assert sum(fake.waits) == pytest.approx(1 + 2 + 4)
    assert sup.restarts == 3
    lines = waiting_lines(caplog)
    assert lines, "the wait is announced"
    assert lines[0].startswith("waiting for Kafka at k1:9092 since 2026-")
    assert "gives up after 60 s" in lines[0] and lines[0].endswith(str(down))


def test_beyond_the_limit_the_last_cause_is_reported_with_the_limit() -> None:
    fake = FakeTime()
    run, calls = runs(DeliveryError("Kafka did not acknowledge event e1"), each_takes_s=2.0, fake=fake)
    with pytest.raises(ServiceUnavailable) as stopped:
        supervisor(fake, limit_s=40).supervise(run)
    message = str(stopped.value)
    assert message.startswith("gave up waiting for Kafka at k1:9092 after ")
    assert "pipeline.outage_limit_s = 40" in message and "Kafka did not acknowledge event e1" in message
    assert stopped.value.exit_code == 3
    # The outage starts with the first failure (after the first 2 s run) and ends with one last try at the limit.
    assert fake.now - 1000.0 <= 2.0 + 40 + 2.0 + 1e-9, "never waits past the limit"
    assert fake.now - 1000.0 >= 40, "waits the whole limit"
    assert len(calls) >= 5


def test_a_limit_of_zero_stops_at_the_first_failure_without_waiting() -> None:
    fake = FakeTime()
    run, calls = runs(ServiceUnavailable("down"))
    with pytest.raises(ServiceUnavailable, match="gave up waiting"):
        supervisor(fake, limit_s=0).supervise(run)
    assert calls == [0] and fake.waits == []


@pytest.mark.parametrize("error", [
    ConfigurationError("database 'nope' does not exist"),
    PipelineStopped("rule r1 failed; policy is 'stop'"),
    DeliveryError("the broker refuses a 2 MB record", retryable=False),
], ids=["configuration", "policy-stop", "refused-delivery"])
def test_errors_waiting_cannot_fix_stop_at_once(error: BridgeError) -> None:
    fake = FakeTime()
    run, calls = runs(error)
    with pytest.raises(type(error)) as raised:
        supervisor(fake).supervise(run)
    assert raised.value is error and calls == [0] and fake.waits == []


def test_a_refused_delivery_is_not_a_retry_later_exit() -> None:
    assert DeliveryError("timed out").exit_code == 3
    assert DeliveryError("too large", retryable=False).exit_code == 1


def test_a_stop_during_the_wait_ends_it_at_once_without_an_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "bridge.supervisor")
    fake = FakeTime(stop_at=1000.0 + 2.5)  # SIGTERM while waiting after the second failure
    run, calls = runs(ServiceUnavailable("down"))
    supervisor(fake).supervise(run)
    assert len(calls) == 2
    assert fake.now == pytest.approx(1002.5)
    assert any("stopped while waiting for Kafka at k1:9092" in r.getMessage() for r in caplog.records)


def test_a_failure_after_a_stop_was_requested_is_not_waited_for() -> None:
    fake = FakeTime()

    def run() -> None:
        fake.set()  # SIGTERM arrived; the drain then failed because Kafka is away
        raise DeliveryError("3 event(s) still unacknowledged")

    supervisor(fake).supervise(run)
    assert fake.waits == []


def test_runs_that_open_but_make_no_progress_do_not_reset_the_outage() -> None:
    """A broker that accepts connections but never acknowledges must still reach the limit."""
    fake = FakeTime()
    sup = supervisor(fake, limit_s=100)
    run, calls = runs(DeliveryError("not acknowledged"), each_takes_s=10.0, fake=fake,
                      on_run=lambda _: sup.running())
    with pytest.raises(ServiceUnavailable, match="gave up waiting"):
        sup.supervise(run)
    assert fake.now - 1000.0 <= 10 + 100 + 10 + 1e-9


def test_progress_ends_the_outage_so_a_later_one_has_its_own_clock_and_backoff() -> None:
    fake = FakeTime()
    sup = supervisor(fake, limit_s=100)

    def on_run(index: int) -> None:
        sup.running()
        if index in (3, 6):
            sup.progressed()  # this run committed a position before it failed
        fake.now += 20.0

    run, calls = runs(*[ServiceUnavailable("stream broke")] * 9, None, on_run=on_run)
    sup.supervise(run)  # 9 failures over ~200 s, but no outage lasted 100 s
    assert fake.waits[:4] == [1, 2, 4, 1], "backoff starts again after progress"
    assert len(calls) == 10


def test_the_waiting_line_comes_every_few_seconds_not_at_every_attempt(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "bridge.supervisor")
    fake = FakeTime()
    run, _ = runs(*[ServiceUnavailable("down")] * 6, None)
    supervisor(fake).supervise(run)  # waits 1+2+4+8+16+30 = 61 s
    lines = waiting_lines(caplog)
    assert 61 / 5 - 3 <= len(lines) <= 61 / 5 + 2, lines
    assert "(0 s;" in lines[0] and "(5 s;" in lines[1], lines


def test_a_blocked_reconnect_still_gets_its_waiting_line(caplog: pytest.LogCaptureFixture) -> None:
    """report_if_due is what the background reporter calls while the main thread is blocked."""
    caplog.set_level(logging.INFO, "bridge.supervisor")
    fake = FakeTime()
    sup = supervisor(fake)
    during: list[str] = []

    def on_run(index: int) -> None:
        if index == 1:  # a reconnect that blocks for 12 s (a broker's bootstrap timeout)
            before = len(waiting_lines(caplog))
            for _ in range(12):
                fake.now += 1.0
                sup.report_if_due()
            during.extend(waiting_lines(caplog)[before:])

    run, _ = runs(ServiceUnavailable("down"), ServiceUnavailable("down"), None, on_run=on_run)
    sup.supervise(run)
    assert len(during) == 2, f"a line every 5 s during the 12 s the reconnect blocked: {during}"


def test_no_waiting_line_once_a_new_run_is_up() -> None:
    fake = FakeTime()
    sup = supervisor(fake)
    lines: list[str] = []

    def on_run(index: int) -> None:
        if index == 1:
            sup.running()
            fake.now += 30.0
            handler = logging.Handler()
            handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
            logging.getLogger("bridge.supervisor").addHandler(handler)
            try:
                sup.report_if_due()
            finally:
                logging.getLogger("bridge.supervisor").removeHandler(handler)

    run, _ = runs(ServiceUnavailable("down"), None, on_run=on_run)
    sup.supervise(run)
    assert lines == []
