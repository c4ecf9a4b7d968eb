"""On-demand catalogues (`spec.serving.mode: OnDemand`): a catalogued adapter's first request against a
warm one's, and a serving pod's start with 1,000 catalogued adapters against 1.

    PYTHONPATH=operator:worker:devcluster:tests .venv/bin/python bench/serving_catalogue.py \
        [--catalogue 1000] [--samples 10]

Starts a local cluster of its own (the chart's operator as its pod, versitygw on the pod network) and a
1-replica tiny vLLM Deployment that mounts no claim. One synthetic rank-8 q/v adapter of the tiny model
(small random weights) is uploaded once; every LoraAdapter serves it under a name of its own, so the
pod's cache holds one object and a link per name. One adapter is HotLoad (warm: the gate waits for it),
the others OnDemand.

1. Pod start with 1 catalogued adapter, then with `--catalogue`: the pod is deleted and its replacement
   timed from its creation (first seen by a watch) to Ready and to ContainersReady (vLLM's own start),
   and from ContainersReady to its gate open.
2. First request: `--samples` catalogued adapters asked once each (vLLM's filesystem resolver reads the
   cache and loads it), against the warm adapter asked as often; and each catalogued one's second
   request. p50 and p95, as ratios to the warm adapter's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import kubernetes
import numpy as np
from kubernetes.client import CoreV1Api, CustomObjectsApi
from safetensors.numpy import save_file

import vllm_e2e
from loraplane.api.storage import S3Path
from loraplane_devcluster import controlplane, objectstore
from loraplane_devcluster.testing import Kube, run_root_for_tests, wait_until
from loraplane_fixtures import CHART, crds_established
from loraplane_worker.storage import ADAPTER_WEIGHTS
from loraplane_worker.storage import ObjectStore as Store
from storage_fixtures import connection, credentials_env

NAMESPACE, SECRET, BUCKET = "bench", "store-creds", "catalogue"
DEPLOYMENT, GATE = vllm_e2e.DEPLOYMENT, vllm_e2e.GATE
WARM = "warm"
TINY_LAYERS, TINY_HIDDEN, RANK = 2, 128, 8  # the tiny model's shapes (tinymodel.py)


def write_adapter(folder: Path) -> Path:
    """A rank-8 q/v adapter of the tiny model with small random weights (what the tests train is the same
    shape; its values do not matter for timing)."""
    rng = np.random.default_rng(0)
    tensors = {}
    for layer in range(TINY_LAYERS):
        for name in ("q_proj", "v_proj"):
            base = f"base_model.model.model.layers.{layer}.self_attn.{name}"
            for part, shape in (("lora_A", (RANK, TINY_HIDDEN)), ("lora_B", (TINY_HIDDEN, RANK))):
                tensors[f"{base}.{part}.weight"] = (0.01 * rng.standard_normal(shape)).astype(np.float32)
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / ADAPTER_WEIGHTS))
    config = {"peft_type": "LORA", "r": RANK, "lora_alpha": 2 * RANK, "target_modules": ["q_proj", "v_proj"],
              "base_model_name_or_path": "tiny-llama", "bias": "none"}  # fmt: skip
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


class Bench:
    def __init__(self, kube: Kube, store: objectstore.ObjectStore, sha256: str) -> None:
        self.kube, self.store, self.sha256 = kube, store, sha256
        self.core, self.custom = CoreV1Api(kube.api), CustomObjectsApi(kube.api)

    def adapter(self, name: str, mode: str) -> dict[str, Any]:
        body = vllm_e2e.store_adapter(
            name, self.store, f"s3://{BUCKET}/adapters/a", SECRET, sha256=self.sha256
        )
        body["spec"]["serving"]["mode"] = mode
        return body

    def apply(self, bodies: list[dict[str, Any]]) -> None:
        for start in range(0, len(bodies), 250):
            chunk = {"apiVersion": "v1", "kind": "List", "items": bodies[start : start + 250]}
            self.kube.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(chunk))

    def ready(self, reason: str) -> int:
        """LoraAdapters Ready on the one pod with `reason` (Loaded or Catalogued)."""
        items = self.custom.list_namespaced_custom_object(
            "loraplane.io", "v1alpha1", NAMESPACE, "loraadapters"
        )
        count = 0
        for item in items["items"]:
            status = item.get("status") or {}
            cond = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
            count += (cond.get("status"), cond.get("reason"), status.get("readyReplicas")) == (
                "True",
                reason,
                1,
            )
        return count

    def pod(self) -> Any:
        pods = [
            p
            for p in self.core.list_namespaced_pod(NAMESPACE, label_selector=f"app={DEPLOYMENT}").items
            if p.metadata.deletion_timestamp is None
        ]
        return pods[0] if len(pods) == 1 else None

    def ready_pod(self) -> Any:
        pod = self.pod()
        conditions = {c.type: c.status for c in (pod.status.conditions or [])} if pod else {}
        return pod if conditions.get("Ready") == "True" else None

    def replacement(self) -> tuple[float, float, float]:
        """Delete the pod: its replacement's creation -> Ready, creation -> ContainersReady (vLLM's own
        start), and ContainersReady -> gate open, seconds, as a watch sees them."""
        old = self.ready_pod().metadata.name
        seen: dict[str, float] = {}
        stream = kubernetes.watch.Watch()
        # From the listing's version on: the replacement's ADDED event arrives as it is created.
        selector = f"app={DEPLOYMENT}"
        since = self.core.list_namespaced_pod(NAMESPACE, label_selector=selector).metadata.resource_version
        self.core.delete_namespaced_pod(old, NAMESPACE)
        for event in stream.stream(self.core.list_namespaced_pod, NAMESPACE, label_selector=selector,
                                   resource_version=since, timeout_seconds=900):  # fmt: skip
            pod = event["object"]
            if pod.metadata.name == old:
                continue
            seen.setdefault("created", time.monotonic())
            conditions = {c.type: c.status for c in pod.status.conditions or []}
            if conditions.get("ContainersReady") == "True":
                seen.setdefault("containers", time.monotonic())
            if conditions.get(GATE) == "True" and "containers" in seen:
                seen.setdefault("gate", time.monotonic())
            if conditions.get("Ready") == "True" and "gate" in seen:
                seen["ready"] = time.monotonic()
                stream.stop()
        created = seen["created"]
        return seen["ready"] - created, seen["containers"] - created, seen["gate"] - seen["containers"]


def timed_completion(ip: str, model: str) -> float:
    began = time.monotonic()
    status, answer = vllm_e2e.completion(ip, model)
    if status != 200:
        raise RuntimeError(f"{model}: {status} {answer}")
    return time.monotonic() - began


def p50_p95(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[max(0, round(0.95 * len(ordered)) - 1)]


def run(kube: Kube, run_dir: Path, catalogue: int, samples: int) -> None:
    address = objectstore.pod_network_host_address(run_dir)
    store = objectstore.start(run_dir, pod_address=address, die_with_parent=True)
    objectstore.create_bucket(store, BUCKET)
    work = Path(tempfile.mkdtemp(prefix="catalogue-", dir=run_dir))
    host = Store(connection(store), environ=credentials_env(store))
    digest = host.upload_adapter(write_adapter(work / "adapter"), S3Path(BUCKET, "adapters/a")).sha256
    assert digest is not None
    kube.kubectl("create", "namespace", NAMESPACE)
    objectstore.apply_credentials_secret(store, kube.bin_dir / "kubectl", kube.kubeconfig, SECRET, NAMESPACE)
    bench = Bench(kube, store, digest)
    names = [f"cold-{i:04d}" for i in range(catalogue)]
    bench.apply([bench.adapter(WARM, "HotLoad"), bench.adapter(names[0], "OnDemand")])
    kube.kubectl("apply", "-n", NAMESPACE, "-f", "-",
                 input=json.dumps({"apiVersion": "v1", "kind": "List",
                                   "items": vllm_e2e.deployment_without_claims(replicas=1)}))  # fmt: skip
    wait_until("the warm adapter and 1 catalogued Ready", lambda: bench.ready("Loaded") == 1 and
               bench.ready("Catalogued") == 1, timeout_s=900)  # fmt: skip
    starts = {1: bench.replacement()}
    wait_until("1 catalogued again", lambda: bench.ready("Catalogued") == 1, timeout_s=300)
    began = time.monotonic()
    bench.apply([bench.adapter(n, "OnDemand") for n in names[1:]])
    wait_until(f"{catalogue} catalogued", lambda: bench.ready("Catalogued") == catalogue, timeout_s=900)
    applied = time.monotonic() - began
    starts[catalogue] = bench.replacement()
    wait_until(f"{catalogue} catalogued again", lambda: bench.ready("Catalogued") == catalogue, timeout_s=900)

    ip = bench.ready_pod().status.pod_ip
    listed = vllm_e2e.models_on(ip)
    assert set(listed) == {WARM}, f"only the warm adapter is loaded: {sorted(listed)[:5]}"
    timed_completion(ip, WARM)  # the server's first completion pays one-time costs: not counted
    cold = [timed_completion(ip, n) for n in names[1 : samples + 1]]
    again = [timed_completion(ip, n) for n in names[1 : samples + 1]]
    warm = [timed_completion(ip, WARM) for _ in range(samples)]

    w50, w95 = p50_p95(warm)
    print(f"\nfirst request of a catalogued adapter (vLLM's filesystem resolver loads it) vs the warm one,"
          f" {samples} each, completion of 4 tokens")  # fmt: skip
    for label, values in (
        ("warm", warm),
        ("catalogued, 1st request", cold),
        ("catalogued, 2nd request", again),
    ):
        p50, p95 = p50_p95(values)
        print(f"  {label:>24}: p50 {p50 * 1000:7.1f} ms (x{p50 / w50:.2f})   p95 {p95 * 1000:7.1f} ms "
              f"(x{p95 / w95:.2f})")  # fmt: skip
    print(f"\nserving pod start, 1 warm adapter and N catalogued; ratios to N=1 ({catalogue - 1} more "
          f"applied -> catalogued in {applied:.1f} s)")  # fmt: skip
    base_ready, base_start, base_gate = starts[1]
    for count, (ready, start, gate) in starts.items():
        print(f"  N={count:>5}: created -> Ready {ready:6.2f} s (x{ready / base_ready:.2f})   "
              f"created -> containers ready {start:6.2f} s (x{start / base_start:.2f})   "
              f"containers ready -> gate open {gate:6.3f} s (x{gate / base_gate:.2f})")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalogue", type=int, default=1000, help="OnDemand adapters in the big run")
    parser.add_argument(
        "--samples", type=int, default=10, help="catalogued adapters asked for the first time"
    )
    args = parser.parse_args()
    run_root_for_tests().mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="bench-", dir=run_root_for_tests()))
    cluster = controlplane.up(run_dir, die_with_parent=True)
    try:
        kube = Kube.connect(cluster.kubeconfig, cluster.bin_dir, run_dir)
        kube.helm("install", "loraplane", str(CHART), "-n", "loraplane-system", "--create-namespace")
        wait_until("CRDs", lambda: crds_established(kube), timeout_s=60)
        run(kube, run_dir, args.catalogue, args.samples)
    finally:
        objectstore.stop(run_dir)
        controlplane.down(run_dir, grace_s=5)
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
