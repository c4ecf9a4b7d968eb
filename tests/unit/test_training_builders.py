"""Pure builders for a LoraTrainingJob's ConfigMap, Job and published LoraAdapter."""

from __future__ import annotations

import copy

import pytest
import yaml

from loraplane.api.training_job import LoraTrainingJob
from loraplane.builders import training as build
from loraplane.settings import Settings
from manifests import example_training_job

SETTINGS = Settings(worker_image="registry.example/worker:1", gpu_resource_name="nvidia.com/gpu")
UID = "6f1c2d3e-0000-4000-8000-000000000001"


def job(**changes: object) -> LoraTrainingJob:
    body = copy.deepcopy(example_training_job())
    body["metadata"].update(uid=UID, namespace="team", generation=1)
    for key, value in changes.items():
        body["spec"][key] = value
    return LoraTrainingJob.model_validate(body)


def test_worker_input_carries_the_spec_groups_and_the_run_folder() -> None:
    spec = job()
    config = build.worker_input(spec, SETTINGS)
    assert config.model.name_or_path == "facebook/opt-350m"
    assert config.dataset.text_field == "quote"
    assert config.lora == spec.spec.lora, "the spec's own model, not a copy of its fields"
    assert config.training == spec.spec.training
    assert config.output.dir == f"/mnt/claims/loraplane-adapters/opt-350m/{UID}"


def test_the_config_map_holds_the_inputs_wire_form() -> None:
    body = build.config_map(job(training={"sftArgs": {"weight_decay": 0.01}, "maxSteps": 5}), SETTINGS)
    document = yaml.safe_load(body["data"]["config.yaml"])
    assert document["model"] == {"nameOrPath": "facebook/opt-350m"}
    assert document["training"]["maxSteps"] == 5
    assert document["training"]["sftArgs"] == {"weight_decay": 0.01}
    assert "volume" not in document["dataset"]


def test_volume_sources_resolve_to_claim_mounts() -> None:
    spec = {"volume": {"claimName": "models", "path": "tiny/model"}}
    data = {"volume": {"claimName": "data", "path": "quotes.jsonl"}, "textField": "text"}
    config = build.worker_input(job(baseModel=spec, dataset=data), SETTINGS)
    assert config.model.name_or_path == "/mnt/claims/models/tiny/model"
    assert config.output.base_model_name == "/mnt/claims/models/tiny/model"
    assert config.dataset.path == "/mnt/claims/data/quotes.jsonl"
    assert config.dataset.volume is None
    pod = build.pod_spec(job(baseModel=spec, dataset=data), SETTINGS)
    claims = {v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
              for v in pod["volumes"] if "persistentVolumeClaim" in v}  # fmt: skip
    assert claims == {"loraplane-adapters": False, "models": True, "data": True}


def claims_of(spec: LoraTrainingJob) -> list[tuple[str, bool]]:
    pod = build.pod_spec(spec, SETTINGS)
    return [(v["persistentVolumeClaim"]["claimName"], v["persistentVolumeClaim"]["readOnly"])
            for v in pod["volumes"] if "persistentVolumeClaim" in v]  # fmt: skip


def test_an_eval_dataset_is_mounted_like_the_data_each_claim_once() -> None:
    data = {"volume": {"claimName": "data", "path": "quotes.jsonl"}, "textField": "quote"}
    elsewhere = job(dataset=data, evalDataset={"volume": {"claimName": "held-out", "path": "eval.jsonl"}})
    config = build.worker_input(elsewhere, SETTINGS)
    assert config.eval_dataset is not None
    assert config.eval_dataset.path == "/mnt/claims/held-out/eval.jsonl"
    assert config.eval_dataset.volume is None
    assert config.eval_dataset.text_field == "quote", "read with the training data's column"
    assert config.has_eval
    assert claims_of(elsewhere) == [("loraplane-adapters", False), ("data", True), ("held-out", True)]

    beside = job(dataset=data, evalDataset={"volume": {"claimName": "data", "path": "eval.jsonl"}})
    assert build.worker_input(beside, SETTINGS).eval_dataset.path == "/mnt/claims/data/eval.jsonl"  # type: ignore[union-attr]
    assert claims_of(beside) == [("loraplane-adapters", False), ("data", True)]
    pod = build.pod_spec(beside, SETTINGS)
    paths = [m["mountPath"] for m in pod["containers"][0]["volumeMounts"]]
    assert len(paths) == len(set(paths))
    # In the output claim: mounted once, writable (the output's mount).
    in_output = job(dataset=data, evalDataset={"volume": {"claimName": "loraplane-adapters", "path": "e"}})
    assert claims_of(in_output) == [("loraplane-adapters", False), ("data", True)]


def test_an_eval_dataset_from_the_hub_keeps_its_own_split_and_column() -> None:
    spec = job(evalDataset={"name": "org/eval", "config": "en", "split": "test", "textField": "body"})
    held_out = build.worker_input(spec, SETTINGS).eval_dataset
    assert held_out is not None
    assert (held_out.name, held_out.config, held_out.split, held_out.text_field) == (
        "org/eval", "en", "test", "body"
    )  # fmt: skip
    assert held_out.path is None
    document = yaml.safe_load(build.config_map(spec, SETTINGS)["data"]["config.yaml"])
    assert document["evalDataset"] == {
        "name": "org/eval",
        "config": "en",
        "split": "test",
        "textField": "body",
    }
    assert "evalDataset" not in yaml.safe_load(build.config_map(job(), SETTINGS)["data"]["config.yaml"])


def test_batch_job_fails_fast_on_input_errors_and_ignores_disruptions() -> None:
    body = build.batch_job(job(backoffLimit=2, activeDeadlineSeconds=600), SETTINGS)
    spec = body["spec"]
    assert body["metadata"]["name"] == "opt-350m-quotes-train"
    assert spec["backoffLimit"] == 2
    assert spec["activeDeadlineSeconds"] == 600
    fail_job, ignore = spec["podFailurePolicy"]["rules"]
    assert fail_job["action"] == "FailJob"
    assert fail_job["onExitCodes"]["values"] == [65]
    assert ignore == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


def test_pod_runs_unprivileged_without_api_access() -> None:
    pod = build.pod_spec(job(), SETTINGS)
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    [container] = pod["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["image"] == "registry.example/worker:1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["terminationMessagePath"] == "/dev/termination-log"


def test_hf_token_comes_from_the_secret_by_reference_only() -> None:
    pod = build.pod_spec(job(hfTokenSecretRef={"name": "hf", "key": "token"}), SETTINGS)
    [container] = pod["containers"]
    [token] = [e for e in container["env"] if e["name"] == "HF_TOKEN"]
    assert token == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    assert "value" not in token


@pytest.mark.parametrize(("gpus", "resource"), [(0, None), (2, "example.com/gpu")])
def test_gpu_resource_follows_spec_and_settings(gpus: int, resource: str | None) -> None:
    resources = {"gpus": gpus, "gpuResourceName": resource} if resource else {"gpus": gpus}
    limits = build.pod_spec(job(resources=resources), SETTINGS)["containers"][0]["resources"].get(
        "limits", {}
    )
    assert limits == ({resource: str(gpus)} if resource else {})


def test_published_adapter_is_labelled_not_owned() -> None:
    adapter = build.published_adapter(job())
    assert adapter["metadata"]["name"] == "english-quotes"
    assert "ownerReferences" not in adapter["metadata"]
    assert adapter["metadata"]["labels"]["loraplane.io/training-job"] == "opt-350m-quotes"
    assert adapter["spec"]["source"] == {"trainingJob": {"name": "opt-350m-quotes"}}
    assert adapter["spec"]["baseModel"] == "facebook/opt-350m"


def test_publication_names_the_base_model_as_the_deployment_serves_it() -> None:
    spec = {"volume": {"claimName": "models", "path": "tiny/model"}}
    served = job(baseModel=spec, adapter={"deployment": "vllm", "baseModel": "tiny-llama"})
    assert build.worker_input(served, SETTINGS).model.name_or_path == "/mnt/claims/models/tiny/model"
    assert build.worker_input(served, SETTINGS).served_base_model == "tiny-llama"
    assert build.published_adapter(served)["spec"]["baseModel"] == "tiny-llama"


# --- many nodes and Kueue ------------------------------------------------------------------------------


def two_nodes(**changes: object) -> LoraTrainingJob:
    spec = job(**changes)
    spec.spec.resources.nodes = 2
    return spec


def test_one_node_is_a_plain_job_with_no_service_or_queue_fields() -> None:
    body = build.batch_job(job(), SETTINGS)
    assert "completionMode" not in body["spec"]
    assert "subdomain" not in body["spec"]["template"]["spec"]
    assert "suspend" not in body["spec"]
    assert not any(k.startswith("kueue.x-k8s.io/") for k in body["metadata"]["labels"])


def test_many_nodes_is_an_indexed_job_all_running_at_once_behind_a_headless_service() -> None:
    spec = two_nodes(backoffLimit=3)
    body = build.batch_job(spec, SETTINGS)["spec"]
    assert (body["completionMode"], body["completions"], body["parallelism"]) == ("Indexed", 2, 2)
    assert body["backoffLimit"] == 6, "a group restart may fail every node's pod"
    pod = body["template"]["spec"]
    assert pod["subdomain"] == "opt-350m-quotes-train"
    service = build.rendezvous_service(spec)
    assert service["metadata"]["name"] == pod["subdomain"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"loraplane.io/training-job-uid": UID}
    assert body["template"]["metadata"]["labels"]["loraplane.io/training-job-uid"] == UID


def test_each_node_is_told_where_index_0_waits_and_for_how_long() -> None:
    settings = Settings(rendezvous_timeout_seconds=90, cluster_domain="cluster.example")
    container = build.batch_job(two_nodes(), settings)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LORAPLANE_NNODES"] == "2"
    assert env["LORAPLANE_RDZV_ENDPOINT"] == (
        "opt-350m-quotes-train-0.opt-350m-quotes-train.team.svc.cluster.example:29400"
    )
    assert env["LORAPLANE_RDZV_TIMEOUT_SECONDS"] == "90"
    assert env["LORAPLANE_RDZV_ID"] == UID
    assert {"name": "rendezvous", "containerPort": 29400} in container["ports"]


def test_a_rendezvous_timeout_fails_the_job_at_once_and_input_errors_still_do() -> None:
    rules = build.batch_job(two_nodes(), SETTINGS)["spec"]["podFailurePolicy"]["rules"]
    fail_codes = {v for r in rules if r["action"] == "FailJob" for v in r["onExitCodes"]["values"]}
    assert fail_codes == {65, 69}
    assert rules[-1]["action"] == "Ignore"


def test_names_of_the_longest_job_stay_within_dns_labels() -> None:
    spec = two_nodes()
    spec.metadata["name"] = "a" * 52
    body = build.batch_job(spec, SETTINGS)
    service = build.rendezvous_service(spec)
    assert len(service["metadata"]["name"]) <= 63
    assert len(f"{body['metadata']['name']}-63") <= 63, "the Job controller's pod hostname"


def test_a_queue_name_labels_the_job_for_kueue_and_creates_it_suspended() -> None:
    body = build.batch_job(job(queueName="team-a", workloadPriorityClassName="low"), SETTINGS)
    assert body["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert body["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "low"
    assert body["spec"]["suspend"] is True
    assert "kueue.x-k8s.io/queue-name" not in body["spec"]["template"]["metadata"]["labels"]
