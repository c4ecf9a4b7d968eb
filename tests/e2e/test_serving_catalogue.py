"""OnDemand adapters end to end: a real S3 server (versitygw on the pod network), the chart's operator,
and a real vLLM Deployment (one replica: a second adds nothing here) that mounts no claim. One warm
HotLoad adapter and 1,000 OnDemand adapters, all the same weights in the store under distinct served
names (one object in the pod's cache, 1,000 links to it): the pod's gate opens once the warm one is
loaded, nothing else is loaded through the API, and vLLM's filesystem resolver loads a catalogued
adapter on its first request. Deleting one that was loaded that way unloads it and unlinks it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_serving_s3 import CACHE

from loraplane_devcluster import objectstore
from loraplane_devcluster.objectstore import ObjectStore
from loraplane_devcluster.testing import Kube, wait_until
from loraplane_fixtures import ChartOperator, Release
from vllm_e2e import (
    DEPLOYMENT,
    GATE,
    START_TIMEOUT_S,
    Cluster,
    completion,
    condition,
    deployment_without_claims,
    models_on,
    namespace_with_store,
    store_adapter,
)

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

SECRET = "store-creds"
WARM, COLD = "warm-quotes", "cold-quotes"
CATALOGUE = 1000  # OnDemand adapters, COLD among them
LABEL = "catalogue"


@dataclass
class Catalogue:
    cluster: Cluster
    sha256: str

    def ready_count(self, reason: str) -> int:
        """LoraAdapters of the catalogue Ready on the pod, with `reason`."""
        namespace, selector = self.cluster.namespace, f"{LABEL}=OnDemand"
        listed = self.cluster.kube.kubectl("get", "lad", "-n", namespace, "-l", selector, "-o", "json")
        count = 0
        for item in json.loads(listed.stdout)["items"]:
            ready = [c for c in item.get("status", {}).get("conditions", []) if c["type"] == "Ready"]
            if ready and (ready[0]["status"], ready[0]["reason"]) == ("True", reason):
                count += item["status"].get("readyReplicas") == 1
        return count

    def pod_ip(self) -> str:
        pods = self.cluster.ready_pods()
        assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
        return str(pods[0]["status"]["podIP"])


def stored_adapter(store: ObjectStore, bucket: str, name: str, sha256: str, mode: str) -> dict[str, Any]:
    body = store_adapter(name, store, f"s3://{bucket}/adapters/quotes", SECRET, sha256=sha256)
    body["spec"]["serving"]["mode"] = mode
    body["metadata"]["labels"] = {LABEL: mode}
    return body


@pytest.fixture(scope="module")
def catalogue(
    kube: Kube,
    chart_release: Release,
    operator: ChartOperator,
    cluster_object_store: ObjectStore,
    tiny_adapter: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Catalogue]:
    store = cluster_object_store
    workdir = tmp_path_factory.mktemp("catalogue")
    cluster, bucket, _, digest = namespace_with_store(kube, store, "catalogue", tiny_adapter, workdir)
    namespace = cluster.namespace
    objectstore.apply_credentials_secret(store, kube.bin_dir / "kubectl", kube.kubeconfig, SECRET, namespace)
    # The adapters first, then the Deployment: its one template change (LoRA, the fetcher, the resolver)
    # is written before its pod gets far, so the pod that serves starts with the whole catalogue wanted.
    names = [COLD] + [f"cat-{i:04d}" for i in range(1, CATALOGUE)]
    bodies = [stored_adapter(store, bucket, WARM, digest, "HotLoad")]
    bodies += [stored_adapter(store, bucket, n, digest, "OnDemand") for n in names]
    for start in range(0, len(bodies), 250):
        cluster.apply(bodies[start : start + 250])
    cluster.apply(deployment_without_claims(replicas=1))
    yield Catalogue(cluster, digest)
    kube.delete_all("lad", namespace, timeout_s=300)
    kube.delete_all("deployments", namespace, timeout_s=180)
    kube.delete_namespace(namespace)


def test_a_pod_starts_ready_with_a_thousand_catalogued_adapters_without_loading_them(
    catalogue: Catalogue,
) -> None:
    cluster = catalogue.cluster
    wait_until(f"{WARM} Ready", lambda: cluster.ready_on(WARM, 1), timeout_s=2 * START_TIMEOUT_S)
    wait_until(f"{CATALOGUE} catalogued", lambda: catalogue.ready_count("Catalogued") == CATALOGUE,
               timeout_s=300, interval_s=2)  # fmt: skip
    pod = cluster.ready_pods()[0]
    assert condition(pod, GATE) == "True"
    ip = catalogue.pod_ip()
    assert models_on(ip) == {WARM: f"{CACHE}/.objects/{catalogue.sha256}"}, "only the warm one is loaded"
    cold = cluster.get("lad", COLD)
    assert cold is not None
    assert cold["status"]["path"] == f"{CACHE}/{COLD}"
    assert cold["status"]["pods"] == [], "no per-pod detail when every pod has it"
    deployment = cluster.get("deployment", DEPLOYMENT)
    assert deployment is not None
    vllm = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "vllm")
    assert {"name": "VLLM_LORA_RESOLVER_CACHE_DIR", "value": CACHE} in vllm["env"]
    assert deployment["metadata"]["generation"] == 2, "LoRA, the fetcher and the resolver in one change"
    record = cluster.get("configmap", f"{DEPLOYMENT}-loraplane-loaded")
    assert record is not None
    assert len(json.loads(record["data"]["loaded"])) == CATALOGUE + 1, "catalogued names are loraplane's"


def test_a_catalogued_adapter_never_loaded_through_the_api_answers_its_first_request(
    catalogue: Catalogue,
) -> None:
    cluster = catalogue.cluster
    wait_until(f"{COLD} catalogued", lambda: cluster.ready_on(COLD, 1), timeout_s=2 * START_TIMEOUT_S)
    ip = catalogue.pod_ip()
    assert COLD not in models_on(ip)
    status, answer = completion(ip, COLD)
    assert status == 200, answer
    assert answer["model"] == COLD
    assert models_on(ip)[COLD] == f"{CACHE}/{COLD}", "vLLM's filesystem resolver loaded it from the cache"
    _, warm = completion(ip, WARM)
    assert answer["choices"][0]["text"] == warm["choices"][0]["text"], "the same weights answer the same"
    assert "cat-0001" not in models_on(ip), "one request loads one adapter"
    # The digest vLLM loaded is kept in the cluster, for a restarted operator: in the pass after the
    # load (a change to the Deployment's metadata wakes one now instead of at the resync).
    pod = cluster.ready_pods()[0]
    vllm = next(s for s in pod["status"]["containerStatuses"] if s["name"] == "vllm")
    run = f"{pod['metadata']['name']}/{vllm['state']['running']['startedAt']}"
    cluster.kube.kubectl("annotate", "deployment", DEPLOYMENT, "-n", cluster.namespace, "--overwrite",
                         "e2e.loraplane.io/wake=on-demand-loaded")  # fmt: skip
    wait_until(f"the digest {COLD} was loaded at, recorded", lambda: on_demand_record(cluster) == {
        run: {COLD: catalogue.sha256}}, timeout_s=60)  # fmt: skip


def test_deleting_an_adapter_loaded_on_demand_unloads_it_and_takes_it_out_of_the_cache(
    catalogue: Catalogue,
) -> None:
    cluster = catalogue.cluster
    ip = catalogue.pod_ip()
    if COLD not in models_on(ip):  # run alone: load it on demand first
        assert completion(ip, COLD)[0] == 200
    assert COLD in models_on(ip)
    cluster.delete("lad", COLD)  # the finalizer waits until no pod lists it
    assert COLD not in models_on(ip)
    status, answer = completion(ip, COLD)
    assert status == 404, ("the resolver finds no such name in the cache any more", answer)
    assert WARM in models_on(ip)
    assert completion(ip, "cat-0002")[0] == 200, "the rest of the catalogue still answers"
    assert all(COLD not in loaded for loaded in on_demand_record(cluster).values())


def on_demand_record(cluster: Cluster) -> dict[str, dict[str, str]]:
    """The record ConfigMap's OnDemand digests: per pod run, served name -> sha256 vLLM loaded."""
    record = cluster.get("configmap", f"{DEPLOYMENT}-loraplane-loaded")
    found: dict[str, dict[str, str]] = json.loads((record or {}).get("data", {}).get("onDemand") or "{}")
    return found
