"""LoraAdapter: an adapter that vLLM Deployments serve on every replica."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field

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
from loraplane.api.training_job import Evaluation

SHA256_HEX = r"^[0-9a-f]{64}$"

KIND = "LoraAdapter"
PLURAL = "loraadapters"
# Label values and child names derived from an adapter's name stay within 63 characters.
MAX_NAME_LENGTH = 52

ServingMode = Literal["HotLoad", "Static", "OnDemand"]
# Versions kept in status.history: enough to roll back a few releases, small enough that a thousand
# adapters' statuses stay small.
HISTORY_LIMIT = 10
# What the effect check completes when spec.probePrompt is not set.
DEFAULT_PROBE_PROMPT = "The meaning of life is"


class TrainingJobRef(ApiModel):
    """A LoraTrainingJob in the same namespace; its recorded adapter is served once it succeeds."""

    name: Dns1123Label = Field(description="Name of the LoraTrainingJob.")


class HuggingFaceAdapter(ApiModel):
    """An adapter published on the Hugging Face Hub; the serving pods download it."""

    name: str = Field(
        min_length=1,
        max_length=256,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$",
        description="Hugging Face adapter repository id.",
    )
    revision: str | None = Field(default=None, max_length=256, description="Branch, tag or commit.")


class S3AdapterSource(S3Location):
    """An adapter folder in the object store, as loraplane uploads one (its files and the manifest
    `loraplane-manifest.json`, written last, with every file's SHA-256): each serving pod's fetcher
    copies it into the pod's cache, checks every file, and vLLM loads the local copy."""

    sha256: str | None = Field(
        default=None,
        pattern=SHA256_HEX,
        description=(
            "SHA-256 of `adapter_model.safetensors` to insist on (a training job's status.adapter.sha256). "
            "Set: a changed digest is a new version, swapped in pod by pod. Unset: the manifest's digest, "
            "fetched once per pod."
        ),
    )


class AdapterSource(ApiModel):
    """Where the adapter's files come from: exactly one of trainingJob, volume, s3 or huggingFace."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            validation(
                "[has(self.trainingJob), has(self.volume), has(self.s3), has(self.huggingFace)]"
                ".filter(x, x).size() == 1",
                "exactly one of source.trainingJob, source.volume, source.s3 or source.huggingFace "
                "must be set",
            ),
        )
    )

    training_job: TrainingJobRef | None = Field(
        default=None, description="Serve what a LoraTrainingJob produced."
    )
    volume: VolumePath | None = Field(
        default=None,
        description="An adapter folder in a volume that the serving pods mount at the same claim.",
    )
    s3: S3AdapterSource | None = Field(
        default=None,
        description=(
            "An adapter folder in the object store; the serving Deployment needs no volume for it "
            "(loraplane adds a fetcher container and a pod-local cache under the Deployment's opt-in)."
        ),
    )
    hugging_face: HuggingFaceAdapter | None = Field(
        default=None, description="An adapter on the Hugging Face Hub."
    )


class ServingTarget(ApiModel):
    """The vLLM Deployment that serves the adapter, and how."""

    deployment: Dns1123Label = Field(description="Name of a vLLM Deployment in the same namespace.")
    mode: ServingMode = Field(
        default="HotLoad",
        description=(
            "HotLoad: load at runtime on every replica, no restart (a pod is Ready only once it holds its "
            "adapters). Static: add to the Deployment's `--lora-modules` and let the rollout restart pods. "
            "OnDemand: catalogue it in every replica's adapter cache (fetched and verified) without loading "
            "it; vLLM's filesystem resolver loads it on its first request, and a pod's readiness gate does "
            "not wait for it (its HotLoad adapters are the warm ones). Needs an adapter in the object store "
            "(source.s3, or a training job with output.s3); Ready means every replica has it catalogued."
        ),
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "The Secret (in this namespace) and key holding the API key the vLLM server was started with "
            "(`--api-key` or VLLM_API_KEY); loraplane sends it as `Authorization: Bearer` on its calls to "
            "the server. The Deployment's annotation `loraplane.io/api-key-secret: <secret>/<key>` names "
            "it for every adapter of the Deployment and takes precedence. The operator needs `get` on "
            "Secrets in this namespace (chart value `serving.apiKeySecrets.namespaces`)."
        ),
    )


class LoraAdapterSpec(ApiModel):
    """Desired adapter and where it is served."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            validation(
                "!has(self.serving.mode) || self.serving.mode != 'OnDemand' || "
                "has(self.source.s3) || has(self.source.trainingJob)",
                "spec.serving.mode OnDemand needs an adapter in the object store: spec.source.s3, or "
                "spec.source.trainingJob of a job with spec.output.s3 (volume and huggingFace sources are "
                "loaded with HotLoad or Static)",
                field_path=".serving.mode",
            ),
        )
    )

    base_model: str = Field(
        min_length=1,
        max_length=1024,
        description="Base model the adapter was trained on; must be what vLLM serves.",
    )
    source: AdapterSource = Field(description="Where the adapter's files come from.")
    served_model_name: Dns1123Label | None = Field(
        default=None, description="Name clients put in `model`; default: the LoraAdapter's name."
    )
    serving: ServingTarget = Field(description="The vLLM Deployment that serves it.")
    rank: int | None = Field(
        default=None,
        ge=1,
        le=512,
        description=(
            "LoRA rank of the adapter, when the source does not record it (a volume path or a Hugging Face "
            "id); lets loraplane check it against the server's `--max-lora-rank` before loading."
        ),
    )
    probe_prompt: str | None = Field(
        default=None,
        min_length=1,
        max_length=2000,
        description=(
            "The prompt of the effect check: once per version, after it first loads, loraplane asks one "
            "serving pod for a short greedy completion of it with the base model and with the adapter; "
            "identical tokens and log-probabilities set the condition AdapterHasNoEffect. Default: "
            f"{DEFAULT_PROBE_PROMPT!r}."
        ),
    )


class PodAdapterState(ApiModel):
    """Whether one serving pod holds the adapter."""

    pod: str = Field(description="Pod name.")
    ip: str | None = Field(default=None, description="Pod IP the operator talked to.")
    loaded: bool = Field(
        default=False,
        description=(
            "The pod's `/v1/models` lists the adapter at the desired path (OnDemand: the pod's adapter "
            "cache holds it)."
        ),
    )
    loaded_at: datetime | None = Field(default=None, description="When the adapter was confirmed on the pod.")
    last_error: str | None = Field(default=None, description="The last load error on this pod, if any.")


class AdapterVersion(ApiModel):
    """One version the adapter served: from when every serving pod held it until another replaced it."""

    training_job: str | None = Field(default=None, description="The LoraTrainingJob that produced it.")
    path: str = Field(description="Adapter path the serving pods loaded (or the Hugging Face id).")
    sha256: str | None = Field(default=None, description="SHA-256 of the adapter weights, when known.")
    evaluation: Evaluation | None = Field(
        default=None, description="The evaluation its training job recorded (its status.evaluation)."
    )
    serving_since: datetime = Field(description="When every serving pod held it.")
    serving_until: datetime | None = Field(
        default=None, description="When another version replaced it; unset while it serves."
    )


class EffectCheck(ApiModel):
    """The effect check of one version (the condition AdapterHasNoEffect tells its result)."""

    path: str = Field(description="The adapter path that was checked.")
    checked_at: datetime = Field(description="When the check ran.")


class LoraAdapterStatus(ApiModel):
    """Observed serving state. Condition types: Ready (True: reason Loaded, or Catalogued for OnDemand;
    the reason says why not: DeploymentNotFound,
    RankTooHigh, BaseModelMismatch, LoadFailed, Unauthorized, ...), and AdapterHasNoEffect once a
    version was checked (True: the adapter answers exactly as the base model; Unknown, reason
    ProbeFailed: the check itself failed)."""

    observed_generation: int | None = Field(
        default=None, description="Generation the status was written for."
    )
    conditions: ConditionList
    replicas: int = Field(default=0, ge=0, description="Serving pods of the target Deployment.")
    ready_replicas: int = Field(
        default=0,
        ge=0,
        description="Serving pods that hold the adapter (OnDemand: that have it catalogued in their cache).",
    )
    path: str | None = Field(default=None, description="Adapter path the serving pods load.")
    rank: int | None = Field(default=None, description="LoRA rank read from the adapter's config.")
    sha256: str | None = Field(default=None, description="SHA-256 of the adapter weights, when known.")
    pods: list[PodAdapterState] = Field(
        default_factory=list,
        description=(
            "The serving pods that do not hold the adapter, and why; pods that hold it are only counted "
            "(readyReplicas), so the status stays small with many adapters and replicas."
        ),
    )
    history: list[AdapterVersion] = Field(
        default_factory=list,
        max_length=HISTORY_LIMIT,
        description=(
            f"What the adapter served, newest first (at most {HISTORY_LIMIT}): a version enters when "
            "every serving pod holds it. Point spec.source back at an earlier entry to roll back."
        ),
    )
    effect_check: EffectCheck | None = Field(
        default=None, description="The last version the effect check ran for (once per version)."
    )


class LoraAdapter(ApiModel):
    """The whole object, as the handlers see it after validation."""

    api_version: str = Field(default="loraplane.io/v1alpha1", alias="apiVersion")
    kind: Literal["LoraAdapter"] = "LoraAdapter"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: LoraAdapterSpec
    status: LoraAdapterStatus = Field(default_factory=LoraAdapterStatus)

    KIND: ClassVar[str] = KIND
