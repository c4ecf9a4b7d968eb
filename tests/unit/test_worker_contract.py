"""The one contract between the operator and the worker (`loraplane.api.worker`), checked without
either image's heavy dependencies: what the operator renders parses in the worker, and whatever the
worker refuses from a spec, the operator refused first (an `InvalidSpec` condition, or the API
server's CEL rule), before any pod exists.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from pydantic import ValidationError

from loraplane.api.sft_args import refused_sft_args
from loraplane.api.training_job import LoraTrainingJob
from loraplane.api.worker import WorkerInput
from loraplane.builders import training as build
from loraplane.handlers import training_jobs
from loraplane.settings import Settings
from loraplane_worker.config import parse_config
from loraplane_worker.errors import ConfigError
from manifests import example_training_job

SETTINGS = Settings(worker_image="registry.example/worker:1", gpu_resource_name="nvidia.com/gpu")
CRD = Path(__file__).resolve().parents[2] / "crds" / "loraplane.io_loratrainingjobs.yaml"


def job(**spec: Any) -> LoraTrainingJob:
    body = copy.deepcopy(example_training_job())
    body["metadata"].update(uid="uid-1", namespace="team", generation=1)
    body["spec"].update(spec)
    return LoraTrainingJob.model_validate(body)


def rendered(spec: LoraTrainingJob) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(build.config_map(spec, SETTINGS)["data"]["config.yaml"])
    return document


VALID_SPECS = {
    "example": {},
    "volumes": {
        "baseModel": {"volume": {"claimName": "models", "path": "tiny"}},
        "dataset": {"volume": {"claimName": "data", "path": "chat.jsonl"}, "messagesField": "turns"},
    },
    "hub-eval-split": {"dataset": {"name": "org/data", "config": "en", "evalSplit": "test"}},
    "file-eval-fraction": {"dataset": {"volume": {"claimName": "data"}, "evalFraction": 0.1}},
    "eval-dataset-files": {"evalDataset": {"volume": {"claimName": "held-out", "path": "eval.jsonl"}}},
    "eval-dataset-hub": {"evalDataset": {"name": "org/eval", "split": "test", "textField": "body"}},
    "eval-dataset-s3": {"evalDataset": {"s3": {"uri": "s3://data/eval.jsonl"}}},
    "all-linear-qlora": {"lora": {"targetModules": ["all-linear"], "quantization": "4bit", "r": 512}},
    "everything": {
        "training": {
            "maxSteps": 5, "precision": "bf16", "evalSteps": 2, "maxLength": 8, "warmupSteps": 0.1,
            "sftArgs": {"weight_decay": 0.01, "optim": "adamw_torch", "trust_remote_code": True},
        },
        "output": {"volume": {"claimName": "out", "path": "a/b"}, "merge": True},
        "adapter": {"deployment": "vllm", "baseModel": "served-name"},
    },
}  # fmt: skip


@pytest.mark.parametrize("changes", VALID_SPECS.values(), ids=VALID_SPECS.keys())
def test_what_the_operator_renders_parses_in_the_worker_unchanged(changes: dict[str, Any]) -> None:
    spec = job(**changes)
    assert training_jobs.problems_only_the_operator_sees(spec) == []
    parsed = parse_config(rendered(spec))
    assert parsed == build.worker_input(spec, SETTINGS), "the wire form round-trips"
    assert parsed.lora == spec.spec.lora
    assert parsed.training == spec.spec.training


@pytest.mark.parametrize("name", sorted(refused_sft_args()))
def test_every_sft_arg_the_worker_refuses_the_operator_refuses_first(name: str) -> None:
    spec = job(training={"sftArgs": {name: "x"}})
    problems = training_jobs.problems_only_the_operator_sees(spec)
    assert problems, f"sftArgs.{name} passed the operator"
    assert f"spec.training.sftArgs.{name}: not allowed here" in problems[0]
    with pytest.raises(ConfigError, match=f"training.sftArgs.{name}: not allowed here"):
        parse_config(rendered(spec))


def test_an_unknown_or_mistyped_sft_arg_is_refused_by_both_with_the_same_words() -> None:
    spec = job(training={"sftArgs": {"weightdecay": 0.1, "weight_decay": "lots"}})
    problems = training_jobs.problems_only_the_operator_sees(spec)
    with pytest.raises(ConfigError) as caught:
        parse_config(rendered(spec))
    assert len(problems) == 2
    for problem in problems:
        assert problem.removeprefix("spec.") in str(caught.value)


def test_qlora_without_a_gpu_is_the_operators_refusal() -> None:
    spec = job(lora={"quantization": "4bit"}, resources={"gpus": 0})
    assert any("spec.lora.quantization" in p for p in training_jobs.problems_only_the_operator_sees(spec))


def test_fsdp_without_a_gpu_is_the_operators_refusal() -> None:
    """The worker refuses it too (accelerate would run CPU processes as DDP); the operator says so
    before any pod starts."""
    cpus = job(training={"distributed": "fsdp"}, resources={"gpus": 0, "nodes": 2})
    (problem,) = training_jobs.problems_only_the_operator_sees(cpus)
    assert problem.startswith("spec.training.distributed: fsdp shards the model across GPUs")
    gpus = job(training={"distributed": "fsdp"}, resources={"gpus": 2, "nodes": 2})
    assert training_jobs.problems_only_the_operator_sees(gpus) == []


# Spec changes the worker's models refuse: each must be refused by the operator's parse (the models'
# Python twin of a CEL rule) and by the CRD's CEL rule with the same words (the API server, first).
REFUSED_BY_THE_SCHEMA = {
    "text-and-chat": ({"dataset": {"name": "d", "textField": "t", "messagesField": "m"}}, "at most one of"),
    "split-and-fraction": (
        {"dataset": {"name": "d", "evalSplit": "test", "evalFraction": 0.1}},
        "set at most one of dataset.evalSplit or dataset.evalFraction",
    ),
    "eval-split-of-files": (
        {"dataset": {"volume": {"claimName": "data"}, "evalSplit": "test"}},
        "dataset.evalSplit needs a Hugging Face dataset",
    ),
    "config-of-files": (
        {"dataset": {"volume": {"claimName": "data"}, "config": "en"}},
        "dataset.config applies only to a Hugging Face dataset",
    ),
    "eval-dataset-and-fraction": (
        {"dataset": {"name": "d", "evalFraction": 0.1}, "evalDataset": {"name": "e"}},
        "set at most one of evalDataset, dataset.evalSplit or dataset.evalFraction",
    ),
    "eval-dataset-and-split": (
        {"dataset": {"name": "d", "evalSplit": "test"}, "evalDataset": {"name": "e"}},
        "set at most one of evalDataset, dataset.evalSplit or dataset.evalFraction",
    ),
    "chat-eval-of-text": (
        {"evalDataset": {"name": "e", "messagesField": "turns"}},
        "evalDataset must hold the kind of examples dataset holds",
    ),
    "text-eval-of-chat": (
        {"dataset": {"name": "d", "messagesField": "turns"}, "evalDataset": {"name": "e", "textField": "t"}},
        "evalDataset must hold the kind of examples dataset holds",
    ),
    "two-eval-sources": (
        {"evalDataset": {"name": "e", "s3": {"uri": "s3://data/e.jsonl"}}},
        "evalDataset.volume or evalDataset.s3",
    ),
    "eval-config-of-files": (
        {"evalDataset": {"volume": {"claimName": "data"}, "config": "en"}},
        "evalDataset.config applies only to a Hugging Face dataset",
    ),
    "eval-text-and-chat": (
        {"evalDataset": {"name": "e", "textField": "t", "messagesField": "m"}},
        "set at most one of evalDataset.textField",
    ),
    "all-linear-and-more": (
        {"lora": {"targetModules": ["all-linear", "q_proj"]}},
        "`all-linear` stands alone",
    ),
}


@pytest.mark.parametrize(
    ("changes", "words"), REFUSED_BY_THE_SCHEMA.values(), ids=REFUSED_BY_THE_SCHEMA.keys()
)
def test_every_shape_the_worker_refuses_the_api_server_refuses_first(
    changes: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValidationError, match=words):
        job(**changes)
    assert words in CRD.read_text(), "the CRD has the CEL rule with the same message"
    document = rendered(job())
    for section, wanted in changes.items():
        # What a worker would get if the operator rendered it anyway (files become dataset.path).
        values, current = dict(wanted), document.get(section, {})
        if "volume" in values:
            values.pop("volume")
            values["path"] = "/mnt/claims/data"
            current.pop("name", None)
        document[section] = {**current, **values}
    with pytest.raises(ConfigError):
        parse_config(document)


def test_an_invalid_spec_gets_its_condition_and_no_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    """`sftArgs.chat_template_path` used to reach a pod (a GPU) before failing: now the handler writes
    InvalidSpec and creates nothing."""
    body = copy.deepcopy(example_training_job())
    body["metadata"].update(uid="uid-1", namespace="team", generation=1)
    body["spec"]["training"] = {"sftArgs": {"chat_template_path": "/templates/chatml.jinja"}}
    warned: list[tuple[str, str]] = []
    monkeypatch.setattr(kopf, "warn", lambda _body, reason, message: warned.append((reason, message)))
    monkeypatch.setattr(training_jobs.kube, "claim_exists", lambda *_: pytest.fail("looked for the claim"))
    monkeypatch.setattr(training_jobs, "ensure_run", lambda *_: pytest.fail("created the Job"))
    patch = kopf.Patch()
    training_jobs.start_training(body=body, namespace="team", patch=patch)  # type: ignore[arg-type]
    conditions = {c["type"]: c for c in patch["status"]["conditions"]}
    assert conditions["Succeeded"]["reason"] == "InvalidSpec"
    assert "chat_template_path: not allowed here" in conditions["Succeeded"]["message"]
    assert "vLLM cannot serve adapters with added tokens" in conditions["Succeeded"]["message"]
    assert [reason for reason, _ in warned] == ["InvalidSpec"]


def test_the_worker_input_schema_has_no_field_the_spec_does_not_define() -> None:
    """One definition: the worker's groups are the API's models themselves."""
    fields = WorkerInput.model_fields
    assert fields["lora"].annotation is type(job().spec.lora)
    assert fields["training"].annotation is type(job().spec.training)
