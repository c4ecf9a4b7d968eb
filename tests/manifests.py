"""Manifests shared by the offline tests and the tests against the real API server."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def example_training_job() -> dict[str, Any]:
    docs = load_documents(EXAMPLES / "opt-350m-english-quotes.yaml")
    return next(d for d in docs if d["kind"] == "LoraTrainingJob")


def example_adapter() -> dict[str, Any]:
    return load_documents(EXAMPLES / "lora-adapter.yaml")[0]


@dataclass(frozen=True)
class Invalid:
    """A manifest the API server must refuse, and the field its message must name."""

    id: str
    kind: str  # "LoraTrainingJob" or "LoraAdapter"
    change: dict[str, Any]  # dotted path -> new value (None deletes)
    field: str  # what the error message must mention
    # True when only the API server can judge it (CEL, or metadata): not checked offline.
    server_only: bool = False

    def manifest(self, name: str | None = None) -> dict[str, Any]:
        base = example_training_job() if self.kind == "LoraTrainingJob" else example_adapter()
        body = copy.deepcopy(base)
        if name:
            body["metadata"]["name"] = name
        for dotted, value in self.change.items():
            apply(body, dotted, value)
        return body


def apply(body: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = body
    for part in parents:
        node = node.setdefault(part, {})
    if value is None:
        node.pop(leaf, None)
    else:
        node[leaf] = value


LTJ, LAD = "LoraTrainingJob", "LoraAdapter"

INVALID = [
    Invalid("rank-zero", LTJ, {"spec.lora.r": 0}, "spec.lora.r"),
    Invalid("rank-1024", LTJ, {"spec.lora.r": 1024}, "spec.lora.r"),
    Invalid("rank-not-int", LTJ, {"spec.lora.r": "sixteen"}, "spec.lora.r"),
    Invalid("dropout-1.5", LTJ, {"spec.lora.loraDropout": 1.5}, "spec.lora.loraDropout"),
    Invalid("dropout-one", LTJ, {"spec.lora.loraDropout": 1.0}, "spec.lora.loraDropout"),
    Invalid("alpha-zero", LTJ, {"spec.lora.loraAlpha": 0}, "spec.lora.loraAlpha"),
    Invalid("lr-zero", LTJ, {"spec.training.learningRate": 0}, "spec.training.learningRate"),
    Invalid("lr-negative", LTJ, {"spec.training.learningRate": -1e-4}, "spec.training.learningRate"),
    Invalid("empty-target-modules", LTJ, {"spec.lora.targetModules": []}, "spec.lora.targetModules"),
    Invalid("bias-unknown", LTJ, {"spec.lora.bias": "some"}, "spec.lora.bias"),
    Invalid(
        "scheduler-unknown", LTJ, {"spec.training.lrSchedulerType": "zigzag"}, "spec.training.lrSchedulerType"
    ),
    Invalid(
        "batch-zero",
        LTJ,
        {"spec.training.perDeviceTrainBatchSize": 0},
        "spec.training.perDeviceTrainBatchSize",
    ),
    Invalid("no-base-model", LTJ, {"spec.baseModel": None}, "spec.baseModel"),
    Invalid("no-output", LTJ, {"spec.output": None}, "spec.output"),
    Invalid("epochs-string", LTJ, {"spec.training.numTrainEpochs": "three"}, "spec.training.numTrainEpochs"),
    Invalid(
        "bad-claim-name", LTJ, {"spec.output.volume.claimName": "Not_A_Name"}, "spec.output.volume.claimName"
    ),
    Invalid("absolute-path", LTJ, {"spec.output.volume.path": "/etc"}, "spec.output.volume.path"),
    Invalid("bad-adapter-name", LAD, {"spec.servedModelName": "Has Spaces"}, "spec.servedModelName"),
    Invalid("bad-mode", LAD, {"spec.serving.mode": "Sometimes"}, "spec.serving.mode"),
    # Rules only CEL (or metadata checks) can express: checked against the real API server only.
    Invalid(
        "two-model-sources",
        LTJ,
        {"spec.baseModel.volume": {"claimName": "models", "path": "opt"}},
        "spec.baseModel",
        server_only=True,
    ),
    Invalid(
        "no-model-source", LTJ, {"spec.baseModel": {"revision": "main"}}, "spec.baseModel", server_only=True
    ),
    Invalid(
        "two-dataset-sources",
        LTJ,
        {"spec.dataset.volume": {"claimName": "data"}},
        "spec.dataset",
        server_only=True,
    ),
    Invalid(
        "text-and-messages",
        LTJ,
        {"spec.dataset.messagesField": "messages"},
        "spec.dataset.messagesField",
        server_only=True,
    ),
    Invalid(
        "all-linear-not-alone",
        LTJ,
        {"spec.lora.targetModules": ["all-linear", "q_proj"]},
        "spec.lora.targetModules",
        server_only=True,
    ),
    Invalid(
        "path-escapes-volume",
        LTJ,
        {"spec.output.volume.path": "a/../../etc"},
        "spec.output.volume.path",
        server_only=True,
    ),
    Invalid(
        "two-adapter-sources",
        LAD,
        {"spec.source.volume": {"claimName": "adapters", "path": "x"}},
        "spec.source",
        server_only=True,
    ),
    Invalid("no-adapter-source", LAD, {"spec.source": {}}, "spec.source", server_only=True),
    Invalid(
        "on-demand-from-a-volume",
        LAD,
        {"spec.serving.mode": "OnDemand", "spec.source": {"volume": {"claimName": "adapters", "path": "x"}}},
        "spec.serving.mode OnDemand",
        server_only=True,
    ),
    Invalid("model-name-and-s3", LTJ, {"spec.baseModel.s3": {"uri": "s3://models/opt"}}, "spec.baseModel"),
    Invalid("dataset-name-and-s3", LTJ, {"spec.dataset.s3": {"uri": "s3://data/d.jsonl"}}, "spec.dataset"),
    Invalid("output-volume-and-s3", LTJ, {"spec.output.s3": {"uri": "s3://runs/adapters"}}, "spec.output"),
    Invalid("output-nowhere", LTJ, {"spec.output": {"merge": True}}, "spec.output"),
    Invalid("s3-uri-not-s3", LTJ, {"spec.output": {"s3": {"uri": "https://x/y"}}}, "spec.output.s3.uri"),
    Invalid("s3-uri-climbs", LTJ, {"spec.output": {"s3": {"uri": "s3://runs/a/../b"}}}, "spec.output.s3.uri"),
    Invalid("name-too-long", LTJ, {"metadata.name": "a" * 53}, "metadata.name", server_only=True),
    Invalid(
        "two-eval-dataset-sources",
        LTJ,
        {"spec.evalDataset": {"name": "org/eval", "volume": {"claimName": "data"}}},
        "spec.evalDataset",
    ),
    Invalid(
        "eval-dataset-and-eval-fraction",
        LTJ,
        {"spec.dataset.evalFraction": 0.1, "spec.evalDataset": {"name": "org/eval"}},
        "spec.evalDataset",
        server_only=True,
    ),
    Invalid(
        "chat-eval-dataset-of-a-text-run",
        LTJ,
        {"spec.evalDataset": {"name": "org/eval", "messagesField": "messages"}},
        "spec.evalDataset",
        server_only=True,
    ),
]
