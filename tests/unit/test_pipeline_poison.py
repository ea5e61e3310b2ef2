"""Records the sink cannot take must not stop the stream: an event (or dead letter) over the sink's
per-record maximum becomes a bounded dead letter in the same unit, and a transaction with undecodable
rows completes, translated without them, their dead letters part of its unit."""

from __future__ import annotations

import json
import logging
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bridge.errors import DecodeError, RecordTooLarge
from bridge.mapping.loader import load_mappings
from bridge.pipeline import DeadLetterTooLarge, Pipeline, PipelineStopped
from bridge.ports import SourceUnit, UndecodableRow
from bridge.sinks.dead_letters import encode_dead_letter
from tests.unit.test_pipeline import MAPPING, FakeSink, FakeSource
from tests.unit.test_pipeline import _unit as _order

# OrderOpened carries the order's note as is: a long note makes a large event.
NOTE_MAPPING = MAPPING.replace("data: {{id: after.id, total: after.total * 2}}",
                               "data: {{id: after.id, total: after.total * 2, note: after.note}}")


class LimitedSink(FakeSink):
    """Refuses records over `limit` bytes the way the real sinks do: RecordTooLarge through the callback,
    synchronously, nothing sent."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.refused: list[tuple[str, Any]] = []

    def publish(self, event: Any, on_delivery: Any) -> None:
        if len(event.value()) > self.limit:
            self.refused.append(("event", event))
            on_delivery(RecordTooLarge(len(event.value()), self.limit, "the test sink"))
            return
        super().publish(event, on_delivery)

    def publish_dead_letter(self, record: dict, key: bytes | None, on_delivery: Any) -> None:
        size = len(encode_dead_letter(record))
        if size > self.limit:
            self.refused.append(("dead_letter", record))
            on_delivery(RecordTooLarge(size, self.limit, "the test sink"))
            return
        super().publish_dead_letter(record, key, on_delivery)


def _unit(order_id: int, total: Any, lsn: int, note: str = "") -> SourceUnit:
    unit = _order(order_id, total, lsn)
    change = unit.transaction.changes[0]
    after = {**change.after, "note": note}
    changed = type(change)(**{**{name: getattr(change, name) for name in change.__slots__}, "after": after})
    unit.transaction = type(unit.transaction)(xid=lsn, commit_lsn=lsn + 8, commit_time=change.commit_time,
                                              changes=(changed,))
    return unit


def _pipeline(tmp_path: Path, units: list[SourceUnit], sink: FakeSink, policy: str = "dead_letter"):
    mapping = tmp_path / "shop.yaml"
    mapping.write_text(NOTE_MAPPING.format(policy=policy))
    source = FakeSource(units)
    pipeline = Pipeline(source, sink, load_mappings([mapping]), source_id="test", prior_rows=None,
                        commit_interval_s=0.01)
    return pipeline, source


def _run_until_done(pipeline: Pipeline, source: FakeSource, sink: FakeSink, units: int) -> None:
    """Acknowledge whatever the sink holds until `units` units are done (or fail after 20 s)."""
    stop = threading.Event()

    def acknowledge() -> None:
        for _ in range(400):
            sink.ack_all()
            if len(source.done_units) >= units:
                break
            threading.Event().wait(0.05)
        stop.set()
    threading.Thread(target=acknowledge).start()
    pipeline.run(stop)


def test_an_event_too_large_for_the_sink_becomes_a_bounded_dead_letter_and_the_stream_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sink = LimitedSink(limit=4000)
    units = [_unit(1, Decimal("1.00"), 100, note="n" * 10_000), _unit(2, Decimal("1.50"), 200)]
    pipeline, source = _pipeline(tmp_path, units, sink)
    with caplog.at_level(logging.WARNING, logger="bridge.pipeline"):
        _run_until_done(pipeline, source, sink, units=2)
    assert [u.handle for u in source.done_units] == [1, 2], "both units are acknowledged"
    [(_, refused)] = sink.refused
    letters = [record for kind, record in sink.sent if kind == "dead_letter"]
    [letter] = letters
    assert letter["kind"] == "too_large" and letter["rule"] == "orders.opened"
    assert letter["event"]["id"] == refused.id and letter["size"] == len(refused.value()) and letter["limit"] == 4000
    assert letter["change"]["table"] == "public.orders" and letter["change"]["key"] == {"id": 1}
    assert letter["change"]["xid"] == 100 and letter["payload"]["prefix"].startswith('{"id":1,"total":"2.00","note":"nnn')
    assert len(encode_dead_letter(letter)) < 4000 + 2000
    events = [event for kind, event in sink.sent if kind == "event"]
    assert [e.data["id"] for e in events] == [1, 2, 2], "order 1's small event and both of order 2's go out"
    assert events[0].type.endswith("OrderAudited.v1")
    assert pipeline.stats.dead_letters == 1 and pipeline.stats.events == 3
    assert any("event too large for the sink" in r.getMessage() for r in caplog.records)


def test_a_dead_letter_too_large_for_the_sink_is_cut_to_its_coordinates(tmp_path: Path) -> None:
    sink = LimitedSink(limit=9000)
    units = [_unit(1, "x" * 20_000, 100)]  # the rule fails on it: its dead letter carries the 20 KB row
    pipeline, source = _pipeline(tmp_path, units, sink)
    _run_until_done(pipeline, source, sink, units=1)
    assert [u.handle for u in source.done_units] == [1]
    [(kind, refused)] = sink.refused
    assert kind == "dead_letter" and refused["kind"] == "translation_failed"
    [(kind, letter)] = sink.sent
    assert letter["kind"] == "translation_failed" and letter["rule"] == "orders.opened"
    assert letter["change"]["table"] == "public.orders" and "after" not in letter["change"]
    assert letter["too_large"]["bytes"] == len(encode_dead_letter(refused))
    assert pipeline.stats.dead_letters == 1


def test_a_limit_too_low_even_for_a_bounded_dead_letter_stops_once_with_the_reason(tmp_path: Path) -> None:
    sink = LimitedSink(limit=300)
    pipeline, source = _pipeline(tmp_path, [_unit(1, "x" * 20_000, 100), _unit(2, 1, 200)], sink)
    stop = threading.Event()
    threading.Timer(5, stop.set).start()
    with pytest.raises(DeadLetterTooLarge) as stopped:
        pipeline.run(stop)
    message = str(stopped.value)
    assert "more than the 300 bytes the test sink takes" in message and "sink.max_message_bytes" in message
    assert "table public.orders" in message and stopped.value.exit_code == 2
    assert source.done_units == [], "nothing is acknowledged past the record"
    assert len(sink.refused) == 2, "one refusal of the letter, one of its bounded form: no loop"


def test_an_oversized_event_of_a_stop_rule_stops(tmp_path: Path) -> None:
    sink = LimitedSink(limit=4000)
    pipeline, source = _pipeline(tmp_path, [_unit(1, Decimal("1"), 100, note="n" * 10_000)], sink, policy="stop")
    with pytest.raises(PipelineStopped, match=r"orders.opened.*Policy is 'stop'.*sink.max_message_bytes"):
        pipeline.run(threading.Event())
    assert source.done_units == []


def test_a_transaction_with_undecodable_rows_is_one_unit_with_their_dead_letters(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    unit = _unit(1, Decimal("2.00"), 100)
    bad = UndecodableRow(where="legacy.public.orders/0/7", error=DecodeError("cannot decode ... column 'total'"),
                         raw={"topic": "legacy.public.orders", "partition": 0, "offset": 7, "key": None,
                              "value": '{"op":"c"}'}, total_order=2)
    unit.dead_lettered = (bad,)
    sink = FakeSink()
    pipeline, source = _pipeline(tmp_path, [unit], sink)
    with caplog.at_level(logging.WARNING, logger="bridge.pipeline"):
        pipeline._handle(source.poll(0)[0])
    kinds = [kind for kind, _ in sink.sent]
    assert kinds == ["event", "event", "dead_letter"]
    letter = sink.sent[2][1]
    assert letter["kind"] == "undecodable" and letter["record"]["offset"] == 7
    assert letter["transaction"] == {"xid": 100, "commit_lsn": 108, "incomplete": True, "total_order": 2}
    assert source.done_units == []
    sink.ack_all()
    while not source.done_units:
        pipeline._collect(block=True, timeout_s=2)
    assert source.done_units == [unit], "done only once its dead letter is acknowledged too"
    assert any("transaction incomplete" in r.getMessage() for r in caplog.records)
    assert unit.incomplete


def test_undecodable_rows_under_policy_stop_stop_at_their_transaction(tmp_path: Path) -> None:
    unit = _unit(1, 1, 100)
    unit.dead_lettered = (UndecodableRow("t/0/1", DecodeError("bad row"), {"topic": "t"}, 1),)
    pipeline, source = _pipeline(tmp_path, [unit], FakeSink())
    pipeline.on_error_override = "stop"
    with pytest.raises(PipelineStopped, match="bad row. Policy is 'stop'.*xid 100"):
        pipeline.run(threading.Event())


def test_the_local_log_dead_letters_an_event_over_its_per_record_maximum(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import bridge.sinks.locallog as locallog
    from bridge.sinks.locallog_reader import EventLogReader

    monkeypatch.setattr(locallog, "MAX_RECORD_BYTES", 20_000)  # 64 MiB in earnest: too slow to fill in a test
    sink = locallog.LocalLogEventSink(tmp_path / "log", fsync_interval_ms=1)
    units = [_unit(1, Decimal("1.00"), 100, note="n" * 30_000), _unit(2, Decimal("1.50"), 200)]
    pipeline, source = _pipeline(tmp_path, units, sink)
    stop = threading.Event()
    threading.Timer(3, stop.set).start()
    try:
        pipeline.run(stop)
    finally:
        sink.close()
    assert {u.handle for u in source.done_units} == {1, 2}
    events = list(EventLogReader(tmp_path / "log").read())
    assert [json.loads(e.value)["id"] for e in events] == [1, 2, 2]
    [letter] = list(EventLogReader(tmp_path / "log", log="dead-letters").read())
    record = json.loads(letter.value)
    assert record["kind"] == "too_large" and record["limit"] == 20_000 and "the event log at" in record["error"]
    assert record["change"]["key"] == {"id": 1} and len(letter.value) < 8000
