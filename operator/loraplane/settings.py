"""The operator's one settings object, read once from the environment (the chart sets every value)."""

from __future__ import annotations

from functools import cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from loraplane.api.storage import S3Connection


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORAPLANE_", frozen=True)

    namespace: str = Field(default="default", description="Namespace the operator runs in.")
    watch_namespaces: str = Field(default="", description="Comma-separated namespaces; empty means all.")
    worker_image: str = Field(default="ghcr.io/loraplane/worker:0.1.0", description="Default worker image.")
    gpu_resource_name: str = Field(default="nvidia.com/gpu", description="Extended resource counting GPUs.")
    worker_metrics_port: int = Field(default=9400, description="Port of the worker's Prometheus metrics.")
    progress_interval_seconds: float = Field(default=5.0, gt=0, description="How often to read progress.")
    rendezvous_timeout_seconds: int = Field(
        default=600,
        ge=10,
        description="Longest the pods of a multi-node run wait for each other before failing.",
    )
    cluster_domain: str = Field(default="cluster.local", description="The cluster's DNS domain.")
    serving_require_opt_in: bool = Field(
        default=True, description="Enable LoRA only on annotated Deployments."
    )
    serving_max_loras: int = Field(default=4, ge=1, description="`--max-loras` written when enabling LoRA.")
    serving_max_cpu_loras: int = Field(
        default=8, ge=1, description="`--max-cpu-loras` written when enabling LoRA."
    )
    serving_resync_seconds: float = Field(
        default=60.0,
        gt=0,
        description=(
            "How often each served Deployment is reconciled when nothing changes (events wake it at once)."
        ),
    )
    serving_load_concurrency: int = Field(
        default=8, ge=1, description="Adapters loaded onto one pod at the same time."
    )
    serving_gate_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        description="Longest a started pod waits for its adapters before its readiness gate opens anyway.",
    )
    serving_retry_failed_seconds: float = Field(
        default=30.0, gt=0, description="How long a failed load on a pod waits before it is tried again."
    )
    serving_effect_check: bool = Field(
        default=True,
        description=(
            "Once per adapter version, compare a greedy completion with and without the adapter "
            "(condition AdapterHasNoEffect)."
        ),
    )
    serving_fetcher_port: int = Field(
        default=8471,
        ge=1,
        le=65535,
        description="Port of the fetcher loraplane adds to serving pods for adapters in the object store.",
    )
    serving_cache_mib: int = Field(
        default=4096,
        ge=64,
        description=(
            "Size limit (MiB) of a serving pod's adapter cache (an emptyDir); the fetcher keeps below 90% "
            "of it, evicting adapters no longer wanted, oldest first."
        ),
    )
    object_store: S3Connection = Field(
        default_factory=S3Connection,
        description=(
            "Cluster-wide object-store connection (JSON, the chart's `objectStore`): what an `s3` "
            "location's unset connection fields inherit."
        ),
    )
    vllm_timeout_seconds: float = Field(default=30.0, gt=0, description="Timeout of one vLLM API call.")
    metrics_port: int = Field(default=9090, description="Port of the operator's own /metrics.")
    pod_ip: str = Field(default="127.0.0.1", validation_alias="POD_IP", description="Address servers bind.")
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR.")
    object_workers: int = Field(
        default=300,
        ge=10,
        description=(
            "How many objects of one kind the operator works on at once; the others' events wait in "
            "their queues. Bounds the memory a burst of creates leaves behind (kopf's worker_limit)."
        ),
    )

    @property
    def watched(self) -> list[str]:
        return [ns for ns in (part.strip() for part in self.watch_namespaces.split(",")) if ns]


@cache
def get_settings() -> Settings:
    return Settings()
