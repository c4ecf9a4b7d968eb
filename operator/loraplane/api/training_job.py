"""LoraTrainingJob: one LoRA fine-tuning run with TRL's SFTTrainer.

Field names under `lora` are PEFT `LoraConfig`'s and under `training` TRL `SFTConfig`'s (camelCase on
the wire), so the worker builds both objects from them with no mapping table. The worker validates
its input with these same models (`loraplane.api.worker`).

The CEL rules are what the API server enforces; each rule that the worker also depends on has a
Python twin beside it, so the worker (which sees no API server) refuses exactly what it would.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from loraplane.api.common import (
    ApiModel,
    ConditionList,
    Dns1123Label,
    SecretKeyRef,
    VolumePath,
    cel_rules,
    validation,
)
from loraplane.api.storage import S3Location

KIND = "LoraTrainingJob"
PLURAL = "loratrainingjobs"
# Child objects are named `<job>-<suffix>` (at most 7 more characters) and their pods add Kubernetes'
# own suffix; 52 keeps every child name and the `job-name` label value within 63 characters.
MAX_NAME_LENGTH = 52
# vLLM's ceiling for --max-lora-rank; a higher rank could never be served.
MAX_LORA_RANK = 512

ALL_LINEAR = "all-linear"
# An optional group whose fields all have defaults is defaulted by the API server too, so
# `kubectl get -o yaml` shows the values a run really used.
SERVER_DEFAULT: dict[str, Any] = {"default": {}}


def exactly_one_rule(*fields: str) -> str:
    """CEL: exactly one of `fields` is set (the object-store variant made the pairs three-way)."""
    return f"[{', '.join(f'has(self.{f})' for f in fields)}].filter(x, x).size() == 1"


def count_set(model: ApiModel, *fields: str) -> int:
    return sum(getattr(model, name) is not None for name in fields)


class SetsSftFields:
    """Field metadata: this spec field decides these TRL `SFTConfig` fields, so `sftArgs` may not set
    them (`loraplane.api.sft_args` derives the refusals from these markers)."""

    def __init__(self, *names: str) -> None:
        self.names = names


class ModelSource(ApiModel):
    """The base model to fine-tune: a Hugging Face model id, a directory in a volume, or a prefix in
    an object store (copied to the pod's local disk before training)."""

    ONE_SOURCE: ClassVar[str] = (
        "exactly one of baseModel.name (a Hugging Face id), baseModel.volume or baseModel.s3 must be set"
    )
    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            validation(exactly_one_rule("name", "volume", "s3"), ONE_SOURCE),
            validation(
                "!has(self.revision) || has(self.name)",
                "baseModel.revision applies only to a Hugging Face model (baseModel.name)",
                ".revision",
            ),
        )
    )

    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$",
        description="Hugging Face model id, e.g. `facebook/opt-350m`.",
    )
    revision: str | None = Field(
        default=None, max_length=256, description="Branch, tag or commit of the Hugging Face model."
    )
    volume: VolumePath | None = Field(
        default=None, description="A model directory (config.json, weights, tokenizer) inside a volume."
    )
    s3: S3Location | None = Field(
        default=None,
        description=(
            "A model folder (config.json, weights, tokenizer) in an object store, `s3://bucket/prefix`; "
            "copied to the pod's local disk before training."
        ),
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if count_set(self, "name", "volume", "s3") != 1:  # the CEL rule's twin
            raise ValueError(self.ONE_SOURCE)
        return self


def _source_rules(field: str) -> list[dict[str, str]]:
    """The CEL rules every data source has, their messages naming the spec field (`dataset` or
    `evalDataset`) the user wrote."""
    return [
        validation(exactly_one_rule("name", "volume", "s3"), DataSource.one_source(field)),
        validation(
            "!(has(self.textField) && has(self.messagesField))",
            f"set at most one of {field}.textField (plain text) or {field}.messagesField (chat)",
            ".messagesField",
        ),
        validation(
            "!has(self.config) || has(self.name)",
            f"{field}.config applies only to a Hugging Face dataset ({field}.name)",
            ".config",
        ),
    ]


class DataSource(ApiModel):
    """Where a run's examples are and which column holds them: a Hugging Face dataset, or files in a
    volume or an object store, read by the `datasets` library. `dataset` and `evalDataset` are this
    with their own extras."""

    FIELD: ClassVar[str] = "dataset"  # the spec field, in messages

    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$",
        description="Hugging Face dataset id, e.g. `Abirate/english_quotes`.",
    )
    config: str | None = Field(
        default=None, max_length=256, description="Dataset configuration (subset) name."
    )
    split: str = Field(
        default="train",
        min_length=1,
        max_length=256,
        description="Split of the Hugging Face dataset to read.",
    )
    volume: VolumePath | None = Field(
        default=None, description="A data file or folder inside a volume (jsonl, json, csv, parquet or txt)."
    )
    s3: S3Location | None = Field(
        default=None,
        description=(
            "A data file or a folder of them in an object store (`s3://bucket/prefix/train.jsonl` or "
            "`s3://bucket/prefix`); copied to the pod's local disk before training."
        ),
    )
    format: Literal["json", "csv", "parquet", "text"] | None = Field(
        default=None, description="File format when the extension does not tell (`.jsonl` is `json`)."
    )
    text_field: Annotated[str | None, SetsSftFields("dataset_text_field")] = Field(
        default=None,
        min_length=1,
        max_length=256,
        description=(
            "Column holding the text (TRL's `dataset_text_field`); default `text`, or in evalDataset the "
            "training data's column."
        ),
    )
    messages_field: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Column holding chat `messages` (role/content lists) instead of plain text.",
    )

    @classmethod
    def one_source(cls, field: str | None = None) -> str:
        field = field or cls.FIELD
        return f"exactly one of {field}.name (a Hugging Face id), {field}.volume or {field}.s3 must be set"

    @model_validator(mode="after")
    def _source_twins(self) -> DataSource:
        # The CEL rules of `_source_rules`, for readers without an API server. Of the source rule
        # only "at most one": the worker's input gives local files as `path`, checked there.
        field = self.FIELD
        if count_set(self, "name", "volume", "s3") > 1:
            raise ValueError(self.one_source())
        if self.text_field is not None and self.messages_field is not None:
            raise ValueError(
                f"set at most one of {field}.textField (plain text) or {field}.messagesField (chat)"
            )
        if self.config is not None and self.name is None:
            raise ValueError(f"{field}.config applies only to a Hugging Face dataset ({field}.name)")
        return self

    @property
    def column(self) -> str:
        """The one column the trainer reads."""
        return self.messages_field or self.text_field or "text"

    @property
    def is_chat(self) -> bool:
        return self.messages_field is not None


class DatasetSource(DataSource):
    """The training data, and optionally where its held-out eval part comes from (a split, or a
    fraction of it); `evalDataset` is the other way to give eval data."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            *_source_rules("dataset"),
            validation(
                "!(has(self.evalSplit) && has(self.evalFraction))",
                "set at most one of dataset.evalSplit or dataset.evalFraction",
                ".evalFraction",
            ),
            validation(
                "!has(self.evalSplit) || has(self.name)",
                "dataset.evalSplit needs a Hugging Face dataset (dataset.name); with files use evalFraction "
                "or evalDataset",
                ".evalSplit",
            ),
        )
    )

    eval_split: str | None = Field(
        default=None, min_length=1, max_length=256, description="Split to evaluate on; eval loss is reported."
    )
    eval_fraction: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Fraction of the training split held out for evaluation, when there is no eval split.",
    )

    @model_validator(mode="after")
    def _eval_twins(self) -> DatasetSource:
        if self.eval_split is not None and self.eval_fraction is not None:
            raise ValueError("set at most one of dataset.evalSplit or dataset.evalFraction")
        if self.eval_split is not None and self.name is None:
            raise ValueError(
                "dataset.evalSplit needs a Hugging Face dataset (dataset.name); with files use evalFraction "
                "or evalDataset"
            )
        return self

    @property
    def holds_eval(self) -> bool:
        """Whether the eval data is taken from this dataset (a split, or a fraction held out)."""
        return self.eval_split is not None or self.eval_fraction is not None


class EvalDatasetSource(DataSource):
    """Eval data of its own: a Hugging Face dataset (and split), or files in a volume or an object
    store. Without `textField`/`messagesField` it is read with the training data's column."""

    FIELD: ClassVar[str] = "evalDataset"
    model_config = ConfigDict(json_schema_extra=cel_rules(*_source_rules("evalDataset")))


class LoraSettings(ApiModel):
    """The adapter: PEFT `LoraConfig`'s own fields, plus optional QLoRA quantization of the base model."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            validation(
                f"!has(self.targetModules) || !('{ALL_LINEAR}' in self.targetModules)"
                " || size(self.targetModules) == 1",
                f"lora.targetModules: `{ALL_LINEAR}` stands alone, it already names every linear layer",
                ".targetModules",
            ),
        )
    )

    r: int = Field(
        default=16, ge=1, le=MAX_LORA_RANK, description="LoRA rank, 1-512 (vLLM serves ranks up to 512)."
    )
    lora_alpha: int = Field(
        default=32, ge=1, description="LoRA scaling numerator (alpha/r scales the update)."
    )
    lora_dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the LoRA path, in [0, 1).")
    target_modules: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default=[ALL_LINEAR],
        min_length=1,
        max_length=64,
        description=f"Modules to adapt, e.g. `[q_proj, v_proj]`, or `[{ALL_LINEAR}]` for every linear layer.",
    )
    bias: Literal["none", "all", "lora_only"] = Field(default="none", description="Which biases to train.")
    task_type: Literal["CAUSAL_LM"] = Field(
        default="CAUSAL_LM", description="PEFT task type; vLLM serves causal language models."
    )
    use_rslora: bool = Field(default=False, description="Rank-stabilised LoRA (scales by alpha/sqrt(r)).")
    quantization: Literal["none", "4bit", "8bit"] = Field(
        default="none", description="Load the base model quantized (QLoRA, bitsandbytes); needs a CUDA GPU."
    )

    @field_validator("target_modules")
    @classmethod
    def _all_linear_stands_alone(cls, value: list[str]) -> list[str]:
        if ALL_LINEAR in value and len(value) > 1:  # the CEL rule's twin
            raise ValueError(f"`{ALL_LINEAR}` stands alone, it already names every linear layer")
        return value

    def peft_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `peft.LoraConfig`: the same names; `[all-linear]` becomes PEFT's bare
        string (a list would make PEFT look for a module called `all-linear`)."""
        kwargs = self.model_dump(exclude={"quantization"})
        if kwargs["target_modules"] == [ALL_LINEAR]:
            kwargs["target_modules"] = ALL_LINEAR
        return kwargs


SchedulerType = Literal[
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "warmup_stable_decay",
]


class TrainingSettings(ApiModel):
    """How to train: TRL `SFTConfig`'s own fields; `sftArgs` passes further `SFTConfig` fields through."""

    # Every other field is an `SFTConfig` field of the same (snake_case) name.
    NOT_SFT_FIELDS: ClassVar[frozenset[str]] = frozenset({"precision", "sft_args", "distributed"})

    num_train_epochs: float = Field(default=3, gt=0, description="Passes over the training data.")
    max_steps: int = Field(default=-1, ge=-1, description="Stop after this many steps; -1 trains by epochs.")
    per_device_train_batch_size: int = Field(default=4, ge=1, le=4096, description="Batch size per GPU.")
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, le=4096, description="Steps per optimizer update."
    )
    learning_rate: float = Field(default=2e-4, gt=0, description="Peak learning rate.")
    lr_scheduler_type: SchedulerType = Field(default="linear", description="Learning-rate schedule.")
    warmup_steps: float = Field(
        default=0, ge=0, description="Warm-up: a number of steps, or a fraction of all steps when below 1."
    )
    max_length: int = Field(
        default=1024, ge=8, le=1048576, description="Tokens per example; longer ones are truncated."
    )
    packing: bool = Field(default=False, description="Pack several short examples into one sequence.")
    gradient_checkpointing: bool = Field(default=False, description="Trade compute for activation memory.")
    logging_steps: int = Field(default=10, ge=1, description="Report progress every this many steps.")
    save_steps: int = Field(
        default=100,
        ge=1,
        description="Checkpoint every this many steps; a retried pod resumes from the newest.",
    )
    eval_steps: int | None = Field(default=None, ge=1, description="Evaluate every this many steps.")
    seed: int = Field(default=42, ge=0, description="Random seed for data order and initialisation.")
    precision: Annotated[Literal["auto", "bf16", "fp16", "fp32"], SetsSftFields("bf16", "fp16", "tf32")] = (
        Field(default="auto", description="`auto` picks bf16 on GPUs that have it, fp32 on CPUs.")
    )
    distributed: Annotated[Literal["auto", "ddp", "fsdp"], SetsSftFields("fsdp", "fsdp_config")] = Field(
        default="auto",
        description=(
            "How several processes share the work: `ddp` replicates the model in each (data parallel), "
            "`fsdp` shards it across them (accelerate's FullyShardedDataParallel through SFTConfig's "
            "`fsdp`/`fsdp_config`). `auto`: on GPUs, `fsdp` when the model's weights (in the training "
            "dtype) exceed 60% of one GPU's memory and there are several processes, else `ddp`; CPU pods "
            "always `ddp`. The status says which it chose, and why."
        ),
    )
    sft_args: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Further TRL `SFTConfig` fields by their TRL (snake_case) names, e.g. `{weight_decay: 0.01}`. "
            "Names and value types are checked against the pinned TRL; fields set elsewhere in the spec "
            "or owned by loraplane (output_dir, report_to, ...) are refused."
        ),
        json_schema_extra={"maxProperties": 64},
    )

    def sft_config_kwargs(self) -> dict[str, Any]:
        """`SFTConfig` keyword arguments: the modelled fields by their own names, then `sftArgs`
        (which cannot repeat them: `loraplane.api.sft_args` refuses that)."""
        kwargs = self.model_dump(exclude=set(self.NOT_SFT_FIELDS), exclude_none=True)
        kwargs.update(self.sft_args)
        return kwargs


class ResourceSettings(ApiModel):
    """Where and with what the training pod runs."""

    gpus: int = Field(
        default=1, ge=0, le=64, description="GPUs for each training pod (per node); 0 trains on the CPU."
    )
    nodes: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "Pods (nodes) the run spans, each with `gpus` GPUs: an Indexed Job and a headless Service; "
            "torchrun meets at index 0. One failed pod restarts the whole group from the newest checkpoint."
        ),
    )
    gpu_resource_name: str | None = Field(
        default=None,
        max_length=253,
        description="Extended resource that counts GPUs; default from the chart (`nvidia.com/gpu`).",
    )
    cpu: str | None = Field(default=None, max_length=64, description="CPU request and limit, e.g. `8`.")
    memory: str | None = Field(
        default=None, max_length=64, description="Memory request and limit, e.g. `64Gi`."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels the pod must match.",
        json_schema_extra={"maxProperties": 64},
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list, max_length=32, description="Tolerations, as in a Pod spec."
    )
    affinity: dict[str, Any] | None = Field(default=None, description="Affinity, as in a Pod spec.")
    priority_class_name: str | None = Field(
        default=None, max_length=253, description="PriorityClass of the pod."
    )
    image: str | None = Field(
        default=None, max_length=512, description="Worker image override; default from the chart."
    )


class OutputSettings(ApiModel):
    """Where the adapter goes. Each run writes under `<path>/<job uid>` (a volume) or
    `<uri>/<job uid>` (an object store) so a re-created job never resumes another run's checkpoints."""

    ONE_PLACE: ClassVar[str] = "exactly one of output.volume or output.s3 must be set"
    model_config = ConfigDict(
        json_schema_extra=cel_rules(validation(exactly_one_rule("volume", "s3"), ONE_PLACE))
    )

    volume: Annotated[VolumePath | None, SetsSftFields("output_dir")] = Field(
        default=None, description="PersistentVolumeClaim (and folder in it) for checkpoints and the adapter."
    )
    s3: S3Location | None = Field(
        default=None,
        description=(
            "Object-store prefix for the adapter, the merged model and the checkpoints, which are "
            "written on the pod's local disk and uploaded as they are saved; the pod needs no claim."
        ),
    )
    merge: bool = Field(
        default=False, description="Also write the base model with the adapter merged in (static serving)."
    )

    @model_validator(mode="after")
    def _one_place(self) -> OutputSettings:
        if count_set(self, "volume", "s3") != 1:  # the CEL rule's twin
            raise ValueError(self.ONE_PLACE)
        return self


class PromotionPolicy(ApiModel):
    """When a trained adapter may be published: judged on the run's eval data (`evalDataset`, or
    `dataset.evalSplit` or `evalFraction`). A run that misses it still succeeds; its adapter stays in
    storage, unpublished, and the job's `Promoted` condition says why, with the figures."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            validation(
                "has(self.minRelativeImprovement) || has(self.maxEvalLoss)"
                " || (has(self.notWorseThanServing) && self.notWorseThanServing)",
                "adapter.promotion needs at least one of minRelativeImprovement, maxEvalLoss or "
                "notWorseThanServing: true",
            ),
        )
    )

    min_relative_improvement: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description=(
            "Publish only when the adapter's eval loss is at least this fraction below the base model's "
            "on the same data, e.g. `0.05` for 5%."
        ),
    )
    max_eval_loss: float | None = Field(
        default=None, gt=0, description="Publish only when the adapter's eval loss is at most this."
    )
    not_worse_than_serving: bool = Field(
        default=False,
        description=(
            "When the LoraAdapter already serves another job's adapter (`replace: true`), publish only "
            "when this run's eval loss is not above that job's, measured on the same eval data (same "
            "digest); different eval data is refused (`EvalDataDiffers`)."
        ),
    )

    @model_validator(mode="after")
    def _one_criterion(self) -> PromotionPolicy:  # the CEL rule's twin
        if (
            self.min_relative_improvement is None
            and self.max_eval_loss is None
            and not self.not_worse_than_serving
        ):
            raise ValueError(
                "adapter.promotion needs at least one of minRelativeImprovement, maxEvalLoss or "
                "notWorseThanServing: true"
            )
        return self


class AdapterPublication(ApiModel):
    """A LoraAdapter that the operator creates when training succeeds."""

    name: Dns1123Label | None = Field(default=None, description="LoraAdapter name; default: the job's name.")
    deployment: Dns1123Label = Field(description="vLLM Deployment (same namespace) that serves the adapter.")
    base_model: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description=(
            "The base model's name as that Deployment serves it (its `--served-model-name`, else its "
            "`--model`); default: spec.baseModel.name, or the model's path in its claim. Also written "
            "into the adapter's config as `base_model_name_or_path`."
        ),
    )
    served_model_name: Dns1123Label | None = Field(
        default=None, description="Name clients put in `model`; default: the LoraAdapter's name."
    )
    mode: Literal["HotLoad", "Static"] = Field(
        default="HotLoad",
        description="HotLoad: runtime load on every replica; Static: `--lora-modules` + rollout.",
    )
    replace: bool = Field(
        default=False,
        description=(
            "When a LoraAdapter of that name already exists (an earlier version), point it at this run's "
            "adapter; serving pods swap versions one at a time. Otherwise the job reports a Conflict."
        ),
    )
    promotion: PromotionPolicy | None = Field(
        default=None,
        description=(
            "Publish only an adapter that passes this evaluation policy; without one, every successful "
            "run publishes."
        ),
    )


EVAL_DATA_TWICE = (
    "set at most one of evalDataset, dataset.evalSplit or dataset.evalFraction: each names the eval data"
)
EVAL_KIND_DIFFERS = (
    "evalDataset must hold the kind of examples dataset holds: evalDataset.messagesField only with "
    "dataset.messagesField (chat), evalDataset.textField only without it (plain text)"
)


def check_eval_data(dataset: DatasetSource, eval_dataset: DataSource | None) -> None:
    """The spec's eval-data CEL rules, for readers without an API server (the worker's input too)."""
    if eval_dataset is None:
        return
    if dataset.holds_eval:
        raise ValueError(EVAL_DATA_TWICE)
    chat = eval_dataset.is_chat or (eval_dataset.text_field is None and dataset.is_chat)
    if chat != dataset.is_chat:
        raise ValueError(EVAL_KIND_DIFFERS)


class LoraTrainingJobSpec(ApiModel):
    """Desired training run. Immutable once created: a change is a new job."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            validation("self == oldSelf", "spec is immutable; create a new LoraTrainingJob to change it"),
            validation(
                "!has(self.workloadPriorityClassName) || has(self.queueName)",
                "workloadPriorityClassName is Kueue's: it needs queueName",
                ".workloadPriorityClassName",
            ),
            validation(
                "!has(self.evalDataset) || !(has(self.dataset.evalSplit) || has(self.dataset.evalFraction))",
                EVAL_DATA_TWICE,
                ".evalDataset",
            ),
            validation(
                "!has(self.evalDataset) || (has(self.evalDataset.messagesField)"
                " ? has(self.dataset.messagesField)"
                " : !(has(self.evalDataset.textField) && has(self.dataset.messagesField)))",
                EVAL_KIND_DIFFERS,
                ".evalDataset",
            ),
        )
    )

    base_model: ModelSource = Field(description="The model to fine-tune.")
    dataset: DatasetSource = Field(description="The training data.")
    eval_dataset: EvalDatasetSource | None = Field(
        default=None,
        description=(
            "Eval data of its own, instead of `dataset.evalSplit` or `dataset.evalFraction`: the base model "
            "and the adapter are evaluated on it and `status.evaluation` records its digest."
        ),
    )
    lora: LoraSettings = Field(
        default_factory=LoraSettings,
        description="The LoRA adapter to train.",
        json_schema_extra=SERVER_DEFAULT,
    )
    training: TrainingSettings = Field(
        default_factory=TrainingSettings,
        description="Training hyper-parameters (TRL SFTConfig).",
        json_schema_extra=SERVER_DEFAULT,
    )
    resources: ResourceSettings = Field(
        default_factory=ResourceSettings,
        description="GPUs, CPU, memory, placement and image.",
        json_schema_extra=SERVER_DEFAULT,
    )
    output: OutputSettings = Field(description="Where checkpoints and the adapter are written.")
    adapter: AdapterPublication | None = Field(
        default=None, description="Publish a LoraAdapter on success, to be served by a vLLM Deployment."
    )
    hf_token_secret_ref: Annotated[SecretKeyRef | None, SetsSftFields("hub_token")] = Field(
        default=None, description="Secret with a Hugging Face token, for gated models and datasets."
    )
    backoff_limit: int = Field(
        default=3,
        ge=0,
        le=20,
        description="Retries of a failed training pod; each resumes from its checkpoint.",
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Fail the run when it has been running longer than this."
    )
    queue_name: Dns1123Label | None = Field(
        default=None,
        description=(
            "Kueue LocalQueue to run in: the Job is created suspended with the `kueue.x-k8s.io/queue-name` "
            "label and Kueue admits (unsuspends) it within the queue's quota."
        ),
    )
    workload_priority_class_name: Dns1123Label | None = Field(
        default=None,
        description="Kueue WorkloadPriorityClass (`kueue.x-k8s.io/priority-class`), with queueName.",
    )

    @model_validator(mode="after")
    def _eval_data_twins(self) -> LoraTrainingJobSpec:
        check_eval_data(self.dataset, self.eval_dataset)
        return self


class Progress(ApiModel):
    """Live training progress, read from the worker's metrics."""

    step: int = Field(default=0, ge=0, description="Optimizer steps done.")
    total_steps: int = Field(default=0, ge=0, description="Optimizer steps planned.")
    epoch: float | None = Field(default=None, description="Epochs done (fractional).")
    percent: float = Field(default=0, ge=0, le=100, description="step / totalSteps, in percent.")
    loss: float | None = Field(default=None, description="Latest training loss.")
    eval_loss: float | None = Field(default=None, description="Latest evaluation loss.")
    learning_rate: float | None = Field(default=None, description="Current learning rate.")
    tokens_per_second: float | None = Field(default=None, description="Training throughput.")
    eta: str | None = Field(default=None, description="Estimated time left, e.g. `4m10s`.")
    updated_at: datetime | None = Field(default=None, description="When the worker last reported.")


class AdapterResult(ApiModel):
    """The adapter a successful run produced: a volume claim and a path in it, or an object-store URI."""

    claim_name: str | None = Field(default=None, description="PersistentVolumeClaim holding the adapter.")
    path: str | None = Field(default=None, description="Folder of the adapter inside the volume.")
    uri: str | None = Field(
        default=None,
        description=(
            "The adapter's folder in the object store (`s3://...`); complete, since its manifest "
            "`loraplane-manifest.json` (every file's SHA-256) is written last."
        ),
    )
    sha256: str = Field(description="SHA-256 of `adapter_model.safetensors`.")
    size_bytes: int = Field(ge=0, description="Size of the weights file.")
    r: int = Field(description="LoRA rank.")
    lora_alpha: int = Field(description="LoRA alpha.")
    target_modules: list[str] = Field(description="Adapted modules.")
    base_model: str = Field(description="Base model the adapter was trained on.")
    merged_path: str | None = Field(
        default=None, description="Folder of the merged model, when `merge` was set."
    )
    merged_uri: str | None = Field(
        default=None, description="The merged model in the object store, when `merge` was set."
    )


class Evaluation(ApiModel):
    """The base model and the trained adapter on the run's held-out data, by transformers'
    `Trainer.evaluate()` (TRL's SFTTrainer metrics)."""

    base_loss: float | None = Field(
        default=None, description="The base model's eval loss (adapter disabled)."
    )
    loss: float | None = Field(default=None, description="The trained adapter's final eval loss.")
    change: str | None = Field(
        default=None, description="`loss` against `baseLoss`, in percent, e.g. `-12.3%` (lower is better)."
    )
    relative_improvement: float | None = Field(
        default=None,
        description="(baseLoss - loss) / baseLoss; what `promotion.minRelativeImprovement` reads.",
    )
    base_perplexity: float | None = Field(default=None, description="exp(baseLoss).")
    perplexity: float | None = Field(default=None, description="exp(loss).")
    base_mean_token_accuracy: float | None = Field(
        default=None, description="TRL's mean token accuracy of the base model."
    )
    mean_token_accuracy: float | None = Field(
        default=None, description="TRL's mean token accuracy of the adapter."
    )
    examples: int | None = Field(default=None, ge=0, description="Eval examples used.")
    digest: str | None = Field(
        default=None,
        description=(
            "`sha256:` of the eval examples as used; two runs' figures compare only when it matches."
        ),
    )


class LoraTrainingJobStatus(ApiModel):
    """Observed state of the run. Condition types: Accepted, Running, Succeeded, Failed, and
    Promoted when `spec.adapter.promotion` is set."""

    observed_generation: int | None = Field(
        default=None, description="Generation the status was written for."
    )
    conditions: ConditionList
    job_name: str | None = Field(default=None, description="The batch/v1 Job running the worker.")
    start_time: datetime | None = Field(default=None, description="When the first training pod started.")
    completion_time: datetime | None = Field(default=None, description="When the run succeeded or failed.")
    attempts: int = Field(default=0, ge=0, description="Training pods started so far.")
    nodes: int | None = Field(default=None, description="Pods (nodes) the run spans.")
    world_size: int | None = Field(default=None, description="Training processes across all nodes.")
    distributed: str | None = Field(
        default=None,
        description=(
            "How the processes share the work: `DDP` or `FSDP` (and why, for auto; on GPUs the worker "
            "decides and reports it with its result)."
        ),
    )
    resumed_from_step: int | None = Field(default=None, description="Step the latest attempt resumed from.")
    progress: Progress | None = Field(default=None, description="Live progress while training.")
    train_loss: float | None = Field(default=None, description="Final training loss.")
    eval_loss: float | None = Field(default=None, description="Final evaluation loss.")
    trainable_parameters: str | None = Field(
        default=None,
        description="PEFT's line, e.g. `trainable params: 1,572,864 || all params: ... || trainable%: 0.47`.",
    )
    evaluation: Evaluation | None = Field(
        default=None, description="Base model against adapter on the eval data, when the run had some."
    )
    adapter: AdapterResult | None = Field(default=None, description="The adapter produced, on success.")


class LoraTrainingJob(ApiModel):
    """The whole object, as the handlers see it after validation."""

    api_version: str = Field(default="loraplane.io/v1alpha1", alias="apiVersion")
    kind: Literal["LoraTrainingJob"] = "LoraTrainingJob"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: LoraTrainingJobSpec
    status: LoraTrainingJobStatus = Field(default_factory=LoraTrainingJobStatus)

    KIND: ClassVar[str] = KIND
