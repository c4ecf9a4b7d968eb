"""An adapter for another base model, end to end: a LoraAdapter whose spec.baseModel is not what the
vLLM pod serves is `BaseModelMismatch` (a Warning Event, a message naming both), and it holds no pod
hostage: the pod's readiness gate opens without it and adapters for the right base model are served.

One vLLM Deployment (one replica) serves the whole module. Its manifest enables LoRA itself (flags,
runtime variable, readiness gate), so loraplane has nothing to add and the pod starts once, gated
from the start while the mismatched adapter is already wanted. Tests run in file order and wait on
observed state, never by sleeping.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loraplane_devcluster.testing import Kube, wait_until
from loraplane_fixtures import ChartOperator, Release
from vllm_e2e import (
    CLAIM,
    GATE,
    START_TIMEOUT_S,
    Cluster,
    adapter,
    completion,
    condition,
    models_on,
    staged_namespace,
    vllm_deployment,
)

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

DEPLOYMENT = "vllm-compat"
SERVED_BASE = "tiny-llama"  # the Deployment's --served-model-name
OTHER_BASE = "example-org/other-model-7b"
MISMATCHED = "other-base"


def on_deployment(name: str, base_model: str) -> dict[str, Any]:
    return adapter(name, "adapters/tiny", baseModel=base_model, serving={"deployment": DEPLOYMENT})


@pytest.fixture(scope="module")
def cluster(kube: Kube, chart_release: Release, operator: ChartOperator, tiny_adapter: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:  # fmt: skip
    """The mismatched adapter first, then the Deployment: its pod starts with that adapter wanted."""
    for cluster in staged_namespace(kube, "adapter-compat", tmp_path_factory.mktemp("compat")):
        shutil.copytree(tiny_adapter, cluster.volume / "adapters" / "tiny")
        cluster.apply(on_deployment(MISMATCHED, OTHER_BASE))
        cluster.apply(vllm_deployment(DEPLOYMENT, replicas=1, opt_in=False, lora=True, max_loras=2))
        yield cluster


def warnings(cluster: Cluster, name: str, reason: str) -> list[dict[str, Any]]:
    selector = f"involvedObject.name={name},type=Warning,reason={reason}"
    out = cluster.kube.kubectl(
        "get", "events", "-n", cluster.namespace, "--field-selector", selector, "-o", "json"
    )
    return list(json.loads(out.stdout)["items"])


def ready_pod(cluster: Cluster) -> dict[str, Any] | None:
    pods = cluster.ready_pods(DEPLOYMENT)
    return pods[0] if len(pods) == 1 else None


def test_an_adapter_for_another_base_model_is_base_model_mismatch_and_the_pod_serves_anyway(
    cluster: Cluster,
) -> None:
    reported = cluster.wait_adapter_reason(MISMATCHED, "BaseModelMismatch", timeout_s=START_TIMEOUT_S)
    assert reported["status"] == "False"
    assert OTHER_BASE in reported["message"]
    assert SERVED_BASE in reported["message"]
    events = wait_until(
        "a BaseModelMismatch Warning Event", lambda: warnings(cluster, MISMATCHED, "BaseModelMismatch")
    )
    event = events[0]
    assert OTHER_BASE in event["message"]
    assert SERVED_BASE in event["message"]

    # The pod was gated while the adapter was wanted; the gate opened without it.
    pod = wait_until("the pod Ready", lambda: ready_pod(cluster), timeout_s=60)
    gate = next(c for c in pod["status"]["conditions"] if c["type"] == GATE)
    assert gate["status"] == "True"
    assert MISMATCHED in gate["message"], gate
    ip = pod["status"]["podIP"]
    assert MISMATCHED not in models_on(ip)
    assert completion(ip, SERVED_BASE)[0] == 200
    [entry] = cluster.get("lad", MISMATCHED)["status"]["pods"]
    assert entry["pod"] == pod["metadata"]["name"]
    assert entry["loaded"] is False
    assert OTHER_BASE in entry["lastError"]
    deployment = cluster.get("deployment", DEPLOYMENT)
    assert deployment["metadata"]["generation"] == 1, "LoRA was on already: nothing written, no restart"


@pytest.mark.parametrize(
    ("name", "base_model"),
    [
        ("served-name", SERVED_BASE),  # the base model's card id in /v1/models
        ("claim-path", f"/mnt/claims/{CLAIM}/model"),  # the model's path as the training pod saw it
    ],
)
def test_an_adapter_for_the_served_base_model_is_ready_beside_the_mismatched_one(
    cluster: Cluster, name: str, base_model: str
) -> None:
    pod = wait_until("the pod Ready", lambda: ready_pod(cluster), timeout_s=START_TIMEOUT_S)
    cluster.apply(on_deployment(name, base_model))
    ready = wait_until(f"{name} Ready on the pod", lambda: cluster.ready_on(name, 1), timeout_s=120)
    assert (ready["status"]["replicas"], ready["status"]["readyReplicas"]) == (1, 1)
    assert ready["status"].get("pods", []) == [], "a pod that holds it is counted, not listed"
    assert name in models_on(pod["status"]["podIP"])
    status, answer = completion(pod["status"]["podIP"], name)
    assert status == 200, answer
    assert answer["choices"][0]["text"]
    # The mismatched adapter stays as it was, and nobody took the pod out of rotation.
    assert cluster.wait_adapter_reason(MISMATCHED, "BaseModelMismatch", timeout_s=1)
    assert condition(cluster.get("pod", pod["metadata"]["name"]), "Ready") == "True"
    assert MISMATCHED not in models_on(pod["status"]["podIP"])
