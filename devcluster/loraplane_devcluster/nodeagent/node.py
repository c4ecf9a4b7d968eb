"""The Node object: registration, its status (capacity, Ready), and the heartbeat that keeps it fresh.

Like the kubelet, the agent renews its Lease in ``kube-node-lease`` every few seconds (the node
lifecycle controller reads it) and reposts the node conditions with a fresh
``lastHeartbeatTime``. It writes only ``status`` and its own labels: ``spec`` (``unschedulable``
from ``kubectl cordon``, taints) belongs to users and controllers.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loraplane_devcluster.nodeagent.config import AgentConfig
from loraplane_devcluster.nodeagent.kubeapi import MERGE_PATCH, ApiError, KubeApi, path_of
from loraplane_devcluster.nodeagent.network import HOST_IP

log = logging.getLogger(__name__)
JsonObject = dict[str, Any]
LEASE_NAMESPACE = "kube-node-lease"
RUNTIME_VERSION = "loraplane-nodeagent://0.1.0"
GPU_NOTE = (
    "{resource} is advertised so that GPU pods schedule here; they run on the CPU "
    "(loraplane dev node agent, see docs/node-agent.md)"
)


def iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "Linux"


def _architecture() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def node_manifest(config: AgentConfig) -> JsonObject:
    """The Node as first created (metadata and an empty spec; status comes separately)."""
    arch = _architecture()
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": config.node_name,
            "labels": {
                "kubernetes.io/hostname": config.node_name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": arch,
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": arch,
                "loraplane.io/dev-node": "true",
            },
            "annotations": {"loraplane.io/gpu": GPU_NOTE.format(resource=config.gpu_resource)},
        },
        "spec": {},
    }


def node_conditions(now: str, transitions: dict[str, str]) -> list[JsonObject]:
    """The kubelet's four node conditions, all healthy; ``transitions`` keeps first-seen times."""
    healthy = [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ("Ready", "True", "KubeletReady", "loraplane dev node agent is posting ready status"),
    ]
    return [
        {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": transitions.setdefault(kind, now),
        }
        for kind, status, reason, message in healthy
    ]


def node_status(
    config: AgentConfig, kubelet_port: int, kubelet_version: str, now: str, transitions: dict[str, str]
) -> JsonObject:
    capacity = config.capacity
    return {
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": node_conditions(now, transitions),
            # Only InternalIP: the API server reaches the kubelet endpoint by it (a Hostname
            # address with the node's name would not resolve).
            "addresses": [{"type": "InternalIP", "address": HOST_IP}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
            "nodeInfo": {
                "machineID": _read("/etc/machine-id"),
                "systemUUID": _read("/sys/class/dmi/id/product_uuid"),
                "bootID": _read("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": platform.release(),
                "osImage": _os_image(),
                "containerRuntimeVersion": RUNTIME_VERSION,
                "kubeletVersion": kubelet_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": _architecture(),
            },
        }
    }


def lease_manifest(node_name: str, node_uid: str, duration_s: int) -> JsonObject:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": node_name,
            "namespace": LEASE_NAMESPACE,
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid}],
        },
        "spec": {"holderIdentity": node_name, "leaseDurationSeconds": duration_s, "renewTime": micro_now()},
    }


class NodeHeartbeat:
    """Registers the Node, then keeps its conditions and Lease fresh from a thread of its own."""

    def __init__(self, config: AgentConfig, kubelet_port: int) -> None:
        self.config = config
        self.kubelet_port = kubelet_port
        self.api = KubeApi(config.kubeconfig)
        self.transitions: dict[str, str] = {}
        self.kubelet_version = self._server_version()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="node-heartbeat", daemon=True)

    def _server_version(self) -> str:
        try:
            return str(self.api.get("/version").get("gitVersion", "v0.0.0"))
        except Exception:  # only a label for kubectl get nodes
            return "v0.0.0"

    def allocatable(self) -> dict[str, str]:
        return self.config.capacity

    def register(self) -> None:
        """Create the Node if missing (keeping an existing one's spec), post status, renew the Lease."""
        path = path_of("v1", "nodes", None, self.config.node_name)
        manifest = node_manifest(self.config)
        if self.api.get_or_none(path) is None:
            self.api.create(path_of("v1", "nodes"), manifest)
            log.info("registered node %s", self.config.node_name)
        else:
            self.api.patch(
                path,
                {
                    "metadata": {
                        "labels": manifest["metadata"]["labels"],
                        "annotations": manifest["metadata"]["annotations"],
                    }
                },
            )
        self.beat()

    def beat(self) -> None:
        now = iso_now()
        path = path_of("v1", "nodes", None, self.config.node_name)
        node = self.api.patch(
            path + "/status",
            node_status(self.config, self.kubelet_port, self.kubelet_version, now, self.transitions),
        )
        self._renew_lease(node["metadata"]["uid"])

    def _renew_lease(self, node_uid: str) -> None:
        path = path_of("coordination.k8s.io/v1", "leases", LEASE_NAMESPACE, self.config.node_name)
        try:
            self.api.patch(
                path,
                {"spec": {"holderIdentity": self.config.node_name, "renewTime": micro_now()}},
                MERGE_PATCH,
            )
        except ApiError as error:
            if not error.not_found:
                raise
            manifest = lease_manifest(self.config.node_name, node_uid, self.config.lease_duration_s)
            self.api.create(path_of("coordination.k8s.io/v1", "leases", LEASE_NAMESPACE), manifest)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.config.heartbeat_s):
            try:
                self.beat()
            except ApiError as error:
                if error.not_found:  # the Node was deleted: register again, as a restarted kubelet would
                    log.warning("node %s is gone; registering again", self.config.node_name)
                    self._safe(self.register)
                else:
                    log.warning("heartbeat failed: %s", error)
            except Exception as error:  # keep beating through API server restarts
                log.warning("heartbeat failed: %s", error)

    @staticmethod
    def _safe(action: Any) -> None:
        try:
            action()
        except Exception as error:  # re-registering is retried on the next beat
            log.warning("%s failed: %s", getattr(action, "__name__", action), error)
