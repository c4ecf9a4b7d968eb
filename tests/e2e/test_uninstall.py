"""`helm uninstall` of loraplane while it serves: the pre-delete hook leaves the vLLM Deployment as the
user wrote it, and it keeps serving the base model.

The test installs a release of its own, watching only its own namespace (one the session release
leaves alone, see OWN_RELEASE_NAMESPACES), so that uninstalling it touches nothing other tests use and
no second operator puts loraplane's settings back. It waits on observed state, never by sleeping.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from loraplane_devcluster.staging import stage_tiny_model
from loraplane_devcluster.testing import Kube, wait_until
from loraplane_fixtures import CHART, ChartOperator, Release, own_release_namespace
from vllm_e2e import CLAIM, DEPLOYMENT, GATE, START_TIMEOUT_S, Cluster, adapter, completion, models_on
from vllm_e2e import vllm_deployment as example_deployment

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

RELEASE = "lp-uninstall"
ADAPTER = "tiny"
FINALIZER = "loraplane.io/cleanup"
ANNOTATIONS = ("loraplane.io/lora-settings", "loraplane.io/static-adapters")
# LoRA flags the user set before loraplane came: loraplane raises --max-lora-rank for a rank-16
# adapter and must put 8 back; it must leave --max-loras alone.
USER_LORA_ARGS = ["--max-lora-rank", "8", "--max-loras", "2"]


def user_deployment() -> dict[str, Any]:
    """The tiny CPU example with one replica and a couple of LoRA flags of the user's own."""
    deployment, _service = example_deployment(replicas=1)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["args"] = [*container["args"], *USER_LORA_ARGS]
    return deployment


@dataclass(frozen=True)
class Installed:
    cluster: Cluster
    release: Release
    applied: dict[str, Any]  # the Deployment as the user applied it


@pytest.fixture(scope="module")
def installed(
    kube: Kube, chart_release: Release, tiny_adapter: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installed]:
    """A release of the test's own watching only its namespace (the session's provides the CRDs)."""
    namespace = own_release_namespace(kube, "uninstall")
    volume = stage_tiny_model(kube.api, namespace, CLAIM, tmp_path_factory.mktemp("uninstall") / "volume")
    shutil.copytree(tiny_adapter, volume / "adapters" / ADAPTER)
    release = Release(RELEASE, namespace, service_account=f"{RELEASE}-loraplane")
    kube.helm(
        "install", RELEASE, str(CHART), "--namespace", namespace, "--set", "crds.install=false",
        "--set", f"watchNamespaces={{{namespace}}}", "--set", "logLevel=DEBUG", "--wait=false",
    )  # fmt: skip
    cluster = Cluster(kube, namespace, volume)
    try:
        yield Installed(cluster, release, user_deployment())
    finally:
        kube.helm("uninstall", RELEASE, "--namespace", namespace, "--wait", check=False)
        kube.kubectl("delete", "deployments", "--all", "-n", namespace, "--wait=true", timeout_s=180,
                     check=False)  # fmt: skip
        # Should the test fail before the cleanup hook ran, no finalizer may keep the namespace.
        kube.kubectl("patch", "lad", ADAPTER, "-n", namespace, "--type=merge", "-p",
                     '{"metadata": {"finalizers": null}}', check=False)  # fmt: skip
        kube.delete_namespace(namespace)


def template(cluster: Cluster) -> dict[str, Any]:
    return dict(cluster.get("deployment", DEPLOYMENT)["spec"]["template"])


def env_of(container: dict[str, Any]) -> list[tuple[str, str | None, str | None]]:
    """Name, value and field reference of each variable (the API server adds fieldRef's apiVersion)."""
    return [
        (e["name"], e.get("value"), ((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath"))
        for e in container.get("env") or []
    ]


def gates_of(pod_spec: dict[str, Any]) -> list[str]:
    return [g["conditionType"] for g in pod_spec.get("readinessGates") or []]


def everyone(cluster: Cluster) -> list[dict[str, Any]]:
    """The Deployment's pods, terminating ones included."""
    found = cluster.kube.kubectl(
        "get", "pods", "-n", cluster.namespace, "-l", f"app={DEPLOYMENT}", "-o", "json"
    )
    return list(json.loads(found.stdout)["items"])


def gated_pods(cluster: Cluster) -> list[dict[str, Any]]:
    return [p for p in everyone(cluster) if GATE in gates_of(p["spec"])]


def rolled_out(cluster: Cluster) -> list[dict[str, Any]] | None:
    """The Deployment's pods once its rollout is complete and every pod is Ready, else None."""
    deployment = cluster.get("deployment", DEPLOYMENT) or {}
    status, wanted = deployment.get("status", {}), deployment["spec"]["replicas"]
    if status.get("observedGeneration") != deployment["metadata"]["generation"]:
        return None
    if not status.get("updatedReplicas") == status.get("readyReplicas") == status.get("replicas") == wanted:
        return None
    if len(everyone(cluster)) != wanted:
        return None  # an old pod is still terminating
    ready = cluster.ready_pods()
    return ready if len(ready) == wanted else None


def test_uninstall_restores_the_deployment_and_it_keeps_serving_the_base_model(installed: Installed) -> None:
    cluster, applied = installed.cluster, installed.applied
    timings: dict[str, float] = {}
    began = time.monotonic()
    ChartOperator(cluster.kube, installed.release).wait_ready()
    # The adapter first: loraplane enables LoRA as soon as the Deployment appears, before its first pod
    # has started (one vLLM cold start fewer).
    cluster.apply(adapter(ADAPTER, f"adapters/{ADAPTER}", rank=16))
    cluster.apply(copy.deepcopy(applied))
    wait_until(f"LoraAdapter {ADAPTER} Ready on the pod", lambda: cluster.ready_on(ADAPTER, 1),
               timeout_s=2 * START_TIMEOUT_S, interval_s=1)  # fmt: skip
    timings["install, enable LoRA, serve"] = time.monotonic() - began

    # loraplane changed the pod template; the pod serves the adapter behind the gate.
    managed = template(cluster)["spec"]
    args = managed["containers"][0]["args"]
    assert "--enable-lora" in args
    assert args[args.index("--max-lora-rank") + 1] == "16", "raised for the rank-16 adapter"
    assert args[args.index("--max-loras") + 1] == "2", "the user's --max-loras kept"
    assert GATE in gates_of(managed)
    [pod] = cluster.ready_pods()
    assert completion(pod["status"]["podIP"], ADAPTER)[0] == 200
    assert FINALIZER in cluster.get("lad", ADAPTER)["metadata"]["finalizers"]

    began = time.monotonic()
    cluster.kube.helm("uninstall", RELEASE, "--namespace", cluster.namespace, "--wait", "--timeout=5m")
    timings["helm uninstall"] = time.monotonic() - began
    operator = cluster.get("deployment", f"{RELEASE}-loraplane")
    assert operator is None, "the release's operator Deployment is gone"

    # The pod template is the user's again: their args (in order), env and no gate.
    user = applied["spec"]["template"]["spec"]
    restored = template(cluster)
    container = restored["spec"]["containers"][0]
    assert container["args"] == user["containers"][0]["args"]
    assert env_of(container) == env_of(user["containers"][0])
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in json.dumps(container)
    assert GATE not in gates_of(restored["spec"])
    annotations = cluster.get("deployment", DEPLOYMENT)["metadata"].get("annotations") or {}
    assert not set(ANNOTATIONS) & set(annotations), annotations
    assert FINALIZER not in (cluster.get("lad", ADAPTER)["metadata"].get("finalizers") or [])

    # The rollout brings pods without the gate; they turn Ready on their own.
    began = time.monotonic()
    wait_until(
        "the gated pods gone", lambda: not gated_pods(cluster), timeout_s=START_TIMEOUT_S, interval_s=1
    )
    timings["gated pods gone"] = time.monotonic() - began
    pods = wait_until("the rollout to finish with every pod Ready", lambda: rolled_out(cluster),
                      timeout_s=START_TIMEOUT_S, interval_s=1)  # fmt: skip
    timings["rollout done, pods Ready"] = time.monotonic() - began
    for pod in pods:
        assert GATE not in gates_of(pod["spec"])
        status, answer = completion(pod["status"]["podIP"], "tiny-llama")
        assert status == 200, answer
        assert answer["choices"][0]["text"]
        assert models_on(pod["status"]["podIP"]) == {}, "no runtime-loaded adapter after the restart"
    # Nobody put loraplane's settings back meanwhile (no operator acts in this namespace any more).
    assert template(cluster) == restored

    # Without the finalizer, the adapter can be deleted with no operator around.
    cluster.kube.kubectl("delete", "lad", ADAPTER, "-n", cluster.namespace, "--wait=true", "--timeout=60s")
    assert cluster.get("lad", ADAPTER) is None
    print(", ".join(f"{what}: {seconds:.0f} s" for what, seconds in timings.items()))
