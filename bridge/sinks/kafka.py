"""Publish domain events to Kafka: CloudEvents binary mode, key = aggregate id, acks=all, idempotent.

kafka-python's producer retries on its own within `delivery_timeout_s`; whatever still fails reaches
the delivery callback as an error, and the pipeline stops rather than lose the event (the daemon then
waits for the broker and starts again from the committed position).

Size: the broker refuses a record batch larger than the topic's `max.message.bytes`, and would do so
again at every restart. So the sink reads that limit of its topics at start, takes the smaller of it
and `sink.max_message_bytes`, keeps producer batches within it, and checks every record before
sending: one too large is reported as RecordTooLarge (nothing sent), which the pipeline dead-letters.

Two producer libraries, chosen by sink.client: KafkaEventSink here (kafka-python, the default) and
bridge/sinks/kafka_confluent.py (confluent-kafka); KafkaSinkBase holds what they share, topic admin included.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, NewTopic
from kafka.errors import (
    KafkaConfigurationError,
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    TopicAlreadyExistsError,
)
from kafka.record.default_records import DefaultRecordBatchBuilder

from bridge.errors import ConfigurationError, DeliveryError, RecordTooLarge, ServiceUnavailable
from bridge.events import DomainEvent
from bridge.kafka_client import CLIENT_BACKOFF, broker_unreachable, require_resolvable
from bridge.ports import DeliveryCallback
from bridge.settings import KafkaSink
from bridge.sinks.dead_letters import encode_dead_letter

log = logging.getLogger(__name__)

MAX_BATCH_BYTES = 256 * 1024  # producer batches, unless the size limit is smaller
CLOSE_TIMEOUT_S = 10.0


class KafkaSinkBase:
    """What both Kafka clients share: opening (topics, size limit, warm-up), topic naming and the size check."""

    @classmethod
    def open(cls, settings: KafkaSink, aggregates: list[tuple[str, str]]) -> KafkaSinkBase:
        """The sink for these (namespace, aggregate type) pairs: topics created if missing (create_topics),
        the size limit read from them, topic metadata fetched."""
        require_resolvable(settings.bootstrap_servers, "sink.bootstrap_servers")
        topics = sorted(_topics_for(settings, aggregates))
        admin = admin_client(settings)
        try:
            if settings.create_topics and (created := ensure_topics(admin, settings, topics)):
                log.info("created topics", extra={"topics": created})
            limit, limited_by = size_limit(admin, settings, topics)
        finally:
            admin.close()
        log.info("record size limit", extra={"max_message_bytes": limit, "limited_by": limited_by})
        sink = cls(settings, max_message_bytes=limit, limited_by=limited_by)
        if settings.create_topics:
            sink.warm_up(topics)
        return sink

    def __init__(self, settings: KafkaSink, *, max_message_bytes: int | None = None,
                 limited_by: str = "sink.max_message_bytes") -> None:
        self._settings = settings
        # Told (topic, partition, offset) of each record the broker acknowledged: a backfill's manifest.
        self.on_delivered: Callable[[str, int, int], None] | None = None
        self.max_message_bytes = min(max_message_bytes or settings.max_message_bytes, settings.max_message_bytes)
        self._limited_by = limited_by
        self._topics: dict[tuple[str, str], str] = {}

    def topic_of(self, event: DomainEvent) -> str:
        namespace = event.type.rsplit(".", 3)[0]
        cache_key = (namespace, event.aggregate_type)
        topic = self._topics.get(cache_key)
        if topic is None:
            topic = self._topics[cache_key] = self._settings.topic_for(namespace, event.aggregate_type)
        return topic

    def publish(self, event: DomainEvent, on_delivery: DeliveryCallback) -> None:
        self._send(self.topic_of(event), event.key(), event.value(), event.headers(), on_delivery,
                   what=f"event {event.id} ({event.type})")

    def publish_dead_letter(self, record: dict[str, Any], key: bytes | None, on_delivery: DeliveryCallback) -> None:
        self._send(self._settings.dead_letter_topic, key, encode_dead_letter(record),
                   [("content-type", b"application/json")], on_delivery, what="dead letter")

    def _send(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]],
              on_delivery: DeliveryCallback, *, what: str) -> None:
        # kafka-python's estimate of a one-record batch, batch header included: at least librdkafka's own count
        # of a record (which leaves the batch header out), so one check serves both clients.
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
        if size > self.max_message_bytes:
            on_delivery(RecordTooLarge(size, self.max_message_bytes, f"Kafka topic {topic} (limit: {self._limited_by})"))
            return
        self._produce(topic, key, value, headers, on_delivery, what)

    def _produce(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]],
                 on_delivery: DeliveryCallback, what: str) -> None:
        """Send one record known to be within the size limit; its outcome goes to `on_delivery`."""
        raise NotImplementedError

    def warm_up(self, topics: list[str]) -> None:
        """Fetch these topics' metadata now, so the first send to each does not wait for it."""
        raise NotImplementedError

    def flush(self, timeout_s: float) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class KafkaEventSink(KafkaSinkBase):
    """The sink on kafka-python's producer (sink.client: kafka-python, the default)."""

    def __init__(self, settings: KafkaSink, *, max_message_bytes: int | None = None,
                 limited_by: str = "sink.max_message_bytes") -> None:
        super().__init__(settings, max_message_bytes=max_message_bytes, limited_by=limited_by)
        delivery_timeout_ms = int(settings.delivery_timeout_s * 1000)
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=settings.bootstrap_servers.split(","),
                acks="all",
                enable_idempotence=True,
                max_in_flight_requests_per_connection=5,  # idempotence keeps order with up to 5
                linger_ms=settings.linger_ms,
                compression_type=settings.compression_type,
                delivery_timeout_ms=delivery_timeout_ms,
                # kafka-python refuses a delivery timeout below linger + request timeout (30 s by default):
                # a short sink.delivery_timeout_s shortens the request timeout with it.
                request_timeout_ms=max(1, min(30_000, delivery_timeout_ms - settings.linger_ms - 1)),
                bootstrap_timeout_ms=int(settings.bootstrap_timeout_s * 1000),
                # A batch holds several records up to batch_size, or one larger record: both within the limit.
                batch_size=min(MAX_BATCH_BYTES, self.max_message_bytes),
                max_request_size=self.max_message_bytes,
                client_id="cdc-bridge",
                **CLIENT_BACKOFF,
            )
        except KafkaConfigurationError as exc:
            raise ConfigurationError(f"the Kafka producer refuses the sink settings: {exc}") from exc
        except KafkaError as exc:  # kafka-python 3 raises KafkaTimeoutError when bootstrap fails
            raise broker_unreachable(settings.bootstrap_servers, "sink.bootstrap_servers", exc) from exc

    def warm_up(self, topics: list[str]) -> None:
        """Fetch the partitions of every event topic now: otherwise the first send to each topic waits for a
        metadata round trip, which made the first second's events 200-250 ms late. For topics known to
        exist (ensure_topics ran): kafka-python blocks up to max_block_ms on a missing one."""
        for topic in topics:
            try:
                self._producer.partitions_for(topic)
            except KafkaError as exc:  # the first send looks it up again, and reports what is wrong
                log.warning("topic metadata not available yet", extra={"topic": topic, "error": str(exc)})

    def _produce(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]],
                 on_delivery: DeliveryCallback, what: str) -> None:
        try:
            future = self._producer.send(topic, key=key, value=value, headers=headers)
        except KafkaError as exc:
            on_delivery(_delivery_error(exc, what, topic))
            return
        if self.on_delivered is None:
            future.add_callback(lambda _metadata: on_delivery(None))
        else:
            noted = self.on_delivered
            future.add_callback(lambda metadata: (noted(metadata.topic, metadata.partition, metadata.offset),
                                                  on_delivery(None)))
        future.add_errback(lambda exc: on_delivery(_delivery_error(exc, what, topic)))

    def flush(self, timeout_s: float) -> None:
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise DeliveryError(f"flushing the producer failed: {exc}") from exc

    def close(self) -> None:
        """Deliver what is in flight if the broker answers within CLOSE_TIMEOUT_S; otherwise abandon it (its
        changes were not acknowledged to the source, so they are read again) and still release the client.

        kafka-python's close flushes first and, when that times out, raises before stopping its I/O thread:
        a close during a broker outage would leave the producer half open and hide the error being handled.
        """
        try:
            self._producer.close(timeout=CLOSE_TIMEOUT_S)
            return
        except KafkaError as exc:
            log.warning("Kafka did not take the producer's last records before close; they are abandoned and "
                        "their changes will be read again", extra={"error": str(exc)})
        sender = getattr(self._producer, "_sender", None)
        if sender is not None:  # fails the unsent batches, so the second close's flush has nothing to wait for
            sender.force_close()
            sender.join(CLOSE_TIMEOUT_S)
        try:
            self._producer.close(timeout=0)
        except KafkaError as exc:
            log.warning("the Kafka producer did not close cleanly", extra={"error": str(exc)})


def _topics_for(settings: KafkaSink, aggregates: list[tuple[str, str]]) -> set[str]:
    """The event topics of these (namespace, aggregate type) pairs, and the dead-letter topic."""
    return {settings.topic_for(ns, agg) for ns, agg in aggregates} | {settings.dead_letter_topic}


def admin_client(settings: KafkaSink) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers.split(","), client_id="cdc-bridge",
                                bootstrap_timeout_ms=int(settings.bootstrap_timeout_s * 1000), **CLIENT_BACKOFF)
    except KafkaError as exc:
        raise broker_unreachable(settings.bootstrap_servers, "sink.bootstrap_servers", exc) from exc


def ensure_topics(admin: KafkaAdminClient, settings: KafkaSink, topics: Iterable[str]) -> list[str]:
    """Create the topics that do not exist yet (returns those created).

    Relying on the broker's auto-creation would work, but the producer logs an error for each topic
    it finds missing on first send, and the partition count would be whatever the broker defaults to.
    """
    try:
        missing = sorted(set(topics) - set(admin.list_topics()))
        if missing:
            try:
                admin.create_topics([NewTopic(t, settings.partitions, settings.replication_factor) for t in missing])
            except TopicAlreadyExistsError:
                pass  # another instance was quicker
        return missing
    except KafkaError as exc:
        raise ServiceUnavailable(f"could not list or create topics at {settings.bootstrap_servers}: {exc}") from exc


def size_limit(admin: KafkaAdminClient, settings: KafkaSink, topics: Iterable[str]) -> tuple[int, str]:
    """The largest record every one of `topics` takes, and what sets it: the smallest of the topics'
    max.message.bytes and sink.max_message_bytes. Topics that do not exist (yet) are left out."""
    limit, limited_by = settings.max_message_bytes, "sink.max_message_bytes"
    try:
        existing = set(admin.list_topics())
        resources = [ConfigResource("TOPIC", topic, ["max.message.bytes"]) for topic in sorted(set(topics) & existing)]
        described = admin.describe_configs(resources, config_filter="all") if resources else {}
    except KafkaError as exc:  # e.g. no DescribeConfigs permission: the setting alone has to do
        log.warning("could not read the topics' max.message.bytes; sink.max_message_bytes alone limits record size",
                    extra={"error": str(exc), "max_message_bytes": limit})
        return limit, limited_by
    for topic, configs in sorted((described.get("topic") or {}).items()):
        entry = (configs or {}).get("max.message.bytes") or {}
        try:
            value = int(entry.get("value"))
        except (TypeError, ValueError):
            continue
        if value < limit:
            limit, limited_by = value, f"max.message.bytes of topic {topic}"
    return limit, limited_by


def _delivery_error(exc: BaseException, what: str, topic: str) -> DeliveryError:
    """Waiting can help when kafka-python says so (a timeout, a lost broker); a record refused for good (not
    authorised, say) is refused again, and stops the bridge (exit 1) instead of being retried."""
    if isinstance(exc, MessageSizeTooLargeError):  # checked before sending: the topic's limit shrank since start
        return refused_as_too_large(what, topic, exc)
    retryable = bool(getattr(exc, "retriable", False)) or isinstance(exc, KafkaConnectionError)
    return DeliveryError(f"Kafka did not acknowledge {what} on {topic}: {exc}", retryable=retryable)


def refused_as_too_large(what: str, topic: str, exc: object) -> DeliveryError:
    """The broker refused a record the sink's own check let through: the topic's limit shrank since the sink opened.
    Retryable: the daemon's next run reopens the sink, which reads the new limit and dead-letters the record."""
    return DeliveryError(f"Kafka refused {what} on {topic} as too large ({exc}): the topic's max.message.bytes "
                         "was lowered after the sink opened; reopening it reads the new limit", retryable=True)


def sink_class(settings: KafkaSink) -> type[KafkaSinkBase]:
    """The sink on the producer library sink.client names."""
    if settings.client == "confluent":
        from bridge.sinks.kafka_confluent import ConfluentEventSink

        return ConfluentEventSink
    return KafkaEventSink
