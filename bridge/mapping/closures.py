"""What compiled rules call at run time: the rule compiler (compile.py) wires these around expressions.

How each name of the expression language reads the scope (:data:`NAMES`), the :func:`guard` compiled into
every expression, turning any failure into a ``TranslationError`` naming rule and field, the checks of what a field
must hold (a boolean, a list, an aggregate id, a value that may go into an event), payload objects, and
the collect of a transaction's rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from uuid import UUID

from bridge.changes import UNKNOWN, Op
from bridge.errors import TranslationError
from bridge.mapping.codegen import Guard
from bridge.mapping.compiled import OMIT, CompiledField, Getter, Scope
from bridge.mapping.values import EvalError, UnknownValue, type_name

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


def guard(rule_id: str, field_name: str, *, check: Getter | None = None, optional: bool = False) -> Guard:
    """How an expression of this rule and field fails: any failure becomes a TranslationError naming rule
    and field; the value goes through `check` first.

    ``optional``: an UNKNOWN value gives OMIT (the field is left out) instead of an error.
    """
    prefix = f"rule '{rule_id}', field '{field_name}'"

    def fail(exc: Exception) -> TranslationError:
        if isinstance(exc, EvalError):
            return TranslationError(f"{prefix}: {exc}")
        return TranslationError(f"{prefix}: {type(exc).__name__}: {exc}")

    return Guard(fail, check, OMIT if optional else None, _PASSES.get(check, frozenset()))


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


def event_time_of(value: Any) -> datetime | None:
    """A snapshot read's event time (`snapshot_time`): an aware timestamp, or None for the snapshot's own time."""
    if value is None or (type(value) is datetime and value.tzinfo is not None):
        return value
    if type(value) is datetime:
        raise EvalError(f"must be a timestamp with a time zone (timestamptz), got the naive timestamp {value!r}: "
                        "use a timestamptz column, or give the zone, e.g. as_utc(after.updated_on) for a timestamp kept in UTC")
    raise EvalError(f"must be a timestamp (a timestamptz column) or null, got {type_name(value)} {value!r}")


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


# The types each check returns unchanged, so that the compiled guard skips the call for them.
_PASSES: dict[Any, frozenset[type]] = {must_be_bool: frozenset({bool}), publishable: _SCALARS}


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
