"""How fast the operator turns an applied LoraTrainingJob into a batch Job, alone and 200 at a time.

    PYTHONPATH=operator:devcluster:tests .venv/bin/python bench/training_jobs.py [--jobs 50] [--burst 200]

On a fresh local cluster with the chart installed (the operator runs as the chart's pod):
1. Latency: `--jobs` LoraTrainingJobs created one after another; each from its create call returning
   until its batch Job is seen by a watch. Baseline, in the same run: creating that Job directly and
   seeing it through the same watch (the API server's own create-to-watch latency).
2. Burst: `--burst` jobs created at once; time until every one has its Job, the operator's peak
   resident memory, and API requests per job (kube-apiserver's request counter, whole cluster).
The jobs ask for more GPUs than the node has, so their pods stay Pending: no training runs.
"""

from __future__ import annotations

import argparse
import copy
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client import BatchV1Api, CoreV1Api, CustomObjectsApi

from loraplane_devcluster import controlplane
from loraplane_devcluster.testing import Kube, run_root_for_tests, wait_until
from loraplane_fixtures import CHART, crds_established
from manifests import example_training_job

NAMESPACE = "bench"


class JobWatch:
    """Records when each batch Job in the namespace is first seen."""

    def __init__(self, api: Any) -> None:
        self.seen: dict[str, float] = {}
        self._batch = BatchV1Api(api)
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        watch = kubernetes.watch.Watch()
        while not self._stop:
            try:
                for event in watch.stream(self._batch.list_namespaced_job, NAMESPACE, timeout_seconds=5):
                    self.seen.setdefault(event["object"].metadata.name, time.monotonic())
            except Exception:  # the cluster is going away at the end of the run
                if self._stop:
                    return
                raise

    def stop(self) -> None:
        self._stop = True

    def wait(self, name: str, timeout_s: float = 60) -> float:
        return wait_until(f"Job {name}", lambda: self.seen.get(name), timeout_s=timeout_s, interval_s=0.002)


def training_job(name: str) -> dict[str, Any]:
    body = copy.deepcopy(example_training_job())
    body["metadata"] = {"name": name}
    body["spec"]["resources"]["gpus"] = 64  # never schedulable: the bench measures the operator only
    body["spec"].pop("adapter", None)
    return body


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[max(0, round(0.95 * len(ordered)) - 1)]


def api_requests(kube: Kube) -> float:
    text = kube.kubectl("get", "--raw", "/metrics").stdout
    return sum(float(m) for m in re.findall(r"^apiserver_request_total\{.*\} (\S+)$", text, re.M))


def operator_rss_kib(kube: Kube) -> int:
    """Resident memory of the operator process (the node agent runs the pod as a local process)."""
    best = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            cmdline = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ")
            if b"loraplane.main" in cmdline and b"kopf" in cmdline:
                rss = re.search(r"VmRSS:\s+(\d+)", status.read_text())
                best = max(best, int(rss.group(1)) if rss else 0)
        except OSError:
            continue
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--burst", type=int, default=200)
    args = parser.parse_args()

    run_root_for_tests().mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="bench-", dir=run_root_for_tests()))
    cluster = controlplane.up(run_dir, die_with_parent=True)
    stop_watching = None
    try:
        kube = Kube.connect(cluster.kubeconfig, cluster.bin_dir, run_dir)
        kube.helm("install", "loraplane", str(CHART), "-n", "loraplane-system", "--create-namespace")
        wait_until("CRDs", lambda: crds_established(kube), timeout_s=60)
        kube.kubectl("create", "namespace", NAMESPACE)
        custom, batch = CustomObjectsApi(kube.api), BatchV1Api(kube.api)
        CoreV1Api(kube.api).create_namespaced_persistent_volume_claim(NAMESPACE, {
            "metadata": {"name": "loraplane-adapters"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        })  # fmt: skip
        wait_until("the operator pod", lambda: "1/1" in kube.kubectl(
            "get", "pods", "-n", "loraplane-system").stdout, timeout_s=120)  # fmt: skip
        watch = JobWatch(kube.api)
        stop_watching = watch.stop

        direct, via_operator = [], []
        for i in range(args.jobs):
            job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"direct-{i}"},
                   "spec": {"template": {"spec": {"restartPolicy": "Never", "nodeSelector": {"none": "none"},
                            "containers": [{"name": "c", "image": "busybox"}]}}}}  # fmt: skip
            start = time.monotonic()
            batch.create_namespaced_job(NAMESPACE, job)
            direct.append(watch.wait(f"direct-{i}") - start)
            start = time.monotonic()
            custom.create_namespaced_custom_object(
                "loraplane.io", "v1alpha1", NAMESPACE, "loratrainingjobs", training_job(f"lat-{i}")
            )
            via_operator.append(watch.wait(f"lat-{i}-train") - start)

        requests_before = api_requests(kube)
        start = time.monotonic()
        for i in range(args.burst):
            custom.create_namespaced_custom_object(
                "loraplane.io", "v1alpha1", NAMESPACE, "loratrainingjobs", training_job(f"burst-{i}")
            )
        created = time.monotonic() - start
        peak = 0
        deadline = time.monotonic() + 600
        while (
            sum(1 for n in watch.seen if n.startswith("burst-")) < args.burst and time.monotonic() < deadline
        ):
            peak = max(peak, operator_rss_kib(kube))
            time.sleep(0.2)
        all_jobs = time.monotonic() - start
        done = sum(1 for n in watch.seen if n.startswith("burst-"))
        per_job = (api_requests(kube) - requests_before) / args.burst

        (d50, d95), (o50, o95) = percentiles(direct), percentiles(via_operator)
        print(f"apply -> Job created, over {args.jobs} (baseline: the Job created directly, same watch)")
        print(f"  direct Job       p50 {d50 * 1000:7.1f} ms   p95 {d95 * 1000:7.1f} ms")
        print(f"  LoraTrainingJob  p50 {o50 * 1000:7.1f} ms   p95 {o95 * 1000:7.1f} ms")
        print(f"  ratio            p50 {o50 / d50:7.1f}x     p95 {o95 / d95:7.1f}x")
        print(
            f"burst of {args.burst}: created in {created:.1f} s; "
            f"{done}/{args.burst} had Jobs after {all_jobs:.1f} s"
        )
        print(
            f"  operator peak RSS {peak / 1024:.0f} MiB; API requests per job (whole cluster) {per_job:.1f}"
        )
        return 0 if done == args.burst else 1
    finally:
        if stop_watching is not None:
            stop_watching()
        controlplane.down(run_dir, grace_s=5)


if __name__ == "__main__":
    sys.exit(main())
