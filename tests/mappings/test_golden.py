"""Every golden case of every mapping, one test each; and every rule is exercised by some case."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from bridge.mapping.golden import (
    GoldenCase,
    discover_case_files,
    load_case_file,
    run_case,
)
from bridge.mapping.loader import load_mappings
from bridge.mapping.spec import CompiledMappings

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
_CACHE: dict[Path, CompiledMappings] = {}
CASES: list[GoldenCase] = [case for f in discover_case_files([MAPPINGS]) for case in load_case_file(f, _CACHE)]


def test_there_are_golden_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[f"{Path(c.file).stem}:{c.line}:{c.name}" for c in CASES])
def test_golden_case(case: GoldenCase) -> None:
    outcome = run_case(case, _CACHE[case.mapping])
    assert outcome.passed, f"{case.label}\n{outcome.report}"


def test_every_rule_of_every_mapping_runs_in_some_golden_case() -> None:
    runs: Counter[str] = Counter()
    for case in CASES:
        runs.update(run_case(case, _CACHE[case.mapping]).rules_run)
    for mapping in sorted({case.mapping for case in CASES}):
        missing = [rule.id for rule in load_mappings([mapping]).rules if rule.id not in runs]
        assert not missing, f"{mapping}: no golden case runs {missing}"
