"""The daemon rides out outages (with in-memory sources and sinks standing in for Kafka and PostgreSQL), and
turns a state or log path it cannot use into one ConfigurationError naming the setting."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from itertools import repeat
from pathlib import Path
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError

import bridge.daemon as daemon
import bridge.supervisor as supervisor
from bridge.changes import SourcePosition
from bridge.errors import ConfigurationError, DeliveryError, ServiceUnavailable, UnresolvableHost
from bridge.settings import Settings
from tests.unit.test_pipeline import MAPPING, _unit

RESTAURANT = Path(__file__).resolve().parents[2] / "mappings" / "restaurant.yaml"


@pytest.fixture(autouse=True)
def quick_backoff_and_no_preflight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "backoff_delays", lambda: repeat(0.01))
    # The start's checks ask the real services (bridge/preflight.py); here there are none.
    monkeypatch.setattr(daemon, "enforce_at_start", lambda *_: None)


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    mapping = tmp_path / "shop.yaml"
    mapping.write_text(MAPPING.format(policy="dead_letter"))
    return mapping


def settings(mappings: Path, **sections: Any) -> Settings:
    return Settings(mappings=[mappings], state={"path": None},
                    pipeline={"commit_interval_s": 0.01, **sections.pop("pipeline", {})}, **sections)


class Upstream:
    """The legacy side: units stay to be read again until a source commits past them."""

    def __init__(self, count: int) -> None:
        self.units = [(100 * (i + 1), i + 1) for i in range(count)]
        self.committed = 0  # lsn

    def source(self) -> FakeSource:
        return FakeSource(self)


class FakeSource:
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.queued = [_unit(order, 1, lsn) for lsn, order in upstream.units if lsn > upstream.committed]
        self.done_lsns: list[int] = []
        self.closed = False

    def poll(self, timeout_s: float) -> list[Any]:
        units, self.queued = self.queued[:1], self.queued[1:]
        return units

    def done(self, unit: Any) -> None:
        self.done_lsns.append(unit.transaction.xid)

    def commit(self) -> SourcePosition | None:
        if not self.done_lsns:
            return None
        self.upstream.committed = max(self.upstream.committed, max(self.done_lsns))
        return SourcePosition(self.upstream.committed, self.upstream.committed, 0)

    def pending(self) -> int:
        return len(self.queued)

    def close(self) -> None:
        self.closed = True


class GoodSink:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.closed = False

    def publish(self, event: Any, on_delivery: Any) -> None:
        self.events.append(event)
        on_delivery(None)

    def publish_dead_letter(self, record: dict, key: bytes | None, on_delivery: Any) -> None:
        on_delivery(None)

    def flush(self, timeout_s: float) -> None: ...

    def close(self) -> None:
        self.closed = True


class BrokerGoneSink(GoodSink):
    """Kafka went away: deliveries time out, and closing cannot flush (kafka-python raises from close)."""

    def publish(self, event: Any, on_delivery: Any) -> None:
        on_delivery(DeliveryError(f"Kafka did not acknowledge event {event.id}: KafkaTimeoutError: Expiring 1 record(s)"))

    def close(self) -> None:
        self.closed = True
        raise KafkaTimeoutError("Timeout waiting for future")


def openers(monkeypatch: pytest.MonkeyPatch, sinks: list[Any], upstream: Upstream) -> dict[str, list[Any]]:
    """Replace how the daemon opens its sink and source: `sinks` in turn (an exception is raised)."""
    opened: dict[str, list[Any]] = {"sinks": [], "sources": []}
    queue: Iterator[Any] = iter(sinks)

    def open_sink(_settings: Any, _mappings: Any, **_logging: Any) -> Any:
        sink = next(queue, sinks[-1])
        if isinstance(sink, BaseException):
            raise sink
        opened["sinks"].append(sink)
        return sink

    def open_source(_settings: Any, _mappings: Any) -> tuple[Any, dict[str, Any]]:
        source = upstream.source()
        opened["sources"].append(source)
        return source, {"source": "fake"}

    monkeypatch.setattr(daemon, "open_configured_sink", open_sink)
    monkeypatch.setattr(daemon, "_open_source", open_source)
    return opened


def test_a_broker_outage_mid_run_is_waited_out_and_nothing_is_lost(
    monkeypatch: pytest.MonkeyPatch, shop: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    upstream = Upstream(3)
    recovered = GoodSink()
    opened = openers(monkeypatch, [BrokerGoneSink(), ServiceUnavailable("no Kafka broker answers"), recovered],
                     upstream)
    stats = daemon.run_daemon(settings(shop), idle_exit_s=0.3)
    assert upstream.committed == 300, "every unit committed in the end"
    assert sorted(e.data["id"] for e in recovered.events if e.type.endswith("OrderOpened.v1")) == [1, 2, 3]
    assert all(source.closed for source in opened["sources"]) and opened["sinks"][0].closed
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("waiting for Kafka at 127.0.0.1:9092 since ") for m in messages), messages
    assert any(m.startswith("closing the sink failed") for m in messages), "the close error is only a warning"
    assert any("answers again" in m for m in messages)
    assert stats.acknowledged >= 6


def test_kafka_down_at_start_is_waited_for_up_to_the_limit_then_one_error(
    monkeypatch: pytest.MonkeyPatch, shop: Path,
) -> None:
    opened = openers(monkeypatch, [ServiceUnavailable("no Kafka broker answers at 127.0.0.1:9092")], Upstream(1))
    with pytest.raises(ServiceUnavailable) as stopped:
        daemon.run_daemon(settings(shop, pipeline={"outage_limit_s": 0.2}))
    assert str(stopped.value).startswith("gave up waiting for Kafka at 127.0.0.1:9092 after ")
    assert "pipeline.outage_limit_s = 0.2" in str(stopped.value)
    assert opened["sources"] == [], "the source is not opened without a sink"


def test_a_stop_while_waiting_ends_the_daemon_cleanly(monkeypatch: pytest.MonkeyPatch, shop: Path) -> None:
    stop = threading.Event()
    attempts: list[int] = []

    def open_sink(_settings: Any, _mappings: Any, **_logging: Any) -> Any:
        attempts.append(1)
        if len(attempts) == 3:
            stop.set()  # SIGTERM while the bridge waits for Kafka
        raise ServiceUnavailable("no Kafka broker answers")

    monkeypatch.setattr(daemon, "open_configured_sink", open_sink)
    daemon.run_daemon(settings(shop), stop=stop)  # returns: exit code 0
    assert len(attempts) == 3


def test_a_wrong_setting_found_on_connecting_stops_at_once(monkeypatch: pytest.MonkeyPatch, shop: Path) -> None:
    sink = GoodSink()
    calls: list[int] = []
    monkeypatch.setattr(daemon, "open_configured_sink", lambda *_, **__: sink)

    def open_source(*_: Any) -> Any:
        calls.append(1)
        raise ConfigurationError("PostgreSQL at host=db (source.dsn): database 'restaurnt' does not exist")

    monkeypatch.setattr(daemon, "_open_source", open_source)
    with pytest.raises(ConfigurationError, match="does not exist"):
        daemon.run_daemon(settings(shop))
    assert calls == [1] and sink.closed


def test_an_unknown_host_is_a_typo_at_start_but_an_outage_once_running(
    monkeypatch: pytest.MonkeyPatch, shop: Path,
) -> None:
    typo = UnresolvableHost("the Kafka host 'kafak' in sink.bootstrap_servers does not resolve")
    openers(monkeypatch, [typo], Upstream(1))
    with pytest.raises(UnresolvableHost):
        daemon.run_daemon(settings(shop))
    upstream, recovered = Upstream(2), GoodSink()
    openers(monkeypatch, [BrokerGoneSink(), typo, typo, recovered], upstream)  # the broker's name gone a while
    daemon.run_daemon(settings(shop), idle_exit_s=0.3)
    assert upstream.committed == 200 and recovered.events


def open_store(path: Path) -> Any:
    settings = Settings(mappings=[RESTAURANT], state={"path": path})
    return daemon._open_store(settings, daemon.preflight(settings))  # noqa: SLF001


def test_an_unusable_state_path_is_a_configuration_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(ConfigurationError) as error:
        open_store(blocker / "prior-rows.sqlite")
    assert "(state.path)" in str(error.value) and str(blocker) in str(error.value)


def test_a_garbage_store_file_is_a_configuration_error_naming_it(tmp_path: Path) -> None:
    garbage = tmp_path / "prior-rows.sqlite"
    garbage.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(ConfigurationError) as error:
        open_store(garbage)
    assert str(garbage) in str(error.value) and "file is not a database" in str(error.value)


def test_an_unusable_event_log_path_is_a_configuration_error_naming_it(shop: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(ConfigurationError, match=r"\(sink.path"):
        daemon.run_daemon(settings(shop, sink={"kind": "locallog", "path": blocker / "events"}))
