"""The run-time check (a strict, closed TypedDict) and the contract's model give the same verdicts.

The check is compiled separately from the model for speed (models.build_checked_dict); these tests hold
the two together on every restaurant contract: its examples, each of them broken every way we can
think of (each field left out, made null, given a value of another kind, an unknown field added), and
the events the golden cases translate.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from bridge.contracts.models import build_checked_dict
from bridge.contracts.registry import Major, load_contracts
from bridge.errors import ContractViolation
from bridge.mapping.golden import load_case_file, run_case
from bridge.mapping.loader import load_mappings
from bridge.mapping.translate import translate

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
REGISTRY = load_contracts(MAPPINGS / "contracts")
OTHER_KINDS: list[Any] = [None, "text", 7, 1.5, True, [], {}]


def _mutations(data: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name in data:
        without = dict(data)
        del without[name]
        out.append(without)
        for value in OTHER_KINDS:
            changed = copy.deepcopy(data)
            changed[name] = value
            out.append(changed)
        if isinstance(data[name], list) and data[name] and isinstance(data[name][0], dict):
            for inner in _mutations(data[name][0]):
                changed = copy.deepcopy(data)
                changed[name] = [inner]
                out.append(changed)
    return out + [{**data, "unknownField": 1}]


def _accepts(validate: Any, text: str) -> bool:
    try:
        validate(text)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize("major", list(REGISTRY.majors()), ids=lambda m: m.event_type)
def test_check_and_model_agree_on_examples_and_their_breakages(major: Major) -> None:
    model = major.model()
    checked = TypeAdapter(build_checked_dict(major.title, major.fields, major.revision))
    payloads = [example.data for example in major.spec.examples]
    assert payloads, f"{major.event_type} has no example"
    verdicts = []
    for data in payloads + [m for p in payloads for m in _mutations(p)]:
        text = json.dumps(data)
        by_model = _accepts(lambda t: model.model_validate_json(t, strict=True), text)
        by_check = _accepts(lambda t: checked.validate_json(t, strict=True), text)
        assert by_model == by_check, (major.event_type, data, by_model)
        verdicts.append(by_check)
    assert verdicts[:len(payloads)] == [True] * len(payloads)
    assert not all(verdicts), "the mutations include payloads both refuse"


def test_every_golden_event_passes_both_and_a_broken_one_fails_the_check() -> None:
    mappings = load_mappings([MAPPINGS / "restaurant.yaml"])
    events = []
    for case_file in sorted((MAPPINGS / "restaurant.tests").glob("*.yaml")):
        for case in load_case_file(case_file):
            assert run_case(case, mappings).passed
            for tx in case.transactions:
                events += translate(tx, mappings, source_id="golden").events
    assert len(events) > 30
    for event in events:
        major = REGISTRY.major(event.type)
        assert major is not None
        major.model().model_validate(dict(event.data))  # Python values, strict: raises if it disagrees
        major.checker(event.data)
    event = next(e for e in events if e.type.endswith("OrderPlaced.v1") and "total" in e.data)
    with pytest.raises(ContractViolation, match=r"field 'total': Input should be an instance of Decimal"):
        REGISTRY.major(event.type).checker({**event.data, "total": float(event.data["total"])})
