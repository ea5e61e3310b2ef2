"""Domain events and their CloudEvents 1.0 envelope (Kafka binary content mode).

An event's id is a UUIDv5 of where it came from: (source id, change position, rule id, major version,
output index). Replays, restarts and backfills therefore produce the same ids, and consumers can
deduplicate on `id`. Serialisation is canonical (fixed key order, fixed value encodings), so the same
legacy change yields byte-identical events whichever source carried it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from decimal import Decimal
from typing import Any

from bridge.changes import UNKNOWN, SnapshotMark, SourcePosition
from bridge.errors import TranslationError

# Fixed forever: changing it would change every event id ever published.
EVENT_ID_NAMESPACE = uuid.UUID("6f1c1f55-8f0e-5b8e-9a39-2b7c6b0a4d11")
SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class DomainEvent:
    """One domain event, ready to publish."""

    id: str
    type: str  # "<namespace>.<aggregate type>.<EventName>.v<major>", e.g. restaurant.order.OrderPlaced.v1
    source: str  # CloudEvents source: /cdc-bridge/<source id>
    subject: str  # "<aggregate type>/<aggregate id>"
    time: datetime  # the legacy commit time
    sequence: str  # fixed-width hex of the source position: sorts in commit order
    aggregate_type: str
    aggregate_id: str
    data: Mapping[str, Any]
    rule_id: str
    position: SourcePosition
    snapshot: SnapshotMark | None = None  # set for events of snapshot reads from the initial snapshot or a backfill
    # The exact contract revision the payload obeys (urn:cdc-bridge:contract:<type>:<major>.<revision>); None
    # for events of mappings without contracts.
    dataschema: str | None = None

    def headers(self) -> list[tuple[str, bytes]]:
        """CloudEvents binary-mode Kafka headers; events of a snapshot carry two extension attributes:
        `backfill` (the run id, or "initial") and `backfillcut` (the snapshot's consistent point, an LSN). The
        major is in `ce_type`; the exact revision in `ce_dataschema`."""
        headers = [
            ("ce_specversion", SPEC_VERSION.encode()),
            ("ce_id", self.id.encode()),
            ("ce_source", self.source.encode()),
            ("ce_type", self.type.encode()),
            ("ce_subject", self.subject.encode()),
            ("ce_time", format_time(self.time).encode()),
            ("ce_sequence", self.sequence.encode()),
            ("content-type", CONTENT_TYPE.encode()),
        ]
        if self.dataschema is not None:
            headers.append(("ce_dataschema", self.dataschema.encode()))
        if self.snapshot is not None:
            headers += [("ce_backfill", self.snapshot.label.encode()), ("ce_backfillcut", self.snapshot.cut_text.encode())]
        return headers

    def key(self) -> bytes:
        """Kafka key: the aggregate id, so one aggregate's events stay in order on one partition."""
        return self.aggregate_id.encode()

    def value(self) -> bytes:
        return encode_data(self.data)


def event_id(source_id: str, position: SourcePosition, rule_id: str, major: int, output_index: int) -> str:
    return uuid5_text(f"{source_id}|{position.change_lsn}|{position.seq}|{rule_id}|{major}|{output_index}")


_NAMESPACE_BYTES = EVENT_ID_NAMESPACE.bytes


def uuid5_text(name: str) -> str:
    """str(uuid.uuid5(EVENT_ID_NAMESPACE, name)), computed without building a UUID object: a third of the time,
    and it runs once per event (tests compare the two on many names)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def snapshot_event_id(source_id: str, schema: str, table: str, key: Mapping[str, Any], rule_id: str, major: int,
                      output_index: int, epoch: int = 0) -> str:
    """The id of an event of a snapshot read: from the row's table and key, not from where it was read, so the
    same backfill run twice (or resumed) gives the same ids. `epoch` > 0 only for a redone initial snapshot."""
    name = f"{source_id}|snapshot|{schema}.{table}|{key_text(key)}|{rule_id}|{major}|{output_index}"
    return uuid5_text(name if not epoch else f"{name}|{epoch}")


def key_text(key: Mapping[str, Any]) -> str:
    """A primary key as canonical JSON (sorted names, no spaces); a single integer column, the usual key, is
    written directly, to the same text."""
    if len(key) == 1:
        (column, value), = key.items()
        if type(value) is int:
            return f"{{{json.dumps(column, ensure_ascii=False)}:{value}}}"
    return json.dumps(to_json_value(key, "key"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sequence_of(position: SourcePosition, output_index: int) -> str:
    return f"{position.commit_lsn:016X}-{position.change_lsn:016X}-{position.seq:04X}-{output_index:04X}"


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds, as CloudEvents `time` and in payloads.

    Written field by field: strftime took twice as long, once per event and once per timestamp in a payload
    (bench/encode_data.py). Years before 1000 keep strftime's spelling, which does not pad them everywhere.
    """
    if moment.tzinfo is None:
        raise ValueError(f"event time must be timezone-aware, got {moment!r}")
    if moment.tzinfo is not timezone.utc:
        moment = moment.astimezone(timezone.utc)
    if moment.year < 1000:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return (f"{moment.year}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:{moment.minute:02d}:"
            f"{moment.second:02d}.{moment.microsecond:06d}Z")


def to_json_value(value: Any, where: str = "") -> Any:
    """The canonical JSON form of an exact Python value from a RowChange or a mapping expression.

    Decimals become strings ("12.50"), never floats, so money stays exact end to end.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return format_time(value) if value.tzinfo else value.isoformat()
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, Mapping):
        return {str(k): to_json_value(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is UNKNOWN:
        raise TranslationError(
            f"{where or 'a value'} is unknown (an unchanged TOAST column the change stream did not carry); "
            "take it from state or leave it out of the event"
        )
    raise TranslationError(f"{where or 'a value'}: cannot put a {type(value).__name__} into an event")


def _json_default(value: Any) -> Any:
    """What the C encoder cannot write itself (Decimal, datetime, UUID, bytes, ...), written as to_json_value
    writes it; anything else (UNKNOWN, a set) is refused, and encode_data's slow path says where it is."""
    if isinstance(value, (Decimal, datetime, date, time, uuid.UUID, bytes, bytearray, memoryview)):
        return to_json_value(value)
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError("not a JSON value")


_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default).encode


def encode_data(data: Mapping[str, Any]) -> bytes:
    """The canonical JSON of a payload: the bytes of ``json.dumps(to_json_value(data))``, written by the C
    encoder in one pass (to_json_value's walk of every value in Python cost as much as translating the change:
    bench/encode_data.py). Payloads are already plain (mapping.closures.publishable: str keys, lists, sets
    sorted), so the two agree byte for byte; tests/unit/test_encode_data.py holds them to it."""
    try:
        return _ENCODE(data).encode()
    except (TypeError, ValueError):
        # The slow path raises what it always raised, naming where the value is (data.lines[0].price).
        return json.dumps(to_json_value(data, "data"), separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode()
