"""Two real vLLM replicas on the dev node, started at the same moment: both come up on their own
pod addresses (same port), each answers a completion, and deleting the Deployment leaves no
process of either behind (vLLM's EngineCore and workers included)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import AppsV1Api, CoreV1Api

from loraplane_devcluster.testing import Kube, wait_until
from loraplane_devcluster.tinymodel import ensure_tiny_model

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.torch]

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
SERVED = "tiny-llama"


def vllm_deployment(model_dir: Path) -> dict[str, Any]:
    container = {
        "name": "vllm",
        "image": "vllm/vllm-openai:v0.32.0",
        "args": [
            *("--model", "/models/tiny", "--served-model-name", SERVED),
            *("--host", "$(POD_IP)", "--port", "8000"),
            *("--dtype", "float32", "--max-model-len", "256"),
        ],
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "VLLM_CPU_KVCACHE_SPACE", "value": "1"},
            {"name": "HF_HUB_OFFLINE", "value": "1"},
        ],
        "ports": [{"name": "http", "containerPort": 8000}],
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 2,
            "failureThreshold": 300,
        },
        "resources": {"limits": {"nvidia.com/gpu": "1"}},
        "volumeMounts": [{"name": "model", "mountPath": "/models/tiny", "readOnly": True}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "vllm"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "vllm"}},
            "template": {
                "metadata": {"labels": {"app": "vllm"}},
                "spec": {
                    "containers": [container],
                    "volumes": [{"name": "model", "hostPath": {"path": str(model_dir), "type": "Directory"}}],
                },
            },
        },
    }


def completion(address: str) -> dict[str, Any]:
    body = json.dumps({"model": SERVED, "prompt": "hello", "max_tokens": 4}).encode()
    request = urllib.request.Request(
        f"http://{address}:8000/v1/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with _DIRECT.open(request, timeout=60) as response:
        return dict(json.loads(response.read()))


def process_group_alive(pgid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in {"Z", "X"}:
            return True
    return False


def test_two_vllm_replicas_serve_on_their_own_addresses_and_stop_cleanly(kube: Kube, namespace: str) -> None:
    apps: Any = AppsV1Api(kube.api)
    core: Any = CoreV1Api(kube.api)
    apps.create_namespaced_deployment(namespace, vllm_deployment(ensure_tiny_model().model_dir))

    def available() -> bool:
        status = apps.read_namespaced_deployment("vllm", namespace).status
        return bool(status.available_replicas == 2)

    wait_until("both vLLM replicas Ready", available, 600, interval_s=2)
    pods = core.list_namespaced_pod(namespace, label_selector="app=vllm").items
    addresses = {p.status.pod_ip for p in pods}
    assert len(addresses) == 2
    for address in addresses:
        answer = completion(address)
        assert answer["model"] == SERVED
        assert answer["choices"][0]["text"]
    groups = [int(p.status.container_statuses[0].container_id.removeprefix("process://")) for p in pods]

    apps.delete_namespaced_deployment("vllm", namespace)
    wait_until(
        "vLLM pods gone",
        lambda: not core.list_namespaced_pod(namespace, label_selector="app=vllm").items,
        120,
    )
    wait_until("no vLLM process left", lambda: not any(process_group_alive(g) for g in groups), 10)
