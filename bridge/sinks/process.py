"""The sink run in a second process (sink.separate_process): encoding and publishing on the other core.

The bridge is one GIL-bound process; what a sink does per event (the canonical JSON, the CloudEvents
headers, and with kafka-python the client's record building and its I/O thread, which needs the same GIL)
took a third or more of it. `SinkProcess` is an EventSink that hands events to a child process running
the configured sink (bridge/sinks/process_worker.py) and calls each `on_delivery` when the child reports
the real sink's callback; the guarantees are the sink's own, since an event is acknowledged to the
pipeline only after the real sink acknowledged it.

    parent                                       child (python -m bridge.sinks.process_worker)
    publish -> outbox -> writer thread ----->    stdin: ("publish", [(n, event) | (n, record, key), ...])
                                                          sink.publish(event, ack(n)) ...
    reader thread <- ("acks", [(n, error)])      stdout: the real sink's delivery callbacks, in batches
    flush / close -> ("flush", s) / ("close",)   replies ("flushed" | "closed", error)
    on_delivered = f -> ("note_placements",)     acks also carry ("placed", topic, partition, offset)

Frames are pickles (both ends are this code base). An event crosses as its fields (DomainEvent(*fields)
on the other side), about 3 us an event, against 13 us to encode it. The child dies with its parent
(PR_SET_PDEATHSIG) and exits at end of input without publishing more; a child that dies fails every
delivery outstanding with a retryable DeliveryError, so the daemon restarts the run and reads them again.
"""

from __future__ import annotations

import copyreg
import io
import logging
import os
import pickle
import queue
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import fields
from operator import attrgetter
from pathlib import Path
from typing import IO, Any

import bridge
import bridge.errors as errors_module
from bridge.changes import SnapshotMark, SourcePosition
from bridge.errors import BridgeError, DeliveryError, RecordTooLarge
from bridge.events import DomainEvent
from bridge.ports import DeliveryCallback, EventSink
from bridge.settings import KafkaSink, LocalLogSink
from bridge.sinks.opening import open_sink

log = logging.getLogger(__name__)

WORKER_MODULE = "bridge.sinks.process_worker"
REPLY_MARGIN_S = 15.0  # on top of a flush's or close's own timeout: the child answers after the sink did
EXIT_WAIT_S = 5.0

_event_fields = attrgetter(*(field.name for field in fields(DomainEvent)))
_position_fields = attrgetter(*(field.name for field in fields(SourcePosition)))
_mark_fields = attrgetter(*(field.name for field in fields(SnapshotMark)))

# How events cross: as their fields, rebuilt by the class itself on the other side (slots dataclasses pickle
# through Python-level __getstate__, five times slower).
_DISPATCH = {**copyreg.dispatch_table,
             DomainEvent: lambda event: (DomainEvent, _event_fields(event)),
             SourcePosition: lambda position: (SourcePosition, _position_fields(position)),
             SnapshotMark: lambda mark: (SnapshotMark, _mark_fields(mark))}


def dump_frame(message: Any, stream: IO[bytes]) -> None:
    """Write one message (events as their fields) and flush it to the pipe."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=5)
    pickler.dispatch_table = _DISPATCH  # type: ignore[misc]
    pickler.dump(message)
    stream.write(buffer.getbuffer())
    stream.flush()


def error_to_wire(error: BaseException) -> tuple[str, str, bool, tuple[Any, ...]]:
    """An error as plain values: the bridge's own keep their class and retryability, anything else is a
    delivery refused for good (the child logged its traceback)."""
    if isinstance(error, RecordTooLarge):
        return ("RecordTooLarge", str(error), False, (error.size, error.limit, error.where))
    if isinstance(error, BridgeError):  # as the nearest class of the tree (LogLockedError: ConfigurationError)
        tree = next(kind for kind in type(error).__mro__ if getattr(errors_module, kind.__name__, None) is kind)
        return (tree.__name__, str(error), error.retryable, ())
    return ("DeliveryError", f"the sink process failed: {type(error).__name__}: {error}", False, ())


def error_from_wire(wire: tuple[str, str, bool, tuple[Any, ...]]) -> BridgeError:
    name, message, retryable, extra = wire
    if name == "RecordTooLarge":
        return RecordTooLarge(*extra)
    kind = getattr(errors_module, name, None)
    if not (isinstance(kind, type) and issubclass(kind, BridgeError)) or kind is RecordTooLarge:
        kind = DeliveryError
    error = kind.__new__(kind)
    BridgeError.__init__(error, message, retryable=retryable)
    return error


def open_configured_sink(section: KafkaSink | LocalLogSink, aggregates: list[tuple[str, str]], *,
                         log_level: str = "INFO", log_format: str = "json") -> EventSink:
    """The sink a `sink:` section describes, for the daemon and backfills alike: in a second process with
    sink.separate_process, else in this one."""
    if section.separate_process:
        return SinkProcess.open(section, aggregates, log_level=log_level, log_format=log_format)
    return open_sink(section, aggregates)


class SinkProcess:
    """An EventSink whose real sink runs in a child process; see the module's docstring."""

    @classmethod
    def open(cls, section: KafkaSink | LocalLogSink, aggregates: list[tuple[str, str]], *,
             log_level: str = "INFO", log_format: str = "json") -> SinkProcess:
        """Start the child and open the sink there; what opening raised there is raised here (a
        ConfigurationError, a broker that does not answer), and the child has ended."""
        sink = cls()
        try:
            sink._start()
            sink._enqueue(("open", type(section).__name__, section.model_dump_json(), aggregates,
                           log_level, log_format))
            reply = sink._reply(None)
            if reply[0] != "opened":
                raise error_from_wire(reply[1])
            sink._end_offset = reply[1]
        except BaseException:
            try:
                sink.close()
            except BridgeError as exc:  # the reason it did not open is the one to report
                log.debug("closing the sink process after a failed open", extra={"error": str(exc)})
            raise
        return sink

    def __init__(self) -> None:
        self._child: subprocess.Popen[bytes] | None = None
        self._outbox: deque[Any] = deque()
        self._wake = threading.Event()
        self._callbacks: dict[int, DeliveryCallback] = {}
        self._next = 0
        self._replies: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._failure: BridgeError | None = None
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._on_delivered: Callable[[str, int, int], None] | None = None
        self._end_offset: int | None = None

    @property
    def pid(self) -> int | None:
        """The child's process id (None before it started)."""
        return None if self._child is None else self._child.pid

    # A backfill's manifest says where its events went, as in one process (bridge/backfill_target.py).

    @property
    def on_delivered(self) -> Callable[[str, int, int], None] | None:
        """Told (topic, partition, offset) of each event a Kafka sink delivered, before its on_delivery."""
        return self._on_delivered

    @on_delivered.setter
    def on_delivered(self, noted: Callable[[str, int, int], None] | None) -> None:
        if noted is not None and self._on_delivered is None:
            self._enqueue(("note_placements",))
        self._on_delivered = noted

    @property
    def end_offset(self) -> int | None:
        """The local log's next offset when it opened, and once closed when it closed; None for Kafka."""
        return self._end_offset

    # --- the EventSink ---------------------------------------------------------------------------------

    def publish(self, event: DomainEvent, on_delivery: DeliveryCallback) -> None:
        self._submit((event,), on_delivery)

    def publish_dead_letter(self, record: dict[str, Any], key: bytes | None, on_delivery: DeliveryCallback) -> None:
        self._submit((record, key), on_delivery)

    def flush(self, timeout_s: float) -> None:
        self._raise_failure()
        self._enqueue(("flush", timeout_s))
        reply = self._reply(timeout_s + REPLY_MARGIN_S)
        if reply[0] == "flushed" and reply[1] is not None:
            raise error_from_wire(reply[1])

    def close(self) -> None:
        """Close the real sink (it delivers what it can, as it would in this process), then end the child;
        a child that does not answer is killed. Idempotent."""
        if self._closing:
            return
        self._closing = True
        child = self._child
        if child is None:
            return
        error: BridgeError | None = None
        if child.poll() is None:  # also after a publish failed there: it still closes its sink when told
            self._enqueue(("close",))
            try:
                reply = self._reply(EXIT_WAIT_S + REPLY_MARGIN_S)
            except BridgeError:  # it ended or did not answer: nothing of it is left to close
                reply = ("ended",)
            if reply[0] == "closed":
                error = None if reply[1] is None else error_from_wire(reply[1])
                self._end_offset = reply[2]
        try:
            child.wait(EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            log.warning("the sink process did not end after close: killed", extra={"pid": child.pid})
            child.kill()
            child.wait()
        self._outbox.append(None)  # the writer's end
        self._wake.set()
        for thread in self._threads:
            thread.join(EXIT_WAIT_S)
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()
        if error is not None:
            raise error

    # --- parent side plumbing -----------------------------------------------------------------------------

    def _start(self) -> None:
        # The child imports this very build of the bridge (a benchmark may run another checkout's).
        code = str(Path(bridge.__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (code, os.environ.get("PYTHONPATH"))))}
        self._child = subprocess.Popen([sys.executable, "-m", WORKER_MODULE, str(os.getpid())],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
        for target, name in ((self._write_loop, "sink-process-writer"), (self._read_loop, "sink-process-reader")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _submit(self, item: tuple[Any, ...], on_delivery: DeliveryCallback) -> None:
        number = self._next
        self._next = number + 1
        self._callbacks[number] = on_delivery
        if self._failure is not None:  # checked after the callback is in: a failure now also fails it
            self._callbacks.pop(number, None)
            raise self._failure
        self._enqueue((number, *item))

    def _enqueue(self, item: Any) -> None:
        self._outbox.append(item)
        if not self._wake.is_set():
            self._wake.set()

    def _write_loop(self) -> None:
        """Send what was published since the last turn as one frame, and control messages in their order."""
        child = self._child
        assert child is not None and child.stdin is not None
        outbox, stream = self._outbox, child.stdin
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                batch: list[tuple[Any, ...]] = []
                while outbox:
                    item = outbox.popleft()
                    if item is None:
                        return
                    if type(item[0]) is int:
                        batch.append(item)
                        continue
                    if batch:
                        dump_frame(("publish", batch), stream)
                        batch = []
                    dump_frame(item, stream)
                if batch:
                    dump_frame(("publish", batch), stream)
        except (BrokenPipeError, ValueError, OSError):
            return  # the child is gone: the reader reports it
        except Exception as exc:  # noqa: BLE001 (a value that does not pickle: nothing more can be sent)
            log.error("cannot send to the sink process: stopping it", exc_info=True)
            self._fail(DeliveryError(f"an event could not be handed to the sink process: {type(exc).__name__}: "
                                     f"{exc}", retryable=False))
            child.kill()

    def _read_loop(self) -> None:
        child = self._child
        assert child is not None and child.stdout is not None
        stream, callbacks = child.stdout, self._callbacks
        try:
            while True:
                message = pickle.load(stream)
                if message[0] == "acks":
                    for entry in message[1]:
                        number = entry[0]
                        if type(number) is not int:  # ("placed", topic, partition, offset), before its ack
                            if self._on_delivered is not None:
                                self._on_delivered(*entry[1:])
                            continue
                        callback = callbacks.pop(number, None)
                        if callback is not None:
                            wire = entry[1]
                            callback(None if wire is None else error_from_wire(wire))
                elif message[0] == "fatal":
                    self._fail(error_from_wire(message[1]))
                else:
                    self._replies.put(message)
        except (EOFError, OSError, ValueError, pickle.UnpicklingError):
            pass
        if self._closing and not callbacks:
            self._replies.put(("ended",))
            return
        code = child.wait()
        self._fail(DeliveryError(
            f"the sink process (pid {child.pid}) ended unexpectedly (exit code {code}); the changes of its "
            "undelivered events were not acknowledged and are read again", retryable=True))

    def _fail(self, error: BridgeError) -> None:
        """Every delivery outstanding fails with `error`, and so does every later call."""
        if self._failure is None:
            self._failure = error
        for number in list(self._callbacks):
            callback = self._callbacks.pop(number, None)
            if callback is not None:
                callback(error)
        self._replies.put(("lost",))  # wakes a caller waiting for a reply: not the child's own "failed" (an open)

    def _reply(self, timeout_s: float | None) -> tuple[Any, ...]:
        try:
            reply = self._replies.get(timeout=timeout_s)
        except queue.Empty:
            raise DeliveryError(f"the sink process did not answer within {timeout_s:.0f}s", retryable=True) from None
        if reply[0] in ("lost", "ended") and self._failure is not None:
            raise self._failure
        return reply

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure
