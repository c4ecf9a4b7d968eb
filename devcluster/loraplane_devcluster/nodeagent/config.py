"""The node agent's settings: one frozen object, read once from the command line and the environment.

Every setting has an environment variable so that ``up`` (which calls :func:`start` with only the
run directory and the kubeconfig) can be tuned without changing its call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_NODE_NAME = "loraplane-dev"
# Advertised, not enforced (there are no cgroups): generous enough that a demo's requests fit
# on a small machine; the scheduler still does its sums against it.
DEFAULT_CPU = "16"
DEFAULT_PODS = 110
DEFAULT_GPUS = 2
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"
# The kubelet's crash-loop back-off: 10 s doubling to 5 min.
DEFAULT_BACKOFF_BASE_S = 10.0
DEFAULT_BACKOFF_CAP_S = 300.0
DEFAULT_SHUTDOWN_GRACE_S = 5.0
# Host variables every container gets (the dev machine has no route to the Hugging Face Hub, so
# model-related programs must be told to stay offline; a manifest's own env still wins).
# The kubelet's --cluster-dns and --cluster-domain: the kube-dns Service `up` creates (CoreDNS).
DEFAULT_CLUSTER_DNS = "10.96.0.10"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
DEFAULT_PASS_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")

PROJECT_DIR = Path(__file__).resolve().parents[3]


def _memory_from_meminfo() -> str:
    """MemTotal of this machine as a Kubernetes quantity (Ki), as the kubelet reports it."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1])}Ki"
    except OSError:
        pass
    return "8Gi"


def default_venv() -> Path:
    """The project venv (``.venv`` is a link into the cache; resolve it so PATHs are stable)."""
    return (PROJECT_DIR / ".venv").resolve()


@dataclass(frozen=True)
class AgentConfig:
    kubeconfig: Path
    run_dir: Path
    node_name: str = DEFAULT_NODE_NAME
    cpu: str = DEFAULT_CPU
    memory: str = field(default_factory=_memory_from_meminfo)
    pods: int = DEFAULT_PODS
    gpus: int = DEFAULT_GPUS
    gpu_resource: str = DEFAULT_GPU_RESOURCE
    venv: Path = field(default_factory=default_venv)
    project_dir: Path = PROJECT_DIR
    image_map_file: Path | None = None
    backoff_base_s: float = DEFAULT_BACKOFF_BASE_S
    backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S
    shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S
    pass_env: tuple[str, ...] = DEFAULT_PASS_ENV
    cluster_dns: str = DEFAULT_CLUSTER_DNS  # "": pods keep the host's resolv.conf
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    heartbeat_s: float = 10.0
    lease_duration_s: int = 40
    # How often the agent looks at its processes when nothing else wakes it.
    tick_s: float = 0.2
    log_server: bool = True

    @property
    def pods_dir(self) -> Path:
        return self.run_dir / "pods"

    @property
    def image_map_path(self) -> Path:
        """The extra image map file: the one named in the settings, else RUN_DIR/image-map.yaml."""
        return self.image_map_file or self.run_dir / "image-map.yaml"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def capacity(self) -> dict[str, str]:
        resources = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": str(self.pods),
            "ephemeral-storage": "100Gi",
        }
        if self.gpus > 0:
            resources[self.gpu_resource] = str(self.gpus)
        return resources

    @classmethod
    def from_env(cls, kubeconfig: Path, run_dir: Path, env: Mapping[str, str] | None = None) -> AgentConfig:
        """Settings from ``LORAPLANE_NODE_*`` and ``LORAPLANE_NODEAGENT_*`` (docs/node-agent.md)."""
        env = os.environ if env is None else env
        defaults = cls(kubeconfig=kubeconfig, run_dir=run_dir)
        image_map = env.get("LORAPLANE_NODEAGENT_IMAGE_MAP")
        pass_env = env.get("LORAPLANE_NODEAGENT_PASS_ENV")
        return cls(
            kubeconfig=kubeconfig,
            run_dir=run_dir,
            node_name=env.get("LORAPLANE_NODE_NAME", defaults.node_name),
            cpu=env.get("LORAPLANE_NODE_CPU", defaults.cpu),
            memory=env.get("LORAPLANE_NODE_MEMORY", defaults.memory),
            pods=int(env.get("LORAPLANE_NODE_PODS", defaults.pods)),
            gpus=int(env.get("LORAPLANE_NODE_GPUS", defaults.gpus)),
            gpu_resource=env.get("LORAPLANE_NODE_GPU_RESOURCE", defaults.gpu_resource),
            venv=Path(env["LORAPLANE_VENV"]).resolve() if env.get("LORAPLANE_VENV") else defaults.venv,
            image_map_file=Path(image_map) if image_map else None,
            backoff_base_s=float(env.get("LORAPLANE_NODEAGENT_BACKOFF_S", defaults.backoff_base_s)),
            backoff_cap_s=float(env.get("LORAPLANE_NODEAGENT_BACKOFF_CAP_S", defaults.backoff_cap_s)),
            shutdown_grace_s=float(
                env.get("LORAPLANE_NODEAGENT_SHUTDOWN_GRACE_S", defaults.shutdown_grace_s)
            ),
            cluster_dns=env.get("LORAPLANE_NODE_CLUSTER_DNS", defaults.cluster_dns),
            cluster_domain=env.get("LORAPLANE_NODE_CLUSTER_DOMAIN", defaults.cluster_domain),
            pass_env=tuple(n for n in pass_env.split(",") if n)
            if pass_env is not None
            else defaults.pass_env,
        )
