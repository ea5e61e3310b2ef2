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
them the rule fails with a TranslationError saying how to fix it. (That lookup, and what else one
transaction's translation shares, is in runtime.py; what compiled rules call is in closures.py.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge.changes import Op, RowChange, Transaction
from bridge.errors import TranslationError
from bridge.events import DomainEvent, event_id, sequence_of
from bridge.mapping.closures import build_object
from bridge.mapping.compiled import CompiledMappings, CompiledRule, Scope
from bridge.mapping.runtime import ChangeContext, TxIndex, fill_unknown, row_key

__all__ = ["DeadLetter", "InMemoryPriorRows", "PriorRows", "TranslationResult", "translate"]


class PriorRows(Protocol):
    """Where the bridge finds a row's old values when the change stream did not carry them."""

    def before_image(self, change: RowChange) -> Mapping[str, Any] | None:
        """The row as it was before ``change`` (looked up by ``change.old_key or change.key``), or None."""


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


def translate(tx: Transaction, mappings: CompiledMappings, *, source_id: str,
              prior_rows: PriorRows | None = None, stopped_rules: Mapping[str, str] | None = None) -> TranslationResult:
    """Translate one committed transaction.

    Never raises for a change: a failing rule becomes a DeadLetter carrying the rule's on_error policy, so
    the caller (which may override the policy) decides whether to publish it or to stop.

    stopped_rules: rule id -> why it must not run (the source saw the table change under it). Every change
    such a rule is registered for becomes a DeadLetter with that reason, without evaluating its `when`,
    which may read the very column whose values no longer mean what the rule expects.
    """
    result = TranslationResult()
    txi = TxIndex(tx, prior_rows, mappings)
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
        if _silenced(ignores, ctx, result, stopped_rules):
            txi.record(change, ctx)
            continue
        matched = failed = False
        emitted = 0  # events of this change so far: the change-level part of `sequence`
        for rule in emitters:
            scope = Scope(ctx, rule.lets)
            try:
                if stopped_rules and rule.id in stopped_rules:
                    raise TranslationError(f"rule '{rule.id}' is stopped: {stopped_rules[rule.id]}")
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


def _silenced(ignores: tuple[CompiledRule, ...], ctx: ChangeContext, result: TranslationResult,
              stopped_rules: Mapping[str, str] | None) -> bool:
    """True when an ignore rule silences the change, or when one failed (then the change is dead-lettered)."""
    for rule in ignores:
        try:
            if stopped_rules and rule.id in stopped_rules:
                raise TranslationError(f"rule '{rule.id}' is stopped: {stopped_rules[rule.id]}")
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
