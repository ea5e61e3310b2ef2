"""sink.client chooses the Kafka sink's producer library; the confluent one gets kafka-python's guarantees under
librdkafka's names, refuses what it cannot map, and reports a broker that does not answer as a retryable
delivery failure (a real librdkafka producer against a port nobody listens on; no broker needed)."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

confluent_kafka = pytest.importorskip("confluent_kafka")

from bridge.errors import ConfigurationError, DeliveryError  # noqa: E402
from bridge.settings import KafkaSink, load_settings  # noqa: E402
from bridge.sinks import kafka_confluent  # noqa: E402
from bridge.sinks.kafka import KafkaEventSink, sink_class  # noqa: E402
from bridge.sinks.kafka_confluent import (  # noqa: E402
    ConfluentEventSink,
    delivery_error,
    librdkafka_servers,
    producer_config,
)


def test_the_client_is_kafka_python_unless_the_settings_say_confluent(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text("sink: {bootstrap_servers: 'k:9092'}\n")
    assert load_settings(config).sink.client == "kafka-python"
    assert sink_class(load_settings(config).sink) is KafkaEventSink
    config.write_text("sink: {bootstrap_servers: 'k:9092', client: confluent}\n")
    assert sink_class(load_settings(config).sink) is ConfluentEventSink
    config.write_text("sink: {bootstrap_servers: 'k:9092'}\n")
    monkeypatch.setenv("BRIDGE_SINK__CLIENT", "confluent")
    settings = load_settings(config)
    assert settings.sink.client == "confluent" and settings.sink.bootstrap_servers == "k:9092"


def test_an_unknown_client_names_the_setting(tmp_path: Path) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text("sink: {client: librdkafka}\n")
    with pytest.raises(ConfigurationError, match=r"sink\.client: Input should be 'kafka-python' or 'confluent'"):
        load_settings(config)


def test_confluent_without_its_package_is_a_configuration_error_saying_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kafka_confluent, "confluent_kafka", None)
    # An unresolvable broker would be another error: the package is checked first, before any connection.
    settings = KafkaSink(client="confluent", bootstrap_servers="no-such-host.invalid:9092")
    with pytest.raises(ConfigurationError) as error:
        ConfluentEventSink.open(settings, [("restaurant", "order")])
    assert "sink.client is confluent" in str(error.value)
    assert "pip install 'cdc-bridge[confluent]'" in str(error.value)
    assert error.value.exit_code == 2


def test_the_producer_gets_the_same_guarantees_as_kafka_pythons() -> None:
    settings = KafkaSink(bootstrap_servers="PLAINTEXT://a:9092, b:9093", linger_ms=7, delivery_timeout_s=6,
                         compression_type="zstd")
    config = producer_config(settings, max_message_bytes=50_000)
    assert config["bootstrap.servers"] == "a:9092,b:9093"
    assert config["acks"] == "all" and config["enable.idempotence"] is True
    assert config["max.in.flight.requests.per.connection"] <= 5
    assert config["partitioner"] == "murmur2_random", "a key goes to the partition kafka-python sends it to"
    assert config["linger.ms"] == 7 and config["compression.type"] == "zstd"
    assert config["message.timeout.ms"] == 6000 and config["request.timeout.ms"] == 6000 - 7 - 1
    assert config["batch.size"] == 50_000 and config["message.max.bytes"] == 50_000
    assert producer_config(KafkaSink(), 1_048_576)["batch.size"] == 256 * 1024
    assert producer_config(KafkaSink(), 1_048_576)["compression.type"] == "none"
    confluent_kafka.Producer(producer_config(settings, 50_000))  # librdkafka takes every name and value


@pytest.mark.parametrize(("servers", "said"), [
    ("SASL_SSL://k:9092", "SASL_SSL:// is not supported"),
    ("SSL://k:9092", "SSL:// is not supported"),
    ("user:secret@k:9092", "user info (user@host) is not supported"),
])
def test_security_the_sink_cannot_map_is_refused_by_name(servers: str, said: str) -> None:
    with pytest.raises(ConfigurationError, match=r"sink\.bootstrap_servers") as error:
        librdkafka_servers(servers)
    assert said in str(error.value) and "secret" not in str(error.value)


@pytest.mark.parametrize(("code", "retryable"), [
    (confluent_kafka.KafkaError._MSG_TIMED_OUT, True),
    (confluent_kafka.KafkaError._PURGE_QUEUE, True),
    (confluent_kafka.KafkaError.NOT_ENOUGH_REPLICAS, True),  # a broker's code, retriable for kafka-python too
    (confluent_kafka.KafkaError.LEADER_NOT_AVAILABLE, True),
    (confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED, False),
])
def test_delivery_errors_say_whether_waiting_helps(code: int, retryable: bool) -> None:
    error = delivery_error(confluent_kafka.KafkaError(code), "event e1 (t)", "restaurant.order")
    assert isinstance(error, DeliveryError) and error.retryable is retryable
    assert "event e1 (t) on restaurant.order" in str(error)
    assert error.exit_code == (3 if retryable else 1)


def test_a_record_the_broker_refuses_as_too_large_is_the_same_retryable_error_as_kafka_pythons() -> None:
    too_large = confluent_kafka.KafkaError(confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE)
    error = delivery_error(too_large, "dead letter", "dl")
    assert error.retryable and "as too large" in str(error) and "reopening it reads the new limit" in str(error)


def _refused_port() -> int:
    with socket.socket() as probe:  # bound then closed: connections to it are refused
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait(outcomes: list[Any], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not outcomes and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_broker_that_does_not_answer_fails_the_delivery_after_the_timeout_as_retryable() -> None:
    sink = ConfluentEventSink(KafkaSink(client="confluent", bootstrap_servers=f"127.0.0.1:{_refused_port()}",
                                        delivery_timeout_s=1.0, linger_ms=0))
    try:
        outcomes: list[Any] = []
        started = time.monotonic()
        sink.publish_dead_letter({"kind": "test"}, b"k", outcomes.append)
        _wait(outcomes, 15)  # reported by the poll thread, nobody calls flush
        [error] = outcomes
        assert isinstance(error, DeliveryError) and error.retryable and "_MSG_TIMED_OUT" in str(error)
        assert time.monotonic() - started >= 0.9
        sink.flush(1)  # nothing pending any more: returns without an error
    finally:
        sink.close()


def test_closing_while_the_broker_is_away_abandons_the_records_and_returns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(kafka_confluent, "CLOSE_TIMEOUT_S", 0.5)
    sink = ConfluentEventSink(KafkaSink(client="confluent", bootstrap_servers=f"127.0.0.1:{_refused_port()}",
                                        delivery_timeout_s=120))
    outcomes: list[Any] = []
    sink.publish_dead_letter({"kind": "test"}, b"k", outcomes.append)
    with pytest.raises(DeliveryError, match="1 record"):
        sink.flush(0.3)  # pending: a drain that cannot finish says so
    started = time.monotonic()
    sink.close()
    assert time.monotonic() - started < 5
    [error] = outcomes
    assert isinstance(error, DeliveryError) and error.retryable and "PURGE" in str(error)
    assert any("abandoned" in r.getMessage() for r in caplog.records)



def test_check_reports_a_confluent_client_it_cannot_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """`cdc-bridge check` (and run's preflight) names the missing package and the unmappable address."""
    from bridge.preflight import Report
    from bridge.preflight_kafka import check_kafka_sink

    monkeypatch.setattr(kafka_confluent, "confluent_kafka", None)
    report = Report()
    # An address that does not resolve: the admin part stops at once, the client is still checked.
    check_kafka_sink(report, KafkaSink(client="confluent", bootstrap_servers="no-such-host.invalid:9092"), None)
    client = [f.message for f in report.errors if f.subject == "sink.client"]
    assert len(client) == 1 and "pip install 'cdc-bridge[confluent]'" in client[0]
    monkeypatch.undo()
    report = Report()
    check_kafka_sink(report, KafkaSink(client="confluent", bootstrap_servers="SASL_SSL://no-such-host.invalid:9092"),
                     None)
    assert [f.message for f in report.errors if f.subject == "sink.client"][0].startswith(
        "sink.bootstrap_servers: SASL_SSL:// is not supported")
    report = Report()
    check_kafka_sink(report, KafkaSink(bootstrap_servers="no-such-host.invalid:9092"), None)
    assert not [f for f in report.errors if f.subject == "sink.client"], "kafka-python needs no such check"
