"""source -> translate -> sink, with bounded in-flight events and acknowledgement after delivery.

A unit of work (one legacy transaction) is done when the sink has acknowledged every event and dead
letter derived from it; only done units let the source move its position. The prior-row store is
flushed before every source commit, so a replay never finds the store behind the source.
Nothing is dropped silently: each change is published, dead-lettered, or the pipeline stops with a reason.
An event (or dead letter) larger than the sink takes is replaced by a bounded dead letter in the same
unit, so one oversized row cannot stop the stream at every restart.

A transaction larger than `slice_changes` is translated and published a slice at a time (_handle), so
neither its changes nor its events are ever held all at once, and the source is kept alive in between.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.changes import RowChange, SourcePosition
from bridge.errors import BridgeError, ConfigurationError, DeliveryError, RecordTooLarge
from bridge.events import DomainEvent
from bridge.mapping.translate import TranslatedSlice, translate_in_slices
from bridge.ports import ChangeSource, EventSink, ReplaysFromFloor, SourceUnit
from bridge.sinks.dead_letters import (
    dead_letter_for_change,
    dead_letter_for_oversized_event,
    dead_letter_for_record,
    shrink_dead_letter,
)
from bridge.state import PriorRowStore

log = logging.getLogger("bridge.pipeline")


STARTUP_GRACE_S = 30.0
PROGRESS_INTERVAL_S = 30.0
# The prior-row store is written and pruned in slices: one big write per checkpoint paused the loop for
# 40-180 ms at 2,000 transactions/s, and every transaction arriving meanwhile waited that long.
PRIOR_ROWS_FLUSH_BATCH = 500
PRIOR_ROWS_PRUNE_BATCH = 200
DEFAULT_SLICE_CHANGES = 10_000


class PipelineStopped(BridgeError):
    """A change could not be handled and its policy is `stop`: nothing after it was acknowledged."""


class DeadLetterTooLarge(ConfigurationError):
    """Even a dead letter cut to its coordinates is larger than the sink takes: its limit is set too low."""


@dataclass(frozen=True, slots=True)
class _Letter:
    """A dead letter in flight, kept until acknowledged in case the sink refuses it as too large."""

    record: dict[str, Any]
    key: bytes | None
    bounded: bool = False  # already cut down: refused again, there is nothing left to cut


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
                 stats: PipelineStats | None = None, metrics: Any | None = None,
                 on_commit: Callable[[SourcePosition], None] | None = None,
                 slice_changes: int = DEFAULT_SLICE_CHANGES) -> None:
        self.source = source
        self.on_commit = on_commit  # told each position the source committed (the supervisor: "working again")
        self.sink = sink
        self.mappings = mappings
        self.source_id = source_id
        self.prior_rows = prior_rows
        self.max_in_flight = max_in_flight_events
        self.commit_interval_s = commit_interval_s
        self.on_error_override = on_error
        self.slice_changes = slice_changes
        self.stats = PipelineStats() if stats is None else stats  # given: a caller watches it from another thread
        self.metrics = metrics  # bridge/metrics.py's PipelineMetrics, or None: told per transaction and loop turn
        self._completions: queue.SimpleQueue[tuple[int, Exception | None]] = queue.SimpleQueue()
        self._waiting: dict[int, list[Any]] = {}  # unit id -> [unit, deliveries outstanding, deliveries in all]
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
                self._wait_for_room()
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
        """Translate and publish one unit; the source hears it is done once every delivery is acknowledged.

        A transaction above `slice_changes` goes a slice at a time; in between, the pipeline waits for room
        in flight and keeps the source alive. A dead letter with policy stop in a later slice stops the
        pipeline after earlier slices were published: that is safe only because the unit is never done, so
        its position is never acknowledged and a restart translates the whole transaction again, giving the
        same event ids (consumers deduplicate on them).
        """
        if unit.error is not None:
            self._handle_undecodable(unit)
            return
        transaction = unit.transaction
        assert transaction is not None
        # Neither the source's keep-alives nor a batch of snapshot reads is a legacy transaction (their rows count).
        self.stats.transactions += not unit.heartbeat and transaction.snapshot is None
        unit_id = self._track(unit, 0, held=True)  # held open until its last slice is published
        stored = None if type(transaction.changes) is tuple else transaction.changes  # spilled to disk
        try:
            slices = translate_in_slices(transaction, self.mappings, source_id=self.source_id,
                                         prior_rows=self.prior_rows, slice_changes=self.slice_changes,
                                         stopped_rules=unit.stopped_rules)
            after_others = False
            for part in slices:  # (not enumerate: its reused result tuple would hold the slice on)
                self._publish_slice(unit_id, unit, part, after_others=after_others)
                if not part.last:
                    del part  # the next slice is translated while this one would wait: hold one at a time
                    self._between_slices()
                    after_others = True
        finally:
            if stored is not None:
                stored.close()
        if self.prior_rows is not None and self.prior_rows.buffered >= PRIOR_ROWS_FLUSH_BATCH:
            self.prior_rows.flush()  # ahead of the source is safe: entries carry their positions
        self._release(unit_id)

    def _publish_slice(self, unit_id: int, unit: SourceUnit, part: TranslatedSlice, *, after_others: bool) -> None:
        result = part.result
        self.stats.changes += len(part.changes)
        self.stats.unmatched.update(result.unmatched)
        self.stats.ignored.update(result.ignored)
        if self.metrics is not None:
            snapshot = unit.transaction is not None and unit.transaction.snapshot is not None
            self.metrics.transaction(part, result, unit.heartbeat or snapshot, first_slice=not after_others)
        letters = []
        for letter in result.dead_letters:
            if self._policy(letter) == "stop":
                published = "" if not after_others else (
                    " Earlier slices of this large transaction were published, but it is not acknowledged: a "
                    "restart publishes them again with the same ids.")
                raise PipelineStopped(
                    f"rule {letter.rule_id!r} failed on {letter.change.qualified_table} at {letter.change.position} "
                    f"({letter.change.source_ref}): {letter.error}. Policy is 'stop': fix the mapping or the data "
                    f"and restart; nothing after this change was acknowledged.{published}")
            log.warning("dead letter", extra={"table": letter.change.table, "rule": letter.rule_id,
                                              "position": str(letter.change.position), "error": str(letter.error)})
            letters.append(dead_letter_for_change(letter, self.source_id))
        if not after_others:
            letters.extend(self._undecodable_rows(unit))
        deliveries = len(result.events) + len(letters)
        if deliveries == 0:
            return
        entry = self._waiting[unit_id]
        entry[1] += deliveries
        entry[2] += deliveries
        self._in_flight += deliveries
        self.stats.events += len(result.events)
        self.stats.dead_letters += len(letters)
        debugging = log.isEnabledFor(logging.DEBUG)  # the line's fields cost 2% of a backfill even when unused
        for event in result.events:
            if debugging:
                log.debug("event", extra={"event_id": event.id, "type": event.type, "rule": event.rule_id,
                                          "position": str(event.position)})
            self.sink.publish(event, self._callback(unit_id, event))
        for record, key in letters:
            self._publish_letter(unit_id, _Letter(record, key))

    def _between_slices(self) -> None:
        """Before the next slice of a large transaction: write the prior rows recorded so far in batches, wait
        for room in flight, and let the source keep its connection alive (a replication stream that reports
        nothing for wal_sender_timeout is ended by the server)."""
        if self.prior_rows is not None and self.prior_rows.buffered >= PRIOR_ROWS_FLUSH_BATCH:
            self.prior_rows.flush()
        self._collect(block=False)
        self.source.keep_alive()
        self._wait_for_room()
        now = time.monotonic()
        self.stats.last_activity = now
        if self.metrics is not None:
            self.metrics.turn(now, self._in_flight)  # alive: /healthz must not take a long transaction for a hang

    def _wait_for_room(self) -> None:
        """Block while `max_in_flight` deliveries are unacknowledged. The source is kept alive meanwhile (a
        replication stream that reports nothing for wal_sender_timeout is ended by the server, however slow
        the sink is) and so is /healthz."""
        while self._in_flight >= self.max_in_flight:
            self._collect(block=True, timeout_s=1.0)
            self.source.keep_alive()
            if self.metrics is not None:
                self.metrics.turn(time.monotonic(), self._in_flight)

    def _undecodable_rows(self, unit: SourceUnit) -> list[tuple[dict[str, Any], bytes | None]]:
        """Dead letters for the rows of `unit`'s transaction that could not be decoded: they belong to it,
        so their offsets are committed with it, in commit order, and never block it."""
        if not unit.dead_lettered:
            return []
        transaction = unit.transaction
        assert transaction is not None
        first = unit.dead_lettered[0]
        if (self.on_error_override or "dead_letter") == "stop":
            raise PipelineStopped(f"{first.error}. Policy is 'stop': nothing from transaction xid {transaction.xid} "
                                  "on was acknowledged.")
        context = {"xid": transaction.xid, "commit_lsn": transaction.commit_lsn, "incomplete": True}
        if self.metrics is not None:
            self.metrics.undecodable(len(unit.dead_lettered))
        log.warning("transaction incomplete: undecodable rows dead-lettered, the rest translated", extra={
            "xid": transaction.xid, "dead_lettered": [row.where for row in unit.dead_lettered],
            "error": str(first.error)})
        return [dead_letter_for_record(row.raw, row.error, self.source_id,
                                       transaction={**context, "total_order": row.total_order})
                for row in unit.dead_lettered]

    def _handle_undecodable(self, unit: SourceUnit) -> None:
        assert unit.error is not None
        if (self.on_error_override or "dead_letter") == "stop":
            raise PipelineStopped(f"{unit.error}. Policy is 'stop': nothing after this record was acknowledged.")
        kind = getattr(unit.error, "dead_letter_kind", "undecodable")
        log.warning(f"{kind.replace('_', ' ')} change dead-lettered", extra={"error": str(unit.error),
                                                                            **_where(unit.raw)})
        if self.metrics is not None:
            self.metrics.undecodable()
        record, key = dead_letter_for_record(unit.raw, unit.error, self.source_id)
        unit_id = self._track(unit, 1)
        self.stats.dead_letters += 1
        self._publish_letter(unit_id, _Letter(record, key))

    def _publish_letter(self, unit_id: int, letter: _Letter) -> None:
        self.sink.publish_dead_letter(letter.record, letter.key, self._callback(unit_id, letter))

    def _replace_too_large(self, unit_id: int, subject: DomainEvent | _Letter, too_large: RecordTooLarge) -> None:
        """The sink refused one record of a unit as too large: publish a bounded dead letter in its place
        (the unit still waits for one delivery), or stop when even that was refused."""
        if isinstance(subject, DomainEvent):
            change = self._change_at(unit_id, subject)
            if self._rule_policy(subject.rule_id) == "stop":
                raise PipelineStopped(
                    f"event {subject.id} ({subject.type}) of rule {subject.rule_id!r} at {subject.position} is "
                    f"{too_large}. Policy is 'stop': nothing after this change was acknowledged; raise the limit "
                    "(sink.max_message_bytes and the topic's max.message.bytes) or change the rule.")
            log.warning("event too large for the sink: dead-lettered", extra={
                "event_id": subject.id, "type": subject.type, "rule": subject.rule_id,
                "table": change.qualified_table if change else None, "position": str(subject.position),
                "size": too_large.size, "limit": too_large.limit})
            record, key = dead_letter_for_oversized_event(subject, change, too_large, self.source_id)
            if self.metrics is not None:
                self.metrics.too_large(subject.rule_id)
            self.stats.events -= 1
            self.stats.dead_letters += 1
        elif not subject.bounded:
            log.warning("dead letter too large for the sink: cut to its coordinates", extra={
                "kind": subject.record.get("kind"), "rule": subject.record.get("rule"),
                "size": too_large.size, "limit": too_large.limit})
            record, key = shrink_dead_letter(subject.record, subject.key, too_large)
        else:
            raise DeadLetterTooLarge(
                f"a dead letter cut to its coordinates ({subject.record.get('kind')}, rule "
                f"{subject.record.get('rule')}, {_coordinates(subject.record)}) is still {too_large}: that limit "
                "is too low for any dead letter. Raise sink.max_message_bytes or the dead-letter topic's "
                "max.message.bytes; nothing after this change was acknowledged.")
        self._publish_letter(unit_id, _Letter(record, key, bounded=True))

    def _change_at(self, unit_id: int, event: DomainEvent) -> RowChange | None:
        transaction = self._waiting[unit_id][0].transaction
        if transaction is None or type(transaction.changes) is not tuple:
            return None  # a transaction spilled to disk is closed once translated: the event names its position
        return next((change for change in transaction.changes if change.position == event.position), None)

    def _rule_policy(self, rule_id: str) -> str:
        if self.on_error_override:
            return self.on_error_override
        return next((rule.on_error for rule in getattr(self.mappings, "rules", ()) if rule.id == rule_id),
                    "dead_letter")

    def _policy(self, letter: Any) -> str:
        return self.on_error_override or getattr(letter, "on_error", "dead_letter")

    def _track(self, unit: SourceUnit, deliveries: int, *, held: bool = False) -> int:
        """Wait for `deliveries` acknowledgements of `unit`; `held`: and for `_release`, however many come."""
        self._next_id += 1
        self._waiting[self._next_id] = [unit, deliveries + held, deliveries]
        self._in_flight += deliveries
        return self._next_id

    def _release(self, unit_id: int) -> None:
        """Every delivery of a held unit is published: it is done once they are acknowledged (or now)."""
        entry = self._waiting[unit_id]
        entry[1] -= 1
        if entry[1] == 0:
            del self._waiting[unit_id]
            self.source.done(entry[0])
            if self.metrics is not None and entry[2]:  # (a unit with nothing to publish has no latency)
                self.metrics.published(entry[0])

    def _callback(self, unit_id: int, subject: DomainEvent | _Letter):  # noqa: ANN202 (runs on the sink's I/O thread)
        put = self._completions.put
        return lambda error: put((unit_id, subject, error))

    def _collect(self, *, block: bool, timeout_s: float = 0.0) -> None:
        """Apply delivery results; a failed delivery stops the pipeline (the change will be read again)."""
        while True:
            try:
                unit_id, subject, error = self._completions.get(block=block, timeout=timeout_s if block else None)
            except queue.Empty:
                return
            block = False
            if isinstance(error, RecordTooLarge) and unit_id in self._waiting:
                self._replace_too_large(unit_id, subject, error)
                continue
            if error is not None:
                raise error if isinstance(error, BridgeError) else DeliveryError(str(error))
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
        if safe is not None and self.on_commit is not None:
            self.on_commit(safe)
        if safe is not None and self.prior_rows is not None:
            # A replay can start before what was committed (a slot moved back): keep history back to there.
            floor = self.source.replay_floor() if isinstance(self.source, ReplaysFromFloor) else None
            self.prior_rows.schedule_prune(safe if floor is None else min(safe, floor))

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


def _where(raw: dict[str, Any]) -> dict[str, Any]:
    """What a log line says about an undecodable record: where it is, never its (maybe huge) content."""
    return {name: value for name, value in raw.items() if isinstance(value, (int, float, bool)) or value is None
            or (isinstance(value, str) and len(value) <= 200 and name not in ("key", "value", "error"))}


def _coordinates(record: dict[str, Any]) -> str:
    change, raw = record.get("change"), record.get("record")
    if isinstance(change, dict):
        return f"table {change.get('table')} at {change.get('position')}"
    if isinstance(raw, dict):
        return f"topic {raw.get('topic')} partition {raw.get('partition')} offset {raw.get('offset')}"
    return "no coordinates"
