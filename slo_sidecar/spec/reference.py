"""The SLO spec's reference page, rendered from its JSON schema (slo.schema.json): one table per object,
one row per field, so the docs say what the schema checks and nothing else. Pure: a schema in, Markdown out.

    .venv/bin/python -m slo_sidecar.app.docs   (writes docs/spec-reference.md; a test fails when it is stale)
"""

from __future__ import annotations

import json
from typing import Any

Schema = dict[str, Any]


def _resolve(schema: Schema, node: Schema) -> tuple[str | None, Schema]:
    """(the $defs name, the definition) for a $ref; (None, node) otherwise."""
    ref = node.get("$ref")
    if not ref:
        return None, node
    name = ref.rsplit("/", 1)[1]
    return name, schema["$defs"][name]


def _is_object(node: Schema) -> bool:
    return node.get("type") == "object" and "properties" in node


def _type(schema: Schema, node: Schema, path: str) -> str:
    """A field's type in words, linking to the section of an object it holds."""
    name, target = _resolve(schema, node)
    if _is_object(target):
        anchor = name or path
        return f"[object](#{_anchor(anchor)})"
    if "const" in target:
        return f"`{json.dumps(target['const'])}`"
    if "enum" in target:
        return "one of " + ", ".join(f"`{json.dumps(value)}`" for value in target["enum"])
    kind = target.get("type", "any")
    if kind == "array":
        items = target.get("items", {})
        return f"list of {_type(schema, items, path + '[]')}"
    if kind == "object":
        return "map of " + " or ".join(_words(target.get("additionalProperties", {}).get("type", "any")))
    return " or ".join(_words(kind))


def _words(kind: str | list[str]) -> list[str]:
    return [kind] if isinstance(kind, str) else list(kind)


def _constraints(schema: Schema, node: Schema) -> str:
    _, target = _resolve(schema, node)
    if target.get("type") == "array":
        target = {**target, **_resolve(schema, target.get("items", {}))[1]}
    parts = []
    for key, words in (("exclusiveMinimum", "> {}"), ("minimum", ">= {}"), ("exclusiveMaximum", "< {}"),
                       ("maximum", "<= {}"), ("minLength", "at least {} characters"),
                       ("minItems", "at least {} items"), ("maxItems", "at most {} items"),
                       ("minProperties", "at least {} entries"), ("maxProperties", "at most {} entries")):
        if key in target:
            parts.append(words.format(target[key]))
    if "pattern" in target:
        parts.append(f"matches `{target['pattern']}`")
    if target.get("uniqueItems"):
        parts.append("no repeats")
    return "; ".join(parts)


def _anchor(name: str) -> str:
    return name.lower().replace(".", "").replace("[]", "").replace("_", "-").replace(" ", "-")


def _section(schema: Schema, title: str, node: Schema, pending: list[tuple[str, Schema]]) -> list[str]:
    required = set(node.get("required", ()))
    lines = [f"## {title}", ""]
    if node.get("description"):
        lines += [node["description"], ""]
    extra = []
    if "minProperties" in node and node.get("maxProperties") == 1:
        extra.append("Exactly one of the fields below.")
    for rule in node.get("anyOf", ()):
        extra.append("At least one of " + ", ".join(f"`{field}`" for field in rule.get("required", ())) + ".")
    if extra:
        lines += [" ".join(extra), ""]
    lines += ["| field | type | required | default | constraints | what |", "| --- | --- | --- | --- | --- | --- |"]
    for field, child in node["properties"].items():
        path = f"{title}.{field}"
        name, target = _resolve(schema, child)
        if target.get("type") == "array":  # a list of objects: the objects' section
            name, target = _resolve(schema, target.get("items", {}))
        if _is_object(target):
            pending.append((name or path, target))
        default = json.dumps(child["default"] if "default" in child else target["default"]) if (
            "default" in child or "default" in target) else ""
        description = (child.get("description") or target.get("description") or "").replace("|", "\\|")
        lines.append(f"| `{field}` | {_type(schema, child, path)} | {'yes' if field in required else ''} | "
                     f"{f'`{default}`' if default else ''} | {_constraints(schema, child).replace('|', chr(92) + '|')} | "
                     f"{description} |")
    return lines + [""]


def markdown(schema: Schema) -> str:
    """The reference page: the document's fields, then every object it can hold, each once, in the order
    the fields lead to them."""
    lines = ["# SLO spec reference", "",
             f"Generated from `slo_sidecar/spec/slo.schema.json` ({schema.get('title', '')}) by `python -m slo_sidecar.app.docs`: "
             "edit the schema, not this page.", ""]
    pending: list[tuple[str, Schema]] = []
    lines += _section(schema, "spec", schema, pending)
    done: set[str] = set()
    while pending:
        title, node = pending.pop(0)
        if title in done:
            continue
        done.add(title)
        lines += _section(schema, title, node, pending)
    return "\n".join(lines).rstrip() + "\n"
