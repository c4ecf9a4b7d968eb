"""Generate the CustomResourceDefinitions from the API models.

`python -m loraplane.crdgen --out crds/ --out charts/loraplane/crds/` writes one YAML per kind. The
models are the single source of truth; a test regenerates and fails on any drift.

pydantic emits JSON Schema (draft 2020-12) with `$ref`s and `anyOf: [T, null]` for optionals; the API
server wants a structural OpenAPI v3 schema: every node typed, refs inlined, `exclusiveMinimum` as a
boolean, maps as `additionalProperties`, free-form objects marked `x-kubernetes-preserve-unknown-fields`.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from loraplane import GROUP, VERSION
from loraplane.api import adapter, training_job
from loraplane.api.common import cel_rules, validation

JsonSchema = dict[str, Any]

# Keys the API server's schema language has no use for (or rejects).
_DROPPED_KEYS = {"title", "$defs", "additionalProperties"}


def _resolve(node: JsonSchema, defs: dict[str, JsonSchema]) -> JsonSchema:
    ref = node.get("$ref")
    if ref is None:
        return node
    target = copy.deepcopy(defs[ref.rsplit("/", 1)[-1]])
    # Keep the description written at the reference site (the field's), over the model's docstring.
    for key in ("description", "default"):
        if key in node:
            target[key] = node[key]
    return target


def _plain_optional(node: JsonSchema, defs: dict[str, JsonSchema]) -> JsonSchema:
    """Optional[T] arrives as anyOf [T, null]: in Kubernetes the field is simply not required."""
    variants = [v for v in node["anyOf"] if v.get("type") != "null"]
    if len(variants) != 1:
        raise ValueError(f"unions other than Optional[T] have no structural schema: {node}")
    merged = {k: v for k, v in node.items() if k not in ("anyOf", "default")}
    if node.get("default") is not None:
        merged["default"] = node["default"]
    return {**_resolve(variants[0], defs), **merged}


def _scalar_keywords(out: JsonSchema) -> None:
    """Rewrite draft-2020 keywords into their OpenAPI v3 (Kubernetes) spelling, in place."""
    if "const" in out:
        out["enum"] = [out.pop("const")]
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if bound in out and not isinstance(out[bound], bool):
            out[bound.replace("exclusiveM", "m")] = out[bound]
            out[bound] = True
    if out.get("format") != "date-time":
        out.pop("format", None)
    if out.get("default") is None:
        out.pop("default", None)


def _object(out: JsonSchema, node: JsonSchema, defs: dict[str, JsonSchema]) -> None:
    out["type"] = "object"
    if "properties" in out:
        out["properties"] = {name: to_structural(sub, defs) for name, sub in out["properties"].items()}
    values = node.get("additionalProperties")
    if isinstance(values, dict) and values:
        value_schema = to_structural(values, defs)
        if value_schema.get("type") in (None, "object") and "properties" not in value_schema:
            out["x-kubernetes-preserve-unknown-fields"] = True
        else:
            out["additionalProperties"] = value_schema
    elif "properties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True


def to_structural(node: JsonSchema, defs: dict[str, JsonSchema]) -> JsonSchema:
    """Convert one pydantic JSON Schema node (recursively) into a structural OpenAPI v3 schema."""
    node = _resolve(node, defs)
    if "anyOf" in node:
        return to_structural(_plain_optional(node, defs), defs)
    out: JsonSchema = {k: v for k, v in node.items() if k not in _DROPPED_KEYS}
    _scalar_keywords(out)
    kind = out.get("type")
    if kind == "object" or "properties" in out:
        _object(out, node, defs)
    elif kind == "array":
        out["items"] = to_structural(out.get("items", {}), defs)
    elif kind is None:
        # `Any`: a free-form value the operator validates itself.
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _schema_of(model: type[BaseModel]) -> JsonSchema:
    schema = model.model_json_schema(by_alias=True, mode="validation", ref_template="#/$defs/{model}")
    return to_structural(schema, schema.get("$defs", {}))


def _condition_column(name: str, condition: str, field: str, description: str) -> dict[str, str]:
    return {
        "name": name,
        "type": "string",
        "jsonPath": f'.status.conditions[?(@.type=="{condition}")].{field}',
        "description": description,
    }


def object_schema(spec_model: type[BaseModel], status_model: type[BaseModel], max_name: int) -> JsonSchema:
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": _schema_of(spec_model),
            "status": _schema_of(status_model),
        },
        **cel_rules(
            validation(
                f"size(self.metadata.name) <= {max_name}",
                f"metadata.name must be at most {max_name} characters, so that the names of the objects "
                "loraplane creates for it stay valid",
            )
        ),
    }


def crd(
    kind: str,
    plural: str,
    short_name: str,
    schema: JsonSchema,
    columns: list[dict[str, str]],
) -> JsonSchema:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short_name],
                "categories": ["lora"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def training_job_crd() -> JsonSchema:
    columns = [
        _condition_column(
            "Status", "Succeeded", "reason", "Where the run is: Pending, Running, Succeeded, Failed."
        ),
        {
            "name": "Progress",
            "type": "string",
            "jsonPath": ".status.progress.percent",
            "description": "Percent of training steps done.",
        },
        {
            "name": "Loss",
            "type": "number",
            "jsonPath": ".status.progress.loss",
            "description": "Latest loss.",
        },
        {"name": "ETA", "type": "string", "jsonPath": ".status.progress.eta", "description": "Time left."},
        {
            "name": "Eval Loss",
            "type": "number",
            "jsonPath": ".status.evaluation.loss",
            "description": "The adapter's final eval loss.",
        },
        {
            "name": "Vs Base",
            "type": "string",
            "jsonPath": ".status.evaluation.change",
            "description": "Eval loss against the base model's on the same data, e.g. -12.3%.",
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    schema = object_schema(
        training_job.LoraTrainingJobSpec, training_job.LoraTrainingJobStatus, training_job.MAX_NAME_LENGTH
    )
    return crd(training_job.KIND, training_job.PLURAL, "ltj", schema, columns)


def adapter_crd() -> JsonSchema:
    columns = [
        _condition_column("Ready", "Ready", "status", "Every serving replica holds the adapter."),
        {
            "name": "Replicas",
            "type": "string",
            "jsonPath": ".status.readyReplicas",
            "description": "Serving replicas that hold the adapter.",
        },
        {
            "name": "Desired",
            "type": "string",
            "jsonPath": ".status.replicas",
            "description": "Serving replicas of the target Deployment.",
        },
        {
            "name": "Mode",
            "type": "string",
            "jsonPath": ".spec.serving.mode",
            "description": "HotLoad, Static or OnDemand.",
        },
        _condition_column("Reason", "Ready", "reason", "Why the adapter is (not) Ready."),
        {
            "name": "Version",
            "type": "string",
            "jsonPath": ".status.history[0].trainingJob",
            "description": "The LoraTrainingJob whose adapter every replica serves (newest history entry).",
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    schema = object_schema(adapter.LoraAdapterSpec, adapter.LoraAdapterStatus, adapter.MAX_NAME_LENGTH)
    return crd(adapter.KIND, adapter.PLURAL, "lad", schema, columns)


def render_all() -> dict[str, str]:
    """File name → YAML text, for every CRD."""
    header = "# Generated from operator/loraplane/api by `make crds`. Do not edit.\n"
    return {
        f"{c['spec']['group']}_{c['spec']['names']['plural']}.yaml": header
        + yaml.safe_dump(c, sort_keys=False, width=120)
        for c in (training_job_crd(), adapter_crd())
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", action="append", type=Path, required=True, help="folder to write (repeatable)"
    )
    args = parser.parse_args()
    for folder in args.out:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in render_all().items():
            (folder / name).write_text(text)


if __name__ == "__main__":
    main()
