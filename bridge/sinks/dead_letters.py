"""Dead letters: the original change, the rule and the error, as JSON a human (or a replay tool) can use.

Every dead letter is bounded, so it always fits the sink: an undecodable record keeps its key and value
up to RAW_PREFIX_BYTES each (longer ones are cut, with their full size and SHA-256), and a record the
sink refuses as too large (an event, or a dead letter of a huge change) is replaced by one holding only
its coordinates, the reason and its first PREFIX_BYTES. All of it is a pure function of the input, so a
replay after a crash produces the same dead letter, byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Mapping
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from bridge.changes import UNKNOWN, RowChange
from bridge.errors import RecordTooLarge
from bridge.events import DomainEvent
from bridge.nesting import MAX_DEPTH

RAW_PREFIX_BYTES = 32 * 1024  # of an undecodable record's key or value (JSON escaping may grow it 6x)
HEADER_PREFIX_BYTES = 1024
MAX_HEADERS = 64
PREFIX_BYTES = 4 * 1024  # of a too-large record, in its replacement (at most a quarter of the limit)
MAX_ERROR_CHARS = 2000
MAX_KEY_CHARS = 1024  # a primary key in a replacement's coordinates


def encode_dead_letter(record: Mapping[str, Any]) -> bytes:
    """The bytes every sink stores for a dead letter."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def _plain(value: Any, depth: int = 0) -> Any:
    """Like the event encoding, but total: a dead letter must be writable whatever the value is (and
    however deeply it nests: what lies below MAX_DEPTH is replaced, never recursed into)."""
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
    if isinstance(value, (Mapping, list, tuple, set, frozenset)) and depth >= MAX_DEPTH:
        return {"$truncated": f"nested deeper than {MAX_DEPTH} levels"}
    if isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v, depth + 1) for v in value]
    return repr(value)


def change_as_json(change: RowChange) -> dict[str, Any]:
    return {
        "op": change.op.value,
        "table": change.qualified_table,
        "key": _plain(change.key),
        "old_key": _plain(change.old_key),
        "before": _plain(change.before),
        "after": _plain(change.after),
        **_position(change),
    }


def _position(change: RowChange) -> dict[str, Any]:
    return {
        "position": str(change.position),
        "commit_lsn": change.position.commit_lsn,
        "change_lsn": change.position.change_lsn,
        "seq": change.position.seq,
        "xid": change.xid,
        "commit_time": change.commit_time.isoformat(),
        "source_ref": change.source_ref,
    }


def change_coordinates(change: RowChange) -> dict[str, Any]:
    """Where a change is, without its row values: what a bounded dead letter keeps."""
    return {"op": change.op.value, "table": change.qualified_table, "key": _clipped_json(_plain(change.key)),
            "old_key": _clipped_json(_plain(change.old_key)), **_position(change)}


def dead_letter_for_change(letter: Any, source_id: str) -> tuple[dict[str, Any], bytes | None]:
    """A change a rule failed on. `letter` has .change, .rule_id and .error."""
    change: RowChange = letter.change
    record = {"kind": "translation_failed", "source_id": source_id, "rule": letter.rule_id,
              "error": _clip(str(letter.error)), "change": change_as_json(change)}
    return record, change.qualified_table.encode()


def dead_letter_for_record(raw: Mapping[str, Any], error: Exception, source_id: str, *,
                           transaction: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], bytes | None]:
    """A record that could not be decoded (or was skipped: the error's `dead_letter_kind`): its fields as
    text, each cut to a bounded prefix (see `bounded_raw`). `transaction`: the transaction it belonged
    to, when it was dead-lettered as part of it."""
    kind = getattr(error, "dead_letter_kind", "undecodable")
    record: dict[str, Any] = {"kind": kind, "source_id": source_id, "error": _clip(str(error)),
                              "record": bounded_raw(raw)}
    if transaction is not None:
        record["transaction"] = dict(transaction)
    return record, str(raw.get("topic", "")).encode() or None


def bounded_raw(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Text and bytes fields kept whole up to RAW_PREFIX_BYTES; a longer one is cut, and `<name>_bytes`
    and `<name>_sha256` say what it was. Header values likewise, to HEADER_PREFIX_BYTES."""
    bounded: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "headers" and isinstance(value, Mapping):
            headers: dict[str, Any] = {}
            for header, header_value in list(value.items())[:MAX_HEADERS]:
                _put_bounded(headers, str(header)[:HEADER_PREFIX_BYTES], header_value, HEADER_PREFIX_BYTES)
            if len(value) > MAX_HEADERS:
                bounded["headers_count"] = len(value)
            bounded[name] = headers
        else:
            _put_bounded(bounded, name, value, RAW_PREFIX_BYTES)
    return bounded


def _put_bounded(target: dict[str, Any], name: str, value: Any, limit: int) -> None:
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, str):
        data = value.encode("utf-8", errors="surrogatepass")
    else:
        target[name] = value
        return
    if len(data) <= limit:
        target[name] = data.decode("utf-8", errors="replace") if not isinstance(value, str) else value
        return
    target[name] = data[:limit].decode("utf-8", errors="replace")
    target[f"{name}_bytes"] = len(data)
    target[f"{name}_sha256"] = hashlib.sha256(data).hexdigest()


def dead_letter_for_oversized_event(event: DomainEvent, change: RowChange | None, too_large: RecordTooLarge,
                                    source_id: str) -> tuple[dict[str, Any], bytes | None]:
    """An event the sink cannot take: its coordinates, the reason, and the first bytes of its payload."""
    value = event.value()
    coordinates = change_coordinates(change) if change is not None else {
        "position": str(event.position), "commit_lsn": event.position.commit_lsn,
        "change_lsn": event.position.change_lsn, "seq": event.position.seq}
    record = {
        "kind": "too_large", "source_id": source_id, "rule": event.rule_id,
        "error": f"event {event.id} ({event.type}, {event.subject}) was not published: it is {too_large}",
        "size": too_large.size, "limit": too_large.limit,
        "event": {"id": event.id, "type": event.type, "subject": event.subject, "sequence": event.sequence},
        "change": coordinates,
        "payload": _sample(value, too_large.limit),
    }
    return record, (change.qualified_table.encode() if change is not None else event.key())


def shrink_dead_letter(record: Mapping[str, Any], key: bytes | None, too_large: RecordTooLarge
                       ) -> tuple[dict[str, Any], bytes | None]:
    """A dead letter the sink cannot take, cut to its kind, rule, error and coordinates, and a sample."""
    kept: dict[str, Any] = {name: record[name] for name in ("kind", "source_id", "rule", "transaction")
                            if name in record}
    kept["error"] = _clip(str(record.get("error", "")))
    change = record.get("change")
    if isinstance(change, Mapping):
        kept["change"] = {name: (_clipped_json(value) if name in ("key", "old_key") else value)
                          for name, value in change.items() if name not in ("before", "after")}
    raw = record.get("record")
    if isinstance(raw, Mapping):
        kept["record"] = {name: value for name, value in raw.items()
                          if isinstance(value, (int, float, bool)) or value is None or name == "topic"}
    encoded = encode_dead_letter(record)
    kept["too_large"] = {
        "reason": f"this dead letter is {too_large}; cut to its coordinates and its first bytes",
        "size": too_large.size, "limit": too_large.limit, **_sample(encoded, too_large.limit)}
    return kept, key


def _sample(data: bytes, limit: int) -> dict[str, Any]:
    """Size, hash and first bytes: PREFIX_BYTES, or a quarter of the sink's limit if that is less, so the
    replacement fits a small limit too (escaping can grow the prefix)."""
    prefix = data[:min(PREFIX_BYTES, limit // 4)]
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "prefix": prefix.decode("utf-8", errors="replace")}


def _clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters in all)"


def _clipped_json(value: Any) -> Any:
    """A JSON-able value as is when small, else its text cut to MAX_KEY_CHARS."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    if len(text) <= MAX_KEY_CHARS:
        return value
    return {"$truncated": text[:MAX_KEY_CHARS], "$chars": len(text)}
