"""YAML read with line numbers: plain data plus the line of every key and list item, for messages.

:func:`read_yaml` parses one document safely (no Python tags), rejecting duplicate keys and alias bombs;
:func:`problem_line` turns a path into that data and a message into the one-line problems the loader and
`cdc-bridge mappings validate` report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bridge.changes import UNKNOWN
from bridge.errors import MappingError

_MAX_NODES = 200_000
_MAX_DEPTH = 64
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class YamlDocument:
    """Plain Python data from a YAML file, and the line of every key and list item (by path)."""

    path: str
    data: Any
    lines: Mapping[tuple[Any, ...], int]

    def line_of(self, path: Sequence[Any]) -> int:
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return 1


def read_yaml(path: str | Path, *, allow_unknown_tag: bool = False) -> YamlDocument:
    """Parse one YAML document safely (no Python tags), rejecting duplicate keys and alias bombs.

    ``!unknown`` (golden cases only) stands for bridge.changes.UNKNOWN, an unchanged TOAST value.
    """
    shown = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingError(f"{shown}: cannot read the file: {exc}") from None
    loader = _Loader(text)
    lines: dict[tuple[Any, ...], int] = {(): 1}
    try:
        node = loader.get_single_node()
        walker = _Walker(shown, loader, lines, allow_unknown_tag)
        data = None if node is None else walker.construct(node, (), 0)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise MappingError(f"{shown}:{line}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise MappingError(f"{shown}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    return YamlDocument(shown, data, lines)


class _Walker:
    def __init__(self, path: str, loader: Any, lines: dict[tuple[Any, ...], int], allow_unknown: bool) -> None:
        self.path, self.loader, self.lines, self.allow_unknown = path, loader, lines, allow_unknown
        self.count = 0

    def fail(self, node: yaml.Node, message: str) -> MappingError:
        return MappingError(f"{self.path}:{node.start_mark.line + 1}: {message}")

    def construct(self, node: yaml.Node, path: tuple[Any, ...], depth: int) -> Any:
        self.count += 1
        if self.count > _MAX_NODES or depth > _MAX_DEPTH:
            raise self.fail(node, "the document is too large or too deeply nested (aliases?)")
        if isinstance(node, yaml.ScalarNode):
            if node.tag == "!unknown":
                if not self.allow_unknown:
                    raise self.fail(node, "!unknown is only allowed in golden test cases")
                return UNKNOWN
            return self.loader.construct_object(node)
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, child in enumerate(node.value):
                self.lines[path + (index,)] = child.start_mark.line + 1
                items.append(self.construct(child, path + (index,), depth + 1))
            return items
        if isinstance(node, yaml.MappingNode):
            written: dict[Any, int] = {}  # keys written here (not merged in with <<), to catch duplicates
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                if not isinstance(key_node, yaml.ScalarNode):
                    raise self.fail(key_node, "keys must be plain scalars")
                key = self.loader.construct_object(key_node)
                if key in written:
                    raise self.fail(key_node, f"duplicate key {key!r} (first on line {written[key]})")
                written[key] = key_node.start_mark.line + 1
            self.loader.flatten_mapping(node)  # << merge keys first; keys written here override them
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self.loader.construct_object(key_node)
                self.lines[path + (key,)] = key_node.start_mark.line + 1
                result[key] = self.construct(value_node, path + (key,), depth + 1)
            return result
        raise self.fail(node, f"unsupported YAML node {type(node).__name__}")


# -- problems: one line each, "file:line: rule 'id', field 'path': what is wrong (what was expected)" --------

def field_path(path: Sequence[Any]) -> str:
    text = ""
    for element in path:
        is_index = isinstance(element, int) and not isinstance(element, bool)
        text += f"[{element}]" if is_index else (f".{element}" if text else str(element))
    return text


def problem_line(doc: YamlDocument, path: Sequence[Any], message: str) -> str:
    """Locate ``path`` (a path into the YAML data) and name its rule and field."""
    where = [f"{doc.path}:{doc.line_of(path)}:"]
    rest = list(path)
    if len(rest) >= 2 and rest[0] == "rules" and isinstance(rest[1], int):
        rules = doc.data.get("rules") if isinstance(doc.data, dict) else None
        raw = rules[rest[1]] if isinstance(rules, list) and rest[1] < len(rules) else None
        rule_id = raw.get("id") if isinstance(raw, dict) else None
        where.append(f"rule '{rule_id}'" if isinstance(rule_id, str) else f"rule #{rest[1] + 1}")
        rest = rest[2:]
    if rest:
        where.append(f"field '{field_path(rest)}'")
    head, tail = where[0], ", ".join(where[1:])
    return f"{head} {tail}: {message}" if tail else f"{head} {message}"
