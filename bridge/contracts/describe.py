"""The text of `cdc-bridge contracts show`: one contract's majors, revisions, fields and producing rules."""

from __future__ import annotations

from collections.abc import Mapping

from bridge.contracts.models import nested_fields
from bridge.contracts.registry import Contract
from bridge.contracts.spec import TypeSpec


def describe(contract: Contract, producers: Mapping[str, list[tuple[str, str]]]) -> str:
    lines = [f"{contract.type}  (aggregate {contract.aggregate}; {contract.path})", f"  {contract.description}"]
    for number in sorted(contract.majors):
        major = contract.majors[number]
        lines += ["", f"  {major.event_type}  revisions 0..{major.revision}  dataschema {major.dataschema()}"]
        if major.spec.description:
            lines.append(f"    {major.spec.description}")
        if major.spec.upcast is not None:
            lines.append(f"    upcast from v{number - 1}: {len(major.spec.upcast)} step(s)")
        made_by = producers.get(major.event_type, [])
        lines.append("    produced by: " + (", ".join(f"rule {rule} ({table})" for rule, table in made_by)
                                          if made_by else "no rule of the mappings"))
        lines.append("    fields:")
        lines += _fields(major.fields, "      ")
    return "\n".join(lines) + "\n"


def _fields(fields: Mapping[str, TypeSpec], indent: str) -> list[str]:
    out = []
    for name, spec in fields.items():
        flags = [flag for flag, on in (("nullable", spec.nullable), ("optional", getattr(spec, "optional", False)))
                 if on]
        since = getattr(spec, "since", 0)
        if since:
            flags.append(f"since revision {since}")
        out.append(f"{indent}{name}: {type_text(spec)}" + (f"  [{', '.join(flags)}]" if flags else "")
                   + (f"  {spec.description}" if getattr(spec, "description", None) else ""))
        nested = nested_fields(spec)
        if nested:
            out += _fields(nested, indent + "  ")
    return out


def type_text(spec: TypeSpec) -> str:
    if spec.type == "enum":
        return f"enum({', '.join(spec.values or ())})"
    if spec.type == "list" and spec.items is not None:
        return f"list of {type_text(spec.items)}"
    return spec.type
