"""The generated CRDs on a real API server: schema and CEL rules enforced, kubectl shows the docs."""

from __future__ import annotations

import json

import pytest
import yaml

from loraplane_devcluster.testing import Kube, wait_until
from loraplane_fixtures import Release
from manifests import INVALID, Invalid, example_adapter, example_training_job

pytestmark = pytest.mark.cluster


def create(kube: Kube, namespace: str, body: dict, *, dry_run: bool = False, check: bool = True):
    args = ["create", "-n", namespace, "-f", "-", "-o", "json"]
    if dry_run:
        args.append("--dry-run=server")
    return kube.kubectl(*args, input=yaml.safe_dump(body), check=check)


def test_kubectl_explain_shows_field_descriptions(kube: Kube, chart_release: Release) -> None:
    explained = kube.kubectl("explain", "loratrainingjob.spec.lora").stdout
    assert "LoRA rank, 1-512" in explained
    assert "PEFT task type" in explained
    adapter = kube.kubectl("explain", "loraadapter.spec.serving.mode").stdout
    assert "HotLoad" in adapter


@pytest.mark.parametrize("body", [example_training_job(), example_adapter()], ids=["job", "adapter"])
def test_examples_are_accepted(kube: Kube, chart_release: Release, namespace: str, body: dict) -> None:
    created = json.loads(create(kube, namespace, body, dry_run=True).stdout)
    assert created["metadata"]["name"] == body["metadata"]["name"]


def test_server_applies_defaults(kube: Kube, chart_release: Release, namespace: str) -> None:
    body = example_training_job()
    del body["spec"]["lora"]
    created = json.loads(create(kube, namespace, body, dry_run=True).stdout)
    lora = created["spec"]["lora"]
    assert (lora["r"], lora["loraAlpha"], lora["targetModules"]) == (16, 32, ["all-linear"])
    assert created["spec"]["training"]["learningRate"] == pytest.approx(2e-4)


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_invalid_manifest_is_rejected_naming_the_field(
    kube: Kube, chart_release: Release, namespace: str, case: Invalid
) -> None:
    result = create(kube, namespace, case.manifest(), check=False)
    assert result.returncode != 0, f"{case.id} was accepted"
    message = result.stderr
    assert "is invalid" in message, message
    assert case.field in message, f"{case.field} not named in: {message}"


def _created_job(kube: Kube, namespace: str) -> dict:
    body = example_training_job()
    body["spec"]["training"]["sftArgs"] = {"weight_decay": 0.01}
    return json.loads(create(kube, namespace, body).stdout)


@pytest.mark.parametrize(
    ("patch", "what"),
    [
        ({"spec": {"lora": {"r": 8}}}, "a LoRA field"),
        ({"spec": {"training": {"sftArgs": {"weight_decay": 0.1}}}}, "a pass-through field"),
    ],
)
def test_training_job_spec_is_immutable(
    kube: Kube, chart_release: Release, namespace: str, patch: dict, what: str
) -> None:
    job = _created_job(kube, namespace)
    name = job["metadata"]["name"]
    result = kube.kubectl(
        "patch", "ltj", name, "-n", namespace, "--type=merge", "-p", json.dumps(patch), check=False
    )
    assert result.returncode != 0, f"editing {what} was accepted"
    assert "spec is immutable" in result.stderr


def test_status_is_a_subresource_and_keeps_the_spec(
    kube: Kube, chart_release: Release, namespace: str
) -> None:
    job = _created_job(kube, namespace)
    name = job["metadata"]["name"]
    status = {
        "status": {"attempts": 1, "conditions": [{"type": "Accepted", "status": "True", "reason": "Valid"}]}
    }
    kube.kubectl(
        "patch",
        "ltj",
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )
    got = json.loads(kube.kubectl("get", "ltj", name, "-n", namespace, "-o", "json").stdout)
    assert got["status"]["attempts"] == 1
    assert got["metadata"]["generation"] == job["metadata"]["generation"]


def test_kubectl_get_lora_lists_both_kinds(kube: Kube, chart_release: Release, namespace: str) -> None:
    create(kube, namespace, example_training_job())
    create(kube, namespace, example_adapter())
    listed = kube.kubectl("get", "lora", "-n", namespace).stdout
    assert "loratrainingjob.loraplane.io/opt-350m-quotes" in listed
    assert "loraadapter.loraplane.io/english-quotes" in listed
    assert "PROGRESS" in listed
    assert "MODE" in listed


def test_objects_owned_by_a_job_are_garbage_collected(
    kube: Kube, chart_release: Release, namespace: str
) -> None:
    job = json.loads(create(kube, namespace, example_training_job()).stdout)
    owned = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned-by-job",
            "ownerReferences": [
                {
                    "apiVersion": "loraplane.io/v1alpha1",
                    "kind": "LoraTrainingJob",
                    "name": job["metadata"]["name"],
                    "uid": job["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "data": {"k": "v"},
    }
    create(kube, namespace, owned)
    kube.kubectl("delete", "ltj", job["metadata"]["name"], "-n", namespace, "--wait=false")

    def configmap_gone() -> bool:
        return kube.kubectl("get", "configmap", "owned-by-job", "-n", namespace, check=False).returncode != 0

    wait_until("the garbage collector to delete the owned ConfigMap", configmap_gone, timeout_s=60)
