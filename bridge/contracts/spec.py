"""The shape of a contract file (pydantic models of the YAML), read with the line of every key for errors.

One file per event type, e.g. ``mappings/contracts/order/OrderPlaced.yaml``::

    type: restaurant.order.OrderPlaced     # <namespace>.<aggregate>.<EventName>; ce_type adds .v<major>
    aggregate: order
    description: The customer checked out.
    majors:
      1:
        fields:
          orderId: {type: integer, description: The legacy orders.id.}
          placedAt: {type: timestamp, nullable: true, description: ...}
          note: {type: string, optional: true, since: 1, description: ...}   # added by revision 1
        examples:
          - {revision: 0, data: {orderId: 7, placedAt: "2024-01-01T12:00:00.000000Z"}}
      2:
        upcast: [...]                      # how a v1 payload becomes a v2 one (upcast.py)
        fields: {...}

A major's revisions are additive: revision r holds the fields whose ``since`` is at most r, so every
revision ever published can be regenerated from the file (and compared with its committed snapshot).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bridge.mapping.spec import AggregateType, name_pattern  # the name checks of mapping files

FieldType = Literal["string", "integer", "number", "decimal", "boolean", "timestamp", "date", "uuid", "json",
                    "enum", "list", "object"]
SCALAR_TYPES = ("string", "integer", "number", "decimal", "boolean", "timestamp", "date", "uuid", "json")


ContractType = Annotated[str, name_pattern(
    r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*\.[A-Z][A-Za-z0-9]*",
    "'<namespace>.<aggregate>.<EventName>' like 'restaurant.order.OrderPlaced' (no .v<major>: majors go under 'majors')")]
FieldName = Annotated[str, name_pattern(r"[A-Za-z_][A-Za-z0-9_]*", "a field name like 'orderId'")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TypeSpec(_Strict):
    """A value's type: a scalar, an enum of strings, a list of one type, or an object of named fields."""

    type: FieldType
    nullable: bool = False  # the value may be JSON null
    values: list[str] | None = None  # enum
    items: ItemSpec | None = None  # list
    fields: dict[FieldName, FieldSpec] | None = None  # object

    @model_validator(mode="after")
    def _parts_fit_type(self) -> TypeSpec:
        wants = {"enum": "values", "list": "items", "object": "fields"}.get(self.type)
        for part in ("values", "items", "fields"):
            given = getattr(self, part) is not None
            if part == wants and not given:
                raise ValueError(f"a field of type {self.type} needs '{part}'")
            if part != wants and given:
                raise ValueError(f"'{part}' is only for type {next(t for t, p in {'enum': 'values', 'list': 'items', 'object': 'fields'}.items() if p == part)}, not {self.type}")
        if self.values is not None and (not self.values or len(set(self.values)) != len(self.values)):
            raise ValueError("an enum needs distinct 'values'")
        if self.type == "json" and self.nullable:
            raise ValueError("type json already takes null; leave 'nullable' out")
        return self


class ItemSpec(TypeSpec):
    """The elements of a list."""

    description: str | None = None


class FieldSpec(TypeSpec):
    """A named field of a payload or of a nested object."""

    description: Annotated[str, Field(min_length=1)]
    optional: bool = False  # the field may be absent from the payload
    since: int = Field(default=0, ge=0)  # the revision of its major that added it


class ExampleSpec(_Strict):
    revision: int = Field(default=0, ge=0)  # the revision it was written for
    data: dict[str, Any]


class UpcastStep(_Strict):
    """One declarative step from the previous major's payload (applied in order)."""

    rename: dict[str, str] | None = None  # {old name: new name}, dotted paths allowed
    move: dict[str, str] | None = None  # like rename; the target may be nested: {total: total.amount}
    default: dict[str, Any] | None = None  # {path: value} set where absent (inside an object that exists)
    remove: list[str] | None = None  # drop fields the new major no longer has
    function: str | None = None  # a Python upcaster registered under this name (upcast.register)

    @model_validator(mode="after")
    def _one_action(self) -> UpcastStep:
        given = [k for k in ("rename", "move", "default", "remove", "function") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("an upcast step needs exactly one of rename, move, default, remove, function"
                             + (f", got {' and '.join(given)}" if given else ""))
        return self


class MajorSpec(_Strict):
    description: str | None = None
    fields: dict[FieldName, FieldSpec] = Field(min_length=1)
    examples: list[ExampleSpec] = []
    upcast: list[UpcastStep] | None = None  # from the previous major: required for every major after the first


class ContractFileSpec(_Strict):
    type: ContractType
    aggregate: AggregateType
    description: Annotated[str, Field(min_length=1)]
    majors: dict[Annotated[int, Field(ge=1)], MajorSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _aggregate_in_type(self) -> ContractFileSpec:
        parts = self.type.split(".")
        if parts[-2] != self.aggregate:
            raise ValueError(f"type '{self.type}' names aggregate '{parts[-2]}' but 'aggregate' is '{self.aggregate}'")
        return self


TypeSpec.model_rebuild()
ItemSpec.model_rebuild()
FieldSpec.model_rebuild()
