"""Opening the sink a `sink:` section describes, in this process (bridge/sinks/process.py runs it in another)."""

from __future__ import annotations

from bridge.errors import ConfigurationError
from bridge.ports import EventSink
from bridge.settings import KafkaSink, LocalLogSink
from bridge.sinks.kafka import sink_class
from bridge.sinks.locallog import LocalLogEventSink


def open_sink(section: KafkaSink | LocalLogSink, aggregates: list[tuple[str, str]]) -> EventSink:
    """The sink a `sink:` section describes; a local log that cannot be opened is a ConfigurationError."""
    if isinstance(section, LocalLogSink):
        try:
            return LocalLogEventSink.from_settings(section)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot open the local event log at {section.path} (sink.path, sink.dead_letter_path): "
                f"{exc.strerror or exc}{f' ({exc.filename})' if exc.filename else ''}: make the folder writable "
                "by this user, or set sink.path to a writable place") from exc
    return sink_class(section).open(section, aggregates)
