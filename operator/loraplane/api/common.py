"""Building blocks shared by both kinds: the camelCase base model, names, references, conditions."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

# A DNS-1123 label: what Kubernetes accepts for most object names, and what loraplane accepts as a
# served adapter name (it ends up in URLs, label values and vLLM's model list).
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A path inside a volume is relative and has no `..` segment, so a spec cannot escape the volume it
# names. The schema pattern says "relative" (RE2 has no look-ahead); a CEL rule forbids `..`.
RELATIVE_PATH = r"^([^/].*)?$"
PARENT_SEGMENT = r"(^|/)[.][.](/|$)"  # no backslashes: they would need escaping in CEL

Dns1123Label = Annotated[str, Field(pattern=DNS1123_LABEL, min_length=1, max_length=63)]


def validation(
    rule: str, message: str, field_path: str | None = None, reason: str | None = None
) -> dict[str, str]:
    """One CEL rule for `x-kubernetes-validations`; the API server enforces it before loraplane sees it."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def cel_rules(*rules: dict[str, str]) -> dict[str, Any]:
    """`json_schema_extra` carrying CEL rules, attached to the model or field they judge."""
    return {"x-kubernetes-validations": list(rules)}


class ApiModel(BaseModel):
    """Base of every API model: snake_case in Python, camelCase on the wire, unknown fields rejected.

    `extra="forbid"` is the operator-side twin of the API server's structural schema: a body that
    reached the operator with a field the model does not know is a bug worth failing loudly on.
    """

    model_config: ClassVar[ConfigDict] = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=False,
        use_enum_values=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The camelCase dict the API server stores, without unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class VolumePath(ApiModel):
    """A path inside a PersistentVolumeClaim."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            validation(
                f"!has(self.path) || !self.path.matches('{PARENT_SEGMENT}')",
                "path must stay inside the volume: `..` segments are not allowed",
                ".path",
            )
        )
    )

    claim_name: Dns1123Label = Field(description="Name of a PersistentVolumeClaim in the object's namespace.")
    path: str = Field(
        default="",
        max_length=1024,
        pattern=RELATIVE_PATH,
        description="Path inside the volume, relative to its root; `..` segments are not allowed.",
    )

    @field_validator("path")
    @classmethod
    def _stays_inside_volume(cls, path: str) -> str:
        if re.search(PARENT_SEGMENT, path):
            raise ValueError("path must stay inside the volume: `..` segments are not allowed")
        return path


class SecretKeyRef(ApiModel):
    """A key of a Secret in the object's namespace. loraplane never copies the value anywhere."""

    name: Dns1123Label = Field(description="Name of the Secret.")
    key: str = Field(
        default="token", min_length=1, max_length=253, description="Key inside the Secret holding the value."
    )


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """A Kubernetes condition, as in the API conventions (metav1.Condition)."""

    type: str = Field(max_length=316, description="Type of condition in CamelCase, e.g. `Ready`.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        default="", max_length=1024, description="CamelCase reason for the last transition, for machines."
    )
    message: str = Field(
        default="", max_length=32768, description="Human-readable details of the transition."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The `.metadata.generation` the condition was set for."
    )
    last_transition_time: datetime | None = Field(
        default=None, description="When the condition last changed status."
    )


ConditionList = Annotated[
    list[Condition],
    Field(
        default_factory=list,
        description="Observations of the object's state; see each kind's documentation for the types.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    ),
]
