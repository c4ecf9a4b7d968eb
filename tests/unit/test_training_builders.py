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
