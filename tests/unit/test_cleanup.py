"""`python -m loraplane.cleanup` against a fake client module: the order of its steps, waiting for the
operator's pods to be gone, gates, finalizers, and the namespaces it leaves alone."""

from __future__ import annotations

from typing import Any

import pytest

from loraplane import cleanup
from loraplane.builders import serving
from loraplane.kube import ApiException


@pytest.fixture(autouse=True)
def no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cleanup.time, "sleep", lambda _s: None)


def pod(name: str, owner: str = "ReplicaSet", gate: str | None = None, gated: bool = True) -> dict[str, Any]:
    conditions = [{"type": serving.GATE, "status": gate}] if gate else []
    return {
        "metadata": {"name": name, "ownerReferences": [{"kind": owner}]},
        "spec": {"readinessGates": [{"conditionType": serving.GATE}] if gated else []},
        "status": {"conditions": conditions},
    }


def test_the_operator_counts_as_stopped_only_once_its_pods_are_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Deployment's status says 0 replicas while its pod terminates, and kopf still acts then."""
    listings = [[pod("op-1"), pod("cleanup-x", owner="Job")], [pod("op-1")], [pod("cleanup-x", owner="Job")]]
    calls: list[str] = []

    def scale(namespace: str, name: str, replicas: int) -> dict[str, Any]:
        calls.append(f"scale {namespace}/{name} {replicas}")
        labels = {"app.kubernetes.io/name": "loraplane", "app.kubernetes.io/instance": "r"}
        return {"spec": {"selector": {"matchLabels": labels}}, "status": {"replicas": 0}}

    def list_pods(namespace: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        calls.append(f"list {namespace} {label_selector}")
        return listings.pop(0)

    monkeypatch.setattr(cleanup.kube, "scale_deployment", scale)
    monkeypatch.setattr(cleanup.kube, "list_pods", list_pods)
    cleanup.stop_operator("lp", "r-loraplane", timeout_s=60)
    selector = "app.kubernetes.io/instance=r,app.kubernetes.io/name=loraplane"
    assert calls == ["scale lp/r-loraplane 0"] + [f"list lp {selector}"] * 3
    assert not listings


def test_a_missing_operator_deployment_is_already_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cleanup.kube, "scale_deployment", lambda *_: None)
    monkeypatch.setattr(cleanup.kube, "list_pods", lambda *_: pytest.fail("nothing to wait for"))
    cleanup.stop_operator("lp", "r-loraplane", timeout_s=60)


def test_gates_open_once_and_a_pod_gone_meanwhile_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    pods = [pod("closed", gate="False"), pod("new"), pod("open", gate="True"), pod("plain", gated=False),
            pod("gone", gate="False")]  # fmt: skip
    written: list[tuple[str, str, str]] = []

    def set_condition(namespace: str, name: str, condition: dict[str, Any]) -> None:
        if name == "gone":
            raise ApiException(status=404)
        written.append((name, condition["type"], condition["status"]))

    monkeypatch.setattr(cleanup.kube, "list_pods", lambda namespace, label_selector=None: pods)
    monkeypatch.setattr(cleanup.kube, "set_pod_condition", set_condition)
    assert cleanup.open_gates(["serving"]) == 2
    assert written == [("closed", serving.GATE, "True"), ("new", serving.GATE, "True")]


def test_gates_are_opened_again_after_the_templates_are_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pod made from the old template between the first sweep and the restore is opened too."""
    steps: list[str] = []
    monkeypatch.setattr(cleanup, "namespaces_of", lambda wanted, excluded: ["serving"])
    monkeypatch.setattr(cleanup, "open_gates", lambda ns: steps.append("gates") or 0)
    monkeypatch.setattr(cleanup, "restore_deployments", lambda ns: steps.append("restore") or 0)
    monkeypatch.setattr(cleanup, "remove_finalizers", lambda ns: steps.append("finalizers") or 0)
    monkeypatch.setattr(cleanup, "stop_operator", lambda *args: steps.append("stop"))
    argv = ["--operator-namespace=lp", "--operator-deployment=r-loraplane"]
    assert cleanup.main(argv) == 0
    assert steps == ["stop", "gates", "restore", "gates", "finalizers"]


def adapter(name: str, version: str, finalizers: list[str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": version, "finalizers": finalizers}}


def test_finalizers_are_removed_again_after_a_conflict(monkeypatch: pytest.MonkeyPatch) -> None:
    ours, theirs = cleanup.FINALIZER, "example.com/keep"
    stored = {
        "raced": adapter("raced", "2", [ours, theirs]),
        "gone": adapter("gone", "1", [ours]),
        "plain": adapter("plain", "1", [theirs]),
    }
    listed = [adapter("raced", "1", [ours, theirs]), stored["gone"], stored["plain"]]
    patches: list[tuple[str, dict[str, Any]]] = []

    def patch_object(namespace: str, plural: str, name: str, patch: dict[str, Any]) -> bool:
        patches.append((name, patch))
        if name == "gone":
            return False
        if patch["metadata"]["resourceVersion"] != stored[name]["metadata"]["resourceVersion"]:
            raise ApiException(status=409)
        return True

    monkeypatch.setattr(
        cleanup.kube,
        "list_custom_objects",
        lambda namespace, plural: listed if plural == "loraadapters" else None,
    )
    monkeypatch.setattr(cleanup.kube, "get_custom_object", lambda namespace, plural, name: stored[name])
    monkeypatch.setattr(cleanup.kube, "patch_custom_object", patch_object)
    assert cleanup.remove_finalizers(["serving"]) == 1
    assert patches == [
        ("raced", {"metadata": {"finalizers": [theirs], "resourceVersion": "1"}}),
        ("raced", {"metadata": {"finalizers": [theirs], "resourceVersion": "2"}}),
        ("gone", {"metadata": {"finalizers": [], "resourceVersion": "1"}}),
    ]


def test_excluded_namespaces_are_left_to_the_release_that_serves_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = ["default", "team-a", "own-release-x-1", "own-release-y-2", "lp"]
    monkeypatch.setattr(cleanup.kube, "namespace_names", lambda: names)
    assert cleanup.namespaces_of([], ["own-release-*"]) == ["default", "team-a", "lp"]
    assert cleanup.namespaces_of([], []) == ["default", "team-a", "own-release-x-1", "own-release-y-2", "lp"]
    assert cleanup.namespaces_of(["team-a"], ["team-*"]) == ["team-a"], "watched namespaces are explicit"
