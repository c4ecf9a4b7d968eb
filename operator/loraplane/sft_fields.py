"""`python -m loraplane.sft_fields`: write the pinned TRL's `SFTConfig` field names and value types to
`api/sft_config_fields.json`, which `loraplane.api.sft_args` validates `sftArgs` against.

Imports TRL (and so torch): only `make crds` and the drift test run it; neither image needs it.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from typing import Any

from loraplane.api.sft_args import FIELDS_FILE

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


if __name__ == "__main__":
    FIELDS_FILE.write_text(render())
