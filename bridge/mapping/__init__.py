"""Declarative table-to-event mappings: load and compile them, translate transactions, test them.

    load_mappings(paths, known_schema=None) -> CompiledMappings     loader.py (MappingError: file:line, rule, field)
    translate.translate(tx, mappings, source_id=..., prior_rows=None)   (pure: no I/O, clock or globals)
    run_golden(paths) -> [CaseOutcome]                               golden.py (`cdc-bridge mappings test`)

The language is documented in mappings/README.md. The modules, in the order a mapping file meets them:

    yaml_lines.py   YAML with the line of every key and item; one-line problems pointing into it
    spec.py         the file's shape (pydantic models), their errors as YAML paths, PostgreSQL type names
    expr.py         the expression language: parse and check an expression, refuse what it does not allow
    codegen.py      a checked expression as the source of one Python function, compiled once
    values.py       what values do at run time: EvalError/UnknownValue, field reads, operators, decimals
    functions.py    the functions expressions may call
    compile.py      the rule compiler: one validated file into CompiledRules, problems collected
    closures.py     what compiled rules call at run time: name readers, guard, checks, payloads, collect
    compiled.py     the compiled form: CompiledRule, CompiledMappings, Scope
    loader.py       files and directories in, CompiledMappings (or every problem) out
    runtime.py      one transaction's shared state: changes by table, overlay, before images
    translate.py    translate(): a transaction in, events and dead letters out; the PriorRows protocol
    golden.py       golden cases; commands.py: `cdc-bridge mappings validate|test`
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bridge.mapping.compiled import CompiledMappings, DeclaredTypes
    from bridge.mapping.golden import run_golden
    from bridge.mapping.loader import (
        check_files,
        load_mappings,
        needs_before,
        replica_identity_problems,
    )
    from bridge.mapping.translate import (
        DeadLetter,
        InMemoryPriorRows,
        PriorRows,
        TranslationResult,
    )

# Imported on first use, so that `cdc-bridge --help` does not pay for pydantic and the compiler.
_HOMES = {
    "run_golden": "golden", "check_files": "loader", "load_mappings": "loader", "needs_before": "loader",
    "replica_identity_problems": "loader", "CompiledMappings": "compiled", "DeclaredTypes": "compiled",
    "DeadLetter": "translate", "InMemoryPriorRows": "translate", "PriorRows": "translate",
    "TranslationResult": "translate",
}  # translate() itself: from bridge.mapping.translate import translate (the submodule has its name)
__all__ = [
    "CompiledMappings", "DeadLetter", "DeclaredTypes", "InMemoryPriorRows", "PriorRows", "TranslationResult",
    "check_files", "load_mappings", "needs_before", "replica_identity_problems", "run_golden",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'bridge.mapping' has no attribute {name!r}")
    return getattr(importlib.import_module(f"bridge.mapping.{home}"), name)
