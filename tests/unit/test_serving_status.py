"""Pure serving decisions: resolving an adapter's path, conflicts, base-model checks, the gate, and a
LoraAdapter's status from what the pods hold."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import yaml

from loraplane.api.adapter import LoraAdapter
from loraplane.builders import serving
from loraplane.status import adapter as status_of
from loraplane.status import resolution
from loraplane.status.adapter import Holding, PodResult, PodView
from loraplane.status.resolution import Problem, Wanted
from manifests import EXAMPLES

NOW = dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.UTC)


def deployment() -> dict[str, Any]:
    return dict(next(yaml.safe_load_all((EXAMPLES / "tiny-cpu" / "vllm-deployment.yaml").read_text())))


def view() -> serving.DeploymentView:
    return serving.DeploymentView.of(deployment())


def lora_adapter(name: str = "quotes", **spec: Any) -> LoraAdapter:
    body = {
        "metadata": {"name": name, "generation": 1, "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": {
            "baseModel": "tiny-llama",
            "source": {"volume": {"claimName": "loraplane-tiny", "path": "adapters/a"}},
            "serving": {"deployment": "vllm-tiny"},
            **spec,
        },
    }
    return LoraAdapter.model_validate(body)


def succeeded_job(path: str = "adapters/uid-1", r: int = 8) -> dict[str, Any]:
    adapter = {"claimName": "loraplane-tiny", "path": path, "r": r, "sha256": "ab" * 32}
    return {"status": {"adapter": adapter}}


def test_a_volume_path_is_resolved_through_the_serving_mounts() -> None:
    found = resolution.resolve(lora_adapter(), view(), None)
    assert isinstance(found, Wanted)
    assert found.path == "/models/adapters/a"
    assert found.served_name == "quotes"


def test_a_training_job_gives_path_rank_and_hash_once_it_succeeded() -> None:
    body = lora_adapter(source={"trainingJob": {"name": "tiny"}}, servedModelName="q")
    waiting = resolution.resolve(body, view(), {"status": {}})
    assert waiting == Problem("WaitingForTrainingJob", "LoraTrainingJob tiny has not succeeded yet")
    found = resolution.resolve(body, view(), succeeded_job())
    assert isinstance(found, Wanted)
    assert (found.path, found.rank, found.served_name) == ("/models/adapters/uid-1", 8, "q")


def test_a_failed_training_job_says_so() -> None:
    failed = {
        "status": {
            "conditions": [{"type": "Succeeded", "status": "False", "reason": "Failed", "message": "x"}]
        }
    }
    problem = resolution.resolve(lora_adapter(source={"trainingJob": {"name": "tiny"}}), view(), failed)
    assert isinstance(problem, Problem)
    assert problem.reason == "WaitingForTrainingJob"
    assert "failed (Failed)" in problem.message


def test_an_unmounted_claim_and_a_missing_deployment_have_their_reasons() -> None:
    other = lora_adapter(source={"volume": {"claimName": "elsewhere", "path": "a"}})
    problem = resolution.resolve(other, view(), None)
    assert isinstance(problem, Problem)
    assert problem.reason == "VolumeNotMounted"
    assert problem.terminal
    missing = resolution.resolve(lora_adapter(), None, None)
    assert isinstance(missing, Problem)
    assert missing.reason == "DeploymentNotFound"


def test_a_hugging_face_id_is_handed_to_vllm_as_is() -> None:
    found = resolution.resolve(
        lora_adapter(source={"huggingFace": {"name": "org/adapter"}}, rank=4), view(), None
    )
    assert isinstance(found, Wanted)
    assert (found.path, found.rank) == ("org/adapter", 4)


def test_the_api_key_is_the_deployments_annotation_else_the_oldest_adapters_reference() -> None:
    newer = lora_adapter("newer", serving={"deployment": "vllm-tiny", "apiKeySecretRef": {"name": "b"}})
    newer.metadata["creationTimestamp"] = "2025-02-01T00:00:00Z"
    older = lora_adapter(serving={"deployment": "vllm-tiny", "apiKeySecretRef": {"name": "a", "key": "k"}})
    plain = deployment()
    plain["metadata"]["annotations"] = {}
    assert resolution.api_key_source(serving.DeploymentView.of(plain), []) is None
    found = resolution.api_key_source(serving.DeploymentView.of(plain), [newer, older])
    assert found == resolution.ApiKeySource("a", "k", "spec.serving.apiKeySecretRef of LoraAdapter quotes")
    plain["metadata"]["annotations"] = {"loraplane.io/api-key-secret": "server-key/api"}
    found = resolution.api_key_source(serving.DeploymentView.of(plain), [newer, older])
    assert found is not None
    assert (found.secret, found.key) == ("server-key", "api")
    assert "annotation loraplane.io/api-key-secret of Deployment vllm-tiny" in found.named_by


def test_the_older_adapter_keeps_a_served_name() -> None:
    first = Wanted("a", "same", "/p", "HotLoad", "m", created="2025-01-01T00:00:00Z")
    second = Wanted("b", "same", "/q", "HotLoad", "m", created="2025-01-02T00:00:00Z")
    assert resolution.conflicts([second, first]) == {"b": "a"}


def test_in_a_tie_of_creation_seconds_the_adapter_already_serving_keeps_the_name() -> None:
    serving = Wanted("winner", "same", "/p", "HotLoad", "m", created="2025-01-01T00:00:00Z", serving=True)
    newcomer = Wanted("loser", "same", "/q", "HotLoad", "m", created="2025-01-01T00:00:00Z")
    assert resolution.conflicts([newcomer, serving]) == {"loser": "winner"}


def test_the_base_model_may_be_named_by_id_path_or_training_claim_path() -> None:
    served = view()
    by_id = Wanted("a", "a", "/p", "HotLoad", "tiny-llama")
    by_training_path = Wanted("a", "a", "/p", "HotLoad", "/mnt/claims/loraplane-tiny/model")
    other = Wanted("a", "a", "/p", "HotLoad", "facebook/opt-350m")
    assert resolution.base_model_matches(by_id, "tiny-llama", "/models/model", served)
    assert resolution.base_model_matches(by_training_path, "tiny-llama", "/models/model", served)
    assert not resolution.base_model_matches(other, "tiny-llama", "/models/model", served)


def pod(
    name: str = "p1", *, gate: str | None = "True", since: str = "2025-01-01T11:00:00Z", **status: Any
) -> PodView:
    fields: dict[str, Any] = {
        "name": name, "ip": "127.0.1.2", "phase": "Running", "containers_ready": True,
        "ready": gate == "True",
        "deleting": False, "started_at": "2025-01-01T10:00:00Z", "restart_count": 0, "gated": True,
        "gate_status": gate, "gate_reason": None, "gate_since": since,
    }  # fmt: skip
    fields.update(status)
    return PodView(**fields)


def test_a_container_that_started_after_the_gate_opened_closes_it() -> None:
    assert not pod().restarted_since_gate_opened
    assert pod(started_at="2025-01-01T11:30:00Z").restarted_since_gate_opened
    assert not pod(gate="False", started_at="2025-01-01T11:30:00Z").restarted_since_gate_opened


def test_pod_view_reads_the_gate_and_the_vllm_container() -> None:
    raw = {
        "metadata": {"name": "p", "labels": {"pod-template-hash": "h"}},
        "spec": {"readinessGates": [{"conditionType": "loraplane.io/adapters-loaded"}]},
        "status": {
            "phase": "Running",
            "podIP": "127.0.1.9",
            "conditions": [
                {"type": "ContainersReady", "status": "True"},
                {"type": "Ready", "status": "False"},
                {
                    "type": "loraplane.io/adapters-loaded",
                    "status": "False",
                    "lastTransitionTime": "2025-01-01T00:00:00Z",
                },
            ],
            "containerStatuses": [
                {"name": "vllm", "restartCount": 2, "state": {"running": {"startedAt": "x"}}}
            ],
        },
    }
    view = PodView.of(raw, "vllm")
    assert view.gated
    assert view.serving_api_up
    assert (view.gate_status, view.restart_count, view.ready) == ("False", 2, False)


def test_a_pod_knows_what_its_vllm_container_was_started_with() -> None:
    raw: dict[str, Any] = {
        "metadata": {"name": "p"},
        "spec": {
            "containers": [
                {"name": "sidecar", "args": []},
                {
                    "name": "vllm",
                    "args": ["--enable-lora", "--max-lora-rank", "8"],
                    "env": [{"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"}],
                },
            ]
        },
        "status": {},
    }
    template = serving.LoraState(lora_enabled=True, runtime_api=True, gated=True, max_lora_rank=32)
    view = PodView.of(raw, "vllm")
    assert view.lora == serving.LoraState(True, True, False, 8)
    assert not view.predates(template)
    assert view.predates_rank(template), "started with a lower --max-lora-rank than the template has"
    before = PodView.of(raw, "sidecar")
    assert before.predates(template)
    assert not pod().predates(template), "a pod whose spec was not seen is not judged"


def test_the_gate_opens_when_every_adapter_is_held_or_failed_for_good() -> None:
    wanted = [Wanted("a", "a", "/a", "HotLoad", "m"), Wanted("b", "b", "/b", "HotLoad", "m")]
    result = PodResult(pod(gate="False"), {"a": Holding(loaded=True)}, reachable=True)
    assert not result.settled(wanted)
    result.holdings["b"] = Holding(reason="Unreachable")
    assert not result.settled(wanted), "a pod that did not answer is not settled"
    result.holdings["b"] = Holding(reason="LoadFailed", error="no adapter")
    assert result.settled(wanted), "a terminal failure does not hold the pod hostage"


def test_the_gate_wait_is_bounded() -> None:
    started = pod(gate="False", started_at="2025-01-01T11:50:00Z")
    assert not status_of.gate_open_expired(started, NOW, 900)
    assert status_of.gate_open_expired(started, NOW, 300)


def outcome(adapter: LoraAdapter, *holdings: tuple[PodView, Holding]) -> Any:
    wanted = Wanted(adapter.metadata["name"], "quotes", "/models/adapters/a", "HotLoad", "tiny-llama", rank=8)
    pods = [PodResult(view, {adapter.metadata["name"]: held}, reachable=True) for view, held in holdings]
    return status_of.observe(adapter, status_of.Pass(None, wanted, pods), NOW)


def test_ready_when_every_ready_pod_holds_it() -> None:
    adapter = lora_adapter()
    status = outcome(
        adapter, (pod("p1"), Holding(loaded=True, loaded_at=NOW)), (pod("p2"), Holding(loaded=True))
    )
    ready = status.conditions[0]
    assert (ready.type, ready.status, ready.reason) == ("Ready", "True", "Loaded")
    assert (status.replicas, status.ready_replicas, status.path, status.rank) == (
        2,
        2,
        "/models/adapters/a",
        8,
    )
    assert status.pods == []  # pods that hold it are counted, not listed: the status stays small


def test_a_starting_pod_does_not_make_a_served_adapter_unready() -> None:
    starting = pod("p2", gate="False", containers_ready=False)
    status = outcome(lora_adapter(), (pod("p1"), Holding(loaded=True)), (starting, Holding()))
    assert status.conditions[0].status == "True"
    assert (status.replicas, status.ready_replicas) == (2, 1)
    assert [(p.pod, p.loaded) for p in status.pods] == [("p2", False)]


def test_while_loading_the_message_names_the_pods_that_lack_it() -> None:
    pods = [(pod(f"p{i}"), Holding()) for i in range(5)]
    status = outcome(lora_adapter(), (pod("p9"), Holding(loaded=True)), *pods)
    ready = status.conditions[0]
    assert (ready.status, ready.reason) == ("False", "Loading")
    assert ready.message == "1/6 pods hold it; not yet on p0, p1, p2 and 2 more"
    assert [p.pod for p in status.pods] == ["p0", "p1", "p2", "p3", "p4"]


@pytest.mark.parametrize(
    "reason", ["LoadFailed", "RankTooHigh", "RuntimeLoadingDisabled", "BaseModelMismatch"]
)
def test_a_terminal_failure_is_the_reason_with_the_pod_and_vllms_message(reason: str) -> None:
    status = outcome(lora_adapter(), (pod("p1"), Holding(reason=reason, error="vLLM said no")))
    ready = status.conditions[0]
    assert (ready.status, ready.reason) == ("False", reason)
    assert ready.message == "pod p1: vLLM said no"
    assert status.pods[0].last_error == "vLLM said no"


def test_pods_left_to_the_rollout_are_waiting_for_rollout_not_no_replicas() -> None:
    adapter = lora_adapter()
    wanted = Wanted("quotes", "quotes", "/models/adapters/a", "HotLoad", "tiny-llama")
    status = status_of.observe(adapter, status_of.Pass(None, wanted, [], predating_pods=2), NOW)
    ready = status.conditions[0]
    assert (ready.status, ready.reason) == ("False", "WaitingForRollout")
    assert "2 pod(s) started before LoRA was enabled" in ready.message
    assert status.replicas == 0


def test_a_problem_before_any_pod_is_the_condition() -> None:
    adapter = lora_adapter()
    problem = Problem("DeploymentNotFound", "Deployment vllm-tiny does not exist in this namespace")
    status = status_of.observe(adapter, status_of.Pass(problem, None, []), NOW)
    ready = status.conditions[0]
    assert (ready.status, ready.reason) == ("False", "DeploymentNotFound")
    assert status.observed_generation == 1
