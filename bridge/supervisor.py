"""Ride out outages: after a retryable stop, wait with backoff and run the pipeline again, up to a limit.

An outage begins when a run stops with a retryable error (bridge/errors.py: a broker or database that
does not answer, a delivery Kafka did not acknowledge). The daemon has by then committed what was truly
done and closed the source and sink; the supervisor waits (1, 2, 4 ... 30 s), says every few seconds
what it waits for and since when, and starts a new run, which resumes from the committed position. The
outage ends when a run makes progress (an acknowledged delivery, a position committed upstream); a run
that fails again before that continues the same outage, so a service that accepts connections but never
acknowledges still reaches the limit. Beyond `limit_s` the bridge stops with exit code 3. A stop
request (SIGTERM) during the wait ends it at once; errors that waiting cannot fix stop at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from bridge.errors import BridgeError, ServiceUnavailable

log = logging.getLogger("bridge.supervisor")

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
REPORT_INTERVAL_S = 5.0


def backoff_delays(first_s: float = BACKOFF_FIRST_S, most_s: float = BACKOFF_MAX_S) -> Iterator[float]:
    """1, 2, 4 ... seconds, doubling up to `most_s`, then `most_s` for ever."""
    delay = first_s
    while True:
        yield delay
        delay = min(delay * 2, most_s)


@dataclass
class Outage:
    service: str  # e.g. "Kafka at 127.0.0.1:9092"
    cause: BridgeError
    since: float  # monotonic clock
    since_wall: float  # for the log line


class Supervisor:
    """Runs `run()` until it returns (stopped, or idle in batch use), waiting out retryable failures.

    The run calls `running()` once its source and sink are open and `progressed()` whenever a position is
    committed upstream. `blame(error)` names the service a failure is about; `heartbeat`, if given, is
    called every few seconds while waiting. Clocks and the reporting thread can be replaced for tests; with
    `report_in_background` the waiting line keeps coming while a reconnect blocks.
    """

    def __init__(self, *, stop: threading.Event, limit_s: float, blame: Callable[[BridgeError], str],
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                 report_interval_s: float = REPORT_INTERVAL_S, report_in_background: bool = True,
                 heartbeat: Callable[[], None] | None = None) -> None:
        self._stop = stop
        self._limit_s = limit_s
        self._blame = blame
        self._clock = clock
        self._wall_clock = wall_clock
        self._report_interval_s = report_interval_s
        self._background = report_in_background
        self._heartbeat = heartbeat  # told every few seconds while waiting: the process is alive (/healthz)
        self._lock = threading.Lock()
        self._outage: Outage | None = None
        self._waiting = False  # between a failure and the next run being up: the waiting line is due
        self._last_report = float("-inf")
        self.restarts = 0

    def supervise(self, run: Callable[[], None]) -> None:
        reporter = _Reporter(self, self._report_interval_s) if self._background else None
        try:
            self._loop(run)
        finally:
            if reporter is not None:
                reporter.finish()

    def _loop(self, run: Callable[[], None]) -> None:
        delays = backoff_delays()
        while True:
            try:
                run()
                return
            except BridgeError as exc:
                if not exc.retryable:
                    raise
                error = exc
            if self._stop.is_set():
                log.warning("stopped while %s was unavailable; what was not acknowledged is read again on the next "
                            "start", self._blame(error), extra={"error": str(error)})
                return
            if self._outage is None:  # a new outage (the last one ended with progress): backoff from the start
                delays = backoff_delays()
            outage = self._failed(error)
            waited = self._clock() - outage.since
            if waited >= self._limit_s:
                raise ServiceUnavailable(
                    f"gave up waiting for {outage.service} after {waited:.0f} s (pipeline.outage_limit_s = "
                    f"{self._limit_s:g}): {error}. Nothing unacknowledged was committed: start the bridge again "
                    "once the service is back") from error
            self.report_if_due()
            # The last wait ends at the limit, for one more try there.
            if self._sleep(min(next(delays), self._limit_s - waited)):
                log.info("stopped while waiting for %s", outage.service)
                return
            self.restarts += 1

    def _failed(self, error: BridgeError) -> Outage:
        service = self._blame(error)
        with self._lock:
            if self._outage is None:
                self._outage = Outage(service, error, self._clock(), self._wall_clock())
                self._last_report = float("-inf")  # say at once what happened
            else:
                self._outage.service, self._outage.cause = service, error
            self._waiting = True
            return self._outage

    def running(self) -> None:
        """A new run has opened its source and sink: no more waiting lines, unless it fails again."""
        with self._lock:
            outage, self._waiting = self._outage, False
        if outage is not None:
            log.info("%s answers again after %.0f s; resuming from the committed position", outage.service,
                     self._clock() - outage.since)

    def progressed(self) -> None:
        """The current run has committed a position upstream: the outage, if any, is over."""
        if self._outage is not None:
            with self._lock:
                self._outage = None

    def report_if_due(self) -> None:
        if self._heartbeat is not None and self._waiting:
            self._heartbeat()
        with self._lock:
            outage, now = self._outage, self._clock()
            if outage is None or not self._waiting or now - self._last_report < self._report_interval_s:
                return
            self._last_report = now
        since = datetime.fromtimestamp(outage.since_wall, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        log.warning("waiting for %s since %s (%.0f s; gives up after %g s): %s", outage.service, since,
                    now - outage.since, self._limit_s, outage.cause)

    def _sleep(self, seconds: float) -> bool:
        """Wait `seconds`, reporting as due; True when a stop was requested meanwhile."""
        end = self._clock() + max(0.0, seconds)
        while True:
            self.report_if_due()
            now = self._clock()
            remaining = end - now
            if remaining <= 0:
                return self._stop.is_set()
            until_report = max(self._last_report + self._report_interval_s - now, 0.001)
            if self._stop.wait(min(remaining, until_report)):
                return True


class _Reporter:
    """Repeats the waiting line while the main thread is blocked in a reconnect (a broker's bootstrap, a
    database's connect timeout): the operator sees the bridge is alive and what it waits for."""

    def __init__(self, supervisor: Supervisor, interval_s: float) -> None:
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(supervisor, interval_s), name="outage-reporter",
                                        daemon=True)
        self._thread.start()

    def _run(self, supervisor: Supervisor, interval_s: float) -> None:
        while not self._finished.wait(interval_s / 2):
            supervisor.report_if_due()

    def finish(self) -> None:
        self._finished.set()
        self._thread.join()
