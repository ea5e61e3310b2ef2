"""Dead letters: the original change, the rule and the error, as JSON a human (or a replay tool) can use."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from bridge.changes import UNKNOWN, RowChange


def _plain(value: Any) -> Any:
    """Like the event encoding, but total: a dead letter must be writable whatever the value is."""
    if value is UNKNOWN:
        return {"$unknown": True}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$base64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return repr(value)


def change_as_json(change: RowChange) -> dict[str, Any]:
    return {
        "op": change.op.value,
        "table": change.qualified_table,
        "key": _plain(change.key),
        "old_key": _plain(change.old_key),
        "before": _plain(change.before),
        "after": _plain(change.after),
        "position": str(change.position),
        "commit_lsn": change.position.commit_lsn,
        "change_lsn": change.position.change_lsn,
        "seq": change.position.seq,
        "xid": change.xid,
        "commit_time": change.commit_time.isoformat(),
        "source_ref": change.source_ref,
    }


def dead_letter_for_change(letter: Any, source_id: str) -> tuple[dict[str, Any], bytes | None]:
    """A change a rule failed on. `letter` has .change, .rule_id and .error."""
    change: RowChange = letter.change
    record = {"kind": "translation_failed", "source_id": source_id, "rule": letter.rule_id,
              "error": str(letter.error), "change": change_as_json(change)}
    return record, change.qualified_table.encode()


def dead_letter_for_record(raw: Mapping[str, Any], error: Exception, source_id: str) -> tuple[dict[str, Any], bytes | None]:
    """A Kafka record that could not be decoded, kept byte for byte as text."""
    record = {"kind": "undecodable", "source_id": source_id, "error": str(error), "record": dict(raw)}
    return record, str(raw.get("topic", "")).encode() or None
