"""A contract revision compiled into a closed, strict pydantic v2 model, and the check of one event against it.

Closed: unknown fields are refused at every depth. Strict: a value must already be of its type (an integer
is not a decimal, a string is not an integer, a naive timestamp is not a timestamp). Python payloads (what
translate() builds: Decimal, aware datetime, ...) are validated in Python mode; published JSON (examples,
golden cases) in JSON mode, where decimals and timestamps are strings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal, NotRequired
from uuid import UUID

from pydantic import (AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, WithJsonSchema,
                      create_model)
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from bridge.contracts.spec import FieldSpec, TypeSpec
from bridge.errors import ContractViolation

# A decimal is published as a string ("12.50"); its schema says so with format "decimal" (an annotation JSON
# Schema validators ignore), so that a field turning from free text into a decimal, or back, is a change
# the compatibility check sees, not two identical {"type": "string"}.
_DECIMAL = Annotated[Decimal, WithJsonSchema({"type": "string", "format": "decimal"}, mode="serialization")]

_SCALARS: dict[str, Any] = {
    "string": str, "integer": int, "number": float, "decimal": _DECIMAL, "boolean": bool,
    "timestamp": AwareDatetime, "date": date, "uuid": UUID, "json": Any,
}


def fields_at(fields: Mapping[str, FieldSpec], revision: int) -> dict[str, FieldSpec]:
    """The fields a revision has: those added at or before it."""
    return {name: spec for name, spec in fields.items() if spec.since <= revision}


def revisions_used(fields: Mapping[str, FieldSpec]) -> set[int]:
    """Every revision some field (nested ones included) was added in, and 0."""
    used = {0}
    for spec in fields.values():
        used.add(spec.since)
        nested = nested_fields(spec)
        if nested:
            used |= revisions_used(nested)
    return used


def latest_revision(fields: Mapping[str, FieldSpec]) -> int:
    """The highest `since` anywhere in the fields, nested ones included."""
    return max(revisions_used(fields))


def nested_fields(spec: TypeSpec) -> Mapping[str, FieldSpec] | None:
    """The fields of an object, or of the objects a list (of lists ...) holds; None for anything else."""
    while spec.items is not None:
        spec = spec.items
    return spec.fields


def build_model(title: str, fields: Mapping[str, FieldSpec], revision: int, description: str | None = None) -> type[BaseModel]:
    """The pydantic model of a payload (or nested object) at `revision`; nested models are titled after
    their path (OrderPlacedV1Lines)."""
    definitions: dict[str, Any] = {}
    for index, (name, spec) in enumerate(fields_at(fields, revision).items()):
        annotation = _annotation(spec, f"{title}{name[:1].upper()}{name[1:]}", revision)
        extra = {} if not spec.optional else {"default": None}
        # Python names are placeholders (a field may be called 'schema' or 'copy'): the alias is the name.
        definitions[f"f{index}"] = (annotation, Field(alias=name, description=spec.description, **extra))
    config = ConfigDict(extra="forbid", strict=True, title=title, populate_by_name=False,
                        json_schema_extra={"description": description} if description else None)
    return create_model(title, __config__=config, **definitions)


def build_checked_dict(title: str, fields: Mapping[str, FieldSpec], revision: int) -> Any:
    """The same fields, as strict and as closed, as a TypedDict: what the run-time check validates against.

    Validating it returns the dict instead of building a model instance that would be thrown away: 30-45%
    less per event (bench/contract_checks.py). The model stays the contract (its JSON Schema is published);
    tests hold the two to the same verdicts.
    """
    keys = {name: (annotation if not spec.optional else NotRequired[annotation])  # type: ignore[valid-type]
            for name, spec in fields_at(fields, revision).items()
            for annotation in (_annotation(spec, f"{title}{name[:1].upper()}{name[1:]}", revision, build_checked_dict),)}
    checked = TypedDict(title, keys)  # type: ignore[misc]  # the functional form: any field name works
    checked.__pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[attr-defined]
    return checked


def _annotation(spec: TypeSpec, title: str, revision: int, build_object: Callable[..., Any] = build_model) -> Any:
    if spec.type == "enum":
        annotation: Any = Literal[tuple(spec.values or ())]
    elif spec.type == "list":
        assert spec.items is not None
        annotation = list[_annotation(spec.items, f"{title}Item", revision, build_object)]  # type: ignore[misc]
    elif spec.type == "object":
        assert spec.fields is not None
        annotation = build_object(title, spec.fields, revision)
    else:
        annotation = _SCALARS[spec.type]
    return annotation | None if spec.nullable else annotation


def violation_text(exc: ValidationError) -> str:
    """The first error of a validation as "field 'lines[0].price': reason (got ...)"; more are counted."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]).lstrip(".")
    message = first["msg"]
    if first["type"] == "missing":
        message = "required, but the event does not have it"
    elif first["type"] == "extra_forbidden":
        message = "not in the contract (a closed contract refuses unknown fields)"
    else:
        value = first.get("input")
        message += f" (got {type(value).__name__} {value!r})" if value is not None else " (got null)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"field '{path}': {message}{more}" if path else f"{message}{more}"


def payload_checker(checked_dict: Any, event_type: str, dataschema: str) -> Callable[[Mapping[str, Any]], None]:
    """A function that raises ContractViolation when a payload (Python values) does not obey a contract
    revision (its :func:`build_checked_dict`)."""
    validate = TypeAdapter(checked_dict).validator.validate_python  # the core validator: no wrapper per call

    def check(data: Mapping[str, Any]) -> None:
        try:
            validate(data)
        except ValidationError as exc:
            raise ContractViolation(f"event {event_type} does not obey its contract {dataschema}: "
                                    f"{violation_text(exc)}") from None

    return check
