"""Assemble pgoutput messages into the Transactions and RowChanges every source produces.

    assembler = PgOutputAssembler(user_types=..., primary_keys=...)
    for lsn, data in stream:                       # peek rows, or XLogData payloads
        transaction = assembler.feed(lsn, data)    # a Transaction at each Commit, else None

The result is what the Debezium path (debezium.records + transactions) yields for the same change,
value for value, so mappings and event ids cannot tell the sources apart:

- key: the primary-key columns. Under REPLICA IDENTITY DEFAULT the Relation message flags exactly
  those; under FULL it flags every column and under USING INDEX the index's, so for those tables the
  key comes from `primary_keys` (PRIMARY_KEYS_SQL), which the caller must then pass.
- before: None for an update that sent no old tuple; the key-only 'K' tuple becomes the replica
  identity columns plus UNKNOWN for every other column (the Debezium decoder's convention: a key-only
  image never pretends to know the rest); the full 'O' tuple (FULL) is the old row.
- after: UNKNOWN for an unchanged TOAST value ('u'); under FULL it is taken from the old row, which
  PostgreSQL sends in full, as Debezium does.
- An update whose old key differs from its new key is one op 'u' with old_key (Debezium's
  DELETE + CREATE pair, merged by transactions.py, gives the same).
- Truncate: one op 't' per table, key None. Message: op 'm', schema and table "", key {"prefix": ...}.
- position: commit_lsn = Commit's end LSN; change_lsn = the LSN the message was received at (the `lsn`
  column of pg_logical_slot_peek_binary_changes, the XLogData start in streaming); seq = the ordinal
  among the transaction's changes received at that same LSN (COPY, TRUNCATE of several tables, a
  logical message and the change after it).
- commit_time: Commit's timestamp (µs, aware UTC), the same instant as Debezium's source.ts_us.
  A non-transactional message has none: it gets the last commit time seen, which is what Debezium
  reports for it, or `received_at` before the first commit.

A transaction with more changes than a spill policy allows (`spill=`, spill.py) is not held in memory: its
raw messages go to a temporary file and its changes are read back from there when iterated.

A value that cannot be decoded does not stop the stream at once: the transaction is read to its
Commit and then reported whole as a TransactionDecodeError (with its xid and commit LSN, so the caller
can dead-letter it and still acknowledge the position). A broken stream (a change outside a
transaction, an unknown relation, a tuple that does not fit its Relation message, a malformed
message) or a setup error (a FULL table without its primary key) raises immediately.

Pure (no I/O, no clock) but for that spill file. The per-relation column decoders are built once per
Relation message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bridge.changes import UNKNOWN, LogicalMessage, Op, RowChange, SourcePosition, Transaction
from bridge.sources.pgoutput.protocol import (
    Begin,
    Commit,
    Delete,
    Insert,
    Message,
    Origin,
    PgOutputDecodeError,
    PgOutputMessage,
    Relation,
    Truncate,
    TupleData,
    TypeInfo,
    Update,
    lsn_text,
    parse_fields,
    parse_message,
)
from bridge.sources.pgoutput.values import UserType, column_decoder

if TYPE_CHECKING:
    from bridge.sources.pgoutput.spill import SpillPolicy, TransactionSpool

# Primary-key columns of every table, in key order: the `primary_keys` argument.
PRIMARY_KEYS_SQL = """
SELECT n.nspname, c.relname, array_agg(a.attname::text ORDER BY k.ord)
FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
WHERE i.indisprimary
GROUP BY n.nspname, c.relname
"""


def primary_keys_from_rows(rows: Iterable[tuple[str, str, Sequence[str]]]) -> dict[str, tuple[str, ...]]:
    """PRIMARY_KEYS_SQL's rows as the `primary_keys` mapping ("schema.table" -> columns)."""
    return {f"{schema}.{table}": tuple(columns) for schema, table, columns in rows}


_CHANGE_KINDS = frozenset(b"IUD")  # the message kinds feed applies from their fields (as do B and C)


class TransactionDecodeError(PgOutputDecodeError):
    """A change of a committed transaction could not be decoded; raised at its Commit, for the whole unit."""

    def __init__(self, cause: PgOutputDecodeError, xid: int, commit_lsn: int, commit_time: datetime) -> None:
        super().__init__(f"transaction xid {xid} (commit {lsn_text(commit_lsn)}) cannot be decoded: {cause}",
                         cause.lsn, cause.relation, cause.column)
        self.xid, self.commit_lsn, self.commit_time = xid, commit_lsn, commit_time


class RelationMismatch(PgOutputDecodeError):
    """A tuple does not fit its Relation message: the stream itself is broken, not one value."""


class RelationPlan:
    """One table's column decoders, key and identity columns, computed once per Relation message."""

    __slots__ = ("converters", "expected", "identity", "key_indexes", "key_names", "names", "qualified", "relation",
                 "schema", "table")

    def __init__(self, relation: Relation, user_types: Mapping[int, UserType],
                 primary_keys: Mapping[str, Sequence[str]] | None, lsn: int) -> None:
        self.relation = relation
        self.schema = relation.namespace or "pg_catalog"
        self.table = relation.name
        self.qualified = f"{self.schema}.{self.table}"
        self.names = tuple(column.name for column in relation.columns)
        decoders = [column_decoder(column.type_oid, user_types) for column in relation.columns]
        self.expected = tuple(decoder.expected for decoder in decoders)
        self.converters = tuple((index, name, decoder.decode)
                                for index, (name, decoder) in enumerate(zip(self.names, decoders, strict=True))
                                if decoder.decode is not None)
        self.identity = frozenset(c.name for c in relation.columns if c.is_identity)
        self.key_indexes = self._key_indexes(primary_keys, lsn)
        self.key_names = None if self.key_indexes is None else tuple(self.names[i] for i in self.key_indexes)

    def _key_indexes(self, primary_keys: Mapping[str, Sequence[str]] | None, lsn: int) -> tuple[int, ...] | None:
        identity = self.relation.replica_identity
        if primary_keys is not None and (self.qualified in primary_keys or identity != "d"):
            columns: Sequence[str] = primary_keys.get(self.qualified, ())
        elif identity == "d":
            columns = [c.name for c in self.relation.columns if c.is_identity]
        else:
            raise PgOutputDecodeError(
                f"relation {self.qualified} at LSN {lsn_text(lsn)} has REPLICA IDENTITY "
                f"{ {'f': 'FULL', 'i': 'USING INDEX', 'n': 'NOTHING'}[identity]}, so the stream does not say which "
                "columns form its primary key: expected primary_keys (PRIMARY_KEYS_SQL) to be passed",
                lsn, self.qualified)
        missing = [name for name in columns if name not in self.names]
        if missing:
            raise PgOutputDecodeError(
                f"relation {self.qualified} at LSN {lsn_text(lsn)}: primary key column(s) {missing} are not among "
                f"the published columns {list(self.names)} (a column list on the publication must include the key)",
                lsn, self.qualified, missing[0])
        return tuple(self.names.index(name) for name in columns) or None

    def row(self, values: TupleData, lsn: int) -> dict[str, Any]:
        """A tuple's values as {column: exact value}; UNKNOWN and None pass through."""
        if len(values) != len(self.names):
            raise RelationMismatch(
                f"relation {self.qualified} at LSN {lsn_text(lsn)}: expected {len(self.names)} column values "
                f"as its Relation message says, got {len(values)} (a Relation message was missed?)",
                lsn, self.qualified)
        row = dict(zip(self.names, values))
        try:
            for index, name, decode in self.converters:
                value = values[index]
                if value.__class__ is str:
                    row[name] = decode(value)
        except Exception:  # noqa: BLE001  (any converter failure: find the column again, off the hot path)
            self._raise_for(values, lsn)
        return row

    def _raise_for(self, values: TupleData, lsn: int) -> None:
        for index, name, decode in self.converters:
            value = values[index]
            if value.__class__ is not str:
                continue
            try:
                decode(value)
            except Exception as exc:
                shown = repr(value)
                shown = shown if len(shown) <= 120 else shown[:117] + "..."
                raise PgOutputDecodeError(
                    f"cannot decode column {name!r} of {self.qualified} at LSN {lsn_text(lsn)}: expected "
                    f"{self.expected[index]}, got {shown} ({exc})", lsn, self.qualified, name) from exc
        raise AssertionError("a converter failed once but not twice")

    def key(self, row: Mapping[str, Any]) -> dict[str, Any] | None:
        names = self.key_names
        if names is None:
            return None
        if len(names) == 1:  # (most tables: no comprehension to set up)
            name = names[0]
            return {name: row[name]}
        return {name: row[name] for name in names}

    def identity_image(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """A 'K' tuple as a before image: the identity columns, every other column UNKNOWN."""
        identity = self.identity
        return {name: (value if name in identity else UNKNOWN) for name, value in row.items()}


@dataclass(slots=True)
class _Open:
    """The transaction between Begin and Commit."""

    xid: int
    final_lsn: int  # Begin's: where its Commit's record must start
    # (op, plan or message, key, before, after, old_key, change_lsn, seq): see _row_item
    items: list[tuple[Any, ...]]
    seen: dict[int, int]  # change_lsn -> changes so far at it
    error: PgOutputDecodeError | None = None
    # With a spill policy: (lsn, payload) of each message so far, until the transaction goes to disk ...
    raw: list[tuple[int, bytes]] | None = None
    relations_at_begin: dict[int, Relation] | None = None  # ... and the relations before one changed in it
    spool: TransactionSpool | None = None  # once on disk: where its raw messages are


class PgOutputAssembler:
    """Feed pgoutput messages in stream order; take each committed Transaction out at its Commit.

    user_types: non-built-in types (USER_TYPES_SQL rows as UserType) for enums, domains and their arrays.
    primary_keys: "schema.table" -> primary-key columns (PRIMARY_KEYS_SQL); required for tables whose
    REPLICA IDENTITY is not DEFAULT. When given, a table missing from it has no primary key (key None).
    spill: hold a transaction with more changes than the policy allows on disk, not in memory.
    """

    def __init__(self, *, user_types: Iterable[UserType] | Mapping[int, UserType] | None = None,
                 primary_keys: Mapping[str, Sequence[str]] | None = None, spill: SpillPolicy | None = None) -> None:
        self._user_types: dict[int, UserType] = {}
        self._primary_keys = dict(primary_keys) if primary_keys is not None else None
        self._relations: dict[int, Relation] = {}
        self._plans: dict[int, RelationPlan | PgOutputDecodeError] = {}
        self._open: _Open | None = None
        self._last_commit_time: datetime | None = None
        self.announced_types: dict[int, TypeInfo] = {}  # from 'Y' messages: types a refresh may need
        self.origin: Origin | None = None  # of the open transaction, when it was replicated in
        self._spill = spill
        self.learn_types(user_types or ())

    # --- setup -------------------------------------------------------------------------------------

    def learn_types(self, user_types: Iterable[UserType] | Mapping[int, UserType]) -> None:
        """Add or replace user types (e.g. after a 'Y' message named a new enum); rebuilds the plans."""
        items = user_types.values() if isinstance(user_types, Mapping) else user_types
        self._user_types.update({user.oid: user for user in items})
        self._plans.clear()

    @property
    def user_types(self) -> Mapping[int, UserType]:
        return self._user_types

    @property
    def in_transaction(self) -> bool:
        return self._open is not None

    def reset(self) -> None:
        """Forget a transaction left open (the connection dropped); keep the relations and types."""
        if self._open is not None and self._open.spool is not None:
            self._open.spool.close()
        self._open = None
        self.origin = None

    # --- input -------------------------------------------------------------------------------------

    def feed(self, lsn: int, data: bytes | bytearray | memoryview, *, received_at: datetime | None = None,
             message: PgOutputMessage | None = None) -> Transaction | None:
        """Parse and add one message received at `lsn`; returns the Transaction it completes, if any.

        `message`: `data` already parsed (by a caller that looked at it first); `data` is still needed, since a
        large transaction is spilled as the bytes PostgreSQL sent.
        """
        tx = self._open
        if message is None:
            # The hot path: a change, Begin or Commit is applied from its fields, no message object built. Once
            # a transaction is on disk its messages take the general path below.
            kind = data[0] if type(data) is bytes and data else 0
            if kind in _CHANGE_KINDS:
                if tx is not None and tx.spool is None:
                    fields = parse_fields(data, lsn)  # type: ignore[arg-type]
                    self._change_fields(tx, lsn, fields[0], fields[1], fields[2], fields[3], fields[4])
                    if tx.raw is not None and tx.error is None:
                        self._keep_raw(tx, lsn, data)  # type: ignore[arg-type]
                    return None
            elif kind == 66:  # 'B'
                if tx is None:
                    _, final_lsn, _, xid = parse_fields(data, lsn)  # type: ignore[arg-type]
                    self._open = _Open(xid, final_lsn, [], {}, raw=[] if self._spill is not None else None)
                    return None
            elif kind == 67:  # 'C'
                if tx is not None:
                    _, _, commit_lsn, end_lsn, when = parse_fields(data, lsn)  # type: ignore[arg-type]
                    return self._commit(lsn, commit_lsn, end_lsn, when)
            message = parse_message(data, lsn)
        if tx is None or self._spill is None:
            return self.add(lsn, message, received_at=received_at)
        return self._feed_spooled(tx, lsn, bytes(data), message, received_at)

    def _feed_spooled(self, tx: _Open, lsn: int, data: bytes, message: PgOutputMessage,
                      received_at: datetime | None) -> Transaction | None:
        """A message of the open transaction, under a spill policy: its raw bytes are kept, on disk once the
        transaction is large (then its decoded changes are dropped as soon as they are checked)."""
        spool = tx.spool
        if spool is None:
            if data[0] == 0x52 and tx.relations_at_begin is None:  # 'R': a table's layout changes
                tx.relations_at_begin = dict(self._relations)  # (what the spilled messages before it need)
            result = self.add(lsn, message, received_at=received_at)
            if result is None and tx.error is None:  # (the Commit, or a non-transactional message, returns its own)
                self._keep_raw(tx, lsn, data)
            return result
        spool.before(lsn, data, message, tx.seen)
        result = self.add(lsn, message, received_at=received_at)
        if result is None and tx.error is None:
            spool.after(lsn, data, message, tx.items)
        return result

    def _keep_raw(self, tx: _Open, lsn: int, data: bytes) -> None:
        """Keep a message of the open transaction as PostgreSQL sent it; past the policy's limit, go to disk."""
        raw = tx.raw
        assert raw is not None and self._spill is not None
        raw.append((lsn, data))
        if len(tx.items) > self._spill.changes:
            spool = tx.spool = self._spill.spool(tx.xid, self._relations, self._user_types, self._primary_keys)
            tx.raw = None
            spool.spill(raw, tx.relations_at_begin, tx.items)

    def add(self, lsn: int, message: PgOutputMessage, *, received_at: datetime | None = None) -> Transaction | None:
        """Add one parsed message received at `lsn`; returns the Transaction it completes, if any."""
        if isinstance(message, (Insert, Update, Delete)):
            self._change(lsn, message)
        elif isinstance(message, Begin):
            if self._open is not None:
                raise PgOutputDecodeError(
                    f"Begin of xid {message.xid} at LSN {lsn_text(lsn)} while xid {self._open.xid} is still "
                    "open: expected its Commit first (streamed transactions are not supported)", lsn)
            self._open = _Open(message.xid, message.final_lsn, [], {}, raw=[] if self._spill is not None else None)
        elif isinstance(message, Commit):
            return self._commit(lsn, message.commit_lsn, message.end_lsn, message.commit_time)
        elif isinstance(message, Relation):
            self._relations[message.relation_id] = message
            self._plans.pop(message.relation_id, None)
        elif isinstance(message, Truncate):
            self._truncate(lsn, message)
        elif isinstance(message, Message):
            return self._message(lsn, message, received_at)
        elif isinstance(message, TypeInfo):
            self.announced_types[message.type_oid] = message
        elif isinstance(message, Origin):
            self.origin = message
        else:
            raise TypeError(f"not a pgoutput message: {message!r}")
        return None

    # --- transactions ------------------------------------------------------------------------------

    def _require_open(self, lsn: int, what: str) -> _Open:
        if self._open is None:
            raise PgOutputDecodeError(
                f"{what} at LSN {lsn_text(lsn)} outside a transaction: expected a Begin first (was the stream "
                "read from the middle of a transaction?)", lsn)
        return self._open

    def _plan(self, relation_id: int, lsn: int) -> RelationPlan:
        plan = self._plans.get(relation_id)
        if plan is None:
            relation = self._relations.get(relation_id)
            if relation is None:
                raise PgOutputDecodeError(
                    f"change of relation OID {relation_id} at LSN {lsn_text(lsn)} before any Relation message for "
                    "it: expected the stream to be read from the start of a decoding session", lsn)
            try:
                plan = RelationPlan(relation, self._user_types, self._primary_keys, lsn)
            except PgOutputDecodeError as exc:
                plan = exc
            self._plans[relation_id] = plan
        if isinstance(plan, PgOutputDecodeError):
            raise plan  # the same setup error for every change of the relation, until a new Relation message
        return plan

    @staticmethod
    def _position(tx: _Open, lsn: int) -> int:
        seq = tx.seen.get(lsn, 0)
        tx.seen[lsn] = seq + 1
        return seq

    def _change(self, lsn: int, message: Insert | Update | Delete) -> None:
        tx = self._open
        if tx is None:
            tx = self._require_open(lsn, type(message).__name__)
        if isinstance(message, Insert):
            self._change_fields(tx, lsn, 73, message.relation_id, None, None, message.new)
        elif isinstance(message, Update):
            self._change_fields(tx, lsn, 85, message.relation_id, message.old_kind, message.old, message.new)
        else:
            self._change_fields(tx, lsn, 68, message.relation_id, message.old_kind, message.old, None)

    def _change_fields(self, tx: _Open, lsn: int, kind: int, relation_id: int, old_kind: str | None,
                       old: TupleData | None, new: TupleData | None) -> None:
        """One Insert (kind 73), Update (85) or Delete (68) of the open transaction, from its fields."""
        plan = self._plans.get(relation_id)
        if plan.__class__ is not RelationPlan:
            plan = self._plan(relation_id, lsn)
        seen = tx.seen
        seq = seen.get(lsn, 0)
        seen[lsn] = seq + 1
        if tx.error is not None:
            return
        try:
            tx.items.append(_row_item(plan, lsn, kind, old_kind, old, new, seq))  # type: ignore[arg-type]
        except RelationMismatch:
            raise
        except PgOutputDecodeError as exc:
            tx.error = exc
            tx.items.clear()

    @staticmethod
    def _row_change(plan: RelationPlan, lsn: int, message: Insert | Update | Delete, seq: int) -> tuple[Any, ...]:
        """(op, plan, key, before, after, old_key, change_lsn, seq) of one row change."""
        if isinstance(message, Insert):
            return _row_item(plan, lsn, 73, None, None, message.new, seq)
        if isinstance(message, Update):
            return _row_item(plan, lsn, 85, message.old_kind, message.old, message.new, seq)
        return _row_item(plan, lsn, 68, message.old_kind, message.old, None, seq)

    def _truncate(self, lsn: int, message: Truncate) -> None:
        tx = self._require_open(lsn, "Truncate")
        for relation_id in message.relation_ids:
            plan = self._plan(relation_id, lsn)
            seq = self._position(tx, lsn)
            if tx.error is None:
                tx.items.append((Op.TRUNCATE, plan, None, None, None, None, lsn, seq))

    def _message(self, lsn: int, message: Message, received_at: datetime | None) -> Transaction | None:
        if message.transactional:
            tx = self._require_open(lsn, "transactional Message")
            seq = self._position(tx, lsn)
            if tx.error is None:
                tx.items.append((Op.MESSAGE, message, {"prefix": message.prefix}, None, None, None, lsn, seq))
            return None
        when = self._last_commit_time or received_at
        if when is None:
            raise PgOutputDecodeError(
                f"non-transactional message {message.prefix!r} at LSN {lsn_text(lsn)} carries no time and no "
                "transaction was decoded before it: expected received_at", lsn)
        change = RowChange(op=Op.MESSAGE, schema="", table="", key={"prefix": message.prefix}, before=None,
                           after=None, position=SourcePosition(lsn, lsn, 0), commit_time=when, xid=None,
                           message=LogicalMessage(message.prefix, message.content, False),
                           source_ref=f"pgoutput {lsn_text(lsn)}")
        return Transaction(xid=None, commit_lsn=lsn, commit_time=when, changes=(change,))

    def _commit(self, lsn: int, record_lsn: int, commit_lsn: int, when: datetime) -> Transaction:
        """A Commit's fields: its record's start (`record_lsn`), end (`commit_lsn`) and time."""
        tx = self._require_open(lsn, "Commit")
        self._open = None
        self.origin = None
        xid = tx.xid
        if record_lsn != tx.final_lsn:
            raise PgOutputDecodeError(
                f"Commit at LSN {lsn_text(lsn)} is for commit record {lsn_text(record_lsn)}, but the open "
                f"transaction xid {xid} announced {lsn_text(tx.final_lsn)}: expected them to agree", lsn)
        self._last_commit_time = when
        if tx.error is not None:
            if tx.spool is not None:
                tx.spool.close()
            raise TransactionDecodeError(tx.error, xid, commit_lsn, when)
        if tx.spool is not None and tx.spool.spilled:
            return Transaction(xid=xid, commit_lsn=commit_lsn, commit_time=when,
                               changes=tx.spool.finish(commit_lsn, when, xid))
        return Transaction(xid, commit_lsn, when, tuple(row_changes_of(tx.items, commit_lsn, when, xid)))


def _row_item(plan: RelationPlan, lsn: int, kind: int, old_kind: str | None, old_values: TupleData | None,
              new_values: TupleData | None, seq: int) -> tuple[Any, ...]:
    """(op, plan, key, before, after, old_key, change_lsn, seq) of one Insert (kind 73), Update (85) or Delete
    (68) from its fields."""
    if kind == 73:
        after = plan.row(new_values, lsn)  # type: ignore[arg-type]
        return Op.CREATE, plan, plan.key(after), None, after, None, lsn, seq
    if kind == 68:
        old = plan.row(old_values, lsn)  # type: ignore[arg-type]
        before = old if old_kind == "O" else plan.identity_image(old)
        return Op.DELETE, plan, plan.key(before), before, None, None, lsn, seq
    after = plan.row(new_values, lsn)  # type: ignore[arg-type]
    key = plan.key(after)
    if old_values is None:
        return Op.UPDATE, plan, key, None, after, None, lsn, seq
    old = plan.row(old_values, lsn)
    if old_kind == "O":
        before = old
        for name, value in after.items():  # FULL: unchanged TOAST values are in the old row
            if value is UNKNOWN:
                after[name] = old[name]
    else:
        before = plan.identity_image(old)
    old_key = plan.key(before)
    if old_key is not None and any(value is UNKNOWN for value in old_key.values()):
        old_key = None  # USING INDEX without the key columns: the old key is not in the stream
    if key is not None and old_key is not None:
        for name, value in key.items():  # an unchanged TOASTed key column is 'u' in the new tuple
            if value is UNKNOWN:
                key[name] = after[name] = old_key[name]
    return Op.UPDATE, plan, key, before, after, (old_key if old_key != key else None), lsn, seq


def row_changes_of(items: list[tuple[Any, ...]], commit_lsn: int, commit_time: datetime, xid: int) -> list[RowChange]:
    """Assembled changes (see _row_change) as the RowChanges of their committed transaction."""
    changes: list[RowChange] = []
    append = changes.append
    message = Op.MESSAGE
    for op, subject, key, before, after, old_key, change_lsn, seq in items:
        position = SourcePosition(commit_lsn, change_lsn, seq)
        ref = f"pgoutput {change_lsn >> 32:X}/{change_lsn & 0xFFFFFFFF:X}"
        # Positional arguments, in RowChange's field order: a third cheaper than keywords, once per change.
        if op is message:
            append(RowChange(op, "", "", key, None, None, position, commit_time, xid, None,
                             LogicalMessage(subject.prefix, subject.content, True), ref))
        else:
            append(RowChange(op, subject.schema, subject.table, key, before, after, position, commit_time, xid,
                             old_key, None, ref))
    return changes
