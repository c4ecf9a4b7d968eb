"""`make demo`'s choices that need no cluster: which cluster, which manifests, how vLLM is reached."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from loraplane.api.storage import S3CredentialsSecret
from loraplane.builders import serving
from loraplane_devcluster import demo


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("scenario", [demo.LOCAL, demo.EXISTING], ids=["local", "existing"])
def test_each_scenario_trains_an_adapter_that_its_own_vllm_deployment_serves(scenario: demo.Scenario) -> None:
    job = next(d for d in _docs(scenario.training_job) if d["kind"] == "LoraTrainingJob")
    deployment = next(d for d in _docs(scenario.vllm) if d["kind"] == "Deployment")
    published = job["spec"]["adapter"]
    assert published["deployment"] == deployment["metadata"]["name"]
    assert published.get("mode", "HotLoad") == "HotLoad"
    assert deployment["spec"]["replicas"] == 2, "the demo shows the adapter on every replica"
    # Either loraplane may enable LoRA (the opt-in, one restart) or it is on already (no restart).
    opted_in = (deployment["metadata"].get("annotations") or {}).get("loraplane.io/manage-lora") == "true"
    assert opted_in or serving.lora_state(deployment).missing(job["spec"]["lora"]["r"]) == []
    # The output claim of the job is mounted by the serving pods, where vLLM finds the adapter.
    claim = job["spec"]["output"]["volume"]["claimName"]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert claim in {(v.get("persistentVolumeClaim") or {}).get("claimName") for v in volumes}


def test_the_local_cluster_is_the_default_and_the_existing_one_needs_the_flag() -> None:
    assert demo.parse_args([]).existing_cluster is False
    assert demo.parse_args(["--existing-cluster"]).existing_cluster is True


def test_existing_cluster_uses_kubeconfig_and_never_starts_the_local_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "real", "cluster": {"server": "https://192.0.2.10:6443"}}],
                "users": [{"name": "me", "user": {"token": "t"}}],
                "contexts": [{"name": "real", "context": {"cluster": "real", "user": "me"}}],
                "current-context": "real",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", f"{config}:{tmp_path / 'other'}")
    monkeypatch.setattr(demo.binaries, "resolve_bin_dir", lambda _explicit, **_: tmp_path)

    def no_local_cluster(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("the local cluster was started")

    monkeypatch.setattr(demo.controlplane, "up", no_local_cluster)
    target = demo.connect(demo.parse_args(["--existing-cluster"]), say=lambda _line: None)
    assert target.kubeconfig == config
    assert target.scenario is demo.EXISTING
    assert not target.local
    assert target.kube.api.configuration.host == "https://192.0.2.10:6443"


def test_chart_values_go_to_the_existing_clusters_install_only() -> None:
    images = ["image.repository=registry.example.com/you/operator", "training.workerImage=r/worker:1"]
    args = demo.parse_args(["--existing-cluster", "--set", images[0], "--set", images[1]])
    assert args.set == images
    with pytest.raises(SystemExit):
        demo.parse_args(["--set", images[0]])


def test_existing_cluster_without_a_kubeconfig_says_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(demo.DemoError, match="set KUBECONFIG"):
        demo.existing_kubeconfig({"KUBECONFIG": str(tmp_path / "missing")})


def test_vllm_is_reached_through_the_api_servers_pod_proxy() -> None:
    path = demo.pod_proxy_path("demo", "vllm-tiny-abc", "/v1/completions")
    assert path == "/api/v1/namespaces/demo/pods/vllm-tiny-abc:8000/proxy/v1/completions"


def test_the_local_demo_starts_its_cluster_without_kube_proxy_and_coredns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `make demo` builds only the control-plane set (scripts/setup.sh SETUP_BINARIES), so the
    # cluster it starts must not ask for the services set.
    asked: dict[str, Any] = {}

    def up(_run_dir: Any, **kwargs: Any) -> Any:
        asked.update(kwargs)
        raise demo.DemoError("stop here")

    monkeypatch.setattr(demo.controlplane, "up", up)
    with pytest.raises(demo.DemoError, match="stop here"):
        demo.connect(demo.parse_args(["--run-dir", str(tmp_path)]), say=lambda _line: None)
    assert asked["cluster_services"] is False
    makefile = (demo.ROOT / "Makefile").read_text()
    demo_recipe = makefile.split("\ndemo:\n", 1)[1].split("\n\n", 1)[0]
    assert "SETUP_BINARIES=control-plane scripts/setup.sh" in demo_recipe


LAYOUT = demo.StoreLayout(
    bucket=demo.bucket_for("demo"), endpoint="http://10.250.1.1:7070", region="us-east-1"
)


def test_the_store_demo_trains_from_and_to_the_store_with_no_claim() -> None:
    training, _ = demo.manifests(demo.LOCAL_S3, LAYOUT)
    job = next(d for d in training if d["kind"] == "LoraTrainingJob")
    spec = job["spec"]
    assert spec["baseModel"] == {"s3": LAYOUT.location(demo.MODEL_KEY)}
    assert spec["dataset"]["s3"]["uri"] == "s3://loraplane-demo/data/quotes.jsonl"
    assert spec["dataset"]["textField"] == "text", "the rest of the field is kept"
    assert spec["output"]["s3"]["uri"] == "s3://loraplane-demo/runs"
    assert spec["output"]["s3"]["connection"]["credentialsSecret"] == {"name": demo.STORE_SECRET}
    assert "volume" not in yaml.safe_dump(training), "no claim anywhere in the job"
    # The same job otherwise: it publishes to the same Deployment.
    volume_job = next(d for d in _docs(demo.LOCAL.training_job) if d["kind"] == "LoraTrainingJob")
    assert spec["adapter"] == volume_job["spec"]["adapter"]


def test_the_store_demos_vllm_has_no_claim_and_the_fetcher_the_operator_would_add() -> None:
    _, vllm = demo.manifests(demo.LOCAL_S3, LAYOUT)
    deployment = next(d for d in vllm if d["kind"] == "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    assert not [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
    # The base model: an init container of the worker image copies it into an emptyDir vLLM reads.
    (init,) = spec["initContainers"]
    env = {e["name"]: e for e in init["env"]}
    assert env["MODEL_URI"]["value"] == "s3://loraplane-demo/models/tiny-llama"
    assert env["MODEL_DIR"]["value"] == "/models/model"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == demo.STORE_SECRET
    assert all("value" in e or "secretKeyRef" in e["valueFrom"] for e in init["env"])
    assert init["image"].startswith("ghcr.io/loraplane/worker:")
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[demo.BASE_MODEL_VOLUME] == {"name": demo.BASE_MODEL_VOLUME, "emptyDir": {}}
    vllm_container = spec["containers"][0]
    assert {"name": demo.BASE_MODEL_VOLUME, "mountPath": "/models", "readOnly": True} in vllm_container[
        "volumeMounts"
    ]
    # The fetcher is exactly what the operator writes, and the operator takes it as it is: no
    # opt-in, so no template change and vLLM starts once.
    fetcher = next(c for c in spec["containers"] if c["name"] == serving.FETCHER_CONTAINER)
    settings = demo.chart_fetcher_settings()
    secret = S3CredentialsSecret(name=demo.STORE_SECRET)
    assert fetcher == serving.fetcher_container(settings, [secret])
    view = serving.DeploymentView.of(deployment)
    assert view.has_fetcher
    assert not view.opted_in
    assert serving.lora_state(deployment).missing(8) == []


def test_storage_flag_defaults_to_the_claim_and_s3_is_for_the_local_cluster() -> None:
    assert demo.parse_args([]).storage == "volume"
    assert demo.parse_args(["--storage", "s3"]).storage == "s3"
    with pytest.raises(SystemExit):
        demo.parse_args(["--storage", "s3", "--existing-cluster"])
    makefile = (demo.ROOT / "Makefile").read_text()
    assert "$(if $(STORAGE),--storage $(STORAGE))" in makefile.split("\ndemo:\n", 1)[1].split("\n\n", 1)[0]
