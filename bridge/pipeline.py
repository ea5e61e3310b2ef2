"""source -> translate -> sink, with bounded in-flight events and acknowledgement after delivery.

A unit of work (one legacy transaction) is done when the sink has acknowledged every event and dead
letter derived from it; only done units let the source move its position. The prior-row store is
flushed before every source commit, so a replay never finds the store behind the source.
Nothing is dropped silently: each change is published, dead-lettered, or the pipeline stops with a reason.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bridge.errors import BridgeError, DeliveryError
from bridge.mapping.translate import translate
from bridge.ports import ChangeSource, EventSink, SourceUnit
from bridge.sinks.dead_letters import dead_letter_for_change, dead_letter_for_record
from bridge.state import PriorRowStore

log = logging.getLogger("bridge.pipeline")


STARTUP_GRACE_S = 30.0
PROGRESS_INTERVAL_S = 30.0
# The prior-row store is written and pruned in slices: one big write per checkpoint paused the loop for
# 40-180 ms at 2,000 transactions/s, and every transaction arriving meanwhile waited that long.
PRIOR_ROWS_FLUSH_BATCH = 500
PRIOR_ROWS_PRUNE_BATCH = 200


class PipelineStopped(BridgeError):
    """A change could not be handled and its policy is `stop`: nothing after it was acknowledged."""


@dataclass
class PipelineStats:
    transactions: int = 0
    changes: int = 0
    events: int = 0
    acknowledged: int = 0
    dead_letters: int = 0
    unmatched: Counter[str] = field(default_factory=Counter)
    ignored: Counter[str] = field(default_factory=Counter)
    last_activity: float = 0.0  # monotonic time of the last change handled or delivery acknowledged

    def as_dict(self) -> dict[str, Any]:
        return {"transactions": self.transactions, "changes": self.changes, "events": self.events,
                "acknowledged": self.acknowledged, "dead_letters": self.dead_letters,
                "unmatched": dict(self.unmatched), "ignored": dict(self.ignored)}


class Pipeline:
    def __init__(self, source: ChangeSource, sink: EventSink, mappings: Any, *, source_id: str,
                 prior_rows: PriorRowStore | None, max_in_flight_events: int = 20000,
                 commit_interval_s: float = 1.0, on_error: str | None = None,
                 stats: PipelineStats | None = None, metrics: Any | None = None) -> None:
        self.source = source
        self.sink = sink
        self.mappings = mappings
        self.source_id = source_id
        self.prior_rows = prior_rows
        self.max_in_flight = max_in_flight_events
        self.commit_interval_s = commit_interval_s
        self.on_error_override = on_error
        self.stats = PipelineStats() if stats is None else stats  # given: a caller watches it from another thread
        self.metrics = metrics  # bridge/metrics.py's PipelineMetrics, or None: told per transaction and loop turn
        self._completions: queue.SimpleQueue[tuple[int, Exception | None]] = queue.SimpleQueue()
        self._waiting: dict[int, list[Any]] = {}  # unit id -> [unit, deliveries outstanding]
        self._in_flight = 0
        self._next_id = 0

    def run(self, stop: threading.Event, *, idle_exit_s: float | None = None) -> None:
        """Run until `stop` is set, or, for batch use, until the source has been idle `idle_exit_s`.

        The idle clock starts with the first change (joining the consumer group takes a moment), or
        after STARTUP_GRACE_S when nothing at all arrives.
        """
        started = last_commit = last_report = time.monotonic()
        last_activity: float | None = None
        try:
            while not stop.is_set():
                self._collect(block=False)
                while self._in_flight >= self.max_in_flight:
                    self._collect(block=True, timeout_s=1.0)
                    if self.metrics is not None:
                        self.metrics.turn(time.monotonic(), self._in_flight)
                units = self.source.poll(0.2)
                for unit in units:
                    self._handle(unit)
                now = time.monotonic()
                # A source's heartbeats keep its position moving on a quiet database; they are not work.
                working = any(not unit.heartbeat for unit in units)
                if working:
                    self.stats.last_activity = now
                if working or self._in_flight or self.source.pending():
                    last_activity = now
                if self.metrics is not None:
                    self.metrics.turn(now, self._in_flight)
                if now - last_commit >= self.commit_interval_s:
                    self._checkpoint()
                    last_commit = now
                elif self.prior_rows is not None:
                    self.prior_rows.prune_some(PRIOR_ROWS_PRUNE_BATCH)
                if now - last_report >= PROGRESS_INTERVAL_S:
                    log.info("progress", extra={**self.stats.as_dict(), "in_flight": self._in_flight})
                    last_report = now
                idle_since = last_activity if last_activity is not None else started + STARTUP_GRACE_S
                if idle_exit_s is not None and now - idle_since >= idle_exit_s:
                    break
            self.drain()
        except BaseException:
            # Commit what is truly done (it is safe), then let the reason surface.
            self._safe_checkpoint()
            raise

    def _handle(self, unit: SourceUnit) -> None:
        if unit.error is not None:
            self._handle_undecodable(unit)
            return
        transaction = unit.transaction
        assert transaction is not None
        result = translate(transaction, self.mappings, source_id=self.source_id, prior_rows=self.prior_rows)
        self.stats.transactions += not unit.heartbeat  # the source's keep-alives are not legacy transactions
        self.stats.changes += len(transaction.changes)
        self.stats.unmatched.update(result.unmatched)
        self.stats.ignored.update(result.ignored)
        if self.metrics is not None:
            self.metrics.transaction(transaction, result, unit.heartbeat)
        letters = []
        for letter in result.dead_letters:
            if self._policy(letter) == "stop":
                raise PipelineStopped(
                    f"rule {letter.rule_id!r} failed on {letter.change.qualified_table} at {letter.change.position} "
                    f"({letter.change.source_ref}): {letter.error}. Policy is 'stop': fix the mapping or the data "
                    "and restart; nothing after this change was acknowledged.")
            log.warning("dead letter", extra={"table": letter.change.table, "rule": letter.rule_id,
                                              "position": str(letter.change.position), "error": str(letter.error)})
            letters.append(dead_letter_for_change(letter, self.source_id))
        if self.prior_rows is not None:
            self.prior_rows.record(transaction)
            if self.prior_rows.buffered >= PRIOR_ROWS_FLUSH_BATCH:
                self.prior_rows.flush()  # ahead of the source is safe: entries carry their positions
        deliveries = len(result.events) + len(letters)
        if deliveries == 0:
            self.source.done(unit)
            return
        unit_id = self._track(unit, deliveries)
        callback = self._callback(unit_id)
        for event in result.events:
            log.debug("event", extra={"event_id": event.id, "type": event.type, "rule": event.rule_id,
                                      "position": str(event.position)})
            self.sink.publish(event, callback)
        for record, key in letters:
            self.sink.publish_dead_letter(record, key, callback)
        self.stats.events += len(result.events)
        self.stats.dead_letters += len(letters)

    def _handle_undecodable(self, unit: SourceUnit) -> None:
        assert unit.error is not None
        if (self.on_error_override or "dead_letter") == "stop":
            raise PipelineStopped(f"{unit.error}. Policy is 'stop': nothing after this record was acknowledged.")
        log.warning("undecodable change dead-lettered", extra={"error": str(unit.error), **unit.raw})
        if self.metrics is not None:
            self.metrics.undecodable()
        record, key = dead_letter_for_record(unit.raw, unit.error, self.source_id)
        unit_id = self._track(unit, 1)
        self.sink.publish_dead_letter(record, key, self._callback(unit_id))
        self.stats.dead_letters += 1

    def _policy(self, letter: Any) -> str:
        return self.on_error_override or getattr(letter, "on_error", "dead_letter")

    def _track(self, unit: SourceUnit, deliveries: int) -> int:
        self._next_id += 1
        self._waiting[self._next_id] = [unit, deliveries]
        self._in_flight += deliveries
        return self._next_id

    def _callback(self, unit_id: int):  # noqa: ANN202 (a closure handed to the sink's I/O thread)
        put = self._completions.put
        return lambda error: put((unit_id, error))

    def _collect(self, *, block: bool, timeout_s: float = 0.0) -> None:
        """Apply delivery results; a failed delivery stops the pipeline (the change will be read again)."""
        while True:
            try:
                unit_id, error = self._completions.get(block=block, timeout=timeout_s if block else None)
            except queue.Empty:
                return
            block = False
            if error is not None:
                raise error if isinstance(error, DeliveryError) else DeliveryError(str(error))
            entry = self._waiting[unit_id]
            entry[1] -= 1
            self._in_flight -= 1
            self.stats.acknowledged += 1
            if entry[1] == 0:
                del self._waiting[unit_id]
                self.source.done(entry[0])
                if self.metrics is not None:
                    self.metrics.published(entry[0])
                self.stats.last_activity = time.monotonic()

    def _checkpoint(self) -> None:
        if self.prior_rows is not None:
            self.prior_rows.flush()
        safe = self.source.commit()
        if safe is not None and self.prior_rows is not None:
            self.prior_rows.schedule_prune(safe)

    def _safe_checkpoint(self) -> None:
        try:
            self._collect(block=False)
        except BridgeError:
            pass
        try:
            self._checkpoint()
        except BridgeError as exc:
            log.error("final checkpoint failed", extra={"error": str(exc)})

    def drain(self, timeout_s: float = 60.0) -> None:
        """Wait for every in-flight delivery, then commit: a graceful stop loses and repeats nothing."""
        deadline = time.monotonic() + timeout_s
        self.sink.flush(timeout_s)
        while self._in_flight and time.monotonic() < deadline:
            self._collect(block=True, timeout_s=0.5)
        if self._in_flight:
            raise DeliveryError(f"{self._in_flight} event(s) still unacknowledged after {timeout_s:.0f}s; "
                                "their changes will be read again on restart")
        self._checkpoint()
