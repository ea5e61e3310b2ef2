"""configure_logging's fixed context: every line of a process that shares the bridge's stderr names it."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from bridge.observability import configure_logging


@pytest.fixture
def restored_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_every_line_carries_the_context_and_a_calls_own_field_wins(
        restored_root: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json", context={"component": "sink_process", "pid": 4242})
    log = logging.getLogger("bridge.test")
    log.info("first")
    log.warning("second", extra={"component": "other", "topic": "t"})
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert (first["message"], first["component"], first["pid"]) == ("first", "sink_process", 4242)
    assert (second["component"], second["pid"], second["topic"]) == ("other", 4242, "t")


def test_without_context_a_line_has_only_its_own_fields(restored_root: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "text")
    logging.getLogger("bridge.test").info("plain", extra={"table": "orders"})
    assert capsys.readouterr().err.strip() == "INFO    bridge.test: plain  table=orders"
