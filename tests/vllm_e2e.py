"""What the end-to-end serving tests share: kubectl and HTTP helpers for one namespace, a vLLM
Deployment made from the tiny CPU example, and LoraAdapter manifests on the staged `loraplane-tiny`
volume."""

from __future__ import annotations

import json
import secrets
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraplane.api.storage import S3Connection, S3Path
from loraplane_devcluster import objectstore
from loraplane_devcluster.objectstore import ObjectStore
from loraplane_devcluster.staging import stage_tiny_model
from loraplane_devcluster.testing import Kube, wait_until
from loraplane_devcluster.tinymodel import ensure_tiny_model
from loraplane_worker.storage import ObjectStore as Store
from manifests import EXAMPLES

CLAIM = "loraplane-tiny"
DEPLOYMENT = "vllm-tiny"
GATE = "loraplane.io/adapters-loaded"
START_TIMEOUT_S = 420
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Cluster:
    """kubectl and HTTP helpers for one namespace."""

    def __init__(self, kube: Kube, namespace: str, volume: Path) -> None:
        self.kube, self.namespace, self.volume = kube, namespace, volume

    def apply(self, body: dict[str, Any] | list[dict[str, Any]]) -> None:
        docs = body if isinstance(body, list) else [body]
        self.kube.kubectl("apply", "-n", self.namespace, "-f", "-", input=yaml.safe_dump_all(docs))

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        found = self.kube.kubectl("get", kind, name, "-n", self.namespace, "-o", "json", check=False)
        return json.loads(found.stdout) if found.returncode == 0 else None

    def delete(self, kind: str, name: str, wait: bool = True) -> None:
        self.kube.kubectl("delete", kind, name, "-n", self.namespace, f"--wait={str(wait).lower()}",
                          "--ignore-not-found", timeout_s=180)  # fmt: skip

    def pods(self, app: str = DEPLOYMENT) -> list[dict[str, Any]]:
        out = self.kube.kubectl("get", "pods", "-n", self.namespace, "-l", f"app={app}", "-o", "json")
        return [p for p in json.loads(out.stdout)["items"] if not p["metadata"].get("deletionTimestamp")]

    def ready_pods(self, app: str = DEPLOYMENT) -> list[dict[str, Any]]:
        return [p for p in self.pods(app) if condition(p, "Ready") == "True"]

    def adapter_ready(self, name: str) -> dict[str, Any] | None:
        adapter = self.get("lad", name) or {}
        ready = next((c for c in adapter.get("status", {}).get("conditions", []) if c["type"] == "Ready"), {})
        return adapter if ready.get("status") == "True" else None

    def ready_on(self, name: str, pods: int) -> dict[str, Any] | None:
        """The adapter when it is Ready and held by `pods` pods."""
        found = self.adapter_ready(name)
        return found if found and found["status"]["readyReplicas"] == pods else None

    def wait_adapter_reason(self, name: str, reason: str, timeout_s: float = 120) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            adapter = self.get("lad", name) or {}
            for c in adapter.get("status", {}).get("conditions", []):
                if c["type"] == "Ready" and c["reason"] == reason:
                    return dict(c)
            return None

        return wait_until(f"LoraAdapter {name}: Ready reason {reason}", reached, timeout_s=timeout_s)

    def events(self, name: str) -> list[str]:
        out = self.kube.kubectl("get", "events", "-n", self.namespace, "--field-selector",
                                f"involvedObject.name={name}", "-o", "json")  # fmt: skip
        return [e["reason"] for e in json.loads(out.stdout)["items"]]

    def copy_adapter(self, source: str, target: str, **config: Any) -> str:
        """A copy of an adapter folder in the volume (another version, or a doctored config)."""
        shutil.copytree(self.volume / source, self.volume / target, dirs_exist_ok=True)
        if config:
            path = self.volume / target / "adapter_config.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
        return target


def staged_namespace(kube: Kube, hint: str, workdir: Path) -> Iterator[Cluster]:
    """A module's namespace with the tiny model staged on its claim (the body of a module fixture);
    its Deployments and the namespace go afterwards."""
    namespace = kube.create_namespace(hint)
    volume = stage_tiny_model(kube.api, namespace, CLAIM, workdir / "volume")
    yield Cluster(kube, namespace, volume)
    # The adapters first, while their Deployments still run: their finalizers unload them.
    kube.delete_all("lad", namespace, timeout_s=300)
    kube.delete_all("deployments", namespace, timeout_s=180)
    kube.delete_namespace(namespace)


def module_cluster(hint: str) -> Any:
    """A module-scoped `cluster` fixture: `cluster = module_cluster("hint")` in a test module gives its
    tests one staged namespace, with the chart's operator running."""

    @pytest.fixture(scope="module")
    def cluster(
        kube: Kube, chart_release: Any, operator: Any, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[Cluster]:
        yield from staged_namespace(kube, hint, tmp_path_factory.mktemp(hint))

    return cluster


def replace_pod(cluster: Cluster, victim: str, replicas: int = 2) -> list[dict[str, Any]]:
    """Delete `victim` and wait until the Deployment has `replicas` Ready pods again, without it."""
    cluster.delete("pod", victim, wait=False)

    def replaced() -> list[dict[str, Any]] | None:
        pods = cluster.ready_pods()
        return pods if len(pods) == replicas and victim not in {p["metadata"]["name"] for p in pods} else None

    return wait_until("a Ready replacement pod", replaced, timeout_s=START_TIMEOUT_S, interval_s=1)


def condition(pod: dict[str, Any], type_: str) -> str | None:
    found = next((c for c in pod.get("status", {}).get("conditions", []) if c["type"] == type_), None)
    return None if found is None else str(found["status"])


def completion(ip: str, model: str, api_key: str | None = None) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"model": model, "prompt": '"', "max_tokens": 4, "temperature": 0}).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(f"http://{ip}:8000/v1/completions", data=body, headers=headers)
    try:
        with DIRECT.open(request, timeout=60) as response:
            return response.status, dict(json.loads(response.read()))
    except urllib.error.HTTPError as error:
        return error.code, dict(json.loads(error.read() or b"{}"))


def models_on(ip: str) -> dict[str, str]:
    with DIRECT.open(f"http://{ip}:8000/v1/models", timeout=30) as response:
        cards = json.loads(response.read())["data"]
    return {c["id"]: c["root"] for c in cards if c.get("parent")}


def vllm_deployment(
    name: str = DEPLOYMENT, replicas: int = 2, opt_in: bool = True, lora: bool = False, max_loras: int = 4
) -> list[dict[str, Any]]:
    """The example's Deployment and Service under `name`. `lora`: with everything loraplane would add
    to serve adapters already in the template, so that its pods start once (no enabling rollout)."""
    docs = [d for d in yaml.safe_load_all((EXAMPLES / "tiny-cpu" / "vllm-deployment.yaml").read_text()) if d]
    deployment, service = docs
    for doc in docs:
        doc["metadata"]["name"] = name
    deployment["spec"]["replicas"] = replicas
    deployment["spec"]["selector"]["matchLabels"] = {"app": name}
    deployment["spec"]["template"]["metadata"]["labels"] = {"app": name}
    service["spec"]["selector"] = {"app": name}
    if not opt_in:
        deployment["metadata"]["annotations"] = {}
    if lora:
        template = deployment["spec"]["template"]["spec"]
        container = template["containers"][0]
        container["args"] += ["--enable-lora", "--max-loras", str(max_loras), "--max-cpu-loras", "8"]
        container["env"].append({"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"})
        template["readinessGates"] = [{"conditionType": GATE}]
    return [deployment, service]


def deployment_without_claims(replicas: int = 2) -> list[dict[str, Any]]:
    """The tiny example, opted in, with its base model from a hostPath instead of the claim."""
    deployment, service = vllm_deployment(replicas=replicas)
    # Every pod of the first template is replaced at once (they are still starting when loraplane
    # writes its change): one vLLM start on the clock, not two in a row.
    deployment["spec"]["strategy"] = {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": replicas}}
    spec = deployment["spec"]["template"]["spec"]
    spec["volumes"] = [{"name": "tiny", "hostPath": {"path": str(ensure_tiny_model().model_dir)}}]
    spec["containers"][0]["volumeMounts"] = [{"name": "tiny", "mountPath": "/models/model", "readOnly": True}]
    return [deployment, service]


def namespace_with_store(
    kube: Kube, store: ObjectStore, hint: str, adapter_dir: Path, workdir: Path
) -> tuple[Cluster, str, Store, str]:
    """A namespace and a bucket of their own, with the adapter uploaded to `adapters/quotes`: the
    namespace's Cluster, the bucket, a client of the store, and the adapter's digest."""
    namespace = kube.create_namespace(hint)
    bucket = f"{hint[:40]}-{secrets.token_hex(4)}"
    objectstore.create_bucket(store, bucket)
    host = Store(
        S3Connection(endpoint=store.endpoint, region=store.region, path_style=True),
        environ={"AWS_ACCESS_KEY_ID": store.access_key_id, "AWS_SECRET_ACCESS_KEY": store.secret_access_key},
    )
    digest = host.upload_adapter(adapter_dir, S3Path(bucket, "adapters/quotes")).sha256
    assert digest is not None
    return Cluster(kube, namespace, workdir), bucket, host, digest


def store_adapter(name: str, store: ObjectStore, uri: str, secret: str, **s3: Any) -> dict[str, Any]:
    """A LoraAdapter of the tiny model served from `uri` in the store, its credentials from `secret`."""
    body = adapter(name, "unused")
    connection = {"endpoint": store.pod_endpoint, "region": store.region, "pathStyle": True,
                  "credentialsSecret": {"name": secret}}  # fmt: skip
    body["spec"]["source"] = {"s3": {"uri": uri, "connection": connection, **s3}}
    return body


def adapter(name: str, path: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "loraplane.io/v1alpha1",
        "kind": "LoraAdapter",
        "metadata": {"name": name},
        "spec": {
            "baseModel": "tiny-llama",
            "source": {"volume": {"claimName": CLAIM, "path": path}},
            "serving": {"deployment": DEPLOYMENT},
            **spec,
        },
    }
