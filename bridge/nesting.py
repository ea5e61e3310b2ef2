"""How deeply nested a decoded value may be, and JSON parsing that enforces it.

Event encoding and dead letters walk values recursively; at a few hundred levels that exhausts
Python's recursion limit (json.loads itself gives up near 1,000), and a RecursionError is not a
decoding error: it would crash the bridge on the same record at every restart. The sources therefore
refuse deeper values as undecodable, which dead-letters them like any other bad record.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 100  # levels of objects/arrays; real documents stay far below, the encoders far above


class TooDeep(ValueError):
    """A JSON document or value nested deeper than MAX_DEPTH."""

    def __init__(self, limit: int = MAX_DEPTH) -> None:
        super().__init__(f"nested deeper than {limit} levels of objects/arrays, the most the bridge accepts")


def loads_bounded(text: str | bytes, limit: int = MAX_DEPTH) -> Any:
    """json.loads, raising TooDeep (a ValueError) for a document nested deeper than `limit`."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise TooDeep(limit) from None
    check_depth(value, limit, text)
    return value


def check_depth(value: Any, limit: int = MAX_DEPTH, text: str | bytes | None = None) -> None:
    """Raise TooDeep if `value` nests deeper than `limit`. `text`, its JSON source if known, lets the
    common case cost one C-speed count: a document with at most `limit` brackets cannot be too deep."""
    if text is not None and _brackets(text) <= limit:
        return
    if value.__class__ not in (dict, list):
        return
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:  # iterative: walking the value must not recurse either
        current, depth = stack.pop()
        if depth > limit:
            raise TooDeep(limit)
        children = current.values() if current.__class__ is dict else current
        stack.extend((child, depth + 1) for child in children if child.__class__ in (dict, list))


def _brackets(text: str | bytes) -> int:
    if isinstance(text, bytes):
        return text.count(b"{") + text.count(b"[")
    return text.count("{") + text.count("[")
