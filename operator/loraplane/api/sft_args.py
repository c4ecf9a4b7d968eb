"""The TRL `SFTConfig` fields a LoraTrainingJob may pass through in `spec.training.sftArgs`.

The operator image has no torch and no TRL, so `make crds` reads the pinned TRL's `SFTConfig` once and
writes its field names and value types to `sft_config_fields.json` (`loraplane.sft_fields`); both the
operator (an `InvalidSpec` condition before any pod) and the worker (after reading its input) run
`validate_sft_args` from here, so the worker never refuses a key the operator let through. The worker
checks the names once more against the real `SFTConfig`.

What is refused is derived from the models: a field of `TrainingSettings` is an `SFTConfig` field of
the same name; a spec field that decides other `SFTConfig` fields says so with `SetsSftFields`; only
what loraplane sets with no spec field behind it is listed here.
"""

from __future__ import annotations

import json
import typing
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from loraplane.api.training_job import LoraTrainingJobSpec, SetsSftFields, TrainingSettings

FIELDS_FILE = Path(__file__).parent / "sft_config_fields.json"

# SFTConfig fields the worker sets with no spec field behind them, and why a user may not.
SET_BY_LORAPLANE = {
    "report_to": "set by loraplane (progress is reported through status)",
    "resume_from_checkpoint": "loraplane resumes from the newest checkpoint itself",
    "push_to_hub": "adapters are recorded in status and served by LoraAdapter",
    "run_name": "set by loraplane",
    "chat_template_path": "a new chat template adds tokens, and vLLM cannot serve adapters with added tokens",
}


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _decided_by_spec(model: type[BaseModel], prefix: str) -> dict[str, str]:
    """SFTConfig field -> the spec field that decides it, from the `SetsSftFields` markers."""
    found: dict[str, str] = {}
    for name, info in model.model_fields.items():
        where = f"{prefix}.{info.alias or name}"
        for marker in info.metadata:
            if isinstance(marker, SetsSftFields):
                for sft_name in marker.names:
                    found.setdefault(sft_name, where)
        for child in _models_in(info.annotation):
            # The first spec field that decides it is the one to point at (dataset.textField, not
            # evalDataset's, which shares the model).
            for sft_name, child_where in _decided_by_spec(child, where).items():
                found.setdefault(sft_name, child_where)
    return found


@cache
def refused_sft_args() -> dict[str, str]:
    """Every name `sftArgs` may not hold, with the pointer the refusal gives."""
    refused = {name: f"use {where}" for name, where in _decided_by_spec(LoraTrainingJobSpec, "spec").items()}
    for name, info in TrainingSettings.model_fields.items():
        if name not in TrainingSettings.NOT_SFT_FIELDS:
            refused[name] = f"use spec.training.{info.alias or name}"
    refused.update(SET_BY_LORAPLANE)
    return refused


def refusal_reason(name: str) -> str | None:
    return refused_sft_args().get(name)


@cache
def allowed_fields() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FIELDS_FILE.read_text())
    return data


def _matches(value: Any, kinds: list[str]) -> bool:
    if "any" in kinds:
        return True
    checks = {
        "null": lambda v: v is None,
        "bool": lambda v: isinstance(v, bool),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
        "list": lambda v: isinstance(v, list),
        "dict": lambda v: isinstance(v, dict),
    }
    return any(checks[k](value) for k in kinds if k in checks)


def validate_sft_args(args: dict[str, Any]) -> list[str]:
    """Problems with `spec.training.sftArgs`, each naming the field and what is allowed; [] if none."""
    known = allowed_fields()["fields"]
    problems = []
    for name, value in sorted(args.items()):
        where = f"spec.training.sftArgs.{name}"
        reason = refusal_reason(name)
        if reason is not None:
            problems.append(f"{where}: not allowed here, {reason}")
        elif name not in known:
            close = [k for k in known if k.replace("_", "") == name.replace("_", "").lower()]
            hint = f"; did you mean {close[0]}?" if close else ""
            problems.append(f"{where}: not a field of TRL {allowed_fields()['trl_version']} SFTConfig{hint}")
        else:
            spec = known[name]
            if not _matches(value, spec["types"]):
                problems.append(f"{where}: expected {' or '.join(spec['types'])}, got {type(value).__name__}")
            elif "choices" in spec and value is not None and value not in spec["choices"]:
                problems.append(f"{where}: must be one of {', '.join(map(str, spec['choices']))}")
    return problems
