"""The Deployment as one serving pass reads it: `DeploymentView`, parsed once from the body."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
import yaml

from loraplane.builders import serving
from loraplane.builders.serving import ClaimMount, DeploymentView
from manifests import EXAMPLES


def sample() -> dict[str, Any]:
    """The demo's Deployment with a sidecar, a second claim, Static entries and loraplane's records."""
    body = dict(next(yaml.safe_load_all((EXAMPLES / "tiny-cpu" / "vllm-deployment.yaml").read_text())))
    body["metadata"].update(namespace="serving", uid="d-uid", resourceVersion="42")
    body["metadata"]["annotations"] = {
        serving.OPT_IN_ANNOTATION: "true",
        serving.API_KEY_ANNOTATION: "vllm-key/api",
        serving.STATIC_ANNOTATION: json.dumps(["pinned"]),
        serving.SETTINGS_ANNOTATION: json.dumps(
            {"flags": {"--enable-lora": None}, "env": True, "gate": True}
        ),
    }
    spec = body["spec"]["template"]["spec"]
    vllm = spec["containers"][0]
    vllm["args"] += [
        "--max-lora-rank=32",
        "--lora-modules",
        "own=/models/own",
        json.dumps({"name": "pinned", "path": "/models/p", "base_model_name": "tiny-llama"}),
    ]
    vllm["env"].append({"name": serving.RUNTIME_ENV, "value": "True"})
    vllm["volumeMounts"].append({"name": "more", "mountPath": "/adapters/", "subPath": "/runs/"})
    spec["volumes"].append({"name": "more", "persistentVolumeClaim": {"claimName": "other"}})
    spec["containers"].insert(0, {"name": "proxy", "image": "envoy", "args": ["--enable-lora"]})
    return body


def test_every_field_is_read_from_the_body() -> None:
    view = DeploymentView.of(sample())
    assert (view.name, view.namespace, view.uid, view.resource_version) == (
        "vllm-tiny",
        "serving",
        "d-uid",
        "42",
    )
    assert view.replicas == 2
    assert view.container_name == "vllm"  # the one whose image says vllm, not the sidecar
    assert view.args[:2] == ("--model", "/models/model")
    assert view.base_model_name == "tiny-llama"
    assert view.served_model_names == ("tiny-llama",)
    assert view.port == 8000
    assert dict(view.env)[serving.RUNTIME_ENV] == "True"
    assert "POD_IP" not in dict(view.env)  # a valueFrom entry has no value to read
    # No --enable-lora in the vLLM container (the sidecar's does not count), no gate: both removed.
    assert view.lora == serving.LoraState(lora_enabled=False, runtime_api=True, gated=False, max_lora_rank=32)
    assert view.additions_removed == ("--enable-lora", f"readiness gate {serving.GATE}")
    assert dict(view.lora_modules) == {"own": "/models/own", "pinned": "/models/p"}
    assert view.opted_in
    assert (view.api_key, view.api_key_error) == (("vllm-key", "api"), None)
    assert view.managed_static == ("pinned",)
    assert view.claim_mounts == (
        ClaimMount("loraplane-tiny", "", "/models"),
        ClaimMount("other", "runs", "/adapters/"),
    )


def test_paths_through_the_mounts_are_those_path_in_deployment_gave() -> None:
    body = sample()
    view = DeploymentView.of(body)
    assert view.path_of("loraplane-tiny", "adapters/a") == "/models/adapters/a"
    assert view.path_of("other", "runs/x/") == "/adapters/x"
    assert view.path_of("other", "runs") == "/adapters"
    assert view.path_of("other", "elsewhere/x") is None
    assert view.path_of("missing", "x") is None
    for claim, path in [("loraplane-tiny", "a"), ("other", "runs/y"), ("other", "no")]:
        assert view.path_of(claim, path) == serving.path_in_deployment(body, claim, path)


def test_a_bare_deployment_reads_as_defaults() -> None:
    view = DeploymentView.of({"metadata": {"name": "plain"}, "spec": {}})
    assert view.container_name is None
    assert (view.args, view.env, view.claim_mounts, view.lora_modules) == ((), (), (), ())
    assert view.lora == serving.LoraState(False, False, False, serving.VLLM_DEFAULT_MAX_LORA_RANK)
    assert (view.port, view.base_model_name, view.replicas) == (serving.VLLM_DEFAULT_PORT, "", None)
    assert not view.opted_in
    assert view.api_key is None
    assert view.additions_removed == ()


def test_a_malformed_api_key_annotation_is_kept_as_its_error() -> None:
    body = sample()
    body["metadata"]["annotations"][serving.API_KEY_ANNOTATION] = "Not A Secret"
    view = DeploymentView.of(body)
    assert view.api_key is None
    assert view.api_key_error is not None
    assert "<secret>/<key>" in view.api_key_error


def test_the_view_is_frozen_and_does_not_follow_the_body() -> None:
    body = sample()
    view = DeploymentView.of(body)
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.replicas = 3  # type: ignore[misc]
    body["spec"]["template"]["spec"]["containers"][1]["args"].append("--enable-lora")
    body["metadata"]["annotations"].clear()
    assert not view.lora.lora_enabled
    assert view.opted_in
    assert DeploymentView.of(body).lora.lora_enabled
