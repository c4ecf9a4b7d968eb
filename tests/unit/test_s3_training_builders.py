"""A LoraTrainingJob with object-store locations: the API's one-of rules, the chart defaults, the pod
the builder renders (credentials by reference only, an emptyDir and no claim), and the status."""

from __future__ import annotations

import copy
import json

import pytest
import yaml
from pydantic import ValidationError

from loraplane.api.adapter import LoraAdapter
from loraplane.api.storage import S3Connection, S3CredentialsSecret
from loraplane.api.training_job import LoraTrainingJob
from loraplane.api.worker import TrainingReport, WorkerInput
from loraplane.builders import training as build
from loraplane.handlers import training_jobs
from loraplane.settings import Settings
from loraplane.status import resolution
from loraplane.status import training as status_of
from manifests import example_training_job

UID = "6f1c2d3e-0000-4000-8000-000000000002"
# The chart's cluster-wide store, as `objectStore` in values.yaml sets it.
CHART_STORE = S3Connection(
    endpoint="http://store.storage:7070",
    region="eu-central-1",
    path_style=True,
    credentials_secret=S3CredentialsSecret(name="store-creds"),
)
SETTINGS = Settings(worker_image="registry.example/worker:1", object_store=CHART_STORE)


def s3_job(**changes: object) -> LoraTrainingJob:
    body = copy.deepcopy(example_training_job())
    body["metadata"].update(name="s3-run", uid=UID, namespace="team", generation=1)
    body["spec"]["baseModel"] = {"s3": {"uri": "s3://models/tiny/model"}}
    body["spec"]["dataset"] = {"s3": {"uri": "s3://data/quotes.jsonl"}, "textField": "text"}
    body["spec"]["output"] = {"s3": {"uri": "s3://runs/adapters"}}
    body["spec"].pop("adapter", None)
    for key, value in changes.items():
        body["spec"][key] = value
    return LoraTrainingJob.model_validate(body)


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("baseModel", {"name": "x/y", "s3": {"uri": "s3://models/m"}}, "baseModel.s3"),
        ("baseModel", {}, "baseModel.s3"),
        ("dataset", {"volume": {"claimName": "d"}, "s3": {"uri": "s3://data/d"}}, "dataset.s3"),
        ("output", {"volume": {"claimName": "o"}, "s3": {"uri": "s3://runs/o"}}, "output.s3"),
        ("output", {}, "output.s3"),
    ],
)
def test_exactly_one_location_and_the_message_names_the_field(field: str, value: dict, named: str) -> None:
    with pytest.raises(ValidationError) as raised:
        s3_job(**{field: value})
    assert named in str(raised.value)


def test_a_bad_uri_is_refused() -> None:
    with pytest.raises(ValidationError, match="pattern"):
        s3_job(output={"s3": {"uri": "s3://A_bucket/x"}})
    with pytest.raises(ValidationError, match=r"\.\."):
        s3_job(output={"s3": {"uri": "s3://runs/a/../b"}})


def test_worker_input_has_local_folders_the_uris_and_the_merged_connection() -> None:
    override = {"uri": "s3://data/quotes.jsonl", "connection": {"region": "us-west-2"}}
    config = build.worker_input(s3_job(dataset={"s3": override, "textField": "text"}), SETTINGS)
    assert config.model.name_or_path == build.LOCAL_MODEL
    assert config.model.s3 is not None
    assert config.model.s3.uri == "s3://models/tiny/model"
    assert config.model.s3.connection == CHART_STORE
    assert config.dataset.path == build.LOCAL_DATASET
    assert config.dataset.s3 is not None
    assert config.dataset.s3.connection is not None
    # Per object over the chart, field by field.
    assert config.dataset.s3.connection.region == "us-west-2"
    assert config.dataset.s3.connection.endpoint == CHART_STORE.endpoint
    assert config.output.dir == build.LOCAL_OUTPUT
    assert config.output.s3 is not None
    assert config.output.s3.uri == f"s3://runs/adapters/{UID}"
    # With no shared path, the URI names the base model until spec.adapter.baseModel does.
    assert config.output.base_model_name == "s3://models/tiny/model"
    # The worker reads back what the operator wrote.
    wire = yaml.safe_load(build.config_map(s3_job(), SETTINGS)["data"]["config.yaml"])
    assert WorkerInput.model_validate(wire).output.s3 == build.worker_input(s3_job(), SETTINGS).output.s3


def test_an_eval_dataset_in_the_store_is_fetched_to_its_own_local_folder() -> None:
    volumes = {
        "baseModel": {"name": "facebook/opt-350m"},
        "dataset": {"volume": {"claimName": "data", "path": "quotes.jsonl"}, "textField": "quote"},
        "output": {"volume": {"claimName": "out"}},
    }
    spec = s3_job(**volumes, evalDataset={"s3": {"uri": "s3://data/eval.jsonl"}})
    config = build.worker_input(spec, SETTINGS)
    held_out = config.eval_dataset
    assert held_out is not None
    assert held_out.path == build.LOCAL_EVAL_DATASET != config.dataset.path
    assert held_out.s3 is not None
    assert held_out.s3.connection == CHART_STORE
    assert build.credentials_by_field(spec, SETTINGS) == {
        "spec.evalDataset.s3": CHART_STORE.credentials_secret
    }
    pod = build.pod_spec(spec, SETTINGS)
    assert {"name": "local", "emptyDir": {}} in pod["volumes"], "the one store input needs the local disk"
    env = {e["name"] for e in pod["containers"][0]["env"]}
    assert "AWS_ACCESS_KEY_ID" in env


def test_an_s3_job_mounts_an_empty_dir_and_no_claim() -> None:
    pod = build.pod_spec(s3_job(), SETTINGS)
    assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    local = next(v for v in pod["volumes"] if v["name"] == "local")
    assert local == {"name": "local", "emptyDir": {}}
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["local"] == build.LOCAL_MOUNT
    # A volume job has no such disk; a mixed job (model in the store, output on a claim) has both.
    mixed = build.pod_spec(s3_job(output={"volume": {"claimName": "out"}}), SETTINGS)
    assert {v["name"] for v in mixed["volumes"]} >= {"local", "claim-0"}


def test_credentials_come_from_the_secret_by_reference_and_the_token_is_optional() -> None:
    env = {e["name"]: e for e in build.pod_spec(s3_job(), SETTINGS)["containers"][0]["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {
        "secretKeyRef": {"name": "store-creds", "key": "accessKeyId"}
    }
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "store-creds", "key": "secretAccessKey"}
    }
    assert env["AWS_SESSION_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "store-creds", "key": "sessionToken", "optional": True}
    }
    assert all("value" not in env[name] for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))


def test_no_secret_means_no_variables_so_the_pods_identity_applies() -> None:
    settings = Settings(object_store=S3Connection(region="us-east-1"))
    env = build.pod_spec(s3_job(), settings)["containers"][0]["env"]
    assert not [e for e in env if e["name"].startswith("AWS_")]


def test_key_names_of_a_per_object_secret_are_honoured() -> None:
    connection = {"credentialsSecret": {"name": "mine", "accessKeyIdKey": "id", "secretAccessKeyKey": "key"}}
    job = s3_job(
        baseModel={"s3": {"uri": "s3://models/m", "connection": connection}},
        dataset={"s3": {"uri": "s3://data/d", "connection": connection}},
        output={"s3": {"uri": "s3://runs/o", "connection": connection}},
    )
    env = {e["name"]: e for e in build.pod_spec(job, SETTINGS)["containers"][0]["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "mine", "key": "id"}
    assert training_jobs.problems_only_the_operator_sees(job) == []


def test_locations_with_different_credentials_are_refused_naming_the_fields(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(training_jobs, "get_settings", lambda: SETTINGS)
    other = {"credentialsSecret": {"name": "other"}}
    job = s3_job(output={"s3": {"uri": "s3://runs/o", "connection": other}})
    (problem,) = training_jobs.problems_only_the_operator_sees(job)
    assert "spec.output.s3.connection.credentialsSecret: other" in problem
    assert "spec.baseModel.s3.connection.credentialsSecret: store-creds" in problem


def test_rendered_objects_hold_no_secret_data() -> None:
    """Only names of Secrets and keys: the operator never reads the Secret, so the only way a value
    could get in is a `value` for a credential variable or a Secret's data copied into a config."""
    job = s3_job()
    rendered = json.dumps([build.config_map(job, SETTINGS), build.batch_job(job, SETTINGS)])
    for forbidden in ('"stringData"', '"data": {"accessKeyId"', "AWS_ACCESS_KEY_ID=", 'secretAccessKey":'):
        assert forbidden not in rendered
    config = build.config_map(job, SETTINGS)["data"]["config.yaml"]
    assert "AWS_" not in config
    # The ConfigMap may name the Secret (the worker does not need even that, but it is no secret).
    assert "store-creds" in config or "credentialsSecret" not in config


def test_success_records_the_uri_and_the_digest() -> None:
    job = s3_job()
    report = TrainingReport(
        adapter_dir=build.LOCAL_OUTPUT,
        uri=f"s3://runs/adapters/{UID}",
        sha256="ab" * 32,
        size_bytes=10,
        r=8,
        lora_alpha=16,
        steps=5,
    )
    terminated = {"exitCode": 0, "message": report.model_dump_json()}
    pod = {
        "metadata": {"creationTimestamp": "2026-01-01T11:00:00Z"},
        "status": {"containerStatuses": [{"name": "worker", "state": {"terminated": terminated}}]},
    }
    found = status_of.adapter_result(job, [pod])
    assert found is not None
    adapter, _ = found
    assert adapter.uri == f"s3://runs/adapters/{UID}"
    assert adapter.sha256 == "ab" * 32
    assert adapter.claim_name is None
    assert adapter.path is None


def test_an_adapter_from_a_store_run_is_fetched_from_its_uri_with_its_digest() -> None:
    body = {
        "metadata": {"name": "q", "generation": 1},
        "spec": {
            "baseModel": "tiny-llama",
            "source": {"trainingJob": {"name": "s3-run"}},
            "serving": {"deployment": "vllm-tiny"},
        },
    }
    result = {"uri": f"s3://runs/adapters/{UID}", "sha256": "ab" * 32, "r": 8}
    job = {
        "status": {"adapter": result},
        "spec": {"output": {"s3": {"connection": {"credentialsSecret": {"name": "run-creds"}}}}},
    }
    defaults = S3Connection(endpoint="http://store:9000", region="eu-1")
    wanted = resolution.resolve(LoraAdapter.model_validate(body), {"spec": {}}, job, defaults)  # type: ignore[arg-type]
    assert isinstance(wanted, resolution.Wanted)
    assert wanted.fetch is not None
    assert (wanted.fetch.uri, wanted.fetch.sha256, wanted.rank) == (result["uri"], "ab" * 32, 8)
    # the job's own connection over the chart's defaults: the store the run wrote to
    assert wanted.fetch.connection.endpoint == "http://store:9000"
    assert wanted.fetch.connection.credentials_secret == S3CredentialsSecret(name="run-creds")
    assert wanted.path == "/var/lib/loraplane/adapters/.objects/" + "ab" * 32
