"""Pure translation: one committed legacy transaction in, domain events (and dead letters, counts) out.

No I/O of its own (only the PriorRows provider it is given may read a store), no clock, no globals: the
same transaction, mappings and old rows always give the same events, ids and bytes. Rules are looked up
by (schema, table, op); for each change, ignore rules are tried first (one that matches silences the
change), then every emitting rule whose ``when`` holds emits its events.
Events come out in transaction order, then rule order, then emit order.

Old values ("before images"): under REPLICA IDENTITY DEFAULT an update carries no before image and a
delete only the key. A rule that reads ``before`` or ``changed`` then gets the old row, lazily and only
when it actually reads it, from (1) the change itself when its before image is complete, (2) an earlier
change of the same row in this transaction (the overlay), (3) the PriorRows provider. Without any of
them the rule fails with a TranslationError saying how to fix it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, Protocol
from uuid import UUID

from bridge.changes import UNKNOWN, Op, RowChange, Transaction
from bridge.errors import TranslationError
from bridge.events import DomainEvent, event_id, sequence_of
from bridge.mapping.expr import EvalError, UnknownValue, type_name
from bridge.mapping.spec import (
    OMIT,
    CompiledField,
    CompiledMappings,
    CompiledRule,
    Getter,
    Scope,
)

__all__ = ["DeadLetter", "InMemoryPriorRows", "PriorRows", "TranslationResult", "translate"]


class PriorRows(Protocol):
    """Where the bridge finds a row's old values when the change stream did not carry them."""

    def before_image(self, change: RowChange) -> Mapping[str, Any] | None:
        """The row as it was before ``change`` (looked up by ``change.old_key or change.key``), or None."""


def row_key(key: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A hashable identity of a row's primary key, independent of the key columns' order."""
    items = tuple(key.items())
    return items if len(items) < 2 else tuple(sorted(items, key=lambda item: item[0]))


class InMemoryPriorRows:
    """Last-seen rows in a dict: for tests and short runs. The daemon's durable store has the same protocol.

    Filled by :meth:`remember` / :meth:`remember_transaction` after each translated transaction (snapshot
    reads and changes alike). An UNKNOWN (unchanged TOAST) value never overwrites a known one.
    """

    def __init__(self) -> None:
        self._tables: dict[tuple[str, str], dict[tuple[tuple[str, Any], ...], Mapping[str, Any]]] = {}

    def before_image(self, change: RowChange) -> Mapping[str, Any] | None:
        key = change.old_key or change.key
        rows = self._tables.get((change.schema, change.table))
        return None if rows is None or not key else rows.get(row_key(key))

    def put(self, schema: str, table: str, key: Mapping[str, Any], row: Mapping[str, Any]) -> None:
        self._tables.setdefault((schema, table), {})[row_key(key)] = dict(row)

    def remember(self, change: RowChange) -> None:
        rows = self._tables.setdefault((change.schema, change.table), {})
        if change.op is Op.TRUNCATE:
            rows.clear()
        if change.old_key:
            rows.pop(row_key(change.old_key), None)
        if not change.key:
            return
        identity = row_key(change.key)
        if change.op is Op.DELETE:
            rows.pop(identity, None)
        elif change.after is not None and change.op in (Op.CREATE, Op.UPDATE, Op.READ):
            rows[identity] = fill_unknown(change.after, rows.get(identity))

    def remember_transaction(self, tx: Transaction) -> None:
        for change in tx.changes:
            self.remember(change)

    record = remember_transaction  # the name the pipeline's durable store (bridge.state) uses

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._tables.values())


def fill_unknown(after: Mapping[str, Any], before: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """``after`` with each UNKNOWN replaced by the old value (an unchanged TOAST value did not change)."""
    if before is None or not any(value is UNKNOWN for value in after.values()):
        return after
    return {column: before.get(column, UNKNOWN) if value is UNKNOWN else value for column, value in after.items()}


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A (change, rule) that failed; the rest of the transaction still translated.

    on_error is the rule's policy: "dead_letter" (publish it to the dead-letter topic and go on) or "stop"
    (the caller must stop before publishing anything of this transaction).
    """

    change: RowChange
    rule_id: str
    error: str
    on_error: str = "dead_letter"


@dataclass(slots=True)
class TranslationResult:
    events: list[DomainEvent] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    unmatched: Counter[str] = field(default_factory=Counter)  # per table: changes no rule looked at
    ignored: Counter[str] = field(default_factory=Counter)  # per table: changes an ignore rule silenced
    rule_hits: Counter[str] = field(default_factory=Counter)  # per rule id: changes it emitted for or ignored


class _MissingBefore(Exception):
    pass


_DELETED = object()
_NO_IMAGE_OPS = frozenset({Op.CREATE, Op.READ, Op.TRUNCATE, Op.MESSAGE})


class _TxIndex:
    """What one transaction's translation shares: changes by table, the overlay of rows it already wrote."""

    __slots__ = ("_by_table", "_indexes", "_view", "mappings", "overlay", "prior", "tx")

    def __init__(self, tx: Transaction, prior: PriorRows | None, mappings: CompiledMappings) -> None:
        self.tx, self.prior, self.mappings = tx, prior, mappings
        self.overlay: dict[tuple[str, str], dict[Any, Any]] = {}
        self._by_table: dict[tuple[str, str], list[RowChange]] | None = None
        self._view: TxView | None = None
        self._indexes: dict[tuple[str, str, str], dict[Any, list[RowChange]] | None] = {}

    def lookup(self, schema: str, table: str, column: str, value: Any) -> list[RowChange] | None:
        """Changes of ``table`` whose row has ``column == value``, in order; None: scan instead."""
        key = (schema, table, column)
        if key not in self._indexes:
            self._indexes[key] = self._build_index(schema, table, column)
        index = self._indexes[key]
        if index is None:
            return None
        try:
            return index.get(value, [])
        except TypeError:  # an unhashable value (a list): let the scan compare it
            return None

    def _build_index(self, schema: str, table: str, column: str) -> dict[Any, list[RowChange]] | None:
        index: dict[Any, list[RowChange]] = {}
        for change in self.changes_of(schema, table):
            row = change.after if change.after is not None else change.before
            value = row.get(column, UNKNOWN) if row is not None else None
            if value is UNKNOWN:
                return None  # reading it must fail as it would in a scan
            try:
                index.setdefault(value, []).append(change)
            except TypeError:
                return None
        return index

    def changes_of(self, schema: str, table: str) -> list[RowChange]:
        if self._by_table is None:
            self._by_table = {}
            for change in self.tx.changes:
                self._by_table.setdefault((change.schema, change.table), []).append(change)
        return self._by_table.get((schema, table), [])

    def view(self) -> TxView:
        if self._view is None:
            self._view = TxView(self.tx)
        return self._view

    def before_image(self, change: RowChange) -> Mapping[str, Any] | None:
        if change.op in _NO_IMAGE_OPS:
            return None
        before = change.before
        if before is not None and self._is_complete(change, before):
            return before
        key = change.old_key or change.key
        rows = self.overlay.get((change.schema, change.table))
        if rows is not None and key:
            earlier = rows.get(row_key(key))
            if earlier is not None:
                return None if earlier is _DELETED else earlier
        if self.prior is not None:
            image = self.prior.before_image(change)
            if image is not None:
                return image
        raise _MissingBefore()

    def _is_complete(self, change: RowChange, before: Mapping[str, Any]) -> bool:
        """Key-only images (REPLICA IDENTITY DEFAULT) are not complete; FULL images are.

        The Debezium decoder marks the non-key columns of a key-only image UNKNOWN (Debezium fills them
        with made-up nulls and empty strings), so any UNKNOWN makes the image incomplete.
        """
        if any(value is UNKNOWN for value in before.values()):
            return False
        if not change.key or len(before) > len(change.key):
            return True
        declared = self.mappings.column_count(change.table)
        return declared is not None and len(before) >= declared

    def record(self, change: RowChange, ctx: ChangeContext | None) -> None:
        """Remember what this change wrote, for later changes of the same row in this transaction."""
        table = (change.schema, change.table)
        if table not in self.mappings.overlay_tables:
            return
        rows = self.overlay.setdefault(table, {})
        if change.op is Op.TRUNCATE:
            rows.clear()
        if change.old_key:
            rows[row_key(change.old_key)] = _DELETED
        if not change.key:
            return
        if change.op is Op.DELETE:
            rows[row_key(change.key)] = _DELETED
        elif change.after is not None:
            known_before = ctx.resolved_before() if ctx is not None else None
            rows[row_key(change.key)] = fill_unknown(change.after, known_before)


class TxView(Mapping[str, tuple[Mapping[str, Any], ...]]):
    """``tx.<table>`` in expressions: that table's changes in this transaction as {op, before, after, key}."""

    def __init__(self, tx: Transaction) -> None:
        self._tables: dict[str, list[Mapping[str, Any]]] = {}
        for change in tx.changes:
            self._tables.setdefault(change.table, []).append(
                {"op": change.op.value, "before": change.before, "after": change.after, "key": change.key})

    def __getitem__(self, table: str) -> tuple[Mapping[str, Any], ...]:
        return tuple(self._tables.get(table, ()))

    def __iter__(self) -> Iterator[str]:
        return iter(self._tables)

    def __len__(self) -> int:
        return len(self._tables)


class ChangeContext:
    """The per-change values expressions read; `before` and `changed` are resolved only when read."""

    __slots__ = ("_before", "_changed", "_resolved", "after", "change", "key", "op", "txi")

    def __init__(self, change: RowChange, txi: _TxIndex) -> None:
        self.change, self.txi = change, txi
        self.after = change.after
        self.key = change.key if change.key is not None else {}
        self.op = change.op.value
        self._resolved = False
        self._changed: frozenset[str] | None = None

    def before(self) -> Mapping[str, Any] | None:
        if not self._resolved:
            try:
                self._before = self.txi.before_image(self.change)
            except _MissingBefore:
                raise EvalError(missing_before_message(self.change)) from None
            self._resolved = True
        return self._before

    def resolved_before(self) -> Mapping[str, Any] | None:
        return self._before if self._resolved else None

    def changed(self) -> frozenset[str]:
        if self._changed is None:
            after, op = self.after or {}, self.change.op
            if op is Op.UPDATE:
                before = self.before() or {}
                self._changed = frozenset(
                    column for column, value in after.items()
                    if value is not UNKNOWN and before.get(column, _DELETED) != value)
            elif op is Op.CREATE:
                self._changed = frozenset(column for column, value in after.items() if value is not UNKNOWN)
            else:
                self._changed = frozenset()
        return self._changed


def missing_before_message(change: RowChange) -> str:
    table = change.qualified_table
    key = ", ".join(f"{k}={v!r}" for k, v in (change.old_key or change.key or {}).items()) or "no key"
    what = "an update without a before image" if change.op is Op.UPDATE else "a delete with only the key"
    return (f"needs the old row of {table} ({key}), but the change is {what} (REPLICA IDENTITY DEFAULT) and "
            f"neither this transaction nor a prior-row store has it; fix: ALTER TABLE {table} REPLICA IDENTITY "
            "FULL, or enable the prior-row store")


def translate(tx: Transaction, mappings: CompiledMappings, *, source_id: str,
              prior_rows: PriorRows | None = None) -> TranslationResult:
    """Translate one committed transaction.

    Never raises for a change: a failing rule becomes a DeadLetter carrying the rule's on_error policy, so
    the caller (which may override the policy) decides whether to publish it or to stop.
    """
    result = TranslationResult()
    txi = _TxIndex(tx, prior_rows, mappings)
    source = f"/cdc-bridge/{source_id}"
    index = mappings.index
    for change in tx.changes:
        if change.op is Op.MESSAGE:
            continue  # logical messages are not row changes; nothing maps them (yet)
        rules = index.get((change.schema, change.table, change.op))
        if rules is None:
            result.unmatched[change.table] += 1
            txi.record(change, None)
            continue
        ctx = ChangeContext(change, txi)
        ignores, emitters = rules
        if _silenced(ignores, ctx, result):
            txi.record(change, ctx)
            continue
        matched = failed = False
        emitted = 0  # events of this change so far: the change-level part of `sequence`
        for rule in emitters:
            scope = Scope(ctx, rule.lets)
            try:
                if rule.when is not None and not rule.when(scope):
                    continue
                outputs = _run_emits(rule, scope)
            except TranslationError as exc:
                _fail(rule, change, exc, result)
                failed = True
                continue
            matched = True
            result.rule_hits[rule.id] += 1
            position = change.position
            for output_index, (emit, aggregate_id, data) in enumerate(outputs):
                result.events.append(DomainEvent(
                    id=event_id(source_id, position, rule.id, emit.major, output_index),
                    type=emit.type, source=source, subject=f"{emit.aggregate_type}/{aggregate_id}",
                    time=change.commit_time, sequence=sequence_of(position, emitted),
                    aggregate_type=emit.aggregate_type, aggregate_id=aggregate_id, data=data,
                    rule_id=rule.id, position=position))
                emitted += 1
        if not matched and not failed:
            result.unmatched[change.table] += 1
        txi.record(change, ctx)
    return result


def _silenced(ignores: tuple[CompiledRule, ...], ctx: ChangeContext, result: TranslationResult) -> bool:
    """True when an ignore rule silences the change, or when one failed (then the change is dead-lettered)."""
    for rule in ignores:
        try:
            if rule.when is not None and not rule.when(Scope(ctx, rule.lets)):
                continue
        except TranslationError as exc:
            _fail(rule, ctx.change, exc, result)
            return True  # unknown whether to ignore it: emitting anyway could publish what should not be
        result.ignored[ctx.change.table] += 1
        result.rule_hits[rule.id] += 1
        return True
    return False


def _run_emits(rule: CompiledRule, scope: Scope) -> list[tuple[Any, str, dict[str, Any]]]:
    """All events of one rule for one change, or a TranslationError (then none of them)."""
    outputs: list[tuple[Any, str, dict[str, Any]]] = []
    for emit in rule.emits:
        if emit.when is not None and not emit.when(scope):
            continue
        for item in emit.each(scope) if emit.each is not None else (None,):
            scope.item = item
            outputs.append((emit, emit.aggregate_id(scope), build_object(emit.fields, scope)))
    scope.item = None
    return outputs


def _fail(rule: CompiledRule, change: RowChange, exc: TranslationError, result: TranslationResult) -> None:
    result.dead_letters.append(DeadLetter(change=change, rule_id=rule.id, error=str(exc), on_error=rule.on_error))


# -- what compiled closures call at run time (the loader wires these in) ------------------------------------

#: How each name of the expression language reads the scope.
NAMES: dict[str, Getter] = {
    "before": lambda s: s.ctx.before(),
    "after": lambda s: s.ctx.after,
    "changed": lambda s: s.ctx.changed(),
    "key": lambda s: s.ctx.key,
    "op": lambda s: s.ctx.op,
    "tx": lambda s: s.ctx.txi.view(),
    "row": lambda s: s.row,
    "item": lambda s: s.item,
}


def let_getter(name: str) -> Getter:
    return lambda scope: scope.let(name)


def guard(evaluate: Getter, rule_id: str, field_name: str, *, check: Getter | None = None,
          optional: bool = False) -> Getter:
    """Run a compiled expression; turn any failure into a TranslationError naming rule and field.

    ``optional``: an UNKNOWN value gives OMIT (the field is left out) instead of an error.
    """
    prefix = f"rule '{rule_id}', field '{field_name}'"

    def guarded(scope: Scope) -> Any:
        try:
            value = evaluate(scope)
            return value if check is None else check(value)
        except UnknownValue as exc:
            if optional:
                return OMIT
            raise TranslationError(f"{prefix}: {exc}") from None
        except EvalError as exc:
            raise TranslationError(f"{prefix}: {exc}") from None
        except (TypeError, ValueError, ArithmeticError, LookupError, RecursionError) as exc:
            raise TranslationError(f"{prefix}: {type(exc).__name__}: {exc}") from None

    return guarded


def must_be_bool(value: Any) -> bool:
    if value is True or value is False:
        return value
    raise EvalError(f"must be true or false, got {type_name(value)} {value!r}")


def must_be_list(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return value
    raise EvalError(f"each needs a list (e.g. a collect), got {type_name(value)}")


def aggregate_id_of(value: Any) -> str:
    if type(value) is str and value:
        return value
    if type(value) in (int, UUID, Decimal):
        return str(value)
    raise EvalError(f"an aggregate id must be a non-empty string or a number, got {type_name(value)} {value!r}")


_SCALARS = frozenset({str, int, bool, Decimal, type(None), datetime, date, time, UUID, bytes})


def publishable(value: Any) -> Any:
    """The value as it may go into an event: no UNKNOWN anywhere, plain containers, sets sorted."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is float:
        if not math.isfinite(value):
            raise EvalError(f"{value} cannot go into an event (JSON has no NaN or infinity)")
        return value
    if value is UNKNOWN:
        raise UnknownValue("the value", "leave it out or mark the field optional: true")
    if isinstance(value, Mapping):
        return {str(k): publishable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [publishable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        try:
            return sorted(publishable(v) for v in value)
        except TypeError:
            raise EvalError("a set of mixed types cannot go into an event") from None
    if isinstance(value, str):  # e.g. a StrEnum
        return str(value)
    raise EvalError(f"a {type_name(value)} cannot go into an event")


def build_object(fields: tuple[CompiledField, ...], scope: Scope) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for spec in fields:
        if spec.when is not None and not spec.when(scope):
            continue
        value = spec.evaluate(scope)
        if value is not OMIT:
            data[spec.name] = value
    return data


def collector(schema: str, table: str, ops: frozenset[Op], where: Getter | None, value: Getter | None,
              fields: tuple[CompiledField, ...], probe: tuple[str, Getter] | None = None) -> Getter:
    """A collect: one value or object per change of ``table`` in the transaction (in order) matching ``where``.

    ``probe`` (column, key): ``where`` requires row.column == key, so only rows indexed under key can match.
    """

    def collect(scope: Scope) -> list[Any]:
        gathered: list[Any] = []
        txi = scope.ctx.txi
        candidates = txi.lookup(schema, table, probe[0], probe[1](scope)) if probe is not None else None
        outer = scope.row
        try:
            for change in txi.changes_of(schema, table) if candidates is None else candidates:
                if change.op not in ops:
                    continue
                scope.row = change.after if change.after is not None else change.before
                if where is not None and not where(scope):
                    continue
                gathered.append(value(scope) if value is not None else build_object(fields, scope))
        finally:
            scope.row = outer
        return gathered

    return collect
