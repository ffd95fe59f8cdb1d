"""YAML with line numbers: so an error can name the file, the line and the field.

PyYAML's safe_load drops positions; composing the node tree keeps them. Pure
code over text: the caller reads the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

Path_ = tuple[str | int, ...]


class YamlError(Exception):
    """`where` is "file:line"; `field` a dotted path like slos[1].sli.latency.threshold_s."""

    def __init__(self, where: str, field: str, reason: str):
        super().__init__(f"{where}: {field}: {reason}")
        self.where, self.field, self.reason = where, field, reason


@dataclass(frozen=True)
class Located:
    """A parsed document and the line of every path in it."""

    value: Any
    lines: dict[Path_, int]
    source: str

    def where(self, path: Path_) -> str:
        while path and path not in self.lines:
            path = path[:-1]
        return f"{self.source}:{self.lines.get(path, 1)}"


def dotted(path: Path_) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def load(text: str, source: str) -> Located:
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise YamlError(where, "(file)", f"not valid YAML: {getattr(exc, 'problem', exc)}") from None
    lines: dict[Path_, int] = {}
    if node is None:
        return Located(None, lines, source)
    return Located(_convert(node, (), lines, source), lines, source)


def _convert(node: yaml.Node, path: Path_, lines: dict[Path_, int], source: str) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        mapping = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if key in mapping:
                raise YamlError(f"{source}:{key_node.start_mark.line + 1}", dotted((*path, key)), "duplicate key")
            mapping[key] = _convert(value_node, (*path, key), lines, source)
            lines[(*path, key)] = key_node.start_mark.line + 1
        return mapping
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*path, i), lines, source) for i, item in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))
