"""Decode one Kafka record written by Debezium's PostgreSQL connector into an exact, typed record.

    decode_record(topic, partition, offset, key, value, headers, declared=..., options=...) ->
        ChangeRecord        a row change (r/c/u/d), a truncate (t) or a logical message (m)
        TransactionMarker   BEGIN/END from the <prefix>.transaction topic
        Heartbeat           from __debezium-heartbeat.<prefix> (or topic.heartbeat.name)
        Tombstone           the null value Debezium writes after a delete, for log compaction

The kind is decided from the value's shape, not the topic name, and both JsonConverter settings are
read: `schemas.enable=true` (decoded by the schema) and `false` (decoded by DeclaredTypes; columns
nobody declared keep their raw JSON value and are listed in `undeclared_columns`).

Pure: no I/O, no clock. Anything malformed raises DecodeError naming topic, partition, offset and,
when there is one, the column, with what was expected. Nothing is dropped or guessed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bridge.changes import UNKNOWN, LogicalMessage, Op
from bridge.errors import DecodeError
from bridge.sources.debezium import values as v
from bridge.sources.debezium.declared import DeclaredTypes, check_modes
from bridge.sources.debezium.envelope import (
    NotJson,
    envelope_plans,
    key_plan,
    millis_to_utc,
    parse_sequence,
    parse_transaction_id,
    require,
    split_document,
)
from bridge.sources.debezium.types import ColumnError, SchemaError, StructPlan

NEW_KEY_HEADER = "__debezium.newkey"
OLD_KEY_HEADER = "__debezium.oldkey"
# END markers count logical messages under a Java object's toString ("...LogicalDecodingMessageId@6974e2cb"),
# different in every transaction; they are counted under this name instead.
LOGICAL_MESSAGES = "<logical messages>"
_MESSAGE_COLLECTION_PREFIX = "io.debezium.connector.postgresql.LogicalDecodingMessageMonitor$"
_OPS = {op.value: op for op in Op}


@dataclass(frozen=True, slots=True)
class DecodeOptions:
    """What the decoder must know about the connector and the database; build it once per source.

    declared: column types for topics written without schemas (see DeclaredTypes); a plain mapping is
    compiled here, once.
    decimal_mode, time_mode: the connector's decimal.handling.mode and time.precision.mode, which
    decide how a declared type was written (with a schema, the schema says it).
    placeholder: the connector's unavailable.value.placeholder (unchanged TOAST values).
    replica_identity_full: "schema.table" of tables with REPLICA IDENTITY FULL. For every other table a
    before image is key-only: Debezium fills the missing columns with null, or with "" / 0 for NOT NULL
    ones (recorded from Debezium 3.6.1), which would read as real values; the decoder keeps the key
    columns and makes the rest UNKNOWN. A FULL table left out of this set loses its before values
    (UNKNOWN), never gains invented ones.
    """

    declared: Mapping[str, Mapping[str, str]] | None = None
    decimal_mode: str = "precise"
    time_mode: str = "adaptive"
    placeholder: str = v.DEFAULT_PLACEHOLDER
    replica_identity_full: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        check_modes(self.decimal_mode, self.time_mode)
        object.__setattr__(self, "declared", DeclaredTypes.of(self.declared))
        object.__setattr__(self, "replica_identity_full", frozenset(self.replica_identity_full))


DEFAULT_OPTIONS = DecodeOptions()


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """One change event: values exact (see bridge.changes), positions and transaction facts parsed."""

    op: Op
    schema: str  # "" for logical messages
    table: str
    key: dict[str, Any] | None  # None for truncates and tables without a key; {"prefix": ...} for messages
    before: dict[str, Any] | None  # key columns + UNKNOWN unless the table is REPLICA IDENTITY FULL
    after: dict[str, Any] | None  # UNKNOWN where an unchanged TOAST value was not sent
    change_lsn: int  # source.lsn; 0 when absent (incremental-snapshot reads)
    xid: int | None  # xid prefix of transaction.id, else source.txId
    total_order: int | None  # 1-based position in the transaction (transaction metadata only)
    data_collection_order: int | None  # 1-based position among the transaction's changes of this table
    commit_time: datetime  # aware UTC, source.ts_us (else ts_ms); for snapshot reads, when the row was read
    snapshot: str | None  # source.snapshot: "true", "first", "last", "false", "incremental", ...
    sequence: tuple[int | None, ...]  # source.sequence: (previous commit LSN, this event's LSN)
    new_key: dict[str, Any] | None  # on the DELETE half of a primary-key change (header __debezium.newkey)
    old_key: dict[str, Any] | None  # on the CREATE half of a primary-key change (header __debezium.oldkey)
    message: LogicalMessage | None  # op 'm'
    source_ref: str  # "topic/partition/offset"
    undeclared_columns: frozenset[str] = field(default=frozenset())  # schemaless columns decoded raw

    @property
    def data_collection(self) -> str:
        """The name END markers count this change under ("schema.table", or LOGICAL_MESSAGES)."""
        return LOGICAL_MESSAGES if self.op is Op.MESSAGE else f"{self.schema}.{self.table}"


@dataclass(frozen=True, slots=True)
class TransactionMarker:
    status: str  # "BEGIN" | "END"
    xid: int  # stable across BEGIN, the data events and END (the id's LSN part is not)
    lsn: int  # the id's LSN part: END's is the commit position
    event_count: int | None  # END only
    per_table_counts: Mapping[str, int]  # END only: "schema.table" (or LOGICAL_MESSAGES) -> events
    commit_time: datetime  # aware UTC (ms precision)
    source_ref: str


@dataclass(frozen=True, slots=True)
class Heartbeat:
    server_name: str | None  # the connector's topic.prefix, from the key
    timestamp: datetime  # aware UTC
    source_ref: str


@dataclass(frozen=True, slots=True)
class Tombstone:
    topic: str
    key: dict[str, Any] | None  # by the key schema when there is one, else raw JSON
    source_ref: str


DecodedRecord = ChangeRecord | TransactionMarker | Heartbeat | Tombstone


def decode_record(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                  headers: Sequence[tuple[str, bytes]], *, declared: DeclaredTypes | None = None,
                  options: DecodeOptions = DEFAULT_OPTIONS) -> DecodedRecord:
    """Decode one record; raise DecodeError if it is not exactly what Debezium writes.

    `declared` (if given) replaces options.declared; pass a DeclaredTypes built once, since a plain
    mapping is compiled again on every call.
    """
    ref = f"{topic}/{partition}/{offset}"
    declared = DeclaredTypes.of(declared) if declared is not None else options.declared  # type: ignore[assignment]
    try:
        if value is None:
            return Tombstone(topic, _plain_key(key), ref)
        schema_text, payload = split_document(value)
        if payload.__class__ is not dict:
            raise ValueError(f"expected a JSON object as the value, got {type(payload).__name__}")
        if "op" in payload:
            return _change(ref, schema_text, payload, key, headers, declared, options)
        if "status" in payload:
            return _marker(ref, payload)
        if payload.keys() == {"ts_ms"}:
            server = (_plain_key(key) or {}).get("serverName")
            return Heartbeat(server, millis_to_utc(require(payload, "ts_ms", int, "heartbeat")), ref)
        raise ValueError("expected a change event (op), a transaction marker (status) or a heartbeat "
                         f"({{ts_ms}}), got fields {sorted(payload)[:12]}")
    except DecodeError:
        raise
    except ColumnError as exc:
        raise _decode_error(topic, partition, offset, str(exc), exc.column) from exc
    except SchemaError as exc:
        raise _decode_error(topic, partition, offset, f"schema not understood: {exc}") from exc
    except NotJson as exc:
        raise _decode_error(topic, partition, offset, f"value or key is {exc}") from exc
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise _decode_error(topic, partition, offset, f"malformed record: {exc}") from exc


class DebeziumDecodeError(DecodeError):
    """A DecodeError that also carries where it happened, for dead-letter routing and metrics."""

    def __init__(self, message: str, topic: str, partition: int, offset: int, column: str | None) -> None:
        super().__init__(message)
        self.topic, self.partition, self.offset, self.column = topic, partition, offset, column


MAX_DETAIL_CHARS = 1000  # a 600 KB field quoted in full would make a 600 KB log line and dead letter


def _decode_error(topic: str, partition: int, offset: int, detail: str, column: str | None = None
                  ) -> DebeziumDecodeError:
    if len(detail) > MAX_DETAIL_CHARS:
        detail = f"{detail[:MAX_DETAIL_CHARS]}... ({len(detail)} characters in all)"
    return DebeziumDecodeError(
        f"cannot decode Debezium record at topic {topic!r} partition {partition} offset {offset}: {detail}",
        topic, partition, offset, column)


# --- change events ----------------------------------------------------------------------------------


def _change(ref: str, schema_text: bytes | None, payload: dict[str, Any], key: bytes | None,
            headers: Sequence[tuple[str, bytes]], declared: DeclaredTypes | None,
            options: DecodeOptions) -> ChangeRecord:
    op = _OPS.get(payload["op"])
    if op is None:
        raise ValueError(f"op: expected one of {', '.join(_OPS)}, got {payload['op']!r}")
    source = require(payload, "source", dict, "source")
    schema = require(source, "schema", str, "source")
    table = require(source, "table", str, "source")
    placeholder = options.placeholder
    numeric = declared.numeric_columns(schema, table) if declared is not None else frozenset()
    undeclared: set[str] = set()
    before, after = payload.get("before"), payload.get("after")
    is_message = op is Op.MESSAGE

    if schema_text is not None:
        before_plan, after_plan = envelope_plans(schema_text, placeholder, numeric)
        before = _by_plan(before_plan, before, f"before of {schema}.{table}")
        after = _by_plan(after_plan, after, f"after of {schema}.{table}")
    else:
        row_plan = _declared_plan(declared, schema, table, options)
        before = _by_declaration(row_plan, before, undeclared, f"before of {schema}.{table}")
        after = _by_declaration(row_plan, after, undeclared, f"after of {schema}.{table}")

    key_struct_plan, record_key = None, None
    if key is not None:
        key_schema, key_payload = split_document(key)
        if key_schema is not None:
            key_struct_plan = key_plan(key_schema, placeholder, numeric)
            record_key = _by_plan(key_struct_plan, key_payload, f"key of {schema}.{table}")
        elif is_message:
            record_key = key_payload
        else:
            record_key = _schemaless_key(declared, schema, table, options, key_payload, undeclared)

    new_key = old_key = None
    for name, raw in headers:
        if name == NEW_KEY_HEADER or name == OLD_KEY_HEADER:
            _, header_payload = split_document(raw)
            decoded = (_by_plan(key_struct_plan, header_payload, name) if key_struct_plan is not None else
                       _schemaless_key(declared, schema, table, options, header_payload, undeclared))
            if name == NEW_KEY_HEADER:
                new_key = decoded
            else:
                old_key = decoded

    if before is not None and record_key is not None and f"{schema}.{table}" not in options.replica_identity_full:
        before = {column: (value if column in record_key else UNKNOWN) for column, value in before.items()}

    transaction = payload.get("transaction")
    xid = total_order = collection_order = None
    if transaction is not None:
        if transaction.__class__ is not dict:
            raise ValueError(f"transaction: expected an object or null, got {transaction!r:.80}")
        xid, _ = parse_transaction_id(transaction.get("id"), "transaction.id")
        total_order = require(transaction, "total_order", int, "transaction")
        collection_order = require(transaction, "data_collection_order", int, "transaction")
    tx_id = require(source, "txId", int, "source", optional=True)
    ts_us = require(source, "ts_us", int, "source", optional=True)
    commit_time = (v.micros_to_utc(ts_us) if ts_us is not None
                   else millis_to_utc(require(source, "ts_ms", int, "source")))

    return ChangeRecord(
        op=op, schema=schema, table=table, key=record_key, before=before, after=after,
        change_lsn=require(source, "lsn", int, "source", optional=True) or 0,
        xid=xid if xid is not None else tx_id,
        total_order=total_order, data_collection_order=collection_order, commit_time=commit_time,
        snapshot=require(source, "snapshot", str, "source", optional=True),
        sequence=parse_sequence(source.get("sequence")),
        new_key=new_key, old_key=old_key,
        message=_message(payload, tx_id) if is_message else None,
        source_ref=ref, undeclared_columns=frozenset(undeclared),
    )


def _by_plan(plan: StructPlan | None, row: Any, where: str) -> dict[str, Any] | None:
    if row is None:
        return None
    if plan is None:
        raise ValueError(f"{where}: the schema has no struct for it, yet it holds {row!r:.80}")
    try:
        return plan.decode(row)
    except ColumnError as exc:
        raise exc.located(where) from exc.__cause__


def _by_declaration(plan: Any, row: Any, undeclared: set[str], where: str) -> dict[str, Any] | None:
    if row is None:
        return None
    if plan is None:
        if row.__class__ is not dict:
            raise ValueError(f"{where}: expected a row object, got {row!r:.80}")
        undeclared.update(row)
        return row
    try:
        return plan.decode(row, undeclared)
    except ColumnError as exc:
        raise exc.located(where) from exc.__cause__


def _declared_plan(declared: DeclaredTypes | None, schema: str, table: str, options: DecodeOptions) -> Any:
    if declared is None:
        return None
    return declared.row_plan(schema, table, options.placeholder, options.decimal_mode, options.time_mode)


def _schemaless_key(declared: DeclaredTypes | None, schema: str, table: str, options: DecodeOptions, key: Any,
                    undeclared: set[str]) -> dict[str, Any] | None:
    plan = _declared_plan(declared, schema, table, options)
    return _by_declaration(plan, key, undeclared, f"key of {schema}.{table}")


def _plain_key(key: bytes | None) -> dict[str, Any] | None:
    """A key decoded by its own schema if it has one (tombstones and heartbeats have no table context)."""
    if key is None:
        return None
    key_schema, payload = split_document(key)
    if key_schema is not None:
        return key_plan(key_schema, v.DEFAULT_PLACEHOLDER, frozenset()).decode(payload)
    if payload is not None and payload.__class__ is not dict:
        raise ValueError(f"key: expected a JSON object, got {payload!r:.80}")
    return payload


def _message(payload: dict[str, Any], tx_id: int | None) -> LogicalMessage:
    message = require(payload, "message", dict, "message")
    content = message.get("content")
    return LogicalMessage(
        prefix=require(message, "prefix", str, "message"),
        content=b"" if content is None else v.b64_bytes(content),
        # Debezium gives a non-transactional message neither a txId nor a transaction block.
        transactional=tx_id is not None,
    )


# --- transaction markers ----------------------------------------------------------------------------


def _marker(ref: str, payload: dict[str, Any]) -> TransactionMarker:
    status = payload["status"]
    if status not in ("BEGIN", "END"):
        raise ValueError(f"status: expected BEGIN or END, got {status!r}")
    xid, lsn = parse_transaction_id(payload.get("id"), "id")
    counts: dict[str, int] = {}
    for entry in require(payload, "data_collections", list, "marker", optional=True) or ():
        if entry.__class__ is not dict:
            raise ValueError(f"data_collections: expected objects, got {entry!r:.80}")
        name = require(entry, "data_collection", str, "data_collections[]")
        if name.startswith(_MESSAGE_COLLECTION_PREFIX):
            name = LOGICAL_MESSAGES
        counts[name] = counts.get(name, 0) + require(entry, "event_count", int, "data_collections[]")
    return TransactionMarker(
        status=status, xid=xid, lsn=lsn,
        event_count=require(payload, "event_count", int, "marker", optional=True),
        per_table_counts=counts, commit_time=millis_to_utc(require(payload, "ts_ms", int, "marker")), source_ref=ref,
    )
