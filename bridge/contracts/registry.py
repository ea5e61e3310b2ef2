"""Contract files in, a registry of event types, their majors and revisions out (every problem with file:line).

The contracts of a mapping file live in the ``contracts/`` folder next to it (``mappings/restaurant.yaml``
-> ``mappings/contracts/**/*.yaml``). A registry answers: which contract does ``<type>.v<major>`` obey, at
which revision, with which pydantic model; and it compiles each major's checker once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from bridge.contracts.models import (build_checked_dict, build_model, fields_at, latest_revision, payload_checker,
                                     revisions_used)
from bridge.contracts.spec import ContractFileSpec, FieldSpec, MajorSpec
from bridge.errors import ContractError, MappingError
from bridge.mapping.spec import shape_problems
from bridge.mapping.yaml_lines import YamlDocument, problem_line, read_yaml

CONTRACTS_FOLDER = "contracts"
SCHEMAS_FOLDER = "schemas"  # committed JSON Schema snapshots, inside the contracts folder (not contract files)
URI_PREFIX = "urn:cdc-bridge:contract:"


def dataschema_uri(event_type: str, major: int, revision: int) -> str:
    """The CloudEvents `dataschema` of a payload: names type, major and revision exactly."""
    return f"{URI_PREFIX}{event_type}:{major}.{revision}"


@dataclass(frozen=True)
class Major:
    """One major version of an event type: its fields over all its revisions."""

    contract: Contract
    number: int
    spec: MajorSpec

    @property
    def fields(self) -> Mapping[str, FieldSpec]:
        return self.spec.fields

    @cached_property
    def revision(self) -> int:
        """The latest revision: the one the bridge publishes."""
        return latest_revision(self.spec.fields)

    @property
    def event_type(self) -> str:
        """The CloudEvents type: <namespace>.<aggregate>.<Event>.v<major>."""
        return f"{self.contract.type}.v{self.number}"

    @property
    def title(self) -> str:
        return f"{self.contract.name}V{self.number}"

    def dataschema(self, revision: int | None = None) -> str:
        return dataschema_uri(self.contract.type, self.number, self.revision if revision is None else revision)

    def fields_at(self, revision: int) -> dict[str, FieldSpec]:
        return fields_at(self.spec.fields, revision)

    @cached_property
    def _models(self) -> dict[int, type[BaseModel]]:
        return {}  # revision -> its model, compiled on first use

    def model(self, revision: int | None = None) -> type[BaseModel]:
        revision = self.revision if revision is None else revision
        if revision not in self._models:
            self._models[revision] = build_model(self.title, self.spec.fields, revision, self.spec.description)
        return self._models[revision]

    @cached_property
    def checker(self) -> Callable[[Mapping[str, Any]], None]:
        """Raises ContractViolation when a payload of Python values does not obey the latest revision."""
        return payload_checker(build_checked_dict(self.title, self.spec.fields, self.revision), self.event_type,
                               self.dataschema())


@dataclass(frozen=True)
class Contract:
    """An event type: its aggregate, its description and its majors."""

    type: str  # <namespace>.<aggregate>.<Event>
    aggregate: str
    description: str
    path: str  # the contract file, for messages
    document: YamlDocument = field(repr=False, compare=False)
    majors: dict[int, Major] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.type.rsplit(".", 1)[1]

    def line_of(self, *path: Any) -> str:
        """file:line of a path in the contract file."""
        return f"{self.path}:{self.document.line_of(path)}"


class ContractRegistry:
    """The contracts of one folder, by event type."""

    def __init__(self, contracts: Iterable[Contract], folder: Path | None = None) -> None:
        self.folder = folder
        self.contracts: dict[str, Contract] = {c.type: c for c in contracts}

    def __iter__(self) -> Iterator[Contract]:
        return iter(sorted(self.contracts.values(), key=lambda c: c.type))

    def __len__(self) -> int:
        return len(self.contracts)

    def major(self, event_type: str) -> Major | None:
        """The major an event type with its version suffix (restaurant.order.OrderPlaced.v1) obeys."""
        base, _, version = event_type.rpartition(".v")
        contract = self.contracts.get(base)
        if contract is None or not version.isdigit():
            return None
        return contract.majors.get(int(version))

    def majors(self) -> Iterator[Major]:
        for contract in self:
            for number in sorted(contract.majors):
                yield contract.majors[number]

    def find(self, name: str) -> Contract | None:
        """A contract by full type, by type with major, or by event name alone when unambiguous."""
        base = name.rpartition(".v")[0] if self.major(name) is not None else name
        if base in self.contracts:
            return self.contracts[base]
        matches = [c for c in self.contracts.values() if c.name == base]
        return matches[0] if len(matches) == 1 else None


def contracts_folder_of(mapping_file: str | Path) -> Path:
    """Where the contracts of a mapping file live: the ``contracts`` folder next to it."""
    return Path(mapping_file).parent / CONTRACTS_FOLDER


def contract_files(folder: Path) -> list[Path]:
    """Every *.yaml/*.yml under the folder, except the committed schema snapshots."""
    return sorted(p for p in folder.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()
                  and SCHEMAS_FOLDER not in p.relative_to(folder).parts[:-1])


def check_contract_folder(folder: Path) -> tuple[ContractRegistry, list[str]]:
    """Load every contract file of a folder; problems are returned (file:line: ...), not raised."""
    contracts: list[Contract] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    for path in contract_files(folder):
        try:
            doc = read_yaml(path)
        except MappingError as exc:  # read_yaml's: file:line of the YAML problem, kept as a contract problem
            problems.append(str(exc))
            continue
        try:
            spec = ContractFileSpec.model_validate(doc.data if doc.data is not None else {})
        except ValidationError as exc:
            problems.extend(problem_line(doc, where, message)
                            for where, message in shape_problems(doc.data, exc, ContractFileSpec))
            continue
        contract = Contract(spec.type, spec.aggregate, spec.description, str(path), doc)
        for number, major_spec in sorted(spec.majors.items()):
            contract.majors[number] = Major(contract, number, major_spec)
        problems.extend(_file_problems(contract, path))
        if spec.type in seen:
            problems.append(f"{contract.line_of('type')}: contract '{spec.type}' is also declared in {seen[spec.type]}; "
                            "declare each event type once")
            continue
        seen[spec.type] = str(path)
        contracts.append(contract)
    return ContractRegistry(contracts, folder), problems


def load_contracts(folder: Path) -> ContractRegistry:
    """The registry of a folder, or ContractError naming the first problem (and how many more)."""
    registry, problems = check_contract_folder(folder)
    if problems:
        more = f" (and {len(problems) - 1} more; run `cdc-bridge contracts check`)" if len(problems) > 1 else ""
        raise ContractError(problems[0] + more)
    return registry


def _file_problems(contract: Contract, path: Path) -> list[str]:
    problems = []
    if path.stem != contract.name:
        problems.append(f"{contract.line_of('type')}: the file of contract '{contract.type}' must be named "
                        f"{contract.name}.yaml (it is {path.name})")
    for number, major in contract.majors.items():
        where = ("majors", number)
        revisions = revisions_used(major.fields)
        missing = sorted(set(range(major.revision + 1)) - revisions)
        if missing:
            problems.append(f"{contract.line_of(*where, 'fields')}: major {number}: revisions must be contiguous: "
                            f"no field has since: {missing[0]}, but later revisions exist (since: {major.revision})")
        if major.spec.upcast is None and number - 1 in contract.majors:
            problems.append(f"{contract.line_of(*where)}: major {number} needs 'upcast': how a v{number - 1} payload "
                            f"becomes a v{number} one (consumers replaying history read v{number - 1} events)")
        for index, example in enumerate(major.spec.examples):
            if example.revision > major.revision:
                problems.append(f"{contract.line_of(*where, 'examples', index)}: example for revision "
                                f"{example.revision}, but major {number} only has revisions 0..{major.revision}")
    return problems
