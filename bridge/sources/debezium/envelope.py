"""Reading the JsonConverter's envelope cheaply: split schema from payload, compile each schema once.

A record written with `schemas.enable=true` is `{"schema":<S>,"payload":<P>}`, and S (several KB for
a wide table) is the same on every record of a table. Parsing it every time would cost more than the
row itself, so the schema's bytes are cut out without parsing, looked up in a bounded cache of
compiled plans, and only the payload goes through json.loads. Anything that does not look exactly like
the JsonConverter's output takes the slow path (one full json.loads), so odd input is still decoded
or rejected with a clear message, never misread.

The plan caches are the module's only state: pure memos, keyed by everything a plan depends on (the
schema text, the TOAST placeholder, the columns declared numeric), so they never change a result.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from bridge.nesting import TooDeep, loads_bounded
from bridge.sources.debezium import values as v
from bridge.sources.debezium.types import SchemaError, StructPlan, compile_struct

_SCHEMA_HEAD = b'{"schema":'
_PAYLOAD_SEP = b',"payload":'
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
_SEQUENCE_PAIR = re.compile(r'\[(?:"(\d+)"|null),(?:"(\d+)"|null)\]')


class NotJson(ValueError):
    """The bytes are not JSON at all."""


def split_document(raw: bytes) -> tuple[bytes | None, Any]:
    """(schema text or None, payload) of one JsonConverter document, with one json.loads of the payload.

    The fast path relies on the JsonConverter's fixed layout: the schema comes first and, being a
    Connect schema, cannot contain the bytes `,"payload":` (field names and parameters appear only as
    JSON strings, where a quote would be escaped). A document nested too deep raises TooDeep (see
    bridge.nesting): it would crash the recursive code downstream.
    """
    if raw[:10] == _SCHEMA_HEAD:
        cut = raw.find(_PAYLOAD_SEP)
        if cut > 0 and raw[-1:] == b"}":
            try:  # decoding to str first spares json.loads its encoding detection
                return raw[10:cut], loads_bounded(raw[cut + 11:-1].decode())
            except TooDeep:
                raise
            except ValueError:
                pass  # not the layout we assumed: let the slow path decide
    try:
        document = loads_bounded(raw)
    except TooDeep:
        raise
    except ValueError as exc:
        raise NotJson(f"not JSON ({exc})") from None
    if document.__class__ is dict and len(document) == 2 and "schema" in document and "payload" in document:
        schema = document["schema"]
        return (None if schema is None else json.dumps(schema, sort_keys=True).encode()), document["payload"]
    return None, document


@lru_cache(maxsize=512)
def envelope_plans(schema_text: bytes, placeholder: str, numeric: frozenset[str]
                   ) -> tuple[StructPlan | None, StructPlan | None]:
    """(before plan, after plan) of a change-event envelope schema; (None, None) for message envelopes."""
    schema = _load_schema(schema_text)
    fields = {f.get("field"): f for f in schema.get("fields") or () if isinstance(f, dict)}
    if "op" not in fields or "source" not in fields:
        raise SchemaError(f"expected a Debezium envelope schema (fields op, source, ...), got {schema.get('name')!r}")
    forms = v.toast_forms(placeholder)
    after = compile_struct(fields["after"], forms, numeric) if "after" in fields else None
    if "before" not in fields:
        return None, after
    before = after if fields["before"] == fields.get("after") else compile_struct(fields["before"], forms, numeric)
    return before, after


@lru_cache(maxsize=512)
def key_plan(schema_text: bytes, placeholder: str, numeric: frozenset[str]) -> StructPlan:
    return compile_struct(_load_schema(schema_text), v.toast_forms(placeholder), numeric)


def _load_schema(schema_text: bytes) -> dict[str, Any]:
    try:
        schema = loads_bounded(schema_text)
    except ValueError as exc:
        raise SchemaError(f"the schema is not JSON ({exc})") from None
    if schema.__class__ is not dict:
        raise SchemaError(f"expected a schema object, got {type(schema).__name__}")
    return schema


# --- small fixed-shape parts of the envelope ---------------------------------------------------------


def millis_to_utc(millis: int) -> datetime:
    return _EPOCH_UTC + timedelta(milliseconds=millis)


def parse_sequence(text: Any) -> tuple[int | None, ...]:
    """source.sequence, a JSON array *as a string*: '["31091872","31091928"]' or '[null,"31078208"]'."""
    if text is None:
        return ()
    pair = _SEQUENCE_PAIR.fullmatch(text) if text.__class__ is str else None
    if pair is not None:  # the shape Debezium always writes: two LSNs, the first may be null
        first, second = pair.groups()
        return (None if first is None else int(first), None if second is None else int(second))
    if text.__class__ is not str or text[:1] != "[" or text[-1:] != "]":
        raise ValueError(f"source.sequence: expected a JSON array of LSN strings as text, got {text!r}")
    body = text[1:-1].strip()
    items: list[int | None] = []
    for item in body.split(",") if body else ():
        item = item.strip()
        if item == "null":
            items.append(None)
        elif len(item) > 2 and item[0] == '"' and item[-1] == '"' and item[1:-1].isdigit():
            items.append(int(item[1:-1]))
        else:
            raise ValueError(f"source.sequence: expected LSN strings or null, got {text!r}")
    return tuple(items)


def parse_transaction_id(text: Any, where: str) -> tuple[int, int]:
    """Debezium's transaction id "<xid>:<lsn>": the xid is stable across the transaction, the LSN is not."""
    if text.__class__ is str:
        xid, sep, lsn = text.partition(":")
        if sep and xid.isdigit() and lsn.isdigit():
            return int(xid), int(lsn)
    raise ValueError(f"{where}: expected a transaction id '<xid>:<lsn>', got {text!r}")


def require(container: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str, *,
            optional: bool = False) -> Any:
    """One field of a fixed-shape block, type-checked (bool is not accepted where int is expected)."""
    value = container.get(name)
    if value.__class__ is kind:  # the common case, decided in one comparison
        return value
    if value is None:
        if optional:
            return None
        raise ValueError(f"{where}.{name}: expected {_kind_name(kind)}, the field is missing or null")
    if not isinstance(value, kind) or (value.__class__ is bool and bool not in _as_tuple(kind)):
        raise ValueError(f"{where}.{name}: expected {_kind_name(kind)}, got {value!r:.80}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {int: "an integer", str: "a string", dict: "an object", list: "an array", bool: "a boolean"}
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))
