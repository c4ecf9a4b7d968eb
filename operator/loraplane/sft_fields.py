"""The TRL `SFTConfig` fields a LoraTrainingJob may pass through in `spec.training.sftArgs`.

The operator image has no torch and no TRL, so `make crds` reads the pinned TRL's `SFTConfig` once and
writes its field names and value types to `api/sft_config_fields.json`; the operator validates
pass-through arguments against that file, a test keeps it in step with the pinned TRL, and the worker
checks again against the real `SFTConfig`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any

FIELDS_FILE = Path(__file__).parent / "api" / "sft_config_fields.json"

# Set by loraplane itself (output location, reporting, resume) or modelled as first-class spec fields:
# passing them through would be ignored or fight the operator, so they are refused with a pointer.
OWNED_BY_LORAPLANE = {
    "output_dir": "set from spec.output",
    "overwrite_output_dir": "set by loraplane",
    "logging_dir": "set by loraplane",
    "report_to": "set by loraplane (progress is reported through status)",
    "resume_from_checkpoint": "loraplane resumes from the newest checkpoint itself",
    "push_to_hub": "adapters are recorded in status and served by LoraAdapter",
    "hub_token": "secrets come only by reference (spec.hfTokenSecretRef)",
    "dataset_text_field": "use spec.dataset.textField",
    "bf16": "use spec.training.precision",
    "fp16": "use spec.training.precision",
    "tf32": "set from spec.training.precision",
    "run_name": "set by loraplane",
}
_MODELLED_IN_SPEC = {
    "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "learning_rate", "lr_scheduler_type", "warmup_steps", "max_length", "packing", "gradient_checkpointing",
    "logging_steps", "save_steps", "eval_steps", "seed",
}  # fmt: skip


def refusal_reason(name: str) -> str | None:
    if name in OWNED_BY_LORAPLANE:
        return OWNED_BY_LORAPLANE[name]
    if name in _MODELLED_IN_SPEC:
        camel = "".join(p if i == 0 else p.capitalize() for i, p in enumerate(name.split("_")))
        return f"use spec.training.{camel}"
    return None


_SIMPLE_KINDS: dict[Any, str] = {
    type(None): "null", bool: "bool", int: "int", float: "float", str: "str",
    list: "list", tuple: "list", set: "list", frozenset: "list", dict: "dict",
}  # fmt: skip


def _kinds(annotation: Any) -> tuple[set[str], list[Any] | None]:
    """JSON value kinds an annotation accepts, and its choices when it is an enum or Literal."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        kinds: set[str] = set()
        choices: list[Any] | None = None
        for arg in typing.get_args(annotation):
            sub_kinds, sub_choices = _kinds(arg)
            kinds |= sub_kinds
            if sub_choices is not None:
                choices = (choices or []) + sub_choices
        return kinds, choices
    if origin is typing.Literal:
        values = list(typing.get_args(annotation))
        return {type(v).__name__ for v in values}, values
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return {"str"}, [member.value for member in annotation]
    return {_SIMPLE_KINDS.get(origin or annotation, "any")}, None


def describe_sft_config() -> dict[str, Any]:
    """Read the installed TRL's SFTConfig (imports torch: only `make crds` and the drift test call it)."""
    import trl  # noqa: PLC0415
    from trl.trainer.sft_config import SFTConfig  # noqa: PLC0415

    hints = typing.get_type_hints(SFTConfig)
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(SFTConfig):
        if not field.init or field.name.startswith("_"):
            continue
        kinds, choices = _kinds(hints.get(field.name, Any))
        entry: dict[str, Any] = {"types": sorted(kinds)}
        if choices is not None:
            entry["choices"] = [c.value if isinstance(c, enum.Enum) else c for c in choices if c is not None]
        if "choices" in field.metadata:
            entry["choices"] = list(field.metadata["choices"])
        fields[field.name] = entry
    return {"trl_version": trl.__version__, "fields": dict(sorted(fields.items()))}


def render() -> str:
    """The fields file: one line per field, so a TRL upgrade shows as a readable diff."""
    described = describe_sft_config()
    lines = [f"  {json.dumps(name)}: {json.dumps(spec)}" for name, spec in described["fields"].items()]
    return (
        f'{{\n "trl_version": {json.dumps(described["trl_version"])},\n "fields": {{\n'
        + ",\n".join(lines)
        + "\n }\n}\n"
    )


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


if __name__ == "__main__":
    FIELDS_FILE.write_text(render())
