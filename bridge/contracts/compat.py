"""Our compatibility checker on the restricted JSON Schema shapes our contract models emit.

Policy (the reference's recommendation 4): the producer's schema is closed, a consumer reads with the same
schema opened, and within a major every revision must be FULL_TRANSITIVE compatible with every other: old
consumers read new events (new writer within old reader) and new consumers read old events (old writer
within new reader). Under that split the only changes allowed inside a major are an optional field added
and documentation (descriptions, titles); everything else is a breaking change and needs a new major.

The checker understands exactly the shapes models.py produces (closed objects, local `$ref`, scalars,
string enums, `anyOf [X, null]`, arrays, schemas with no type keywords = any JSON value). Anything else
raises ContractError "unsupported schema shape": a checker that guessed could pass a breaking change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from bridge.errors import ContractError

DIALECT = "https://json-schema.org/draft/2020-12/schema"
_DOCS = frozenset({"description", "title"})
_ROOT = frozenset({"$schema", "$id", "x-aggregate", "x-revision", "$defs", "components"})
_FORMATS = ("date-time", "date", "uuid", "decimal")  # decimal: our own annotation of exact numbers as text
_LOCAL_REF = re.compile(r"#/(\$defs|components/schemas)/([^/~]+)")

# Kinds of change; only the first two are compatible within a major.
OPTIONAL_FIELD_ADDED = "optional_field_added"
DOCUMENTATION = "documentation"
FIELD_REMOVED = "field_removed"
FIELD_RENAMED = "field_renamed"
TYPE_CHANGED = "type_changed"
ITEM_TYPE_CHANGED = "item_type_changed"
OPTIONAL_MADE_REQUIRED = "optional_made_required"
REQUIRED_MADE_OPTIONAL = "required_made_optional"
REQUIRED_FIELD_ADDED = "required_field_added"
NULLABLE_ADDED = "nullable_added"
NULLABLE_REMOVED = "nullable_removed"
ENUM_NARROWED = "enum_narrowed"
ENUM_WIDENED = "enum_widened"
AGGREGATE_CHANGED = "aggregate_changed"
COMPATIBLE_KINDS = frozenset({OPTIONAL_FIELD_ADDED, DOCUMENTATION})


@dataclass
class Shape:
    """A schema node reduced to what matters for compatibility (kind, format, values, children, docs)."""

    kind: str  # object | string | integer | number | boolean | enum | array | any
    format: str | None = None
    values: tuple[str, ...] = ()
    items: Shape | None = None
    properties: dict[str, Shape] = field(default_factory=dict)
    required: frozenset[str] = frozenset()
    nullable: bool = False
    description: str | None = None
    title: str | None = None

    def signature(self) -> tuple[Any, ...]:
        """The structure without documentation: two fields with the same signature have the same type."""
        props = tuple(sorted((n, s.signature(), n in self.required) for n, s in self.properties.items()))
        return (self.kind, self.format, self.values, self.items.signature() if self.items else None,
                props, self.nullable)

    def describe(self) -> str:
        if self.kind == "enum":
            text = "enum [" + ", ".join(self.values) + "]"
        elif self.kind == "array":
            text = f"list of {self.items.describe() if self.items else '?'}"
        elif self.kind == "any":
            text = "any JSON value"
        else:
            text = ("decimal (as a string)" if self.format == "decimal"
                    else self.kind + (f" (format {self.format})" if self.format else ""))
        return text + (" or null" if self.nullable else "")


@dataclass(frozen=True)
class Change:
    """One difference between two schemas of a major: where, what kind, and whether it breaks consumers."""

    path: str  # dotted field path, `[]` for list items: lines[].price; "" is the event itself
    kind: str
    breaking: bool
    message: str
    new_path: str = ""  # where the field is in the new schema (differs from path for a rename)


def unsupported(pointer: str, keyword: str) -> str:
    return (f"unsupported schema shape at {pointer or '/'}: {keyword}; "
            "the checker cannot decide compatibility, so it refuses")


class _Reader:
    """Turns a schema document into Shapes, refusing every keyword and shape it does not understand."""

    def __init__(self, document: Any) -> None:
        self.document = document
        self.resolving: list[str] = []

    def refuse(self, pointer: str, keyword: str) -> ContractError:
        return ContractError(unsupported(pointer, keyword))

    def read(self, node: Any, pointer: str, *, root: bool = False) -> Shape:
        if not isinstance(node, dict):
            raise self.refuse(pointer, f"a schema that is not an object ({node!r})")
        if root:
            dialect = node.get("$schema", DIALECT)
            if dialect != DIALECT:
                raise self.refuse(f"{pointer}/$schema", f"$schema {dialect!r} (only {DIALECT})")
        docs = {"description": node.get("description"), "title": node.get("title")}
        extra = _ROOT if root else frozenset()
        if "$ref" in node:
            self._allow(node, pointer, {"$ref"} | extra)
            shape = self._ref(node["$ref"], f"{pointer}/$ref")
            # The referring node's own documentation wins (pydantic puts a field's description there).
            return replace(shape, **{k: v for k, v in docs.items() if v is not None})
        if "anyOf" in node:
            self._allow(node, pointer, {"anyOf"} | extra)
            shape = self._nullable(node["anyOf"], f"{pointer}/anyOf")
            return replace(shape, **{k: v for k, v in docs.items() if v is not None})
        kind = node.get("type")
        if kind is None and "enum" not in node:
            self._allow(node, pointer, extra)  # no type keyword at all: any JSON value (type json)
            return Shape("any", **docs)
        if kind is not None and not isinstance(kind, str):
            raise self.refuse(f"{pointer}/type", "type as a list")
        if kind == "object":
            return self._object(node, pointer, extra, docs)
        if kind == "array":
            self._allow(node, pointer, {"type", "items"} | extra)
            if "items" not in node:
                raise self.refuse(pointer, "type array without items")
            return Shape("array", items=self.read(node["items"], f"{pointer}/items"), **docs)
        if kind in (None, "string") and ("enum" in node or "const" in node):
            return self._enum(node, pointer, extra, docs)
        if kind == "string":
            self._allow(node, pointer, {"type", "format"} | extra)
            fmt = node.get("format")
            if fmt is not None and fmt not in _FORMATS:
                raise self.refuse(f"{pointer}/format", f"format {fmt!r}")
            return Shape("string", format=fmt, **docs)
        if kind in ("integer", "number", "boolean"):
            self._allow(node, pointer, {"type"} | extra)
            return Shape(kind, **docs)
        raise self.refuse(f"{pointer}/type", f"type {kind!r}" + (" outside anyOf [X, null]" if kind == "null" else ""))

    def _allow(self, node: dict[str, Any], pointer: str, allowed: set[str] | frozenset[str]) -> None:
        unknown = sorted(set(node) - _DOCS - set(allowed))
        if unknown:
            raise self.refuse(f"{pointer}/{_escape(unknown[0])}", unknown[0])

    def _ref(self, ref: Any, pointer: str) -> Shape:
        match = _LOCAL_REF.fullmatch(ref) if isinstance(ref, str) else None
        if match is None:
            raise self.refuse(pointer, f"$ref {ref!r} (only #/$defs/<Name> or #/components/schemas/<Name> "
                                       "inside the document)")
        container: Any = self.document
        for part in match.group(1).split("/"):
            container = container.get(part) if isinstance(container, dict) else None
        if not isinstance(container, dict) or match.group(2) not in container:
            raise self.refuse(pointer, f"$ref {ref!r} to a definition the document does not have")
        if ref in self.resolving:
            raise self.refuse(pointer, f"recursive $ref {ref!r}")
        self.resolving.append(ref)
        try:
            return self.read(container[match.group(2)], ref[1:])
        finally:
            self.resolving.pop()

    def _nullable(self, options: Any, pointer: str) -> Shape:
        is_null = [isinstance(o, dict) and o == {"type": "null"} for o in options] if isinstance(options, list) else []
        if len(is_null) != 2 or is_null.count(True) != 1:
            raise self.refuse(pointer, "anyOf that is not [X, {type: null}]")
        index = is_null.index(False)
        inner = self.read(options[index], f"{pointer}/{index}")
        if inner.nullable:
            raise self.refuse(f"{pointer}/{index}", "anyOf nested in anyOf")
        return replace(inner, nullable=True)

    def _object(self, node: dict[str, Any], pointer: str, extra: frozenset[str], docs: dict[str, Any]) -> Shape:
        self._allow(node, pointer, {"type", "properties", "required", "additionalProperties"} | extra)
        closed = node.get("additionalProperties", "absent (an open object)")
        if closed is not False:
            what = {True: "true"}.get(closed, closed) if isinstance(closed, (bool, str)) else "a schema"
            raise self.refuse(f"{pointer}/additionalProperties", f"additionalProperties: {what}")
        properties = node.get("properties", {})
        required = node.get("required", [])
        if not isinstance(properties, dict):
            raise self.refuse(f"{pointer}/properties", "properties that are not an object")
        if not isinstance(required, list) or not all(isinstance(r, str) and r in properties for r in required):
            raise self.refuse(f"{pointer}/required", "required that is not a list of the object's properties")
        children = {name: self.read(sub, f"{pointer}/properties/{_escape(name)}") for name, sub in properties.items()}
        return Shape("object", properties=children, required=frozenset(required), **docs)

    def _enum(self, node: dict[str, Any], pointer: str, extra: frozenset[str], docs: dict[str, Any]) -> Shape:
        self._allow(node, pointer, {"type", "enum", "const"} | extra)
        # A one-value enum is written by pydantic as {const: v, type: string}: the only const we accept.
        if "const" in node and ("enum" in node or node.get("type") != "string"):
            raise self.refuse(f"{pointer}/const", "const (other than a one-value enum {const, type: string})")
        values = node["enum"] if "enum" in node else [node["const"]]
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise self.refuse(f"{pointer}/enum", "enum of values that are not all strings")
        return Shape("enum", values=tuple(values), **docs)


def _escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


def read_shape(schema: Any) -> Shape:
    """The Shape of a whole schema document; ContractError "unsupported schema shape" otherwise."""
    return _Reader(schema).read(schema, "", root=True)


def _subject(*schemas: Any) -> tuple[str, int | None]:
    """Event type and major a schema document is about, from its $id (or its title)."""
    for schema in schemas:
        if not isinstance(schema, dict):
            continue
        found = re.fullmatch(r"urn:cdc-bridge:contract:(.+):(\d+)\.\d+", str(schema.get("$id", "")))
        if found:
            return found.group(1), int(found.group(2))
        found = re.fullmatch(r"(.+)\.v(\d+)", str(schema.get("title", "")))
        if found:
            return found.group(1), int(found.group(2))
    return "the event", None


def breaking_fix(major: int | None) -> str:
    if major is None:
        return ("a breaking change inside a major: keep the major as published and publish the change as the "
                "next major, with an upcaster (see the README's Contracts section)")
    return (f"a breaking change inside major {major}: keep major {major} as published and publish the change "
            f"as major {major + 1}, with an upcaster from v{major} (see the README's Contracts section)")


def compare(old_schema: Any, new_schema: Any) -> list[Change]:
    """The changes from one schema of a major to another; `breaking` ones would break a consumer.

    Raises ContractError when either schema has a shape the checker does not understand.
    """
    old, new = read_shape(old_schema), read_shape(new_schema)
    found: list[tuple[str, ...]] = []  # (path, kind, what[, new path])
    if old_schema.get("x-aggregate") != new_schema.get("x-aggregate"):
        found.append(("", AGGREGATE_CHANGED, f"aggregate changed from {old_schema.get('x-aggregate')!r} "
                                             f"to {new_schema.get('x-aggregate')!r}"))
    _diff(old, new, "", found)
    event_type, major = _subject(old_schema, new_schema)
    changes = []
    for path, kind, what, *renamed in found:
        breaking = kind not in COMPATIBLE_KINDS
        where = f"field '{path}'" if path else "the event"
        tail = f"; {breaking_fix(major)}" if breaking else "" if kind == DOCUMENTATION else " (compatible)"
        subject = f"{event_type} major {major}" if major is not None else event_type
        changes.append(Change(path, kind, breaking, f"{subject}, {where}: {what}{tail}", renamed[0] if renamed else path))
    return changes


def _join(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def _diff(old: Shape, new: Shape, path: str, found: list[tuple[str, ...]]) -> None:
    for doc in ("description", "title"):
        if getattr(old, doc) != getattr(new, doc):
            found.append((path, DOCUMENTATION, f"{doc} changed (documentation only)"))
    if old.nullable != new.nullable:
        found.append((path, NULLABLE_ADDED, "nullable added: it may now be null, which old consumers refuse")
                     if new.nullable else
                     (path, NULLABLE_REMOVED, "nullable removed: old events hold null, which new consumers refuse"))
    if (old.kind, old.format) != (new.kind, new.format):
        kind, what = (ITEM_TYPE_CHANGED, "list item type changed") if path.endswith("[]") else (TYPE_CHANGED, "type changed")
        found.append((path, kind, f"{what} from {replace(old, nullable=False).describe()} "
                                  f"to {replace(new, nullable=False).describe()}"))
        return
    if old.kind == "enum":
        removed = [v for v in old.values if v not in new.values]
        added = [v for v in new.values if v not in old.values]
        if removed:
            found.append((path, ENUM_NARROWED, f"enum narrowed: values {removed} removed (old events hold them)"))
        if added:
            found.append((path, ENUM_WIDENED, f"enum widened: values {added} added (old consumers with a closed "
                                              "enum refuse them)"))
    elif old.kind == "array" and old.items and new.items:
        _diff(old.items, new.items, f"{path}[]", found)
    elif old.kind == "object":
        _diff_fields(old, new, path, found)


def _diff_fields(old: Shape, new: Shape, path: str, found: list[tuple[str, ...]]) -> None:
    removed = [n for n in old.properties if n not in new.properties]
    added = [n for n in new.properties if n not in old.properties]
    for name in list(removed):
        # A field gone and one of the same type new at the same level is most likely a rename.
        twin = next((a for a in added if new.properties[a].signature() == old.properties[name].signature()), None)
        if twin is not None:
            removed.remove(name)
            added.remove(twin)
            found.append((_join(path, name), FIELD_RENAMED, f"field removed and '{twin}' of the same type added: "
                                                            f"renamed from '{name}' to '{twin}'?", _join(path, twin)))
    for name in removed:
        how = "required" if name in old.required else "optional"
        found.append((_join(path, name), FIELD_REMOVED, f"{how} field removed (old events and consumers have it)"))
    for name in added:
        if name in new.required:
            found.append((_join(path, name), REQUIRED_FIELD_ADDED, "required field added (old events do not have it)"))
        else:
            found.append((_join(path, name), OPTIONAL_FIELD_ADDED, "optional field added"))
    for name in (n for n in old.properties if n in new.properties):
        was, now = name in old.required, name in new.required
        if was and not now:
            found.append((_join(path, name), REQUIRED_MADE_OPTIONAL, "required made optional: new events may leave "
                                                                     "it out, which old consumers refuse"))
        elif now and not was:
            found.append((_join(path, name), OPTIONAL_MADE_REQUIRED, "optional made required: old events may not "
                                                                     "have it, which new consumers refuse"))
        _diff(old.properties[name], new.properties[name], _join(path, name), found)


def breaking(changes: list[Change]) -> list[Change]:
    return [c for c in changes if c.breaking]
