"""The Kafka sink on confluent-kafka (librdkafka, in C): `sink.client: confluent`, an optional extra.

Same guarantees as the kafka-python sink (bridge/sinks/kafka.py, which also opens it: topics, size limit,
warm-up): acks=all, idempotence with at most 5 requests in flight (order per partition, so per key),
retries within `sink.delivery_timeout_s`, and each record's outcome reported through its delivery
callback. librdkafka reports deliveries only from `poll()`: a small thread polls, so callbacks arrive as
soon as the broker answers (they run there, as kafka-python's run on its I/O thread). Topic admin stays
kafka-python's KafkaAdminClient, shared by both clients.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import kafka.errors

from bridge.errors import ConfigurationError, DeliveryError
from bridge.kafka_client import CLIENT_BACKOFF
from bridge.ports import DeliveryCallback
from bridge.settings import KafkaSink
from bridge.sinks.kafka import CLOSE_TIMEOUT_S, MAX_BATCH_BYTES, KafkaSinkBase, refused_as_too_large

try:
    import confluent_kafka
except ImportError:  # the optional extra is not installed: open() says how to get it
    confluent_kafka = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
# librdkafka's own lines go through this logger (silenced below DEBUG with kafka-python's, bridge/observability.py).
CLIENT_LOG = logging.getLogger("kafka.librdkafka")

POLL_S = 0.1  # how long the delivery-report thread waits per poll: returns at once when a report is ready
FULL_QUEUE_WAIT_S = 0.01  # librdkafka's local queue is full: wait this long for deliveries to make room


def require_library() -> Any:
    """The confluent_kafka module, or a ConfigurationError saying how to install it."""
    if confluent_kafka is None:
        raise ConfigurationError(
            "sink.client is confluent, but the confluent-kafka package is not installed: "
            "pip install 'cdc-bridge[confluent]' (or set sink.client: kafka-python, the default)")
    return confluent_kafka


def librdkafka_servers(servers: str) -> str:
    """sink.bootstrap_servers for librdkafka. The sink has no security settings (both clients speak PLAINTEXT):
    kafka-python ignores a scheme, but a SASL or SSL scheme or credentials in an address would be silently
    dropped, so they are refused here."""
    entries = []
    for entry in (e.strip() for e in servers.split(",")):
        if not entry:
            continue
        scheme, _, address = entry.rpartition("://")
        if scheme and scheme.upper() != "PLAINTEXT":
            raise ConfigurationError(
                f"sink.bootstrap_servers: {scheme}:// is not supported by the Kafka sink (sink.client: confluent); "
                "it connects in PLAINTEXT only: give host:port")
        if "@" in address:
            raise ConfigurationError(
                "sink.bootstrap_servers: an address with user info (user@host) is not supported by the Kafka sink "
                "(sink.client: confluent), which has no SASL settings: give host:port")
        entries.append(address)
    return ",".join(entries)


def producer_config(settings: KafkaSink, max_message_bytes: int) -> dict[str, Any]:
    """librdkafka's names for the settings kafka-python's producer gets in bridge/sinks/kafka.py."""
    delivery_timeout_ms = int(settings.delivery_timeout_s * 1000)
    return {
        "bootstrap.servers": librdkafka_servers(settings.bootstrap_servers),
        "client.id": "cdc-bridge",
        "acks": "all",
        "enable.idempotence": True,
        "max.in.flight.requests.per.connection": 5,  # idempotence keeps order with up to 5
        # kafka-python's (and Java's) partition of a key: murmur2. librdkafka's default (crc32) would move every
        # aggregate to another partition when the client changes, breaking order per key across the switch.
        "partitioner": "murmur2_random",
        "linger.ms": settings.linger_ms,
        "compression.type": settings.compression_type or "none",
        # kafka-python's delivery_timeout_ms: how long a record may take, retries included, before it fails.
        "message.timeout.ms": delivery_timeout_ms,
        "request.timeout.ms": max(1, min(30_000, delivery_timeout_ms - settings.linger_ms - 1)),
        # A batch holds several records up to batch.size, or one larger record: both within the limit, which
        # the sink checks itself before producing (librdkafka's own check counts less than that, and its
        # floor is 1000 bytes).
        "batch.size": min(MAX_BATCH_BYTES, max_message_bytes),
        "message.max.bytes": max(1000, max_message_bytes),
        "reconnect.backoff.max.ms": CLIENT_BACKOFF["reconnect_backoff_max_ms"],
    }


class ConfluentEventSink(KafkaSinkBase):
    """The sink on confluent-kafka's Producer, its delivery reports served by a poll thread."""

    @classmethod
    def open(cls, settings: KafkaSink, aggregates: list[tuple[str, str]]) -> KafkaSinkBase:
        require_library()  # before any broker is contacted: a missing package is a setting to fix
        return super().open(settings, aggregates)

    def __init__(self, settings: KafkaSink, *, max_message_bytes: int | None = None,
                 limited_by: str = "sink.max_message_bytes") -> None:
        super().__init__(settings, max_message_bytes=max_message_bytes, limited_by=limited_by)
        library = require_library()
        config = producer_config(settings, self.max_message_bytes)
        try:
            self._producer = library.Producer(config, logger=CLIENT_LOG, error_cb=_client_error)
        except (library.KafkaException, ValueError, TypeError) as exc:
            raise ConfigurationError(f"the Kafka producer (confluent-kafka) refuses the sink settings: {exc}") from exc
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._serve_reports, name="kafka-delivery-reports", daemon=True)
        self._poller.start()

    def _serve_reports(self) -> None:
        while not self._stopping.is_set():
            try:
                self._producer.poll(POLL_S)
            except Exception:  # noqa: BLE001 (a callback's error surfaces here: the thread must go on reporting)
                log.exception("a delivery callback failed")

    def warm_up(self, topics: list[str]) -> None:
        """Fetch every event topic's metadata now, so the first record to each does not wait for it."""
        for topic in topics:
            try:
                self._producer.list_topics(topic, timeout=self._settings.bootstrap_timeout_s)
            except confluent_kafka.KafkaException as exc:  # the first record looks it up again
                log.warning("topic metadata not available yet", extra={"topic": topic, "error": str(exc)})

    def _produce(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]],
                 on_delivery: DeliveryCallback, what: str) -> None:
        noted = self.on_delivered

        def report(error: Any, message: Any) -> None:  # runs on the poll thread (or in flush)
            if error is not None:
                on_delivery(delivery_error(error, what, topic))
                return
            if noted is not None:
                noted(message.topic(), message.partition(), message.offset())
            on_delivery(None)

        deadline = None
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers, on_delivery=report)
                return
            except BufferError:  # librdkafka's local queue is full: deliveries make room
                now = time.monotonic()
                deadline = deadline or now + self._settings.delivery_timeout_s
                if now > deadline:
                    on_delivery(DeliveryError(f"Kafka did not take {what} on {topic}: the producer's queue stayed "
                                              f"full for {self._settings.delivery_timeout_s:.0f}s"))
                    return
                time.sleep(FULL_QUEUE_WAIT_S)
            except confluent_kafka.KafkaException as exc:
                on_delivery(delivery_error(exc.args[0], what, topic))
                return

    def flush(self, timeout_s: float) -> None:
        remaining = self._producer.flush(timeout_s)
        if remaining:
            raise DeliveryError(f"flushing the producer failed: {remaining} record(s) still unacknowledged after "
                                f"{timeout_s:.0f}s")

    def close(self) -> None:
        """Deliver what is in flight if the broker answers within CLOSE_TIMEOUT_S; otherwise abandon it (its
        changes were not acknowledged to the source, so they are read again) and still release the client."""
        remaining = self._producer.flush(CLOSE_TIMEOUT_S)
        if remaining:
            log.warning("Kafka did not take the producer's last records before close; they are abandoned and "
                        "their changes will be read again", extra={"records": remaining})
            self._producer.purge(in_queue=True, in_flight=True)
            self._producer.flush(0)  # serves the purged records' reports
        self._stopping.set()
        self._poller.join(CLOSE_TIMEOUT_S)
        close = getattr(self._producer, "close", None)  # newer confluent-kafka; before, the last reference's end
        if close is not None:
            close()


def delivery_error(error: Any, what: str, topic: str) -> DeliveryError:
    """Waiting can help when librdkafka says so (a timeout, a lost broker, a record abandoned at close); a record
    refused for good (not authorised, say) stops the bridge (exit 1) instead of being retried."""
    codes = confluent_kafka.KafkaError
    if error.code() == codes.MSG_SIZE_TOO_LARGE:  # the broker's refusal: the topic's limit shrank since start
        return refused_as_too_large(what, topic, f"{error.name()}: {error.str()}")
    code = error.code()
    # A broker's code (> 0) is Kafka's protocol code: judged as kafka-python judges it. librdkafka's own (< 0): the
    # timeouts, a lost connection, and the records purged at close.
    retryable = error.retriable() or (code > 0 and kafka.errors.for_code(code).retriable) or code in (
        codes._MSG_TIMED_OUT, codes._TIMED_OUT, codes._TRANSPORT, codes._ALL_BROKERS_DOWN,
        codes._PURGE_QUEUE, codes._PURGE_INFLIGHT)
    return DeliveryError(f"Kafka did not acknowledge {what} on {topic}: {error.name()}: {error.str()}",
                         retryable=retryable)


def _client_error(error: Any) -> None:
    """librdkafka's errors outside any record (a broker down, say): the records' own reports say what failed."""
    CLIENT_LOG.warning("librdkafka: %s", error)
