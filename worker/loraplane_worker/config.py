"""The worker's input: what the operator writes into the training pod's ConfigMap.

The shape is `loraplane.api.worker.WorkerInput`, the models the operator renders it from (camelCase
keys; snake_case is accepted too), so there is one definition of every field, default and limit. The
`sftArgs` pass-through is checked with the operator's own `validate_sft_args`: whatever the worker
refuses here, the operator refused first with an `InvalidSpec` condition. `train` checks the names
once more against the installed TRL and PEFT (`check_known_keys`). This module imports neither torch
nor TRL.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from loraplane.api.sft_args import validate_sft_args
from loraplane.api.training_job import ALL_LINEAR
from loraplane.api.worker import WorkerInput
from loraplane_worker.errors import ConfigError, TargetModuleError

FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def checkpoints_dir(config: WorkerInput) -> Path:
    return Path(config.output.dir) / "checkpoints"


def merged_dir(config: WorkerInput) -> Path:
    return Path(config.output.dir) / "merged"


def dataset_file_format(path: str, override: str | None = None, field: str = "dataset") -> str:
    """The `datasets` builder for a local file, from `override` or the extension (`field`: the spec
    field the file came from, for the message)."""
    if override:
        return override
    suffix = Path(path).suffix.lower()
    if suffix not in FILE_FORMATS:
        raise ConfigError(
            f"{field}.path {path!r}: cannot tell the format from the extension {suffix or '(none)'!r}; "
            f"use one of {', '.join(sorted(FILE_FORMATS))} or set {field}.format (json|csv|parquet|text)"
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


def parse_config(document: Mapping[str, Any]) -> WorkerInput:
    """Validate an input document with the API models and the operator's sftArgs check, turning
    every problem into one ConfigError that names the keys."""
    try:
        config = WorkerInput.model_validate(document)
    except ValidationError as error:
        problems = [_describe(e) for e in error.errors()]
        raise ConfigError("invalid config: " + "; ".join(problems)) from None
    problems = validate_sft_args(config.training.sft_args)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(p.removeprefix("spec.") for p in problems))
    return config


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> WorkerInput:
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


def _model_at(location: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model that holds the key at `location` (for a did-you-mean among its field names)."""
    model: type[BaseModel] = WorkerInput
    for part in location[:-1]:
        field = next(
            (f for n, f in model.model_fields.items() if part in (n, f.alias)),
            None,
        )
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _describe(error: Mapping[str, Any]) -> str:
    location = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        model = _model_at(tuple(error["loc"]))
        key = str(error["loc"][-1])
        fields = model.model_fields.items() if model else []
        # Suggest in the style the key was written in: snake_case names, or the camelCase wire names.
        names = [n for n, _ in fields] if key == key.lower() else [f.alias or n for n, f in fields]
        close = difflib.get_close_matches(key, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        sft = " (further SFTConfig fields go under training.sftArgs)" if error["loc"][0] == "training" else ""
        return f"{location}: unknown key{hint}{sft}"
    if error["type"] == "missing":
        return f"{location}: required"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] != "value_error" and isinstance(error.get("input"), str | int | float | bool):
        message += f", got {error['input']!r}"
    # Messages from the models' validators already start with the key they judge.
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
                f"lora.targetModules {target_modules!r} (a pattern) matches no module; "
                f"linear layers: {choices}"
            )
        return
    for target in target_modules:
        if not any(name == target or name.endswith("." + target) for name in names):
            raise TargetModuleError(
                f"lora.targetModules: {target!r} is not a module of the model; "
                f"its linear layers are {choices}"
                f" (or use {ALL_LINEAR})"
            )
