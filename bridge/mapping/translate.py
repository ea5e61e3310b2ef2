"""Pure translation: one committed legacy transaction in, domain events (and dead letters, counts) out.

No I/O of its own (only the PriorRows provider it is given may read a store), no clock, no globals: the
same transaction, mappings and old rows always give the same events, ids and bytes. Rules are looked up
by (schema, table, op); for each change, ignore rules are tried first (one that matches silences the
change), then every emitting rule whose ``when`` holds emits its events.
Events come out in transaction order, then rule order, then emit order.

What one transaction's translation shares (changes by table, the overlay of rows it wrote, each change's
context and its old row, looked up only when a rule reads ``before`` or ``changed``) is in runtime.py;
what compiled rules call is in closures.py.

A transaction can also be translated in slices (:func:`translate_in_slices`), so that a very large one is
never held as one list of changes and events: the events are exactly those of translating it whole.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from bridge.changes import Op, RowChange, Transaction
from bridge.errors import TranslationError
from bridge.events import DomainEvent, event_id, sequence_of, snapshot_event_id
from bridge.mapping.closures import build_object
from bridge.mapping.compiled import CompiledEmit, CompiledMappings, CompiledRule, Scope
from bridge.mapping.prior_rows import InMemoryPriorRows, PriorRows, RecordingPriorRows
from bridge.mapping.runtime import ChangeContext, TxIndex

# The members themselves, read once: `Op.READ` goes through the enum class's attribute lookup every time.
_READ, _MESSAGE = Op.READ, Op.MESSAGE

__all__ = ["DeadLetter", "InMemoryPriorRows", "PriorRows", "TranslatedSlice", "TranslationResult", "translate",
           "translate_in_slices"]


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


def _counter() -> Counter[str]:
    """An empty Counter without Counter.__init__ (a Python call to update() with nothing): a Counter holds
    no state beyond its dict, and one transaction's result makes three."""
    return Counter.__new__(Counter)


@dataclass(slots=True)
class TranslationResult:
    events: list[DomainEvent] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    unmatched: Counter[str] = field(default_factory=_counter)  # per table: changes no rule looked at
    ignored: Counter[str] = field(default_factory=_counter)  # per table: changes an ignore rule silenced
    rule_hits: Counter[str] = field(default_factory=_counter)  # per rule id: changes it emitted for or ignored


@dataclass(slots=True)  # (not frozen: one is made per transaction, and a frozen __init__ costs more)
class TranslatedSlice:
    """One slice of a transaction translated in slices: its changes (in order) and what they gave."""

    changes: tuple[RowChange, ...]
    result: TranslationResult
    last: bool  # no slice follows


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
    _translate_changes(tx.changes, TxIndex(tx, prior_rows, mappings), mappings, source_id, result, stopped_rules)
    return result


def translate_in_slices(tx: Transaction, mappings: CompiledMappings, *, source_id: str,
                        prior_rows: RecordingPriorRows | None, slice_changes: int,
                        stopped_rules: Mapping[str, str] | None = None) -> Iterator[TranslatedSlice]:
    """Translate one committed transaction `slice_changes` changes at a time, recording each slice in `prior_rows`.

    The events, dead letters and counts of all slices together are exactly those of :func:`translate` (same
    ids and bytes): rules still see the whole transaction (collect, ``tx``), and a change finds the rows the
    transaction wrote in earlier slices in `prior_rows`, at their positions, as it would in the overlay.
    Each slice's changes are recorded in `prior_rows` when the caller asks for the next slice, or ends the
    iteration; a caller that stops early (a dead letter with policy stop) leaves that slice unrecorded, like
    a transaction translated whole and never recorded. Without `prior_rows` the overlay spans the slices.
    `stopped_rules` as for :func:`translate`.
    """
    txi = TxIndex(tx, prior_rows, mappings)
    total = len(tx.changes)
    done = 0
    for part in _slices(tx.changes, slice_changes):
        done += len(part)
        result = TranslationResult()
        _translate_changes(part, txi, mappings, source_id, result, stopped_rules)
        yield TranslatedSlice(part, result, last=done >= total)
        if prior_rows is not None:
            prior_rows.record(tx if part is tx.changes else Transaction(
                xid=tx.xid, commit_lsn=tx.commit_lsn, commit_time=tx.commit_time, changes=part))
            txi.next_slice()
        del part, result  # before the next slice is read: one slice in memory at a time


def _slices(changes: Sequence[RowChange], size: int) -> Iterator[tuple[RowChange, ...]]:
    """`changes` in tuples of `size` (one empty tuple for no changes); stored changes are read in order once."""
    if type(changes) is tuple:
        for start in range(0, max(len(changes), 1), size):
            yield changes if start == 0 and len(changes) <= size else changes[start:start + size]
        return
    read = iter(changes)
    while True:
        part = tuple(islice(read, size))
        if not part:
            return
        yield part
        del part  # not held while the next one is read


def _translate_changes(changes: Iterable[RowChange], txi: TxIndex, mappings: CompiledMappings, source_id: str,
                       result: TranslationResult, stopped_rules: Mapping[str, str] | None) -> None:
    source = f"/cdc-bridge/{source_id}"
    index = mappings.index
    mark = txi.tx.snapshot
    for change in changes:
        if change.op is _MESSAGE:
            continue  # logical messages are not row changes; nothing maps them (yet)
        rules = index.get((change.schema, change.table, change.op._value_))
        if rules is None:
            result.unmatched[change.table] += 1
            txi.record(change, None)
            continue
        ctx = txi.context(change)
        ignores, emitters = rules
        if _silenced(ignores, ctx, result, stopped_rules):
            txi.record(change, ctx)
            continue
        matched = failed = False
        emitted = 0  # events of this change so far: the change-level part of `sequence`
        reading = change.op is _READ
        for rule in emitters:
            scope = Scope(ctx, rule.lets)
            try:
                if stopped_rules and rule.id in stopped_rules:
                    raise TranslationError(f"rule '{rule.id}' is stopped: {stopped_rules[rule.id]}")
                if rule.when is not None and not rule.when(scope):
                    continue
                outputs = _run_emits(rule, scope, reading)
            except TranslationError as exc:
                _fail(rule, change, exc, result)
                failed = True
                continue
            matched = True
            result.rule_hits[rule.id] += 1
            position = change.position
            for output_index, (emit, aggregate_id, data, moment) in enumerate(outputs):
                if emit.retired:
                    emitted += 1  # its place stays taken: the ids and sequences after it are those of the window
                    continue
                if mark is None:
                    eid = event_id(source_id, position, rule.id, emit.major, output_index)
                else:
                    eid = snapshot_event_id(source_id, change.schema, change.table, change.key or {}, rule.id,
                                            emit.major, output_index, mark.epoch)
                result.events.append(DomainEvent(
                    id=eid, type=emit.type, source=source, subject=f"{emit.aggregate_type}/{aggregate_id}",
                    time=moment or change.commit_time, sequence=sequence_of(position, emitted),
                    aggregate_type=emit.aggregate_type, aggregate_id=aggregate_id, data=data,
                    rule_id=rule.id, position=position, snapshot=mark, dataschema=emit.dataschema))
                emitted += 1
        if not matched and not failed:
            result.unmatched[change.table] += 1
        txi.record(change, ctx)


def _silenced(ignores: tuple[CompiledRule, ...], ctx: ChangeContext, result: TranslationResult,
              stopped_rules: Mapping[str, str] | None) -> bool:
    """True when an ignore rule silences the change, or when one failed (then the change is dead-lettered)."""
    for rule in ignores:
        when = rule.when
        try:
            if stopped_rules and rule.id in stopped_rules:
                raise TranslationError(f"rule '{rule.id}' is stopped: {stopped_rules[rule.id]}")
            if when is not None and not when(Scope(ctx, rule.lets)):
                continue
        except TranslationError as exc:
            _fail(rule, ctx.change, exc, result)
            return True  # unknown whether to ignore it: emitting anyway could publish what should not be
        result.ignored[ctx.change.table] += 1
        result.rule_hits[rule.id] += 1
        return True
    return False


def _run_emits(rule: CompiledRule, scope: Scope, reading: bool) -> list[tuple[Any, str, dict[str, Any], Any]]:
    """All events of one rule for one change, or a TranslationError (then none of them); with each, its own
    time when the change is a snapshot read (`reading`) and the emit says when the fact happened."""
    outputs: list[tuple[Any, str, dict[str, Any], Any]] = []
    for emit in rule.emits:
        if emit.retired:
            outputs.extend(_retired_places(emit, scope))
            continue
        if emit.when is not None and not emit.when(scope):
            continue
        for item in emit.each(scope) if emit.each is not None else (None,):
            scope.item = item
            moment = emit.snapshot_time(scope) if reading and emit.snapshot_time is not None else None
            data = build_object(emit.fields, scope)
            if emit.check is not None:
                emit.check(data)  # ContractViolation: never published; dead-lettered or stops, by the rule's policy
            outputs.append((emit, emit.aggregate_id(scope), data, moment))
    scope.item = None
    return outputs


def _retired_places(emit: CompiledEmit, scope: Scope) -> list[tuple[Any, str, dict[str, Any], Any]]:
    """The places a retired emit's events took during its window (its `when` and `each` only: its payload and
    contract no longer matter). A `when` or `each` that fails now counts as no event: a rare shift of the ids
    after it, rather than a retired major blocking the published one."""
    try:
        if emit.when is not None and not emit.when(scope):
            return []
        count = len(emit.each(scope)) if emit.each is not None else 1
    except TranslationError:
        return []
    return [(emit, "", {}, None)] * count


def _fail(rule: CompiledRule, change: RowChange, exc: TranslationError, result: TranslationResult) -> None:
    result.dead_letters.append(DeadLetter(change=change, rule_id=rule.id, error=str(exc), on_error=rule.on_error))
