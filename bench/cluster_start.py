"""How fast the local control plane starts, and how fast it answers writes.

    PYTHONPATH=devcluster .venv/bin/python bench/cluster_start.py [--runs 3] [--ops 100] [--node [--services]]

1. Start: ``--runs`` fresh starts (new run directory: new PKI, empty etcd) and one restart
   (``down`` then ``up`` on the same directory: PKI and data kept), with cached binaries, with the
   per-component breakdown ``up`` records (each component: from its spawn to its health check).
   ``--node`` adds the node agent; ``--services`` also kube-proxy and CoreDNS (the ``services`` row:
   objects applied, both started, kube-proxy healthy and CoreDNS synced), so the two runs side by
   side give the start time with and without Services and DNS.
2. Writes: ``--ops`` creates and as many merge patches of a ConfigMap through the Python client
   the operator uses, as p50/p95 latency and as a ratio to ``GET /version`` measured in the same
   run (the floor: one TLS round trip to the API server with no storage behind it).

``--kubeconfig`` skips the starts and measures the writes against that cluster instead.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import kubernetes
import yaml
from kubernetes.client import CoreV1Api, CustomObjectsApi, VersionApi

from loraplane_devcluster import binaries, controlplane
from loraplane_devcluster.testing import run_root_for_tests

COMPONENTS = (
    "pki",
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "default-serviceaccount",
    "nodeagent",
    "services",
    "total",
)


# The object under test: swap these two for another kind (e.g. a LoraTrainingJob) to measure it.
def object_body(index: int) -> dict[str, Any]:
    return {"metadata": {"name": f"bench-{index}"}, "data": {"step": "0"}}


def patch_body(index: int) -> dict[str, Any]:
    return {"data": {"step": str(index + 1)}}


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def timed(action: Callable[[], object]) -> float:
    began = time.perf_counter()
    action()
    return time.perf_counter() - began


def measure_starts(
    runs: int, bin_dir: Path, node: bool, services: bool = False
) -> tuple[list[dict[str, float]], dict[str, float], Path]:
    """``runs`` fresh starts, then one restart of the last; returns the last run dir still up."""
    root = run_root_for_tests()
    root.mkdir(parents=True, exist_ok=True)
    fresh: list[dict[str, float]] = []
    run_dir = Path()
    for index in range(runs):
        run_dir = Path(tempfile.mkdtemp(prefix="bench-", dir=root))
        cluster = controlplane.up(
            run_dir, bin_dir=bin_dir, node=node, cluster_services=services, die_with_parent=True
        )
        fresh.append(cluster.timings)
        if index < runs - 1:
            controlplane.down(run_dir, purge=True)
    began = time.monotonic()
    controlplane.down(run_dir)
    stop_s = time.monotonic() - began
    restarted = controlplane.up(
        run_dir, bin_dir=bin_dir, node=node, cluster_services=services, die_with_parent=True
    ).timings
    restarted["down (before restart)"] = stop_s
    return fresh, restarted, run_dir


def measure_writes(kubeconfig_path: Path, ops: int) -> dict[str, list[float]]:
    api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig_path))  # type: ignore[no-untyped-call]
    core: Any = CoreV1Api(api)
    version: Any = VersionApi(api)
    namespace = f"bench-{secrets.token_hex(3)}"
    core.create_namespace({"metadata": {"name": namespace}})
    try:
        version.get_code()  # connection set up outside the measurement
        samples = {
            "GET /version (baseline)": [timed(version.get_code) for _ in range(ops)],
            "create ConfigMap": [
                timed(partial(core.create_namespaced_config_map, namespace, object_body(i)))
                for i in range(ops)
            ],
            "merge-patch ConfigMap": [
                timed(partial(core.patch_namespaced_config_map, f"bench-{i}", namespace, patch_body(i)))
                for i in range(ops)
            ],
        }
        samples.update(measure_training_jobs(api, kubeconfig_path, namespace, ops))
    finally:
        core.delete_namespace(namespace)
        api.close()
    return samples


def measure_training_jobs(
    api: Any, kubeconfig_path: Path, namespace: str, ops: int
) -> dict[str, list[float]]:
    """The same writes on LoraTrainingJobs: schema and CEL validation (incl. `self == oldSelf`) run on
    every create, and the status subresource is what the operator patches."""
    kubectl = binaries.resolve_bin_dir() / "kubectl"
    crds = Path(__file__).resolve().parents[1] / "crds"
    base = [str(kubectl), "--kubeconfig", str(kubeconfig_path)]
    subprocess.run([*base, "apply", "--server-side", "-f", str(crds)], check=True, capture_output=True)
    established = ["wait", "--for=condition=Established", "crd/loratrainingjobs.loraplane.io"]
    subprocess.run([*base, *established], check=True, capture_output=True)
    custom: Any = CustomObjectsApi(api)
    job = yaml.safe_load_all((crds.parent / "examples" / "opt-350m-english-quotes.yaml").read_text())
    spec = next(d for d in job if d and d["kind"] == "LoraTrainingJob")["spec"]
    group = ("loraplane.io", "v1alpha1", namespace, "loratrainingjobs")

    def body(i: int) -> dict[str, Any]:
        return {"apiVersion": "loraplane.io/v1alpha1", "kind": "LoraTrainingJob",
                "metadata": {"name": f"bench-{i}"}, "spec": spec}  # fmt: skip

    def status(i: int) -> dict[str, Any]:
        return {"status": {"progress": {"step": i, "totalSteps": ops, "percent": 100 * i / ops}}}

    return {
        "create LoraTrainingJob": [
            timed(partial(custom.create_namespaced_custom_object, *group, body(i))) for i in range(ops)
        ],
        "patch LoraTrainingJob status": [
            timed(partial(custom.patch_namespaced_custom_object_status, *group, f"bench-{i}", status(i)))
            for i in range(ops)
        ],
    }


def print_start_table(fresh: list[dict[str, float]], restarted: dict[str, float]) -> None:
    headers = [f"fresh #{i + 1}" for i in range(len(fresh))] + ["median fresh", "restart"]
    print(f"\nControl plane start, seconds (cached binaries, {len(fresh)} fresh starts + 1 restart)")
    print(f"{'step':<26}" + "".join(f"{h:>14}" for h in headers))
    for name in (*COMPONENTS, "down (before restart)"):
        values = [run.get(name) for run in fresh]
        present = [v for v in values if v is not None]
        if not present and name not in restarted:
            continue
        cells = [f"{v:>14.2f}" if v is not None else f"{'-':>14}" for v in values]
        cells.append(f"{statistics.median(present):>14.2f}" if present else f"{'-':>14}")
        cells.append(f"{restarted[name]:>14.2f}" if name in restarted else f"{'-':>14}")
        print(f"{name:<26}" + "".join(cells))


def print_write_table(samples: dict[str, list[float]]) -> None:
    baseline = percentile(samples["GET /version (baseline)"], 0.50)
    count = len(next(iter(samples.values())))
    print(f"\nAPI latency over {count} requests, milliseconds (ratio: p50 / baseline p50)")
    print(f"{'request':<30}{'p50':>10}{'p95':>10}{'max':>10}{'ratio':>10}")
    for name, values in samples.items():
        p50, p95 = percentile(values, 0.50), percentile(values, 0.95)
        print(
            f"{name:<30}{p50 * 1e3:>10.2f}{p95 * 1e3:>10.2f}{max(values) * 1e3:>10.2f}{p50 / baseline:>10.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="fresh starts to measure")
    parser.add_argument("--ops", type=int, default=100, help="creates and patches to measure")
    parser.add_argument("--node", action="store_true", help="include the node agent in the starts")
    parser.add_argument(
        "--services", action="store_true", help="with --node: also kube-proxy and CoreDNS (Services, DNS)"
    )
    parser.add_argument("--kubeconfig", type=Path, help="measure writes against this cluster; no starts")
    args = parser.parse_args(argv)

    if args.kubeconfig:
        print_write_table(measure_writes(args.kubeconfig, args.ops))
        return 0
    bin_dir = binaries.resolve_bin_dir()
    fresh, restarted, run_dir = measure_starts(args.runs, bin_dir, args.node, args.node and args.services)
    try:
        samples = measure_writes(run_dir / "kubeconfig", args.ops)
    finally:
        controlplane.down(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
    print_start_table(fresh, restarted)
    print_write_table(samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
