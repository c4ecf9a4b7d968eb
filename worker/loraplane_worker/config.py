"""The worker's config file: what the operator writes into the training pod's ConfigMap.

YAML with snake_case keys. `lora` holds PEFT `LoraConfig` fields and `training` holds TRL `SFTConfig`
fields, by their own names, so they are passed straight in with no mapping table. This module
imports neither torch nor TRL: it checks the shape here, and `train` checks the names under `lora`
and `training` against the installed PEFT and TRL (`check_known_keys`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from loraplane_worker.errors import ConfigError, TargetModuleError

ALL_LINEAR = "all-linear"
# vLLM's ceiling for --max-lora-rank; a higher rank could never be served.
MAX_LORA_RANK = 512

# Keys under `training` that the worker sets itself, and why a user may not.
RESERVED_TRAINING_KEYS: dict[str, str] = {
    "output_dir": "checkpoints go to <output.dir>/checkpoints; set output.dir",
    "dataset_text_field": "set dataset.text_field",
    "resume_from_checkpoint": "the worker resumes from the newest complete checkpoint by itself",
    "report_to": "progress is reported through the worker's metrics endpoint and log lines",
    "bf16": "set precision (auto|bf16|fp16|fp32)",
    "fp16": "set precision (auto|bf16|fp16|fp32)",
    "chat_template_path": "a new chat template adds tokens, and vLLM cannot serve adapters with added tokens",
}
# Keys under `lora` that would make an adapter vLLM refuses, or that the worker sets itself.
RESERVED_LORA_KEYS: dict[str, str] = {
    "use_dora": "vLLM does not serve DoRA adapters",
    "modules_to_save": "vLLM does not serve adapters with modules_to_save",
    "trainable_token_indices": "vLLM does not serve adapters that train token embeddings",
    "base_model_name_or_path": "set output.base_model_name",
}
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(Section):
    name_or_path: str = Field(min_length=1, description="Hugging Face model id, or a local directory.")
    revision: str | None = Field(default=None, description="Hugging Face revision (branch, tag, commit).")


class DatasetSection(Section):
    name: str | None = Field(default=None, min_length=1, description="Hugging Face dataset id.")
    config: str | None = Field(default=None, description="Dataset configuration (subset) name.")
    split: str = Field(default="train", min_length=1)
    path: str | None = Field(default=None, min_length=1, description="Local file or folder of files.")
    format: Literal["json", "csv", "parquet", "text"] | None = None
    text_field: str | None = Field(default="text", min_length=1)
    messages_field: str | None = Field(default=None, min_length=1)
    eval_split: str | None = Field(default=None, min_length=1)
    eval_fraction: float | None = Field(default=None, gt=0, lt=1)

    @model_validator(mode="after")
    def _one_source_one_column(self) -> DatasetSection:
        if (self.name is None) == (self.path is None):
            raise ValueError("set exactly one of dataset.name (a Hugging Face id) or dataset.path (files)")
        if self.config is not None and self.name is None:
            raise ValueError("dataset.config applies only to a Hugging Face dataset (dataset.name)")
        if self.eval_split is not None and self.eval_fraction is not None:
            raise ValueError("set at most one of dataset.eval_split or dataset.eval_fraction")
        if self.eval_split is not None and self.name is None:
            raise ValueError("dataset.eval_split needs dataset.name; with files use dataset.eval_fraction")
        if self.messages_field is not None and "text_field" in self.model_fields_set and self.text_field:
            raise ValueError("set at most one of dataset.text_field (text) or dataset.messages_field (chat)")
        return self

    @property
    def column(self) -> str:
        """The one column the trainer reads."""
        return self.messages_field or self.text_field or "text"

    @property
    def is_chat(self) -> bool:
        return self.messages_field is not None


class LoraSection(BaseModel):
    """PEFT `LoraConfig` fields. Further LoraConfig fields are allowed and checked against PEFT."""

    model_config = ConfigDict(extra="allow")

    r: int = Field(default=16, ge=1, le=MAX_LORA_RANK, description="Rank, 1-512 (vLLM's ceiling).")
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | str = Field(default_factory=lambda: ["q_proj", "v_proj"])
    bias: Literal["none", "all", "lora_only"] = "none"
    task_type: Literal["CAUSAL_LM"] = "CAUSAL_LM"
    use_rslora: bool = False

    @field_validator("target_modules")
    @classmethod
    def _all_linear_stands_alone(cls, value: list[str] | str) -> list[str] | str:
        # The API writes `[all-linear]`; PEFT wants the bare string, or it looks for a module of that name.
        if isinstance(value, list):
            if not value:
                raise ValueError("name at least one module, or `all-linear`")
            if ALL_LINEAR in value:
                if len(value) > 1:
                    raise ValueError("`all-linear` stands alone, it already names every linear layer")
                return ALL_LINEAR
        return value

    @model_validator(mode="after")
    def _servable(self) -> LoraSection:
        for key, value in (self.model_extra or {}).items():
            if key in RESERVED_LORA_KEYS and value not in (None, False, [], {}):
                raise ValueError(f"lora.{key}: {RESERVED_LORA_KEYS[key]}")
        return self

    def peft_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `peft.LoraConfig`, with what vLLM needs forced."""
        kwargs = self.model_dump()
        kwargs.update(use_dora=False, modules_to_save=None)
        kwargs.pop("trainable_token_indices", None)
        kwargs.pop("base_model_name_or_path", None)
        return kwargs


class OutputSection(Section):
    dir: str = Field(min_length=1, description="The adapter goes here; checkpoints under <dir>/checkpoints.")
    merge: bool = Field(default=False, description="Also write base+adapter merged into <dir>/merged.")
    base_model_name: str | None = Field(
        default=None,
        min_length=1,
        description="Written as base_model_name_or_path in adapter_config.json; default model.name_or_path.",
    )


class MetricsSection(Section):
    # 0 picks a free port (tests, several local runs); the chosen port is logged.
    port: int = Field(default=9400, ge=0, le=65535)


class WorkerConfig(Section):
    model: ModelSection
    dataset: DatasetSection
    lora: LoraSection = Field(default_factory=LoraSection)
    quantization: Literal["none", "4bit", "8bit"] = "none"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    training: dict[str, Any] = Field(default_factory=dict, description="TRL SFTConfig fields.")
    output: OutputSection
    metrics: MetricsSection = Field(default_factory=MetricsSection)

    @field_validator("training")
    @classmethod
    def _training_keys(cls, training: dict[str, Any]) -> dict[str, Any]:
        for key in training:
            if key in RESERVED_TRAINING_KEYS:
                raise ValueError(f"training.{key} is set by the worker: {RESERVED_TRAINING_KEYS[key]}")
        max_length = training.get("max_length")
        if max_length is not None and (
            not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1
        ):
            raise ValueError(f"training.max_length must be a whole number of tokens >= 1, got {max_length!r}")
        return training

    @property
    def served_base_model(self) -> str:
        """The base model name vLLM serves as `--model`, recorded in the adapter's config."""
        return self.output.base_model_name or self.model.name_or_path

    @property
    def output_dir(self) -> Path:
        return Path(self.output.dir)

    @property
    def checkpoints_dir(self) -> Path:
        return Path(self.output.dir) / "checkpoints"

    @property
    def merged_dir(self) -> Path:
        return Path(self.output.dir) / "merged"


def dataset_file_format(path: str, override: str | None = None) -> str:
    """The `datasets` builder for a local file, from `override` or the extension."""
    if override:
        return override
    suffix = Path(path).suffix.lower()
    if suffix not in FILE_FORMATS:
        raise ConfigError(
            f"dataset.path {path!r}: cannot tell the format from the extension {suffix or '(none)'!r}; "
            f"use one of {', '.join(sorted(FILE_FORMATS))} or set dataset.format (json|csv|parquet|text)"
        )
    return FILE_FORMATS[suffix]


def check_known_keys(section: str, keys: Iterable[str], known: Iterable[str]) -> None:
    """Refuse keys the installed library does not have, naming the key (and the closest known one)."""
    known_set = set(known)
    for key in keys:
        if key not in known_set:
            close = difflib.get_close_matches(key, sorted(known_set), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{section}.{key}: unknown option{hint}")


def set_path(document: dict[str, Any], assignment: str) -> None:
    """Apply one `--set dotted.key=value` to `document`; the value is read as YAML (`8`, `true`, `[a, b]`)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. lora.r=8")
    parts = key.strip().split(".")
    node = document
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment!r}: {part} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def parse_config(document: Mapping[str, Any]) -> WorkerConfig:
    """Validate a config document, turning pydantic's errors into one ConfigError that names the keys."""
    try:
        return WorkerConfig.model_validate(document)
    except ValidationError as error:
        raise ConfigError("invalid config: " + "; ".join(_describe(e) for e in error.errors())) from None


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> WorkerConfig:
    """Read the YAML file (if any), apply `--set` overrides in order, and validate."""
    document: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as error:
            raise ConfigError(f"cannot read config file {path}: {error.strerror or error}") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            kind = type(loaded).__name__
            raise ConfigError(f"config file {path} must hold a mapping of sections, not a {kind}")
        document = loaded or {}
    for assignment in overrides:
        set_path(document, assignment)
    return parse_config(document)


def _describe(error: Mapping[str, Any]) -> str:
    location = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{location}: unknown key"
    if error["type"] == "missing":
        return f"{location}: required"
    message = str(error["msg"]).removeprefix("Value error, ")
    # Messages from the validators above already start with the key they judge.
    return message if not location or message.startswith(location.split(".")[0]) else f"{location}: {message}"


def resolve_precision(precision: str, cuda: bool, bf16_supported: bool) -> Literal["bf16", "fp16", "fp32"]:
    """`auto`: bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPUs."""
    if precision != "auto":
        return precision  # type: ignore[return-value]
    if cuda:
        return "bf16" if bf16_supported else "fp16"
    return "fp32"


def check_target_modules(
    target_modules: list[str] | str, module_names: Iterable[str], linear_names: Iterable[str]
) -> None:
    """Refuse a target module that matches no layer, as PEFT matches them (exact, or a `.name` suffix)."""
    if target_modules == ALL_LINEAR:
        return
    names = list(module_names)
    choices = ", ".join(sorted({name.rsplit(".", 1)[-1] for name in linear_names} - {"lm_head"}))
    if isinstance(target_modules, str):
        if not any(re.fullmatch(target_modules, name) for name in names):
            raise TargetModuleError(
                f"lora.target_modules {target_modules!r} (a pattern) matches no module; "
                f"linear layers: {choices}"
            )
        return
    for target in target_modules:
        if not any(name == target or name.endswith("." + target) for name in names):
            raise TargetModuleError(
                f"lora.target_modules: {target!r} is not a module of the model; "
                f"its linear layers are {choices}"
                f" (or use {ALL_LINEAR})"
            )
