"""The JSON Schema of a contract revision: generated from its pydantic model, serialization mode, dialect pinned.

Serialization mode, because it describes what is published (a decimal is a string there, not "number or
string"). The output is canonical (sorted keys, two-space indent, one final newline) so that the committed
snapshot of a revision regenerates byte-identical, and `$schema` names the dialect (2020-12) explicitly.
Property titles pydantic derives from names, and the `default: null` it writes for fields that may be
absent, are left out: they say nothing a consumer can rely on.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic.json_schema import GenerateJsonSchema

from bridge.contracts.registry import Major

DIALECT = "https://json-schema.org/draft/2020-12/schema"


class _ContractSchema(GenerateJsonSchema):
    def field_title_should_be_set(self, schema: Any) -> bool:  # noqa: ARG002 - pydantic's hook
        return False


def revision_schema(major: Major, revision: int | None = None, *, ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
    """The JSON Schema of one revision (default: the latest) of a major."""
    revision = major.revision if revision is None else revision
    schema = major.model(revision).model_json_schema(
        mode="serialization", by_alias=True, ref_template=ref_template, schema_generator=_ContractSchema)
    _drop_defaults(schema)
    contract = major.contract
    head = {"$schema": DIALECT, "$id": major.dataschema(revision), "title": f"{major.event_type}",
            "description": contract.description}
    if major.spec.description:
        head["description"] = f"{contract.description} {major.spec.description}"
    head["x-aggregate"] = contract.aggregate
    head["x-revision"] = revision
    return {**head, **{k: v for k, v in schema.items() if k not in ("title", "description")}}


def _drop_defaults(node: Any) -> None:
    if isinstance(node, dict):
        properties = node.get("properties")
        if isinstance(properties, dict):
            for prop in properties.values():
                if isinstance(prop, dict):
                    prop.pop("default", None)
        for value in node.values():
            _drop_defaults(value)
    elif isinstance(node, list):
        for value in node:
            _drop_defaults(value)


def schema_bytes(schema: dict[str, Any]) -> bytes:
    """The canonical text of a schema, as committed."""
    return (json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
