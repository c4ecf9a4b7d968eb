"""The LoraAdapter controller's pure parts: which pods a Deployment selects, what a pod is remembered
by, a pod's Deployment, the base model name, the gate condition, and which pod may swap versions."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import kopf
import pytest
import yaml

from loraplane import kube
from loraplane.builders import serving
from loraplane.handlers.adapters import controller as task
from loraplane.handlers.adapters.gate import gate_condition
from loraplane.handlers.adapters.indexes import (
    Indexes,
    deployment_is_served,
    owner_deployment,
    pods_missing_from_index,
    selector_string,
    served_deployment_filter,
    served_pod_filter,
    slim_pod,
)
from loraplane.handlers.adapters.kopf_handlers import is_gated
from loraplane.handlers.adapters.reconciler import (
    RECONCILERS,
    current_views,
    pick_swap,
    previous_stale_pods,
    selects,
    serving_pods,
)
from loraplane.handlers.adapters.state import Outcome, Reconciler
from loraplane.status import adapter as status_of
from loraplane.status.adapter import PodResult, PodView
from loraplane.status.resolution import Wanted
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
            "containers": [
                {
                    "name": "vllm",
                    "image": "vllm/vllm-openai:v0.32.0",
                    "args": ["--enable-lora"],
                    "env": [
                        {"name": "OTHER", "value": "not kept"},
                        {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"},
                    ],
                }
            ],
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
    assert slim["spec"] == {
        "readinessGates": [{"conditionType": GATE}],
        "containers": [
            {
                "name": "vllm",
                "args": ["--enable-lora"],
                "env": [{"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"}],
            }
        ],
    }, "of the environment only the runtime LoRA switch is kept"
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
    assert serving.DeploymentView.of(body).base_model_name == "tiny-llama"
    args = body["spec"]["template"]["spec"]["containers"][0]["args"]
    del args[2:4]  # --served-model-name tiny-llama
    assert serving.DeploymentView.of(body).base_model_name == "/models/model"


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


# --- which Deployments and pods the operator holds ------------------------------------------------------


def test_a_deployment_is_held_when_an_adapter_names_it_it_opted_in_or_loraplane_changed_it() -> None:
    plain = deployment()
    plain["metadata"]["annotations"] = {}
    assert not deployment_is_served(plain, targeted=False), "someone else's Deployment"
    assert deployment_is_served(plain, targeted=True)
    for annotation, value in [
        ("loraplane.io/manage-lora", "true"),
        ("loraplane.io/lora-settings", '{"env": true}'),
        ("loraplane.io/static-adapters", '["a"]'),
    ]:
        plain["metadata"]["annotations"] = {annotation: value}
        assert deployment_is_served(plain, targeted=False), annotation
    plain["metadata"]["annotations"] = {"loraplane.io/manage-lora": "false"}
    assert not deployment_is_served(plain, targeted=False)
    plain["spec"]["template"]["spec"]["readinessGates"] = [{"conditionType": GATE}]
    assert deployment_is_served(plain, targeted=False), "its pods wait on loraplane's gate"


def test_the_deployment_filter_asks_the_adapters_index() -> None:
    plain = deployment()
    plain["metadata"]["annotations"] = {}
    body = kopf.Body(plain)
    targeted: dict[Any, list[Any]] = {("ns", "vllm-tiny"): [{}]}
    assert served_deployment_filter(body, "ns", "vllm-tiny", adapters_by_deployment=targeted)
    assert not served_deployment_filter(body, "other", "vllm-tiny", adapters_by_deployment=targeted)


def test_a_pod_is_held_when_it_is_gated_or_its_deployment_is_held() -> None:
    deployments: dict[Any, list[Any]] = {("ns", "vllm-tiny"): [{}]}
    assert served_pod_filter(kopf.Body(raw_pod(gated=False)), "ns", serving_deployments=deployments)
    assert not served_pod_filter(kopf.Body(raw_pod(gated=False)), "ns", serving_deployments={})
    assert served_pod_filter(kopf.Body(raw_pod(gated=True)), "ns", serving_deployments={}), (
        "the gate is enough"
    )
    loose = raw_pod(gated=False, owner=None)
    assert not served_pod_filter(kopf.Body(loose), "ns", serving_deployments=deployments), "no ReplicaSet"


def test_a_label_selector_in_the_apis_query_form() -> None:
    selector = {
        "matchLabels": {"app": "vllm"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]},
            {"key": "zone", "operator": "NotIn", "values": ["x"]},
            {"key": "gpu", "operator": "Exists"},
            {"key": "legacy", "operator": "DoesNotExist"},
        ],
    }
    assert selector_string(selector) == "app=vllm,tier in (a,b),zone notin (x),gpu,!legacy"


def test_pods_are_listed_directly_only_when_the_index_holds_fewer_than_the_deployment_counts() -> None:
    plain = deployment() | {"status": {"replicas": 2}}
    one, two = slim_pod(kopf.Body(raw_pod("a"))), slim_pod(kopf.Body(raw_pod("b")))
    assert pods_missing_from_index(plain, [one])
    assert not pods_missing_from_index(plain, [one, two])
    going = {**two, "metadata": {**two["metadata"], "deletionTimestamp": "2025-01-01T00:00:00Z"}}
    assert pods_missing_from_index(plain, [one, going]), "a terminating pod is not counted"
    assert not pods_missing_from_index(deployment(), []), "no status yet: nothing to miss"


def test_a_pass_reads_the_pods_that_the_index_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = deployment() | {"status": {"replicas": 1}}
    asked: list[tuple[str, str]] = []

    def list_pods(namespace: str, selector: str) -> list[dict[str, Any]]:
        asked.append((namespace, selector))
        return [raw_pod("listed", gated=False), raw_pod("other", labels={"app": "else"})]

    monkeypatch.setattr(kube, "list_pods", list_pods)
    empty = Indexes(adapters={}, deployments={}, pods={}, training_jobs={})  # type: ignore[arg-type]
    pods = asyncio.run(serving_pods("ns", plain, empty))
    assert [p["metadata"]["name"] for p in pods] == ["listed"]
    assert asked == [("ns", "app=vllm-tiny")]
    indexed = Indexes(adapters={}, deployments={}, pods={"ns": pods}, training_jobs={})  # type: ignore[arg-type]
    assert asyncio.run(serving_pods("ns", plain, indexed)) == pods
    assert len(asked) == 1, "nothing is read when the index holds every pod"


def test_pods_started_before_the_runtime_api_was_enabled_are_left_to_the_rollout() -> None:
    enabled = serving.LoraState(lora_enabled=True, runtime_api=True, gated=True, max_lora_rank=16)
    before = raw_pod("before", gated=False)
    before["spec"]["containers"][0] |= {"args": [], "env": []}
    going = raw_pod("going", gated=False)
    going["spec"]["containers"][0] |= {"args": [], "env": []}
    going["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    pods = [slim_pod(kopf.Body(p)) for p in (before, going, raw_pod("after"))]
    current, predating = current_views(pods, "vllm", enabled)
    assert [(v.name, uid) for v, uid in current] == [("after", "uid-after")]
    assert predating == 1, "a terminating pod is not waited for"
    off = serving.LoraState(lora_enabled=False, runtime_api=False, gated=False, max_lora_rank=16)
    current, predating = current_views(pods, "vllm", off)
    assert (len(current), predating) == (3, 0), "nothing to wait for when the template has no runtime API"


def test_what_a_reconciler_remembers_about_a_pod_goes_with_the_pod() -> None:
    rec = Reconciler("ns", "vllm")
    for pod, uid in (("vllm-a", "uid-a"), ("vllm-b", "uid-b")):
        rec.failures[(uid, 0, "quotes", "/models/v1")] = (1.0, "LoadFailed", "no such file")
        rec.announced[f"{pod}/2026-11-28T10:00:00Z/quotes//models/v1"] = "Loaded"
        rec.loaded_at[(f"{pod}/2026-11-28T10:00:00Z", "quotes", "/models/v1")] = dt.datetime(2026, 11, 28)
        rec.reported_pods.add(pod)
    rec.announced["deployment"] = "args-removed"

    gone = rec.forget_pods_except({"uid-b"}, {"vllm-b"})

    assert gone == {"vllm-a"}  # its adapters-loaded gauge is removed by the caller
    assert list(rec.failures) == [("uid-b", 0, "quotes", "/models/v1")]
    assert set(rec.announced) == {"vllm-b/2026-11-28T10:00:00Z/quotes//models/v1", "deployment"}
    assert [k[0] for k in rec.loaded_at] == ["vllm-b/2026-11-28T10:00:00Z"]
    assert rec.reported_pods == {"vllm-b"}


# --- the Deployment's task: passes on events, coalesced ---------------------------------------------------


def test_events_during_a_pass_make_one_more_pass_and_a_deletion_waits_for_a_pass_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    passes: list[int] = []
    release = asyncio.Event()

    async def one_pass(namespace: str, deployment: str, _: Any) -> Outcome:
        passes.append(len(passes) + 1)
        if len(passes) == 1:
            await release.wait()  # the first pass runs while events arrive
        return Outcome()

    monkeypatch.setattr(task, "reconcile_deployment", one_pass)
    found = Indexes(adapters={("ns", "d"): [{"metadata": {"name": "a", "uid": "u"}}]},  # type: ignore[arg-type]
                    deployments={}, pods={}, training_jobs={})  # type: ignore[arg-type]  # fmt: skip

    async def scenario() -> None:
        task.wake("ns", "d", found)
        while not passes:  # until the task is inside its first pass
            await asyncio.sleep(0)
        for _ in range(50):
            task.wake("ns", "d", found)
        waiting = asyncio.create_task(task.fresh_outcome("ns", "d", found))
        release.set()
        assert await waiting is not None
        assert passes == [1, 2], "fifty events during a pass: one pass after it"
        task.CONTROLLERS[("ns", "d")].task.cancel()

    asyncio.run(scenario())


def test_a_deployment_nobody_serves_and_with_nothing_recorded_has_no_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def one_pass(namespace: str, deployment: str, _: Any) -> Outcome:
        return Outcome()

    monkeypatch.setattr(task, "reconcile_deployment", one_pass)
    empty = Indexes(adapters={}, deployments={}, pods={}, training_jobs={})  # type: ignore[arg-type]
    # What this process read of the Deployment's record: it lists a name loraplane loaded.
    monkeypatch.setitem(RECONCILERS, ("ns", "d"), Reconciler("ns", "d", record=frozenset({"x"})))

    async def scenario() -> None:
        await task.fresh_outcome("ns", "d", empty)
        assert ("ns", "d") in task.CONTROLLERS, "its record lists what loraplane loaded: it stays"
        task.CONTROLLERS[("ns", "d")].task.cancel()
        task.CONTROLLERS.clear()
        await task.fresh_outcome("ns", "e", empty)
        assert ("ns", "e") not in task.CONTROLLERS

    asyncio.run(scenario())


def test_a_slow_pass_says_so_in_the_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A pass over the threshold logs its Deployment, time and adapter count (events meanwhile waited
    for the next pass); one under it logs nothing."""

    async def one_pass(namespace: str, deployment: str, _: Any) -> Outcome:
        outcome = Outcome()
        outcome.passes["a"] = status_of.Pass(None, None, [])
        return outcome

    monkeypatch.setattr(task, "reconcile_deployment", one_pass)
    empty = Indexes(adapters={}, deployments={}, pods={}, training_jobs={})  # type: ignore[arg-type]
    caplog.set_level("INFO", logger=task.logger.name)

    async def run_once(deployment: str) -> None:
        await task.fresh_outcome("ns", deployment, empty)
        task.CONTROLLERS.clear()

    asyncio.run(run_once("quick"))
    assert not [r for r in caplog.records if "took" in r.getMessage()]
    monkeypatch.setattr(task, "SLOW_PASS_S", -1.0)
    asyncio.run(run_once("slow"))
    [line] = [r.getMessage() for r in caplog.records if "took" in r.getMessage()]
    assert line.startswith("a pass of Deployment ns/slow took ")
    assert line.endswith(" s (1 adapters)")
