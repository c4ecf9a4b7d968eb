"""Many adapters on one real 2-replica vLLM Deployment, end to end: churn leaves each pod with exactly
the surviving adapters (and what a user loaded by hand), also across an operator restart; a finalizer
removed by hand does not leave the adapter loaded; the Conflict loser's deletion finishes at once; a
replacement pod opens its gate once it holds every adapter.

The Deployment enables LoRA in its own manifest (nothing for loraplane to add, one start per pod);
every LoraAdapter serves the same tiny adapter folder under its own name (vLLM loads a path under
any number of names). Tests run in file order, share the Deployment, and wait on observed state.
"""

from __future__ import annotations

import json
import random
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import watch
from kubernetes.client import CoreV1Api

from loraplane_devcluster.testing import Kube, wait_until
from loraplane_fixtures import ChartOperator, Release
from vllm_e2e import (
    DIRECT,
    GATE,
    START_TIMEOUT_S,
    Cluster,
    adapter,
    condition,
    models_on,
    staged_namespace,
    vllm_deployment,
)

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

DEPLOYMENT = "vllm-many"
PATH = "adapters/tiny"
BY_HAND = "loaded-by-hand"


def many(name: str, served: str | None = None) -> dict[str, Any]:
    body = adapter(name, PATH, serving={"deployment": DEPLOYMENT})
    if served:
        body["spec"]["servedModelName"] = served
    return body


@pytest.fixture(scope="module")
def cluster(kube: Kube, chart_release: Release, operator: ChartOperator, tiny_adapter: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:  # fmt: skip
    for cluster in staged_namespace(kube, "adapters-many", tmp_path_factory.mktemp("many")):
        shutil.copytree(tiny_adapter, cluster.volume / PATH)
        cluster.apply(vllm_deployment(DEPLOYMENT, opt_in=False, lora=True, max_loras=2))
        wait_until(
            "2 vLLM pods Ready", lambda c=cluster: len(c.ready_pods(DEPLOYMENT)) == 2, START_TIMEOUT_S, 2
        )
        yield cluster


def ips(cluster: Cluster) -> list[str]:
    return [p["status"]["podIP"] for p in cluster.ready_pods(DEPLOYMENT)]


def load_by_hand(ip: str, name: str, path: str) -> None:
    body = json.dumps({"lora_name": name, "lora_path": path}).encode()
    request = urllib.request.Request(
        f"http://{ip}:8000/v1/load_lora_adapter", data=body, headers={"Content-Type": "application/json"}
    )
    with DIRECT.open(request, timeout=60) as response:
        assert response.status == 200


def every_pod_holds(cluster: Cluster, names: set[str]) -> bool:
    found = ips(cluster)
    return len(found) == 2 and all(set(models_on(ip)) == names for ip in found)


def test_churn_leaves_exactly_the_survivors_and_what_a_user_loaded(
    cluster: Cluster, operator: ChartOperator
) -> None:
    for ip in ips(cluster):
        load_by_hand(ip, BY_HAND, f"/models/{PATH}")
    rng = random.Random(12)
    names = [f"churn-{i:02d}" for i in range(50)]
    alive: set[str] = set()
    operations = [("create", n) for n in names] + [("delete", n) for n in rng.sample(names, 30)]
    rng.shuffle(operations)
    for step, (action, name) in enumerate(operations):
        if step == len(operations) // 2:
            operator.kill()  # mid-churn: what it loaded is remembered in the cluster, not in its memory
        if action == "create":
            cluster.apply(many(name))
            alive.add(name)
        else:
            cluster.delete("lad", name, wait=False)
            alive.discard(name)
    wanted = alive | {BY_HAND}
    wait_until(
        f"each pod holds exactly the {len(alive)} survivors and {BY_HAND}",
        lambda: every_pod_holds(cluster, wanted),
        timeout_s=300,
        interval_s=2,
    )
    deleted = set(names) - alive
    wait_until("every deletion finished", lambda: not any(cluster.get("lad", n) for n in deleted), 120)
    for name in alive:
        wait_until(f"{name} Ready on 2 pods", lambda name=name: cluster.ready_on(name, 2), 120)
    # Clean up for the next tests; the hand-loaded adapter stays through it all.
    for name in alive:
        cluster.delete("lad", name, wait=False)
    wait_until("only the hand-loaded adapter left", lambda: every_pod_holds(cluster, {BY_HAND}), 300, 2)


def test_an_adapter_whose_finalizer_was_removed_by_hand_is_unloaded(cluster: Cluster) -> None:
    cluster.apply(many("orphan"))
    wait_until("orphan Ready on 2 pods", lambda: cluster.ready_on("orphan", 2), 120)
    cluster.kube.kubectl("patch", "lad", "orphan", "-n", cluster.namespace, "--type=merge",
                         "-p", '{"metadata":{"finalizers":null}}')  # fmt: skip
    cluster.delete("lad", "orphan")
    wait_until("orphan unloaded from every pod", lambda: every_pod_holds(cluster, {BY_HAND}), 120, 1)


def test_the_conflict_loser_is_deleted_at_once_and_the_winner_keeps_serving(cluster: Cluster) -> None:
    cluster.apply(many("winner", served="shared-name"))
    wait_until("winner Ready on 2 pods", lambda: cluster.ready_on("winner", 2), 120)
    cluster.apply(many("loser", served="shared-name"))
    reported = cluster.wait_adapter_reason("loser", "Conflict")
    assert "winner" in reported["message"]
    # `kubectl delete --wait` returns once the finalizer is gone: it finishes without a retry.
    cluster.kube.kubectl("delete", "lad", "loser", "-n", cluster.namespace, "--wait=true", timeout_s=30)
    assert cluster.get("lad", "loser") is None
    assert every_pod_holds(cluster, {"shared-name", BY_HAND}), "the winner's name is still loaded"
    assert cluster.ready_on("winner", 2) is not None
    cluster.delete("lad", "winner")
    wait_until("winner unloaded", lambda: every_pod_holds(cluster, {BY_HAND}), 120, 1)


def test_a_replacement_pod_opens_its_gate_after_it_holds_every_adapter(cluster: Cluster) -> None:
    names = {f"fleet-{i:02d}" for i in range(24)}
    cluster.apply([many(n) for n in sorted(names)])
    for name in sorted(names):
        wait_until(f"{name} Ready on 2 pods", lambda name=name: cluster.ready_on(name, 2), 180)
    old = {p["metadata"]["name"] for p in cluster.pods(DEPLOYMENT)}
    victim = sorted(old)[0]
    cluster.delete("pod", victim, wait=False)

    def replacement() -> dict[str, Any] | None:
        pods = [p for p in cluster.pods(DEPLOYMENT) if p["metadata"]["name"] not in old]
        return pods[0] if pods else None

    new = wait_until("a replacement pod", replacement, 60)["metadata"]["name"]
    # Follow the pod's conditions: containers ready first, its gate closed; the gate opens once.
    transitions: list[tuple[str | None, str | None]] = []
    core = CoreV1Api(cluster.kube.api)
    stream = watch.Watch()
    selector = f"metadata.name={new}"
    events = stream.stream(
        core.list_namespaced_pod, cluster.namespace, field_selector=selector, timeout_seconds=START_TIMEOUT_S
    )
    for event in events:
        pod = cluster.kube.api.sanitize_for_serialization(event["object"])
        seen = (condition(pod, "ContainersReady"), condition(pod, GATE))
        if not transitions or transitions[-1] != seen:
            transitions.append(seen)
        if seen == ("True", "True"):
            stream.stop()
    assert ("True", "False") in transitions, f"containers ready with the gate still closed: {transitions}"
    assert transitions[-1] == ("True", "True")
    assert transitions.index(("True", "False")) < len(transitions) - 1
    pod = cluster.get("pod", new)
    gate = next(c for c in pod["status"]["conditions"] if c["type"] == GATE)
    assert gate["reason"] == "AdaptersLoaded"
    assert gate["message"] == f"holds {len(names)} adapter(s)"
    assert names <= set(models_on(pod["status"]["podIP"])), "the gate opened only once it held them all"
    for name in sorted(names):
        cluster.delete("lad", name, wait=False)
    # (The replacement never had the hand-loaded adapter: only the fleet is checked.)
    wait_until(
        "the fleet unloaded", lambda: not any(set(models_on(ip)) & names for ip in ips(cluster)), 120, 1
    )
