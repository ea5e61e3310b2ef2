"""Services of one test alone, started by it through `stack.py` with a state directory of their own, so the
test may stop and start them again: the session stack's broker and server are shared and must stay up.
Reaped like the session stack if the test session dies (tests/support/local_stack.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.support.local_stack import _new_session_state, run_stack, stop_session_stack


class PrivateService:
    """`stack.py up <name>` (postgres or kafka); `stop` and `start` again keep the data and the port."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = _new_session_state(f"{name}-")
        self.port: int | None = None
        self.facts: dict[str, Any] = {}

    def start(self) -> PrivateService:
        port = [f"--{self.name}-port", str(self.port)] if self.port else []
        run_stack(self.state, "up", self.name, *port)
        self.facts = json.loads((self.state / "stack.json").read_text())[self.name]
        self.port = int(self.facts["port"])
        return self

    def stop(self) -> None:
        run_stack(self.state, "down")

    def remove(self) -> None:
        stop_session_stack(self.state)


@contextmanager
def private_service(name: str) -> Iterator[PrivateService]:
    """The service started, and in the end stopped and its state directory removed (also when the test fails)."""
    service = PrivateService(name)
    try:
        yield service.start()
    finally:
        service.remove()
