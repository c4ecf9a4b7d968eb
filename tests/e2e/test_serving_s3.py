"""Serving adapters from the object store, end to end: a real S3 server (versitygw on the pod
network), the chart's operator, and a real 2-replica vLLM Deployment on the node agent that mounts
no claim (the base model comes from a hostPath; the adapters only from the store). loraplane adds
its fetcher container and the pod-local cache under the Deployment's opt-in, asks each pod's
fetcher to copy and verify the adapter, and loads the local copy; a replacement pod fetches again
before its gate opens; each bad store input gets its own condition and Event, and a corrupted object
fails alone. No credential reaches a status, an Event or a log.

vLLM starts are slow on CPU (60-90 s), so the module shares one Deployment; every Secret an adapter
of the module names exists from the start, so the template (and the fetcher's variables) is written
once and the pods start once, plus the one pod the gate test deletes.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_adapters import _watch_pod_window
from test_training_jobs import RUN_TIMEOUT_S, tiny_job

from loraplane.api.storage import S3Path
from loraplane_devcluster import objectstore
from loraplane_devcluster.objectstore import ObjectStore
from loraplane_devcluster.testing import Kube, wait_until
from loraplane_devcluster.tinymodel import ensure_tiny_model
from loraplane_fixtures import ChartOperator, Release
from loraplane_worker.storage import ADAPTER_WEIGHTS
from loraplane_worker.storage import ObjectStore as Store
from vllm_e2e import (
    DEPLOYMENT,
    GATE,
    START_TIMEOUT_S,
    Cluster,
    adapter,
    completion,
    condition,
    deployment_without_claims,
    models_on,
    namespace_with_store,
    replace_pod,
)

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

SECRET, WRONG, DENIED = "store-creds", "wrong-creds", "denied-creds"
SERVED = "quotes-s3"
JOB, TRAINED = "train-s3", "trained-s3"
CACHE = "/var/lib/loraplane/adapters"
FETCHER = "loraplane-fetcher"


@dataclass
class Stored:
    cluster: Cluster
    store: ObjectStore
    host: Store
    bucket: str
    sha256: str
    wrong_secret: str
    denied_secret: str
    junk_sha256: str  # of the weights that replaced the corrupted adapter's

    def source(self, key: str, secret: str = SECRET, **extra: Any) -> dict[str, Any]:
        conn = {"endpoint": self.store.pod_endpoint, "region": self.store.region, "pathStyle": True,
                "credentialsSecret": {"name": secret}}  # fmt: skip
        return {"s3": {"uri": f"s3://{self.bucket}/{key}", "connection": conn, **extra}}

    def adapter(self, name: str, key: str, secret: str = SECRET, **extra: Any) -> dict[str, Any]:
        body = adapter(name, key)
        body["spec"]["source"] = self.source(key, secret, **extra)
        return body

    def fetcher_logs(self) -> str:
        out = []
        for pod in self.cluster.pods():
            name = pod["metadata"]["name"]
            got = self.cluster.kube.kubectl(
                "logs", name, "-c", FETCHER, "-n", self.cluster.namespace, check=False
            )
            out.append(got.stdout)
        return "\n".join(out)


@pytest.fixture(scope="module")
def stored(
    kube: Kube,
    chart_release: Release,
    operator: ChartOperator,
    cluster_object_store: ObjectStore,
    tiny_adapter: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stored]:
    store = cluster_object_store
    workdir = tmp_path_factory.mktemp("serving-s3")
    cluster, bucket, host, digest = namespace_with_store(kube, store, "serving-s3", tiny_adapter, workdir)
    namespace = cluster.namespace
    # The same adapter with its weights replaced after the upload: the manifest no longer matches.
    host.upload_adapter(tiny_adapter, S3Path(bucket, "adapters/corrupt"))
    junk = tmp_path_factory.mktemp("junk") / ADAPTER_WEIGHTS
    junk.write_bytes(secrets.token_bytes(4096))
    junk_digest = hashlib.sha256(junk.read_bytes()).hexdigest()
    host.upload_file(junk, S3Path(bucket, f"adapters/corrupt/{ADAPTER_WEIGHTS}"))

    kubectl, kubeconfig = kube.bin_dir / "kubectl", kube.kubeconfig
    tiny = ensure_tiny_model()
    host.upload_tree(tiny.model_dir, S3Path(bucket, "models/tiny"))
    host.upload_file(tiny.text_dataset, S3Path(bucket, "data/quotes.jsonl"))
    objectstore.apply_credentials_secret(store, kubectl, kubeconfig, SECRET, namespace)
    wrong = "not-" + secrets.token_hex(12)
    kube.kubectl("apply", "-f", "-", input=json.dumps(
        objectstore.credentials_secret(WRONG, namespace, "nobody-knows-me", wrong)))  # fmt: skip
    denied_key, denied = f"lpdenied{secrets.token_hex(3)}", secrets.token_hex(16)
    objectstore.create_user(store, denied_key, denied)  # a real account that does not own the bucket
    kube.kubectl("apply", "-f", "-", input=json.dumps(
        objectstore.credentials_secret(DENIED, namespace, denied_key, denied)))  # fmt: skip
    found = Stored(cluster, store, host, bucket, digest, wrong, denied, junk_digest)

    # The adapters first, then the Deployment: the operator writes the template once (LoRA on, the
    # fetcher with the variables of all three Secrets) before the first pods get far.
    cluster.apply([
        found.adapter(SERVED, "adapters/quotes", sha256=digest),
        found.adapter("wrong-key", "adapters/quotes", secret=WRONG),
        found.adapter("denied", "adapters/quotes", secret=DENIED),
    ])  # fmt: skip
    cluster.apply(deployment_without_claims())
    # A run that trains from and to the store and publishes its adapter to the same Deployment; it
    # trains while vLLM starts.
    job = tiny_job(JOB, max_steps=10, save_steps=10)
    location = found.source("unused")["s3"]
    job["spec"]["baseModel"] = {"s3": {**location, "uri": f"s3://{bucket}/models/tiny"}}
    job["spec"]["dataset"] = {
        "s3": {**location, "uri": f"s3://{bucket}/data/quotes.jsonl"},
        "textField": "text",
    }
    job["spec"]["output"] = {"s3": {**location, "uri": f"s3://{bucket}/runs"}}
    job["spec"]["adapter"] = {"name": TRAINED, "deployment": DEPLOYMENT, "baseModel": "tiny-llama"}
    cluster.apply(job)
    yield found
    kube.delete_all("lad", namespace, timeout_s=120)
    kube.delete_all("deployments", namespace, timeout_s=180)
    kube.delete_namespace(namespace)


def test_an_adapter_from_the_store_is_served_by_both_replicas_of_a_deployment_without_claims(
    stored: Stored,
) -> None:
    cluster = stored.cluster
    ready = wait_until(f"{SERVED} Ready on 2 pods", lambda: cluster.ready_on(SERVED, 2),
                       timeout_s=2 * START_TIMEOUT_S, interval_s=1)  # fmt: skip
    path = f"{CACHE}/.objects/{stored.sha256}"
    assert ready["status"]["path"] == path
    assert ready["status"]["sha256"] == stored.sha256

    deployment = cluster.get("deployment", DEPLOYMENT)
    spec = deployment["spec"]["template"]["spec"]
    assert not [v for v in spec["volumes"] if "persistentVolumeClaim" in v], "no claim anywhere"
    cache = next(v for v in spec["volumes"] if v["name"] == "loraplane-adapter-cache")
    assert cache["emptyDir"]["sizeLimit"], "the cache is bounded"
    fetcher = next(c for c in spec["containers"] if c["name"] == FETCHER)
    variables = {e["name"] for e in fetcher["env"]}
    assert len([v for v in variables if v.endswith("_SECRET_ACCESS_KEY")]) == 3, variables
    assert all("value" not in e for e in fetcher["env"] if e["name"] != "POD_IP"), "by reference only"
    assert deployment["metadata"]["generation"] == 2, "LoRA and the fetcher in one template change"
    assert "FetcherAdded" in cluster.events(DEPLOYMENT)

    for pod in cluster.ready_pods():
        # No API token in the fetcher: the ServiceAccount admission plugin skipped the container
        # whose own (empty) volume sits on the token path; vLLM keeps the pod's usual mount.
        containers = {c["name"]: c for c in pod["spec"]["containers"]}
        token_mounts = [m for m in containers[FETCHER]["volumeMounts"] if "serviceaccount" in m["mountPath"]]
        assert [m["name"] for m in token_mounts] == ["loraplane-no-api-token"]
        ip = pod["status"]["podIP"]
        assert models_on(ip)[SERVED] == path
        status, answer = completion(ip, SERVED)
        assert status == 200, answer
        assert answer["model"] == SERVED


def test_a_new_pod_fetches_again_and_is_gated_until_it_holds_the_adapter(stored: Stored) -> None:
    cluster = stored.cluster
    wait_until(f"{SERVED} Ready on 2 pods", lambda: cluster.ready_on(SERVED, 2), timeout_s=START_TIMEOUT_S)
    old = {p["metadata"]["name"] for p in cluster.pods()}
    victim = sorted(old)[0]
    seen: dict[str, Any] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_pod_window, args=(cluster, old, seen, stop), daemon=True)
    watcher.start()
    try:
        pods = replace_pod(cluster, victim)
    finally:
        stop.set()
        watcher.join()
    new = next(p for p in pods if p["metadata"]["name"] not in old)
    assert seen.get("window"), "the new pod was never ContainersReady=True with its gate closed"
    assert condition(new, GATE) == "True"
    assert models_on(new["status"]["podIP"])[SERVED] == f"{CACHE}/.objects/{stored.sha256}"
    log = cluster.kube.kubectl("logs", new["metadata"]["name"], "-c", FETCHER, "-n", cluster.namespace).stdout
    assert f"{SERVED}: ready (s3://{stored.bucket}/adapters/quotes, sha256 {stored.sha256})" in log


def test_each_bad_store_input_gets_its_condition_and_a_corrupted_object_fails_alone(stored: Stored) -> None:
    cluster = stored.cluster
    bucket = stored.bucket
    assert stored.store.pod_endpoint is not None
    away = stored.adapter("away", "adapters/quotes")
    host = stored.store.pod_endpoint.rsplit(":", 1)[0]
    away["spec"]["source"]["s3"]["connection"]["endpoint"] = f"{host}:1"  # nothing listens on port 1
    no_bucket = stored.adapter("no-bucket", "adapters/quotes")
    no_bucket["spec"]["source"]["s3"]["uri"] = "s3://no-such-bucket-lp/adapters/quotes"
    cluster.apply([
        stored.adapter("no-key", "adapters/nothing-here"),
        no_bucket,
        stored.adapter("corrupt", "adapters/corrupt"),
        away,
    ])  # fmt: skip
    expected = {
        "no-key": ("FetchFailed", "NoSuchKey", f"s3://{bucket}/adapters/nothing-here"),
        "no-bucket": ("FetchFailed", "NoSuchBucket", "s3://no-such-bucket-lp/adapters/quotes"),
        "wrong-key": ("FetchFailed", "InvalidAccessKeyId", f"s3://{bucket}/adapters/quotes"),
        "denied": ("FetchFailed", "AccessDenied", f"s3://{bucket}/adapters/quotes"),
        "corrupt": ("LoadFailed", "DigestMismatch", f"s3://{bucket}/adapters/corrupt"),
        "away": ("FetchRetrying", "EndpointUnreachable", f"s3://{bucket}/adapters/quotes"),
    }
    for name, (reason, code, uri) in expected.items():
        reported = cluster.wait_adapter_reason(name, reason, timeout_s=120)
        assert code in reported["message"], (name, reported)
        assert uri in reported["message"], (name, reported)
        if reason != "FetchRetrying":
            assert reason in cluster.events(name), name
    corrupt = cluster.get("lad", "corrupt")["status"]["conditions"]
    message = next(c["message"] for c in corrupt if c["type"] == "Ready")
    # Both digests: the manifest's (the weights as uploaded) and what the store now serves.
    assert f"expected sha256 {stored.sha256}, got {stored.junk_sha256}" in message, message

    # The good adapter is untouched and still answers on both pods.
    assert cluster.ready_on(SERVED, 2) is not None
    assert len(cluster.ready_pods()) == 2
    for pod in cluster.ready_pods():
        status, answer = completion(pod["status"]["podIP"], SERVED)
        assert status == 200, answer

    # A permanent error is tried once per pod (and again only on a change or a resync), not in a loop.
    logs = stored.fetcher_logs()
    tries = logs.count("no-key: s3://")
    assert 1 <= tries <= 2 * len(cluster.pods()), logs[-3000:]

    # No credential anywhere the operator or the fetcher speaks.
    said = [
        cluster.kube.kubectl("get", "lad", "-n", cluster.namespace, "-o", "json").stdout,
        cluster.kube.kubectl("get", "events", "-n", cluster.namespace, "-o", "json").stdout,
        logs,
        stored.cluster.kube.kubectl("get", "configmaps", "-n", cluster.namespace, "-o", "json").stdout,
    ]
    for secret in (stored.store.secret_access_key, stored.wrong_secret, stored.denied_secret):
        assert not [text for text in said if secret in text]


def test_a_training_jobs_result_in_the_store_is_served_from_its_uri_and_digest(stored: Stored) -> None:
    """The published LoraAdapter names the job; the job's status.adapter has the URI and the
    digest, and both pods load the verified copy from their cache."""
    cluster = stored.cluster
    ready = wait_until(f"{TRAINED} Ready on 2 pods", lambda: cluster.ready_on(TRAINED, 2),
                       timeout_s=RUN_TIMEOUT_S, interval_s=1)  # fmt: skip
    result = cluster.get("ltj", JOB)["status"]["adapter"]
    assert result["uri"].startswith(f"s3://{stored.bucket}/runs/")
    assert "claimName" not in result
    assert ready["status"]["sha256"] == result["sha256"]
    path = f"{CACHE}/.objects/{result['sha256']}"
    assert ready["status"]["path"] == path
    for pod in cluster.ready_pods():
        assert models_on(pod["status"]["podIP"])[TRAINED] == path
        status, answer = completion(pod["status"]["podIP"], TRAINED)
        assert status == 200, answer
