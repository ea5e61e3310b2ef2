"""The pipeline's promises, with an in-memory source and sink (pure logic; the real ones run in e2e):
a unit is done only when every event from it is acknowledged, failures dead-letter or stop, and a
failed delivery never lets the source move past the change."""

from __future__ import annotations

import shutil
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from bridge.changes import Op, RowChange, SourcePosition, Transaction
from bridge.daemon import preflight
from bridge.errors import DecodeError, DeliveryError, MappingError
from bridge.mapping.loader import load_mappings
from bridge.mapping.translate import translate
from bridge.pipeline import Pipeline, PipelineStopped
from bridge.ports import SourceUnit
from bridge.settings import Settings

T = datetime(2026, 3, 1, tzinfo=timezone.utc)
MAPPING = """
version: 1
namespace: shop
on_error: {policy}
rules:
  - id: orders.opened
    table: orders
    ops: [c]
    emit:
      - event: OrderOpened
        aggregate: {{type: order, id: after.id}}
        data: {{id: after.id, total: after.total * 2}}
      - event: OrderAudited
        aggregate: {{type: audit, id: after.id}}
        data: {{id: after.id}}
"""


class FakeSource:
    def __init__(self, units: list[SourceUnit]) -> None:
        self.queued = list(units)
        self.done_units: list[SourceUnit] = []
        self.commits = 0
        self.keep_alives = 0

    def poll(self, timeout_s: float) -> list[SourceUnit]:
        units, self.queued = self.queued[:1], self.queued[1:]
        return units

    def done(self, unit: SourceUnit) -> None:
        self.done_units.append(unit)

    def commit(self) -> SourcePosition | None:
        self.commits += 1
        return None

    def pending(self) -> int:
        return 0

    def keep_alive(self) -> None:
        self.keep_alives += 1

    def close(self) -> None: ...


class FakeSink:
    """Holds deliveries until the test acknowledges them (from another thread, like a real producer)."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.callbacks: list[Any] = []
        self.fail = fail
        self.most_unacknowledged = 0

    def publish(self, event: Any, on_delivery: Any) -> None:
        self.sent.append(("event", event))
        self.callbacks.append(on_delivery)
        self.most_unacknowledged = max(self.most_unacknowledged, len(self.callbacks))

    def publish_dead_letter(self, record: dict, key: bytes | None, on_delivery: Any) -> None:
        self.sent.append(("dead_letter", record))
        self.callbacks.append(on_delivery)

    def ack_all(self) -> None:
        callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            threading.Thread(target=callback, args=(DeliveryError("broker said no") if self.fail else None,)).start()

    def flush(self, timeout_s: float) -> None:
        self.ack_all()

    def close(self) -> None: ...


def _unit(order_id: int, total: Any, lsn: int) -> SourceUnit:
    change = RowChange(op=Op.CREATE, schema="public", table="orders", key={"id": order_id}, before=None,
                       after={"id": order_id, "total": total}, position=SourcePosition(lsn + 8, lsn, 0),
                       commit_time=T, xid=lsn)
    return SourceUnit(Transaction(xid=lsn, commit_lsn=lsn + 8, commit_time=T, changes=(change,)), handle=order_id)


def _large_unit(totals: list[Any], lsn: int = 1000) -> SourceUnit:
    """One transaction inserting an order per total."""
    commit = lsn + 8 * len(totals) + 8
    changes = tuple(RowChange(op=Op.CREATE, schema="public", table="orders", key={"id": i}, before=None,
                              after={"id": i, "total": total}, position=SourcePosition(commit, lsn + 8 * i, 0),
                              commit_time=T, xid=lsn) for i, total in enumerate(totals, start=1))
    return SourceUnit(Transaction(xid=lsn, commit_lsn=commit, commit_time=T, changes=changes), handle="large")


def _pipeline(tmp_path: Path, units: list[SourceUnit], policy: str = "dead_letter", fail: bool = False,
              **options: Any):
    mapping = tmp_path / "shop.yaml"
    mapping.write_text(MAPPING.format(policy=policy))
    source, sink = FakeSource(units), FakeSink(fail)
    pipeline = Pipeline(source, sink, load_mappings([mapping]), source_id="test", prior_rows=None,
                        commit_interval_s=0.01, **options)
    return pipeline, source, sink


class AckingSource(FakeSource):
    """Time passes while the pipeline keeps the source alive between slices: the sink acknowledges meanwhile."""

    def __init__(self, units: list[SourceUnit], sink: FakeSink) -> None:
        super().__init__(units)
        self.sink = sink

    def keep_alive(self) -> None:
        super().keep_alive()
        self.sink.ack_all()


def test_a_large_transaction_goes_out_in_slices_with_room_in_flight_and_keep_alives(tmp_path: Path) -> None:
    from decimal import Decimal

    mapping = tmp_path / "shop.yaml"
    mapping.write_text(MAPPING.format(policy="stop"))
    sink = FakeSink()
    unit = _large_unit([Decimal(i) for i in range(1, 11)])  # 10 changes, 20 events, slices of 3
    source = AckingSource([unit], sink)
    pipeline = Pipeline(source, sink, load_mappings([mapping]), source_id="test", prior_rows=None,
                        max_in_flight_events=4, slice_changes=3)
    pipeline._handle(source.poll(0)[0])
    assert source.keep_alives >= 3  # between each two of the four slices
    assert sink.most_unacknowledged <= 4 - 1 + 6  # room waited for: under the limit, plus one slice's events
    assert len(sink.sent) == 20 and source.done_units == []  # the last slice is not acknowledged yet
    sink.ack_all()
    while not source.done_units:
        pipeline._collect(block=True, timeout_s=5)
    assert source.done_units == [unit] and pipeline.stats.changes == 10 and pipeline.stats.acknowledged == 20
    assert [event.value() for _, event in sink.sent] == [
        event.value() for event in translate(unit.transaction, pipeline.mappings, source_id="test").events]


def test_waiting_for_room_in_flight_keeps_the_source_alive(tmp_path: Path) -> None:
    """A slow sink holding max_in_flight deliveries must not starve the replication stream of status reports."""
    sink = FakeSink()
    source = AckingSource([_unit(1, 1, 100), _unit(2, 2, 200)], sink)  # the sink acknowledges on a keep-alive
    mapping = tmp_path / "shop.yaml"
    mapping.write_text(MAPPING.format(policy="dead_letter"))
    pipeline = Pipeline(source, sink, load_mappings([mapping]), source_id="test", prior_rows=None,
                        max_in_flight_events=2)
    pipeline._handle(source.poll(0)[0])  # two events: in flight is full
    pipeline._wait_for_room()
    assert source.keep_alives >= 1 and pipeline._in_flight < 2


def test_a_stop_in_a_later_slice_leaves_the_whole_transaction_unacknowledged(tmp_path: Path) -> None:
    totals: list[Any] = [1, 2, 3, 4, 5, 6, 7, "bad", 9, 10]
    pipeline, source, sink = _pipeline(tmp_path, [_large_unit(totals), _unit(11, 1, 5000)], policy="stop",
                                       slice_changes=3)
    with pytest.raises(PipelineStopped, match="Earlier slices of this large transaction were published, but it "
                                              "is not acknowledged: a restart publishes them again"):
        pipeline.run(threading.Event())
    assert len(sink.sent) == 12  # two slices went out before the third met the stop
    sink.ack_all()
    deadline = time.monotonic() + 5
    while pipeline.stats.acknowledged < 12 and time.monotonic() < deadline:
        pipeline._collect(block=True, timeout_s=0.5)
    assert pipeline.stats.acknowledged == 12 and source.done_units == []  # all delivered, still not done
    assert len(source.queued) == 1  # and nothing after it was taken


def test_a_spilled_transaction_goes_through_the_pipeline_as_translated_whole(tmp_path: Path) -> None:
    from tests.unit.test_pgoutput_spill import open_files_under
    from tests.unit.test_sliced_translation import RESTAURANT, seeded_store, transactions

    earlier, in_memory = transactions()
    expected = translate(in_memory, RESTAURANT, source_id="test",
                         prior_rows=seeded_store(tmp_path / "memory", earlier)).events
    earlier, spilled = transactions(tmp_path / "spill")
    unit = SourceUnit(spilled, handle="spilled")
    source, sink = FakeSource([unit]), FakeSink()
    pipeline = Pipeline(source, sink, RESTAURANT, source_id="test", prior_rows=seeded_store(tmp_path / "s", earlier),
                        slice_changes=4)
    pipeline._handle(source.poll(0)[0])
    assert open_files_under(tmp_path / "spill") == []  # translated and recorded: its file is gone
    assert [(event.headers(), event.value()) for kind, event in sink.sent if kind == "event"] == [
        (event.headers(), event.value()) for event in expected]
    assert pipeline.stats.changes == len(in_memory.changes)


def test_a_unit_is_done_only_after_every_event_from_it_is_acknowledged(tmp_path: Path) -> None:
    from decimal import Decimal

    pipeline, source, sink = _pipeline(tmp_path, [_unit(1, Decimal("5.00"), 100), _unit(2, Decimal("1.50"), 200)])
    for unit in source.queued[:]:
        pipeline._handle(source.poll(0)[0])
    assert len(sink.sent) == 4 and source.done_units == []  # sent, not yet acknowledged
    sink.ack_all()
    pipeline._collect(block=True, timeout_s=2)
    while len(source.done_units) < 2:
        pipeline._collect(block=True, timeout_s=2)
    assert [u.handle for u in source.done_units] == [1, 2]
    assert [event.data for kind, event in sink.sent if kind == "event"][0] == {"id": 1, "total": Decimal("10.00")}


def test_a_failing_rule_dead_letters_the_change_and_the_rest_goes_on(tmp_path: Path) -> None:
    from decimal import Decimal

    pipeline, source, sink = _pipeline(tmp_path, [_unit(1, "not a number", 100), _unit(2, Decimal("2"), 200)])
    stop = threading.Event()
    threading.Timer(0.5, lambda: (sink.ack_all(), stop.set())).start()
    pipeline.run(stop)
    kinds = [kind for kind, _ in sink.sent]
    # A rule is atomic per change: none of its events for order 1 go out, both of order 2's do.
    assert kinds.count("dead_letter") == 1 and kinds.count("event") == 2
    letter = next(record for kind, record in sink.sent if kind == "dead_letter")
    assert letter["rule"] == "orders.opened" and "total" in letter["error"]
    assert letter["change"]["after"] == {"id": 1, "total": "not a number"}
    assert {u.handle for u in source.done_units} == {1, 2}
    assert pipeline.stats.dead_letters == 1


def test_policy_stop_stops_at_the_change_and_acknowledges_nothing_after_it(tmp_path: Path) -> None:
    pipeline, source, sink = _pipeline(tmp_path, [_unit(1, "bad", 100), _unit(2, 3, 200)], policy="stop")
    with pytest.raises(PipelineStopped, match=r"rule 'orders.opened' failed on public.orders .*Policy is 'stop'"):
        pipeline.run(threading.Event())
    assert source.done_units == [] and len(source.queued) == 1


def test_a_failed_delivery_stops_the_pipeline_without_marking_the_change_done(tmp_path: Path) -> None:
    pipeline, source, sink = _pipeline(tmp_path, [_unit(1, 1, 100)], fail=True)
    stop = threading.Event()
    threading.Timer(0.3, sink.ack_all).start()
    with pytest.raises(DeliveryError, match="broker said no"):
        pipeline.run(stop)
    assert source.done_units == []


def test_an_undecodable_record_is_dead_lettered_byte_for_byte(tmp_path: Path) -> None:
    raw = {"topic": "legacy.public.orders", "partition": 0, "offset": 7, "key": None, "value": "{not json"}
    bad = SourceUnit(None, handle="bad", error=DecodeError("cannot decode ..."), raw=raw)
    pipeline, source, sink = _pipeline(tmp_path, [bad])
    stop = threading.Event()
    threading.Timer(0.3, lambda: (sink.ack_all(), stop.set())).start()
    pipeline.run(stop)
    [(kind, record)] = sink.sent
    assert kind == "dead_letter" and record["record"] == raw and record["kind"] == "undecodable"
    assert [u.handle for u in source.done_units] == ["bad"]


def test_the_daemon_refuses_to_start_without_a_way_to_get_old_rows(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    settings = Settings(mappings=[repo / "mappings" / "restaurant.yaml"], state={"path": None})
    with pytest.raises(MappingError) as error:
        preflight(settings)
    message = str(error.value)
    assert "table public.orders (rules" in message and "orders.placed" in message
    assert "ALTER TABLE public.menu_items REPLICA IDENTITY FULL" in message


class HeartbeatingSource(FakeSource):
    """A quiet database whose source keeps emitting heartbeats (the pgoutput source does, every few seconds)."""

    def poll(self, timeout_s: float) -> list[SourceUnit]:
        beat = Transaction(xid=0, commit_lsn=1, commit_time=T, changes=())
        return [SourceUnit(beat, handle="beat", heartbeat=True)]


def test_heartbeats_are_acknowledged_but_do_not_keep_a_batch_run_alive(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import bridge.pipeline

    monkeypatch.setattr(bridge.pipeline, "STARTUP_GRACE_S", 0.2)  # nothing but heartbeats ever arrives
    mapping = tmp_path / "shop.yaml"
    mapping.write_text(MAPPING.format(policy="stop"))
    source = HeartbeatingSource([])
    pipeline = Pipeline(source, FakeSink(), load_mappings([mapping]), source_id="test", prior_rows=None,
                        commit_interval_s=0.01)
    runner = threading.Thread(target=pipeline.run, args=(threading.Event(),), kwargs={"idle_exit_s": 0.3})
    runner.start()
    runner.join(timeout=20)
    assert not runner.is_alive(), "heartbeats were taken for work: the idle exit never came"
    assert source.done_units and all(unit.handle == "beat" for unit in source.done_units)
    assert source.done_units and pipeline.stats.transactions == 0, "heartbeats are acknowledged, not counted"


class SlotLikeSource(FakeSource):
    """Commits like a replication slot that may, after a server restart, resend from an older floor."""

    def __init__(self, units: list[SourceUnit], safe: SourcePosition, floor: SourcePosition | None) -> None:
        super().__init__(units)
        self.safe, self.floor = safe, floor

    def commit(self) -> SourcePosition | None:
        return self.safe

    def replay_floor(self) -> SourcePosition | None:
        return self.floor


@pytest.mark.parametrize(("floor", "bound"), [
    (SourcePosition(500, 0), SourcePosition(500, 0)),  # the slot could resend from 500: keep history back there
    (SourcePosition(2000, 0), SourcePosition(900, 890)),  # never prune past what was acknowledged
    (None, SourcePosition(900, 890)),
])
def test_the_prior_row_store_is_pruned_to_the_older_of_acknowledged_and_the_replay_floor(
        tmp_path: Path, floor: SourcePosition | None, bound: SourcePosition) -> None:
    from bridge.state import PriorRowStore

    class RecordingStore(PriorRowStore):
        bounds: list[SourcePosition] = []

        def schedule_prune(self, committed: SourcePosition) -> None:
            self.bounds.append(committed)
            super().schedule_prune(committed)

    store = RecordingStore(tmp_path / "rows.sqlite")
    mapping = tmp_path / "shop.yaml"
    mapping.write_text(MAPPING.format(policy="stop"))
    source = SlotLikeSource([], SourcePosition(900, 890), floor)
    pipeline = Pipeline(source, FakeSink(), load_mappings([mapping]), source_id="test", prior_rows=store)
    pipeline._checkpoint()
    store.close()
    assert RecordingStore.bounds == [bound]


def test_the_daemon_says_which_events_it_publishes_without_a_contract_check(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    repo = Path(__file__).resolve().parents[2]
    checked = Settings(mappings=[repo / "mappings" / "restaurant.yaml"], state={"path": str(tmp_path / "rows.db")})
    with caplog.at_level("WARNING", logger="bridge.daemon"):
        preflight(checked)
    assert not [r for r in caplog.records if "without a contract check" in r.getMessage()]
    (tmp_path / "alone").mkdir()
    shutil.copy(repo / "mappings" / "restaurant.yaml", tmp_path / "alone" / "restaurant.yaml")  # no contracts/
    unchecked = checked.model_copy(update={"mappings": [tmp_path / "alone" / "restaurant.yaml"]})
    with caplog.at_level("WARNING", logger="bridge.daemon"):
        mappings = preflight(unchecked)
    [warning] = [r for r in caplog.records if "without a contract check" in r.getMessage()]
    assert warning.event_types == mappings.event_types() and "restaurant.order.OrderPlaced.v1" in warning.event_types
