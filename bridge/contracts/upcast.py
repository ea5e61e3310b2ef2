"""Upcasters from one major of an event type to the next: declarative steps and registered Python functions.

A consumer that speaks major N reads events published as an older major through :func:`upcast`: each major's
``upcast:`` steps turn a payload of the major before it into one of its own, and the chain v1 -> v2 -> ... is
walked one major at a time (eventsourcing's upcast_vX_vY, Axon's chained upcasters). Every intermediate
result must obey its major, so a broken step is caught where it breaks, not two majors later.

Declarative steps address fields by dotted paths (``total.amount``). A path that passes through a list reaches
every object of the list (``lines.price``). A step on an absent field does nothing: fields may be optional.
What the data alone cannot say (a lookup, a computation) is a Python function registered with
:func:`register` and named by a ``function:`` step.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import ValidationError

from bridge.contracts.models import violation_text
from bridge.contracts.registry import ContractRegistry, Major
from bridge.contracts.spec import UpcastStep
from bridge.errors import ContractError, ContractViolation

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
Path = tuple[str, ...]

_FUNCTIONS: dict[str, Upcaster] = {}


def register(name: str) -> Callable[[Upcaster], Upcaster]:
    """Register a Python upcaster under `name`, for contract steps ``function: <name>``.

    The function gets a private copy of the payload and returns the new payload (it may change its argument).
    """

    def decorate(fn: Upcaster) -> Upcaster:
        known = _FUNCTIONS.get(name)
        if known is not None and known is not fn:  # two meanings for one name would make files ambiguous
            raise ContractError(f"an upcaster function named '{name}' is already registered "
                                f"({known.__module__}.{known.__qualname__})")
        _FUNCTIONS[name] = fn
        return fn

    return decorate


def registered_functions() -> list[str]:
    return sorted(_FUNCTIONS)


# -- paths ----------------------------------------------------------------------------------------------------

def _split(path: str) -> Path:
    return tuple(path.split("."))


def _objects_at(data: Any, path: Path) -> Iterator[dict[str, Any]]:
    """Every object at `path` (a list on the way is entered element by element); nothing where it is absent."""
    if isinstance(data, list):
        for element in data:
            yield from _objects_at(element, path)
    elif isinstance(data, dict):
        if not path:
            yield data
        elif path[0] in data:
            yield from _objects_at(data[path[0]], path[1:])


def _pop(obj: dict[str, Any], path: Path, label: str) -> tuple[bool, Any]:
    for name in path[:-1]:
        obj = obj.get(name)  # type: ignore[assignment]
        if obj is None:
            return False, None
        if not isinstance(obj, dict):
            raise ContractError(f"{label}: '{name}' is {type(obj).__name__}, not an object")
    if path[-1] not in obj:
        return False, None
    return True, obj.pop(path[-1])


def _put(obj: dict[str, Any], path: Path, value: Any, label: str) -> None:
    """Set `path` to `value`, creating the objects on the way (the target of a move may be nested)."""
    for name in path[:-1]:
        inner = obj.setdefault(name, {})
        if not isinstance(inner, dict):
            raise ContractError(f"{label}: '{name}' is {type(inner).__name__}, not an object")
        obj = inner
    obj[path[-1]] = value


# -- steps ----------------------------------------------------------------------------------------------------

def _relocate(source: str, target: str, label: str, same_parent: bool) -> Callable[[dict[str, Any]], None]:
    old, new = _split(source), _split(target)
    if same_parent and old[:-1] != new[:-1]:
        raise ContractError(f"{label}: a rename keeps the field in its object ({'.'.join(old[:-1]) or 'the payload'}); "
                            "use move to put it elsewhere")
    # Both ends are resolved from their deepest common object: entered once per list element on the way, so
    # {lines.price: lines.unitPrice} renames inside every line, and {total: total.amount} works from the root.
    common = 0
    while common < min(len(old), len(new)) - 1 and old[common] == new[common]:
        common += 1
    base, old_rest, new_rest = old[:common], old[common:], new[common:]

    def apply(data: dict[str, Any]) -> None:
        for obj in list(_objects_at(data, base)):
            found, value = _pop(obj, old_rest, label)
            if found:
                _put(obj, new_rest, value, label)

    return apply


def _default(path: str, value: Any, label: str) -> Callable[[dict[str, Any]], None]:
    where = _split(path)

    def apply(data: dict[str, Any]) -> None:
        for obj in _objects_at(data, where[:-1]):
            if where[-1] not in obj:
                obj[where[-1]] = copy.deepcopy(value)  # every event gets its own copy

    return apply


def _remove(path: str, label: str) -> Callable[[dict[str, Any]], None]:
    where = _split(path)

    def apply(data: dict[str, Any]) -> None:
        for obj in _objects_at(data, where[:-1]):
            obj.pop(where[-1], None)

    return apply


def _step_label(major: Major, index: int, step: UpcastStep) -> str:
    action = next(k for k in ("rename", "move", "default", "remove", "function") if getattr(step, k) is not None)
    detail = getattr(step, action)
    if isinstance(detail, dict):
        shown = ", ".join(f"{k} -> {v}" if action != "default" else f"{k} = {v!r}" for k, v in detail.items())
    elif isinstance(detail, list):
        shown = ", ".join(detail)
    else:
        shown = detail
    return (f"{major.contract.line_of('majors', major.number, 'upcast', index)}: {major.contract.type} "
            f"v{major.number - 1} -> v{major.number}, upcast step {index + 1} ({action} {shown})")


def _compile_step(major: Major, index: int, step: UpcastStep) -> Callable[[dict[str, Any]], dict[str, Any]]:
    label = _step_label(major, index, step)
    parts: list[Callable[[dict[str, Any]], None]] = []
    if step.rename is not None:
        parts = [_relocate(old, new, label, same_parent=True) for old, new in step.rename.items()]
    elif step.move is not None:
        parts = [_relocate(old, new, label, same_parent=False) for old, new in step.move.items()]
    elif step.default is not None:
        parts = [_default(path, value, label) for path, value in step.default.items()]
    elif step.remove is not None:
        parts = [_remove(path, label) for path in step.remove]
    else:
        assert step.function is not None
        fn = _FUNCTIONS.get(step.function)
        if fn is None:
            known = ", ".join(registered_functions()) or "none"
            raise ContractError(f"{label}: no upcaster function named '{step.function}' is registered (registered: "
                                f"{known}); register it with @bridge.contracts.upcast.register('{step.function}')")
        return _call_function(fn, label)

    def apply(data: dict[str, Any]) -> dict[str, Any]:
        for part in parts:
            part(data)
        return data

    return apply


def _call_function(fn: Upcaster, label: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def apply(data: dict[str, Any]) -> dict[str, Any]:
        try:
            result = fn(data)
        except ContractError:
            raise
        except Exception as exc:  # a consumer's bug or a payload it did not expect: say which step
            raise ContractError(f"{label}: the function failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(result, dict):
            raise ContractError(f"{label}: the function returned {type(result).__name__}, not a payload object")
        return result

    return apply


def upcaster_for(major: Major) -> Upcaster:
    """The function turning a payload of major-1 into one of `major`: its steps in order, on a deep copy.

    ContractError when a step names a function nobody registered (file, line and name), or when a rename
    would leave its object.
    """
    cached = major.__dict__.get("_upcaster")
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    steps = [_compile_step(major, i, step) for i, step in enumerate(major.spec.upcast or ())]

    def upcaster(data: dict[str, Any]) -> dict[str, Any]:
        data = copy.deepcopy(data)  # the caller's event stays as it was read
        for step in steps:
            data = step(data)
        return data

    major.__dict__["_upcaster"] = upcaster  # Major is frozen; compiled steps are cached like its models
    return upcaster


# -- chains ---------------------------------------------------------------------------------------------------

def validation_problem(major: Major, data: dict[str, Any]) -> str | None:
    """Why `data` (JSON values) does not obey the latest revision of `major`, or None."""
    try:
        text = json.dumps(data)
    except (TypeError, ValueError) as exc:
        return f"not a JSON payload: {exc}"
    try:
        major.model().model_validate_json(text)
    except ValidationError as exc:
        return violation_text(exc)
    return None


def _upcast_text(major: Major) -> str:
    return (f"{major.contract.line_of('majors', major.number, 'upcast')}: the upcast of {major.contract.type} "
            f"v{major.number - 1} to v{major.number}")


def upcast(registry: ContractRegistry, event_type: str, data: dict[str, Any],
           to_major: int | None = None) -> tuple[str, dict[str, Any]]:
    """An event's payload as major `to_major` (default: the latest): (its new type with major, the new payload).

    `event_type` carries its major (restaurant.order.OrderPlaced.v1). The chain goes one major at a time and
    each result must obey its major (ContractViolation naming contract, step and field). Upcasting to the
    event's own major returns a copy; there is no downcasting (ContractError).
    """
    major = registry.major(event_type)
    if major is None:
        raise ContractError(f"cannot upcast {event_type}: no contract major for it in {registry.folder or 'the registry'}")
    contract = major.contract
    target = max(contract.majors) if to_major is None else to_major
    if target < major.number or target not in contract.majors:
        raise ContractError(f"cannot upcast {event_type} to v{target}: {contract.path} has majors "
                            f"{', '.join(map(str, sorted(contract.majors)))} (upcasting only goes up)")
    data = copy.deepcopy(data)
    for number in range(major.number + 1, target + 1):
        step_major = contract.majors.get(number)
        if step_major is None:
            raise ContractError(f"cannot upcast {event_type} to v{target}: {contract.path} has no major {number} "
                                "between them")
        upcaster = upcaster_for(step_major)  # a contract error (an unknown function) stays one
        try:
            data = upcaster(data)
        except ContractError as exc:
            raise ContractViolation(f"{exc} (on an event of {contract.type}.v{number - 1})") from None
        problem = validation_problem(step_major, data)
        if problem is not None:
            raise ContractViolation(f"{_upcast_text(step_major)} gives a payload that does not obey "
                                    f"{step_major.dataschema()}: {problem}")
    return f"{contract.type}.v{target}", data


def upcast_problems(registry: ContractRegistry) -> list[str]:
    """For `contracts check`: each major after the first must upcast every example of the major before it (all
    revisions) into a payload that obeys it; one line per failure (file:line, example index, field)."""
    problems: list[str] = []
    for contract in registry:
        for number in sorted(contract.majors):
            previous = contract.majors.get(number - 1)
            if number == 1 or previous is None:
                continue
            major = contract.majors[number]
            try:
                upcaster = upcaster_for(major)
            except ContractError as exc:
                problems.append(str(exc))
                continue
            for index, example in enumerate(previous.spec.examples):
                where = f"{contract.line_of('majors', previous.number, 'examples', index)}: example {index} of v{previous.number}"
                try:
                    problem = validation_problem(major, upcaster(example.data))
                except ContractError as exc:
                    problems.append(f"{where}: {exc}")
                    continue
                if problem is not None:
                    problems.append(f"{where} upcast to v{number} does not obey {major.dataschema()}: {problem} "
                                    f"(the upcast: {contract.line_of('majors', number, 'upcast')})")
    return problems
