"""The Kafka sink checks each record's size before sending, against the smaller of sink.max_message_bytes
and its topics' max.message.bytes (read at start), so the broker never refuses a batch for size: that
refusal would come back at every restart. The real broker is in tests/e2e/test_poison_records.py."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.errors import ConfigurationError, RecordTooLarge
from bridge.settings import KafkaSink, load_settings
from bridge.sinks.kafka import KafkaEventSink, size_limit


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def send(self, topic: str, key: bytes | None, value: bytes, headers: Any) -> Any:
        self.sent.append((topic, value))
        raise AssertionError("not expected to be sent in this test")


def _sink(limit: int) -> tuple[KafkaEventSink, RecordingProducer]:
    sink = object.__new__(KafkaEventSink)  # no broker: only the size check is under test
    sink._settings = KafkaSink(dead_letter_topic="dl")
    sink.max_message_bytes = limit
    sink._limited_by = "max.message.bytes of topic dl"
    sink._producer = producer = RecordingProducer()
    return sink, producer


def test_a_record_over_the_limit_is_reported_too_large_and_not_sent() -> None:
    sink, producer = _sink(limit=20_000)
    outcome: list[Any] = []
    sink.publish_dead_letter({"kind": "undecodable", "junk": "x" * 30_000}, b"k", outcome.append)
    [error] = outcome
    assert isinstance(error, RecordTooLarge) and error.limit == 20_000 and error.size > 30_000
    assert "Kafka topic dl" in str(error) and "max.message.bytes of topic dl" in str(error)
    assert producer.sent == []


class FakeAdmin:
    def __init__(self, limits: dict[str, str | None]) -> None:
        self.limits = limits

    def list_topics(self) -> list[str]:
        return list(self.limits)

    def describe_configs(self, resources: list[Any], config_filter: str) -> dict[str, Any]:
        assert config_filter == "all"
        return {"topic": {r.name: ({"max.message.bytes": {"value": self.limits[r.name]}}
                                   if self.limits[r.name] is not None else {}) for r in resources}}


def test_the_limit_is_the_smallest_of_the_setting_and_the_topics() -> None:
    settings = KafkaSink(max_message_bytes=1_048_576)
    admin = FakeAdmin({"restaurant.order": "1048588", "restaurant.menu_item": "500000", "other": "100"})
    assert size_limit(admin, settings, ["restaurant.order", "restaurant.menu_item", "missing"]) == (
        500_000, "max.message.bytes of topic restaurant.menu_item")
    assert size_limit(FakeAdmin({"restaurant.order": "5000000"}), settings, ["restaurant.order"]) == (
        1_048_576, "sink.max_message_bytes")


def test_max_message_bytes_is_a_setting_with_a_floor(tmp_path: Any) -> None:
    assert KafkaSink().max_message_bytes == 1_048_576
    config = tmp_path / "bridge.yaml"
    config.write_text("sink: {kind: kafka, max_message_bytes: 100}\n")
    with pytest.raises(ConfigurationError, match="sink.max_message_bytes"):
        load_settings(config)
