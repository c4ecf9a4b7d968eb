"""Render the API reference (docs/api.md) from the generated CRD schemas, so it cannot drift.

`python -m loraplane.apidocs > docs/api.md`; a test compares the committed file with this output.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import yaml

from loraplane import crdgen


def _type_of(node: dict[str, Any]) -> str:
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    kind = node.get("type", "any")
    if kind == "array":
        return f"[]{_type_of(node.get('items', {}))}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map[string]{_type_of(node['additionalProperties'])}"
    if node.get("format") == "date-time":
        return "timestamp"
    return str(kind)


def _limits(node: dict[str, Any]) -> str:
    parts = []
    for key, word in (("minimum", "≥"), ("maximum", "≤")):
        if key in node:
            exclusive = node.get(f"exclusive{key.capitalize()}")
            parts.append(f"{'>' if exclusive and word == '≥' else '<' if exclusive else word} {node[key]}")
    for key, word in (("minLength", "min length"), ("maxLength", "max length"), ("minItems", "min items")):
        if key in node:
            parts.append(f"{word} {node[key]}")
    if "pattern" in node:
        parts.append(f"pattern `{node['pattern']}`")
    return ", ".join(parts)


def _rows(node: dict[str, Any], path: str, required: bool) -> Iterator[str]:
    default = json.dumps(node["default"]) if "default" in node else ""
    description = " ".join(node.get("description", "").split())
    rules = "; ".join(r["message"] for r in node.get("x-kubernetes-validations", []))
    notes = "; ".join(p for p in (_limits(node), rules) if p)
    yield (
        f"| `{path}`{' (required)' if required else ''} | {_type_of(node)} | {default and f'`{default}`'} "
        f"| {description}{f' ({notes})' if notes else ''} |"
    )
    children = node.get("properties", {})
    if node.get("type") == "array":
        children = node.get("items", {}).get("properties", {})
        path += "[]"
    for name, child in children.items():
        parent = node.get("items", node) if node.get("type") == "array" else node
        yield from _rows(child, f"{path}.{name}", name in parent.get("required", []))


def render() -> str:
    lines = [
        "# API reference",
        "",
        "Generated from the models in `operator/loraplane/api` by `make crds`; do not edit.",
        "Group `loraplane.io`, version `v1alpha1`. `kubectl explain` shows the same descriptions.",
    ]
    for text in crdgen.render_all().values():
        crd = yaml.safe_load(text)
        names = crd["spec"]["names"]
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        lines += [
            "",
            f"## {names['kind']} (`{names['shortNames'][0]}`, category `lora`)",
            "",
            *(f"- {r['message']}" for r in schema.get("x-kubernetes-validations", [])),
        ]
        for part in ("spec", "status"):
            lines += ["", f"### {part}", "", "| field | type | default | description |", "|---|---|---|---|"]
            for name, child in schema["properties"][part].get("properties", {}).items():
                lines += list(_rows(child, name, name in schema["properties"][part].get("required", [])))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
