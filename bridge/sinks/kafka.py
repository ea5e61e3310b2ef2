"""Publish domain events to Kafka: CloudEvents binary mode, key = aggregate id, acks=all, idempotent.

kafka-python's producer retries on its own within `delivery_timeout_s`; whatever still fails reaches
the delivery callback as an error, and the pipeline stops rather than lose the event.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from bridge.errors import DeliveryError, ServiceUnavailable
from bridge.events import DomainEvent
from bridge.ports import DeliveryCallback
from bridge.settings import KafkaSink

log = logging.getLogger(__name__)


class KafkaEventSink:
    def __init__(self, settings: KafkaSink) -> None:
        self._settings = settings
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=settings.bootstrap_servers.split(","),
                acks="all",
                enable_idempotence=True,
                max_in_flight_requests_per_connection=5,  # idempotence keeps order with up to 5
                linger_ms=settings.linger_ms,
                compression_type=settings.compression_type,
                delivery_timeout_ms=int(settings.delivery_timeout_s * 1000),
                batch_size=256 * 1024,
                client_id="cdc-bridge",
            )
        except KafkaError as exc:  # kafka-python 3 raises KafkaTimeoutError when bootstrap fails
            raise ServiceUnavailable(
                f"no Kafka broker answers at {settings.bootstrap_servers} (sink.bootstrap_servers); "
                "check the address and that the broker is up"
            ) from exc
        self._topics: dict[tuple[str, str], str] = {}

    def topic_of(self, event: DomainEvent) -> str:
        namespace = event.type.rsplit(".", 3)[0]
        cache_key = (namespace, event.aggregate_type)
        topic = self._topics.get(cache_key)
        if topic is None:
            topic = self._topics[cache_key] = self._settings.topic_for(namespace, event.aggregate_type)
        return topic

    def ensure_topics(self, aggregates: list[tuple[str, str]]) -> list[str]:
        """Create the event and dead-letter topics that do not exist yet (returns those created).

        Relying on the broker's auto-creation would work, but the producer logs an error for each topic
        it finds missing on first send, and the partition count would be whatever the broker defaults to.
        """
        wanted = self._topics_for(aggregates)
        admin = KafkaAdminClient(bootstrap_servers=self._settings.bootstrap_servers.split(","), client_id="cdc-bridge")
        try:
            missing = sorted(wanted - set(admin.list_topics()))
            if missing:
                try:
                    admin.create_topics([NewTopic(t, self._settings.partitions, self._settings.replication_factor)
                                         for t in missing])
                except TopicAlreadyExistsError:
                    pass  # another instance was quicker
            return missing
        except KafkaError as exc:
            raise ServiceUnavailable(f"could not list or create topics at {self._settings.bootstrap_servers}: {exc}") from exc
        finally:
            admin.close()

    def _topics_for(self, aggregates: list[tuple[str, str]]) -> set[str]:
        """The event topics of these (namespace, aggregate type) pairs, and the dead-letter topic."""
        return {self._settings.topic_for(ns, agg) for ns, agg in aggregates} | {self._settings.dead_letter_topic}

    def warm_up(self, aggregates: list[tuple[str, str]]) -> None:
        """Fetch the partitions of every event topic now: otherwise the first send to each topic waits for a
        metadata round trip, which made the first second's events 200-250 ms late. For topics known to
        exist (ensure_topics ran): kafka-python blocks up to max_block_ms on a missing one."""
        for topic in sorted(self._topics_for(aggregates)):
            try:
                self._producer.partitions_for(topic)
            except KafkaError as exc:  # the first send looks it up again, and reports what is wrong
                log.warning("topic metadata not available yet", extra={"topic": topic, "error": str(exc)})

    def publish(self, event: DomainEvent, on_delivery: DeliveryCallback) -> None:
        self._send(self.topic_of(event), event.key(), event.value(), event.headers(), on_delivery,
                   what=f"event {event.id} ({event.type})")

    def publish_dead_letter(self, record: dict[str, Any], key: bytes | None, on_delivery: DeliveryCallback) -> None:
        value = json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=str).encode()
        self._send(self._settings.dead_letter_topic, key, value, [("content-type", b"application/json")],
                   on_delivery, what="dead letter")

    def _send(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]],
              on_delivery: DeliveryCallback, *, what: str) -> None:
        try:
            future = self._producer.send(topic, key=key, value=value, headers=headers)
        except KafkaError as exc:
            on_delivery(DeliveryError(f"could not send {what} to {topic}: {exc}"))
            return
        future.add_callback(lambda _metadata: on_delivery(None))
        future.add_errback(lambda exc: on_delivery(DeliveryError(f"Kafka did not acknowledge {what} on {topic}: {exc}")))

    def flush(self, timeout_s: float) -> None:
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise DeliveryError(f"flushing the producer failed: {exc}") from exc

    def close(self) -> None:
        self._producer.close(timeout=10)
