"""Where a backfill publishes: Kafka topics beside the live ones, a local event log, or (on request) the live sink.

    --to topics[:SUFFIX]   each live topic's name + SUFFIX (default ".backfill"), dead letters likewise
    --to log[:DIR]         a local event log directory (default: the run's directory/events)
    --to live              the daemon's own topics or log: consumers that already hold an aggregate see it
                           created again

Each target opens the sink the daemon would (same envelope, same checks of size and writability), counts what
it acknowledged per event type, and notes where it went (Kafka: first and last offset per partition; a log:
its offsets), for the run's manifest.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.errors import ConfigurationError, DeliveryError
from bridge.events import DomainEvent
from bridge.ports import DeliveryCallback, EventSink
from bridge.settings import KafkaSink, LocalLogSink, Settings

log = logging.getLogger("bridge.backfill")

DEFAULT_TOPIC_SUFFIX = ".backfill"
MANIFEST_TOPIC = "cdc-bridge.backfill-manifests"


@dataclass(frozen=True)
class Target:
    """A parsed --to: kind "topics", "log" or "live", and its argument (a suffix or a directory)."""

    kind: str
    argument: str | None = None

    @classmethod
    def parse(cls, text: str | None, settings: Settings) -> Target:
        if text is None:
            return cls("topics", DEFAULT_TOPIC_SUFFIX) if settings.sink.kind == "kafka" else cls("log", None)
        kind, _, argument = text.partition(":")
        if kind == "topics":
            suffix = argument or DEFAULT_TOPIC_SUFFIX
            if not all(c.isalnum() or c in "._-" for c in suffix):
                raise ConfigurationError(f"--to {text}: a topic suffix may hold letters, digits, '.', '_' and '-'")
            return cls("topics", suffix)
        if kind == "log":
            return cls("log", argument or None)
        if kind == "live" and not argument:
            return cls("live")
        raise ConfigurationError(f"--to {text}: expected topics[:SUFFIX], log[:DIR] or live")

    def describe(self, run_dir: Path) -> str:
        if self.kind == "topics":
            return f"topics:{self.argument}"
        if self.kind == "log":
            return f"log:{self.log_path(run_dir)}"
        return "live"

    def log_path(self, run_dir: Path) -> Path:
        return Path(self.argument) if self.argument else run_dir / "events"

    def sink_settings(self, settings: Settings, run_dir: Path) -> KafkaSink | LocalLogSink:
        """The sink section this target publishes with: the daemon's, with names moved aside."""
        sink = settings.sink
        if self.kind == "live":
            return sink
        if self.kind == "log":
            return LocalLogSink(path=self.log_path(run_dir), separate_process=sink.separate_process,
                                **({"fsync_interval_ms": sink.fsync_interval_ms} if isinstance(sink, LocalLogSink) else {}))
        base = sink if isinstance(sink, KafkaSink) else KafkaSink()
        suffix = self.argument or DEFAULT_TOPIC_SUFFIX
        return base.model_copy(update={
            "topic_template": base.topic_template + suffix,
            "topics": {aggregate: topic + suffix for aggregate, topic in base.topics.items()},
            "dead_letter_topic": base.dead_letter_topic + suffix})


class CountingSink:
    """The target's sink, counting acknowledged events per type and noting where they went (for the manifest)."""

    def __init__(self, sink: EventSink, settings: KafkaSink | LocalLogSink) -> None:
        self._sink = sink
        self._settings = settings
        self._lock = threading.Lock()
        self.events: Counter[str] = Counter()
        self.dead_letters = 0
        self.partitions: dict[str, dict[int, list[int]]] = {}  # topic -> partition -> [first, last, count]
        self._first_log_offset = getattr(sink, "end_offset", None)
        if hasattr(sink, "on_delivered"):
            sink.on_delivered = self._noted  # type: ignore[attr-defined]

    def _noted(self, topic: str, partition: int, offset: int) -> None:
        with self._lock:
            span = self.partitions.setdefault(topic, {}).get(partition)
            if span is None:
                self.partitions[topic][partition] = [offset, offset, 1]
            else:
                span[0], span[1], span[2] = min(span[0], offset), max(span[1], offset), span[2] + 1

    def publish(self, event: DomainEvent, on_delivery: DeliveryCallback) -> None:
        def delivered(error: Exception | None) -> None:
            if error is None:
                with self._lock:
                    self.events[event.type] += 1
            on_delivery(error)

        self._sink.publish(event, delivered)

    def publish_dead_letter(self, record: dict[str, Any], key: bytes | None, on_delivery: DeliveryCallback) -> None:
        def delivered(error: Exception | None) -> None:
            if error is None:
                with self._lock:
                    self.dead_letters += 1
            on_delivery(error)

        self._sink.publish_dead_letter(record, key, delivered)

    def flush(self, timeout_s: float) -> None:
        self._sink.flush(timeout_s)

    def close(self) -> None:
        self._sink.close()

    def where(self) -> dict[str, Any]:
        """Where the events went: the manifest's `output`."""
        settings = self._settings
        if isinstance(settings, LocalLogSink):
            return {"kind": "locallog", "path": str(settings.path),
                    "offsets": {"first": self._first_log_offset, "next": getattr(self._sink, "end_offset", None)}}
        with self._lock:
            topics = {topic: {str(p): {"first": s[0], "last": s[1], "count": s[2]} for p, s in sorted(parts.items())}
                      for topic, parts in sorted(self.partitions.items())}
        return {"kind": "kafka", "bootstrap_servers": settings.bootstrap_servers, "topics": topics,
                "dead_letter_topic": settings.dead_letter_topic}


class DryRunSink:
    """Publishes nothing and acknowledges everything at once: `--dry-run` reads and translates only."""

    def publish(self, event: DomainEvent, on_delivery: DeliveryCallback) -> None:
        on_delivery(None)

    def publish_dead_letter(self, record: dict[str, Any], key: bytes | None, on_delivery: DeliveryCallback) -> None:
        on_delivery(None)

    def flush(self, timeout_s: float) -> None:
        pass

    def close(self) -> None:
        pass


def publish_manifest(settings: KafkaSink, run_id: str, manifest: dict[str, Any]) -> None:
    """The manifest as one record (key: the run id) on MANIFEST_TOPIC, beside the events it describes."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    from bridge.sinks.kafka import admin_client, ensure_topics

    admin = admin_client(settings)
    try:
        if settings.create_topics:
            ensure_topics(admin, settings, [MANIFEST_TOPIC])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers.split(","), acks="all")
    try:
        producer.send(MANIFEST_TOPIC, key=run_id.encode(),
                      value=json.dumps(manifest, sort_keys=True).encode()).get(timeout=settings.delivery_timeout_s)
    except KafkaError as exc:
        raise DeliveryError(f"the manifest of backfill {run_id} could not be published to {MANIFEST_TOPIC}: {exc}; "
                            "it is in the run's directory") from exc
    finally:
        producer.close(timeout=10)
