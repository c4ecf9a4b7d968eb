"""The contract between the operator and the training worker, in one place both images import.

- `WorkerInput`: the config file the operator writes into the training pod's ConfigMap. Its `lora`
  and `training` groups are the spec's own models, and `dataset` and `evalDataset` the spec's data
  sources with their files resolved to local paths; beside them the operator puts what only it can
  resolve (where the pod sees the model, the data and the output folder, the served base model's
  name, the metrics port).
- `TrainingReport` / `FailureReport`: what the worker writes to its termination message and the
  operator reads back when the pod ends.
- `WorkerGauge`: the names of the Prometheus gauges the worker serves and the operator scrapes.

camelCase on the wire like every loraplane format; snake_case names are accepted too (local runs).
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from loraplane.api.common import ApiModel
from loraplane.api.storage import S3Location
from loraplane.api.training_job import (
    DatasetSource,
    DataSource,
    EvalDatasetSource,
    LoraSettings,
    TrainingSettings,
    check_eval_data,
)

# Kubernetes keeps at most this many bytes of a termination message.
MAX_TERMINATION_MESSAGE_BYTES = 4096
# Where the pod's worker writes it (the operator sets the container's terminationMessagePath and this
# variable to the same file; a launcher under torchrun points its children elsewhere).
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
TERMINATION_MESSAGE_PATH_ENV = "TERMINATION_MESSAGE_PATH"
# EX_DATAERR from sysexits.h: the input is wrong and a retry would fail the same way. The Job's
# podFailurePolicy fails the run at once on it; any other non-zero exit is retried.
INPUT_ERROR_EXIT_CODE = 65
DEFAULT_METRICS_PORT = 9400
# EX_UNAVAILABLE: the nodes of a multi-node run did not all meet within the rendezvous timeout. The
# Job fails at once on it (a retry would wait the same way for the same missing pod).
RENDEZVOUS_TIMEOUT_EXIT_CODE = 69
RENDEZVOUS_TIMEOUT_ERROR = "RendezvousTimeout"

# Multi-node runs: what the operator puts in each pod's environment. The Job controller adds
# JOB_COMPLETION_INDEX (the node's index; index 0 hosts the rendezvous).
NNODES_ENV = "LORAPLANE_NNODES"
RDZV_ENDPOINT_ENV = "LORAPLANE_RDZV_ENDPOINT"  # host:port of index 0's stable DNS name
RDZV_ID_ENV = "LORAPLANE_RDZV_ID"  # the LoraTrainingJob's UID: one rendezvous per run
RDZV_TIMEOUT_ENV = "LORAPLANE_RDZV_TIMEOUT_SECONDS"
POD_FQDN_ENV = "LORAPLANE_POD_FQDN_SUFFIX"  # `.<service>.<namespace>.svc.<cluster domain>`
NODE_INDEX_ENV = "JOB_COMPLETION_INDEX"
RDZV_PORT = 29400


class ModelLocation(ApiModel):
    """The base model as the worker loads it."""

    name_or_path: str = Field(
        min_length=1, description="A Hugging Face model id, or the model folder as the pod sees it."
    )
    revision: str | None = Field(default=None, description="Hugging Face revision (branch, tag, commit).")
    s3: S3Location | None = Field(
        default=None,
        description="Copy this object-store folder into nameOrPath (a local folder) before loading.",
    )


class LocalDataFiles(DataSource):
    """A data source with the volume resolved to a path in the pod; an object-store location (`s3`)
    is copied into `path` (a local folder) before the data is read."""

    path: str | None = Field(
        default=None,
        min_length=1,
        description="A local data file or folder (jsonl, json, csv, parquet, txt).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> LocalDataFiles:
        field = self.FIELD
        if self.volume is not None:
            raise ValueError(f"{field}.volume is resolved by the operator; give {field}.path")
        if (self.name is None) == (self.path is None):
            raise ValueError(f"set exactly one of {field}.name (a Hugging Face id) or {field}.path (files)")
        if self.s3 is not None and self.path is None:
            raise ValueError(f"{field}.s3 is copied into {field}.path, a local folder; give {field}.path")
        return self


class DatasetInput(DatasetSource, LocalDataFiles):
    """`spec.dataset` as the pod reads it."""


class EvalDatasetInput(EvalDatasetSource, LocalDataFiles):
    """`spec.evalDataset` as the pod reads it, with the training data's column when it names none."""


class OutputLocation(ApiModel):
    dir: str = Field(min_length=1, description="The adapter goes here; checkpoints under <dir>/checkpoints.")
    merge: bool = Field(default=False, description="Also write base+adapter merged into <dir>/merged.")
    base_model_name: str | None = Field(
        default=None,
        min_length=1,
        description="Written as base_model_name_or_path in adapter_config.json; default model.nameOrPath.",
    )
    s3: S3Location | None = Field(
        default=None,
        description=(
            "Object-store prefix of this run: checkpoints are uploaded to <s3>/checkpoints as they are "
            "saved (and a retry resumes from the newest complete one there), the adapter to <s3>, the "
            "merged model to <s3>/merged; each folder's manifest last."
        ),
    )


class MetricsEndpoint(ApiModel):
    # 0 picks a free port (tests, several local runs); the chosen port is logged.
    port: int = Field(default=DEFAULT_METRICS_PORT, ge=0, le=65535)


class WorkerInput(ApiModel):
    """The training worker's whole input."""

    model: ModelLocation
    dataset: DatasetInput
    eval_dataset: EvalDatasetInput | None = None
    lora: LoraSettings = Field(default_factory=LoraSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    output: OutputLocation
    metrics: MetricsEndpoint = Field(default_factory=MetricsEndpoint)

    @model_validator(mode="after")
    def _eval_data(self) -> WorkerInput:
        check_eval_data(self.dataset, self.eval_dataset)
        held_out = self.eval_dataset
        if held_out is not None and held_out.text_field is None and held_out.messages_field is None:
            # Read with the training data's column, as the spec documents.
            held_out.text_field, held_out.messages_field = (
                self.dataset.text_field,
                self.dataset.messages_field,
            )
        return self

    @property
    def has_eval(self) -> bool:
        """Whether the run has held-out data: a split or fraction of the dataset, or its own."""
        return self.dataset.holds_eval or self.eval_dataset is not None

    @property
    def served_base_model(self) -> str:
        """The base model name vLLM serves as `--model`, recorded in the adapter's config."""
        return self.output.base_model_name or self.model.name_or_path


class WorkerGauge(StrEnum):
    """The worker's gauges, served as `loraplane_worker_<name>` without labels."""

    STEP = "step"
    TOTAL_STEPS = "total_steps"
    EPOCH = "epoch"
    LOSS = "loss"
    EVAL_LOSS = "eval_loss"
    LEARNING_RATE = "learning_rate"
    TOKENS_PER_SECOND = "tokens_per_second"
    PROGRESS_RATIO = "progress_ratio"
    ETA_SECONDS = "eta_seconds"
    RESUMED_FROM_STEP = "resumed_from_step"
    TRAINABLE_PARAMETERS = "trainable_parameters"


METRIC_PREFIX = "loraplane_worker_"
GAUGE_HELP: dict[WorkerGauge, str] = {
    WorkerGauge.STEP: "Optimizer steps done.",
    WorkerGauge.TOTAL_STEPS: "Optimizer steps planned (the trainer's max_steps).",
    WorkerGauge.EPOCH: "Epochs done, fractional.",
    WorkerGauge.LOSS: "Latest training loss.",
    WorkerGauge.EVAL_LOSS: "Latest evaluation loss; NaN before the first evaluation.",
    WorkerGauge.LEARNING_RATE: "Current learning rate.",
    WorkerGauge.TOKENS_PER_SECOND: (
        "Non-padding training tokens per second between the last two logging steps."
    ),
    WorkerGauge.PROGRESS_RATIO: "step / total_steps, 0 to 1.",
    WorkerGauge.ETA_SECONDS: "Estimated seconds left, from the step rate of this run.",
    WorkerGauge.RESUMED_FROM_STEP: "Step of the checkpoint this run resumed from; 0 when it started fresh.",
    WorkerGauge.TRAINABLE_PARAMETERS: "Parameters the LoRA adapter trains.",
}


class _Report(ApiModel):
    # A newer worker may report more than this operator knows: read what is known, ignore the rest.
    model_config = ConfigDict(extra="ignore")


class EvaluationReport(_Report):
    """`Trainer.evaluate()` on the eval data: once with the adapter disabled (the base model), once at
    the end. Losses that are not finite are left out."""

    base_loss: float | None = None
    loss: float | None = None
    base_mean_token_accuracy: float | None = None
    mean_token_accuracy: float | None = None
    examples: int = Field(default=0, ge=0)
    digest: str | None = Field(default=None, description="`sha256:` of the eval examples as used.")


class TrainingReport(_Report):
    """A successful run's result. Optional fields are dropped, `OPTIONAL` order first, when the message
    would not fit in Kubernetes' 4096 bytes."""

    OPTIONAL: ClassVar[tuple[str, ...]] = (
        "distributed_reason",
        "distributed",
        "world_size",
        "target_modules",
        "all_parameters",
        "trainable_parameters",
        "resumed_from_step",
        "eval_loss",
        "train_loss",
        "evaluation",
        "merged_dir",
        "merged_uri",
    )

    adapter_dir: str = Field(description="Folder of the adapter, as the pod saw it.")
    sha256: str = Field(description="SHA-256 of adapter_model.safetensors.")
    size_bytes: int = Field(default=0, ge=0)
    r: int
    lora_alpha: int
    target_modules: list[str] | None = Field(default=None, description="Module names PEFT adapted.")
    base_model: str = ""
    train_loss: float | None = None
    eval_loss: float | None = None
    steps: int = 0
    trainable_parameters: int | None = None
    all_parameters: int | None = None
    resumed_from_step: int | None = None
    merged_dir: str | None = None
    evaluation: EvaluationReport | None = None
    uri: str | None = Field(default=None, description="The adapter's object-store folder, when uploaded.")
    merged_uri: str | None = None
    world_size: int | None = None
    distributed: Literal["ddp", "fsdp"] | None = Field(
        default=None, description="How the processes shared the work (`training.distributed: auto` decided)."
    )
    distributed_reason: str | None = Field(default=None, description="Why, e.g. the sizes `auto` compared.")


class FailureReport(_Report):
    """A failed run: the error class, one line, and whether a retry could help."""

    error: str
    message: str = ""
    input_error: bool = False


def read_report(message: str, fallback_reason: str = "Error") -> TrainingReport | FailureReport | None:
    """The worker's report from a termination message. Not JSON (the kubelet fell back to the log's
    tail because the worker died before writing one): a failure whose message is the last log line."""
    if not message.strip():
        return None
    try:
        document = json.loads(message)
    except ValueError:
        return FailureReport(error=fallback_reason, message=message.strip().splitlines()[-1])
    if not isinstance(document, dict):
        return None
    try:
        if "error" in document:
            return FailureReport.model_validate(document)
        return TrainingReport.model_validate(document)
    except ValidationError:
        return None
