"""The child of bridge/sinks/process.py: runs the configured sink and reports its delivery callbacks.

    python -m bridge.sinks.process_worker <parent pid>      (stdin: frames in, stdout: frames out)

The first frame opens the sink; then "publish" frames are published in order, each delivery callback
queued and sent back in batches by a reporter thread; "flush" and "close" are answered once the sink did
them. Log lines go to stderr, as the daemon's do. The child ends with its parent: PR_SET_PDEATHSIG where
Linux offers it, and at the end of its input in any case, without publishing anything more (what it had
not acknowledged was not acknowledged to the source either, and is read again).
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import signal
import sys
import threading
from typing import IO, Any

from bridge.errors import BridgeError
from bridge.observability import configure_logging
from bridge.settings import KafkaSink, LocalLogSink
from bridge.sinks.opening import open_sink
from bridge.sinks.process import dump_frame, error_to_wire

log = logging.getLogger("bridge.sinks.process")

PR_SET_PDEATHSIG = 1
SECTIONS = {"KafkaSink": KafkaSink, "LocalLogSink": LocalLogSink}


class Reporter:
    """Delivery outcomes, sent back in batches by a thread of their own; replies go after the outcomes
    reported before them."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._write = threading.Lock()  # one frame at a time on stdout
        self._pending: list[tuple[Any, ...]] = []  # (number, error) and ("placed", topic, partition, offset)
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="sink-process-reporter", daemon=True)
        self._thread.start()

    def outcome(self, number: int) -> Any:
        """The delivery callback for publication `number`."""
        def report(error: BaseException | None) -> None:
            self._add((number, None if error is None else error_to_wire(error)))
        return report

    def placed(self, topic: str, partition: int, offset: int) -> None:
        """A Kafka sink's on_delivered: where an event went, sent ahead of its outcome."""
        self._add(("placed", topic, partition, offset))

    def _add(self, entry: tuple[Any, ...]) -> None:
        with self._ready:
            self._pending.append(entry)
            if len(self._pending) == 1:
                self._ready.notify()

    def reply(self, message: tuple[Any, ...]) -> None:
        with self._write:
            self._send_pending()
            dump_frame(message, self._stream)

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._pending:
                    self._ready.wait()
            with self._write:
                self._send_pending()

    def _send_pending(self) -> None:
        with self._ready:
            pending, self._pending = self._pending, []
        if pending:
            dump_frame(("acks", pending), self._stream)


def die_with(parent_pid: int) -> None:
    """Be killed when the parent dies (kill -9 included): an orphan would hold the log's writer lock."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the end of input still ends it
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def serve(inbox: IO[bytes], reporter: Reporter) -> None:
    """Open the sink the first frame describes, then publish, flush and close as told."""
    _, section_name, section_json, aggregates, log_level, log_format = pickle.load(inbox)
    configure_logging(log_level, log_format, context={"component": "sink_process", "pid": os.getpid()})
    try:
        sink = open_sink(SECTIONS[section_name].model_validate_json(section_json), aggregates)
    except BaseException as exc:  # noqa: BLE001 (whatever it is, the parent reports it)
        if not isinstance(exc, BridgeError):
            log.exception("opening the sink failed")
        reporter.reply(("failed", error_to_wire(exc)))
        return
    reporter.reply(("opened", getattr(sink, "end_offset", None)))
    outcome = reporter.outcome
    failed = False
    while True:
        try:
            message = pickle.load(inbox)
        except EOFError:
            os._exit(0)  # the parent is gone: see the module's docstring
        kind = message[0]
        if kind == "publish" and failed:
            continue  # as in one process, nothing is published after a publish raised: it would pass the failed event
        if kind == "publish":
            try:
                for item in message[1]:
                    if len(item) == 2:
                        sink.publish(item[1], outcome(item[0]))
                    else:
                        sink.publish_dead_letter(item[1], item[2], outcome(item[0]))
            except BaseException as exc:  # noqa: BLE001 (raised in the daemon's process as it would have been)
                if not isinstance(exc, BridgeError):
                    log.exception("publishing failed in the sink process")
                reporter.reply(("fatal", error_to_wire(exc)))
                failed = True
        elif kind == "flush":
            reporter.reply(("flushed", _outcome_of(sink.flush, message[1])))
        elif kind == "note_placements":
            if hasattr(sink, "on_delivered"):
                sink.on_delivered = reporter.placed
        elif kind == "close":
            closed = _outcome_of(sink.close)
            reporter.reply(("closed", closed, getattr(sink, "end_offset", None)))
            return


def _outcome_of(call: Any, *args: Any) -> Any:
    try:
        call(*args)
    except BaseException as exc:  # noqa: BLE001 (reported to the parent, which raises it)
        if not isinstance(exc, BridgeError):
            log.exception("the sink failed")
        return error_to_wire(exc)
    return None


def main(argv: list[str]) -> None:
    die_with(int(argv[1]))
    # The parent stops it through its input: Ctrl-C (the whole process group) or a service manager's TERM
    # must not end it while the parent drains.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Frames own stdout: anything printed goes to stderr instead.
    frames = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    code = 0
    try:
        serve(sys.stdin.buffer, Reporter(frames))
        frames.flush()
    except BaseException:  # noqa: BLE001 (the parent sees the end of its input and reports it)
        log.exception("the sink process failed")
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)  # the sink's own threads (a producer's I/O thread) must not keep it alive


if __name__ == "__main__":
    main(sys.argv)
