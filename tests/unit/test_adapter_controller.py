"""The LoraAdapter controller's pure parts: which pods a Deployment selects, what a pod is remembered
by, a pod's Deployment, the base model name, the gate condition, and which pod may swap versions."""

from __future__ import annotations

from typing import Any

import kopf
import pytest
import yaml

from loraplane.handlers.adapters.deployment_changes import base_model_name
from loraplane.handlers.adapters.gate import gate_condition
from loraplane.handlers.adapters.indexes import slim_pod
from loraplane.handlers.adapters.kopf_handlers import is_gated, owner_deployment
from loraplane.handlers.adapters.reconciler import pick_swap, previous_stale_pods, selects
from loraplane.handlers.adapters.state import Outcome
from loraplane.status import adapter as status_of
from loraplane.status.adapter import PodResult, PodView, Wanted
from manifests import EXAMPLES

GATE = "loraplane.io/adapters-loaded"


def deployment() -> dict[str, Any]:
    return dict(next(yaml.safe_load_all((EXAMPLES / "tiny-cpu" / "vllm-deployment.yaml").read_text())))


def raw_pod(
    name: str = "vllm-tiny-5d8f-abcde",
    labels: dict[str, str] | None = None,
    gated: bool = True,
    owner: str | None = "vllm-tiny-5d8f",
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "labels": {"app": "vllm-tiny", "pod-template-hash": "5d8f"} if labels is None else labels,
            "ownerReferences": [{"kind": "ReplicaSet", "name": owner}] if owner else [],
            "annotations": {"big": "x" * 1000},
            "managedFields": [{"manager": "kubelet"}],
        },
        "spec": {
            "readinessGates": [{"conditionType": GATE}] if gated else [],
            "containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.32.0"}],
        },
        "status": {"phase": "Running", "podIP": "127.0.1.5", "hostIP": "10.0.0.1"},
    }


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ({"matchLabels": {"app": "vllm-tiny"}}, {"app": "vllm-tiny"}, True),
        ({"matchLabels": {"app": "vllm-tiny"}}, {"app": "other"}, False),
        ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "b"]}]}, {"app": "b"}, True),
        ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["b"]}]}, {"app": "b"}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, {"app": "b"}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, {"app": "b"}, True),
        ({}, {"app": "b"}, False),
    ],
)
def test_a_deployment_selects_pods_by_its_label_selector(
    selector: dict[str, Any], labels: dict[str, str], matches: bool
) -> None:
    body = {"spec": {"selector": selector}}
    assert selects(body, {"metadata": {"labels": labels}}) is matches


def test_a_pod_is_remembered_by_what_a_pass_reads_only() -> None:
    slim = slim_pod(kopf.Body(raw_pod()))
    kept = {"name", "namespace", "uid", "labels", "deletionTimestamp", "ownerReferences"}
    assert set(slim["metadata"]) == kept
    assert slim["spec"] == {"readinessGates": [{"conditionType": GATE}]}
    assert "hostIP" not in slim["status"]
    assert slim["status"]["podIP"] == "127.0.1.5"


def test_a_pods_deployment_is_its_replica_sets_name_without_the_template_hash() -> None:
    assert owner_deployment(kopf.Body(raw_pod())) == "vllm-tiny"
    assert owner_deployment(kopf.Body(raw_pod(owner=None))) is None
    assert owner_deployment(kopf.Body(raw_pod(owner="job-x"))) is None, "not <deployment>-<hash>"


def test_only_pods_with_loraplanes_readiness_gate_are_gated() -> None:
    assert is_gated(kopf.Body(raw_pod()))
    assert not is_gated(kopf.Body(raw_pod(gated=False)))


def test_the_base_model_name_is_the_served_model_name_else_the_model() -> None:
    body = deployment()
    assert base_model_name(body) == "tiny-llama"
    args = body["spec"]["template"]["spec"]["containers"][0]["args"]
    del args[2:4]  # --served-model-name tiny-llama
    assert base_model_name(body) == "/models/model"


def test_the_gate_condition_is_loraplanes_condition_type_with_a_transition_time() -> None:
    condition = gate_condition("False", "LoadingAdapters", "waiting")
    assert condition["type"] == GATE
    assert (condition["status"], condition["reason"], condition["message"]) == (
        "False",
        "LoadingAdapters",
        "waiting",
    )
    assert condition["lastTransitionTime"].endswith("Z")


def view(name: str, gate: str = "True", reason: str | None = None, ready: bool | None = None) -> PodView:
    return PodView(
        name=name, ip="127.0.1.1", phase="Running", containers_ready=True,
        ready=gate == "True" if ready is None else ready, deleting=False, started_at=None,
        restart_count=0, gated=True, gate_status=gate, gate_reason=reason, gate_since=None,
    )  # fmt: skip


V2 = Wanted("versioned", "versioned", "/models/v2", "HotLoad", "tiny-llama")


def previous_pass(paths: dict[str, str]) -> Outcome:
    """The last pass saw each pod holding `versioned` at the given path."""
    pods = [PodResult(view(name), paths={"versioned": path}, reachable=True) for name, path in paths.items()]
    return Outcome(passes={"versioned": status_of.Pass(None, V2, pods)})


def test_a_pod_that_held_an_old_version_is_stale() -> None:
    previous = previous_pass({"p1": "/models/v1", "p2": "/models/v2"})
    assert previous_stale_pods(previous, [V2]) == {"p1"}


def test_one_ready_pod_at_a_time_swaps_versions() -> None:
    previous = previous_pass({"p1": "/models/v1", "p2": "/models/v1"})
    pods = [(view("p1"), "u1"), (view("p2"), "u2")]
    assert pick_swap(pods, [V2], previous) == "p1"
    assert pick_swap(pods, [V2], None) is None, "nothing to compare against before a first pass"
    swapping = [(view("p1", "False", "SwappingVersion", ready=False), "u1"), (view("p2"), "u2")]
    assert pick_swap(swapping, [V2], previous) == "p1", "the pod already swapping goes on"
    starting = [(view("p1"), "u1"), (view("p2", "False", "LoadingAdapters"), "u2")]
    assert pick_swap(starting, [V2], previous) is None, "no swap while another pod is out of rotation"
