"""LoraTrainingJob with the object store only: the real worker in a pod of the local cluster reads
its base model and data from a real S3 server (versitygw, reached on the pod network), uploads its
checkpoints and the adapter there, and a retried pod, with no volume of its own, resumes from the
newest complete checkpoint in the store. Bad store input ends in an InputError naming the URI and
the store's code, without retries; no credential reaches the status, Events, ConfigMap or logs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_training_jobs import RUN_TIMEOUT_S, Jobs, tiny_job

from loraplane.api.storage import S3Path
from loraplane_devcluster import objectstore
from loraplane_devcluster.objectstore import ObjectStore
from loraplane_devcluster.testing import Kube, wait_until
from loraplane_devcluster.tinymodel import ensure_tiny_model
from loraplane_fixtures import ChartOperator, Release
from loraplane_worker.storage import ADAPTER_WEIGHTS
from loraplane_worker.storage import ObjectStore as Store
from storage_fixtures import connection, credentials_env, unique_bucket

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

SECRET = "store-creds"


@dataclass
class Staged:
    store: ObjectStore
    host: Store  # the test's own client, on the host's endpoint
    bucket: str

    def connection(self, secret: str = SECRET) -> dict[str, Any]:
        """What the pods use: the store's pod-network endpoint and the Secret by name."""
        return {
            "endpoint": self.store.pod_endpoint,
            "region": self.store.region,
            "pathStyle": True,
            "credentialsSecret": {"name": secret},
        }

    def location(self, key: str, secret: str = SECRET) -> dict[str, Any]:
        return {"uri": f"s3://{self.bucket}/{key}", "connection": self.connection(secret)}

    def spec(self, model: str = "models/tiny", secret: str = SECRET) -> dict[str, Any]:
        return {
            "baseModel": {"s3": self.location(model, secret)},
            "dataset": {"s3": self.location("data/quotes.jsonl", secret), "textField": "text"},
            "output": {"s3": self.location("runs", secret)},
        }


@pytest.fixture
def jobs(kube: Kube, namespace: str, chart_release: Release, operator: ChartOperator) -> Jobs:
    return Jobs(kube, namespace)


@pytest.fixture
def staged(kube: Kube, namespace: str, cluster_object_store: ObjectStore) -> Staged:
    """A bucket holding the tiny model and its quotes, and the credentials Secret in the namespace."""
    store = cluster_object_store
    bucket = unique_bucket("train")
    objectstore.create_bucket(store, bucket)
    host = Store(connection(store), environ=credentials_env(store))
    tiny = ensure_tiny_model()
    host.upload_tree(tiny.root / "model", S3Path(bucket, "models/tiny"))
    host.upload_file(tiny.root / "data" / "quotes.jsonl", S3Path(bucket, "data/quotes.jsonl"))
    objectstore.apply_credentials_secret(store, kube.bin_dir / "kubectl", kube.kubeconfig, SECRET, namespace)
    return Staged(store, host, bucket)


def everything_said_about(jobs: Jobs, kube: Kube, namespace: str, name: str) -> str:
    """The job, its Events, its ConfigMap, its Job and every pod's log, as one text."""
    parts = [json.dumps(jobs.get("ltj", name)), json.dumps(jobs.get("configmap", f"{name}-config") or {})]
    parts.append(json.dumps(jobs.get("job", f"{name}-train") or {}))
    events = kube.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    parts.append(events)
    selector = f"loraplane.io/training-job={name}"
    pods = kube.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "name")
    for pod in pods.stdout.split():
        parts.append(kube.kubectl("logs", pod, "-n", namespace, check=False).stdout)
    return "\n".join(parts)


def test_a_job_trains_from_and_to_the_store_and_a_retried_pod_resumes_from_it(
    jobs: Jobs, kube: Kube, namespace: str, staged: Staged, tmp_path: Path
) -> None:
    body = tiny_job("s3-resume", max_steps=120, save_steps=20)
    body["spec"].update(staged.spec())
    body["spec"]["output"]["merge"] = True
    created = jobs.create(body)
    uid = created["metadata"]["uid"]
    run = S3Path(staged.bucket, f"runs/{uid}")

    template = wait_until("the training Job", lambda: jobs.get("job", "s3-resume-train"), timeout_s=30)
    volumes = template["spec"]["template"]["spec"]["volumes"]
    assert not [v for v in volumes if "persistentVolumeClaim" in v], "a store-only job mounts no claim"
    assert any(v.get("emptyDir") is not None and v["name"] == "local" for v in volumes)

    # A checkpoint counts once its manifest is in the store; then the pod (and its disk) goes.
    first = wait_until(
        "a complete checkpoint in the store",
        lambda: staged.host.newest_complete_checkpoint(run.child("checkpoints")),
        timeout_s=RUN_TIMEOUT_S,
    )
    assert first.step > 0
    kube.kubectl(
        "delete", "pods", "-n", namespace, "-l", "loraplane.io/training-job=s3-resume", "--wait=false"
    )
    jobs.wait_reason("s3-resume", "Succeeded")

    status = jobs.get("ltj", "s3-resume")["status"]
    assert status["attempts"] >= 2
    assert status["resumedFromStep"] >= first.step > 0
    adapter = status["adapter"]
    assert adapter["uri"] == run.uri
    assert "claimName" not in adapter

    # The adapter in the store is complete and is what the status says: its manifest (written last)
    # records the digest, and every file downloads against it.
    manifest = staged.host.read_manifest(run)
    assert manifest is not None
    assert manifest.sha256 == adapter["sha256"]
    fetched = tmp_path / "fetched"
    staged.host.download_tree(run, fetched, expect_sha256=adapter["sha256"])
    weights = (fetched / ADAPTER_WEIGHTS).read_bytes()
    assert hashlib.sha256(weights).hexdigest() == adapter["sha256"]
    config = json.loads((fetched / "adapter_config.json").read_text())
    assert config["r"] == 8
    assert not [f for f in manifest.files if "/" in f.path], "the adapter alone, not checkpoints or merged"
    assert adapter["mergedUri"] == run.child("merged").uri
    merged = staged.host.read_manifest(run.child("merged"))
    assert merged is not None
    assert "model.safetensors" in {f.path for f in merged.files}
    # The store keeps as many checkpoints as the trainer does on disk (save_total_limit 2).
    kept = {o.key.split("/")[3] for o in staged.host.list_objects(run.child("checkpoints"))}
    assert len(kept) <= 2, kept

    said = everything_said_about(jobs, kube, namespace, "s3-resume")
    assert staged.store.secret_access_key not in said


def test_a_missing_model_fails_at_once_naming_the_uri_and_no_such_key(
    jobs: Jobs, kube: Kube, namespace: str, staged: Staged
) -> None:
    body = tiny_job("s3-missing")
    body["spec"].update(staged.spec(model="models/nothing-here"))
    jobs.create(body)
    summary = jobs.wait_reason("s3-missing", "InputError")
    assert f"s3://{staged.bucket}/models/nothing-here" in summary["message"]
    assert "NoSuchKey" in summary["message"]
    assert "spec.baseModel.s3" in summary["message"]
    status = jobs.get("ltj", "s3-missing")["status"]
    assert status["attempts"] == 1, "a permanent store error is not retried"
    assert "InputError" in jobs.events("s3-missing")


def test_wrong_credentials_fail_with_the_stores_code_and_stay_secret(
    jobs: Jobs, kube: Kube, namespace: str, staged: Staged
) -> None:
    wrong_secret = "not-" + staged.store.secret_access_key[::-1]
    secret = objectstore.credentials_secret("wrong-creds", namespace, "nobody-knows-me", wrong_secret)
    kube.kubectl("apply", "-f", "-", input=json.dumps(secret))
    body = tiny_job("s3-denied")
    body["spec"].update(staged.spec(secret="wrong-creds"))
    jobs.create(body)
    summary = jobs.wait_reason("s3-denied", "InputError")
    assert "InvalidAccessKeyId" in summary["message"], summary
    assert f"s3://{staged.bucket}/models/tiny" in summary["message"]
    said = everything_said_about(jobs, kube, namespace, "s3-denied")
    assert wrong_secret not in said
    assert staged.store.secret_access_key not in said


def test_an_unreachable_store_is_retried_with_the_jobs_backoff_then_fails(
    jobs: Jobs, kube: Kube, namespace: str, staged: Staged
) -> None:
    """Not an input error: the store may come back, so each attempt is a new pod (the Job's
    backoff), and only when the retries are spent does the run fail, naming the code."""
    assert staged.store.pod_endpoint is not None
    host = staged.store.pod_endpoint.rsplit(":", 1)[0]
    body = tiny_job("s3-away", backoffLimit=1)
    spec = staged.spec()
    for field in ("baseModel", "dataset", "output"):
        spec[field]["s3"]["connection"]["endpoint"] = f"{host}:1"  # nothing listens on port 1
    body["spec"].update(spec)
    jobs.create(body)
    summary = jobs.wait_reason("s3-away", "Failed")
    assert "EndpointUnreachable" in summary["message"], summary
    assert f"s3://{staged.bucket}/models/tiny" in summary["message"]
    assert jobs.get("ltj", "s3-away")["status"]["attempts"] == 2
