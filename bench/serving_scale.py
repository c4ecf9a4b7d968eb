"""The operator at scale: 1 (baseline), 100 and 1,000 LoraAdapters on one 2-replica vLLM Deployment,
2,000 over two such Deployments, then, on a fresh operator pod, 1 (baseline) and 1,000 waiting and
1,000 finished LoraTrainingJobs.

    PYTHONPATH=operator:devcluster:tests .venv/bin/python bench/serving_scale.py --kubeconfig K \
        --namespace NS --adapter-path adapters/<uid> [--counts 1,100,1000] [--jobs 1000]

Needs the cluster `make demo` leaves (the chart's operator, Deployment `vllm-tiny` serving in NS with
LoRA enabled, a trained adapter at `--adapter-path` in the `loraplane-tiny` claim). Every LoraAdapter
serves that one folder under its own name. For each count: apply -> all Ready; the operator's CPU
(cores, over one 60 s resync interval, once nothing has changed for 10 s) and RSS at rest; a new
adapter's apply -> Ready p50/p95; a deleted pod's replacement, containers ready -> gate open;
deleting them all. Each figure is also printed as a ratio
to the 1-adapter (1-job) figure from the same run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes
import yaml
from kubernetes.client import CoreV1Api, CustomObjectsApi

import serving as serving_bench  # bench/serving.py, beside this file
import vllm_e2e
from loraplane_devcluster import demo

DEPLOYMENT, GATE = vllm_e2e.DEPLOYMENT, vllm_e2e.GATE
LABEL = "bench=serving-scale"
# One whole resync interval (the chart's `resyncSeconds`): a 30 s window catches none or one of each
# Deployment's passes, and two runs of one code differed by 5x for that alone.
REST_S = 60.0
QUIET_S = 10.0
TRAINING_POD = "loraplane.io/training-job-uid"
TICKS = os.sysconf("SC_CLK_TCK")


def operator_process() -> Path:
    """The operator's /proc entry (the node agent runs its pod as a local process)."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            cmdline = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"loraplane.main" in cmdline and b"kopf" in cmdline:
            return status.parent
    raise RuntimeError("no operator process found")


def cpu_s(proc: Path) -> float:
    fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(proc: Path) -> float:
    found = re.search(r"VmRSS:\s+(\d+)", (proc / "status").read_text())
    return int(found.group(1)) / 1024 if found else 0.0


def at_rest() -> tuple[float, float]:
    """(cores, RSS MiB) of the operator over REST_S seconds with nothing changing (call it after
    `Quiet.wait`: the status writes and Events that follow the last Ready are not rest)."""
    proc = operator_process()
    before, began = cpu_s(proc), time.monotonic()
    time.sleep(REST_S)
    return (cpu_s(proc) - before) / (time.monotonic() - began), rss_mib(proc)


class Bench:
    def __init__(self, kubeconfig: str, namespace: str, adapter_path: str) -> None:
        self.namespace, self.adapter_path = namespace, adapter_path
        self.api = kubernetes.config.new_client_from_config(config_file=kubeconfig)
        self.custom, self.core = CustomObjectsApi(self.api), CoreV1Api(self.api)
        self.kubectl = ["kubectl", "--kubeconfig", kubeconfig, "-n", namespace]

    def apply(self, documents: list[dict[str, Any]]) -> None:
        for start in range(0, len(documents), 250):
            chunk = {"apiVersion": "v1", "kind": "List", "items": documents[start : start + 250]}
            subprocess.run([*self.kubectl, "apply", "-f", "-"], input=json.dumps(chunk), text=True,
                           check=True, capture_output=True)  # fmt: skip

    def adapter(self, name: str) -> dict[str, Any]:
        body = vllm_e2e.adapter(name, self.adapter_path)
        body["metadata"]["labels"] = {"bench": "serving-scale"}
        return body

    def adapters(self) -> list[dict[str, Any]]:
        found = self.custom.list_namespaced_custom_object(
            "loraplane.io", "v1alpha1", self.namespace, "loraadapters", label_selector=LABEL
        )
        return list(found["items"])

    def ready_count(self) -> int:
        return sum(1 for a in self.adapters() if ready_on_all(a))

    def wait(self, what: str, check: Any, timeout_s: float = 900, interval_s: float = 0.2) -> float:
        began = time.monotonic()
        while time.monotonic() - began < timeout_s:
            if check():
                return time.monotonic() - began
            time.sleep(interval_s)
        raise TimeoutError(what)

    def one_ready(self, name: str) -> float:
        began = time.monotonic()
        self.custom.create_namespaced_custom_object(
            "loraplane.io", "v1alpha1", self.namespace, "loraadapters", self.adapter(name)
        )
        while True:
            body = self.custom.get_namespaced_custom_object(
                "loraplane.io", "v1alpha1", self.namespace, "loraadapters", name
            )
            if ready_on_all(body):
                return time.monotonic() - began
            time.sleep(0.02)

    def pods(self) -> list[Any]:
        items = self.core.list_namespaced_pod(self.namespace, label_selector=f"app={DEPLOYMENT}").items
        return [p for p in items if p.metadata.deletion_timestamp is None]

    def replacement(self) -> float:
        """Delete one vLLM pod; seconds from its replacement's ContainersReady to its gate open."""
        old = {p.metadata.name for p in self.pods()}
        victim = sorted(old)[0]
        self.core.delete_namespaced_pod(victim, self.namespace)
        seen: dict[str, float] = {}
        stream = kubernetes.watch.Watch()
        for event in stream.stream(self.core.list_namespaced_pod, self.namespace,
                                   label_selector=f"app={DEPLOYMENT}", timeout_seconds=900):  # fmt: skip
            pod = event["object"]
            if pod.metadata.name in old:
                continue
            conditions = {c.type: c.status for c in pod.status.conditions or []}
            if conditions.get("ContainersReady") == "True":
                seen.setdefault("containers", time.monotonic())
            if conditions.get(GATE) == "True" and "containers" in seen:
                seen["gate"] = time.monotonic()
                stream.stop()
        return seen["gate"] - seen["containers"]

    def delete_all(self) -> float:
        began = time.monotonic()
        subprocess.run([*self.kubectl, "delete", "lad", "-l", LABEL, "--wait=false"], check=True,
                       capture_output=True)  # fmt: skip
        self.wait("all deleted", lambda: not self.adapters(), timeout_s=900, interval_s=0.5)
        return time.monotonic() - began


def post(ip: str, route: str, payload: dict[str, Any]) -> None:
    request = urllib.request.Request(
        f"http://{ip}:8000{route}",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    with vllm_e2e.DIRECT.open(request, timeout=120) as response:
        response.read()


def concurrent_loads(bench: Bench, count: int = 32) -> None:
    """Does vLLM serialise loads? `count` loads on one pod one after another, then 8 at a time."""
    ip = bench.pods()[0].status.pod_ip
    path = f"/models/{bench.adapter_path}"
    timings: dict[int, float] = {}
    for width in (1, 8):
        names = [f"probe-{width}-{i}" for i in range(count)]
        began = time.monotonic()
        with ThreadPoolExecutor(width) as pool:
            list(
                pool.map(
                    lambda n: post(ip, "/v1/load_lora_adapter", {"lora_name": n, "lora_path": path}), names
                )
            )
        timings[width] = time.monotonic() - began
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: post(ip, "/v1/unload_lora_adapter", {"lora_name": n}), names))
    print(f"{count} loads on one vLLM pod: one at a time {timings[1]:.2f} s, 8 at a time {timings[8]:.2f} s "
          f"(ratio {timings[8] / timings[1]:.2f})")  # fmt: skip


def vllm_memory(bench: Bench, kubeconfig: str, cycles: int, swaps: int) -> None:
    """vLLM's own RSS over `cycles` load/unload cycles of fresh names, and over `swaps` unload+reload
    of one served name (vllm-project/vllm#54839: unload does not free the cache slot)."""
    kubectl = serving_bench.Kubectl(kubeconfig, bench.namespace)
    pod = bench.pods()[0]
    ip, name, path = pod.status.pod_ip, pod.metadata.name, f"/models/{bench.adapter_path}"

    def rss() -> float:
        return serving_bench.pods_rss_mib(kubectl, f"app={DEPLOYMENT}")[name]

    start = rss()
    marks = [(0, start)]
    for i in range(1, cycles + 1):
        post(ip, "/v1/load_lora_adapter", {"lora_name": f"cycle-{i}", "lora_path": path})
        post(ip, "/v1/unload_lora_adapter", {"lora_name": f"cycle-{i}"})
        if i % max(1, cycles // 4) == 0:
            marks.append((i, rss()))
    print(f"vLLM pod {name} RSS over load/unload cycles: "
          + ", ".join(f"{n}: {m:.0f} MiB" for n, m in marks)
          + f" (ratio {marks[-1][1] / start:.3f})")  # fmt: skip
    before = rss()
    post(ip, "/v1/load_lora_adapter", {"lora_name": "swap-one", "lora_path": path})
    for _ in range(swaps):
        post(ip, "/v1/unload_lora_adapter", {"lora_name": "swap-one"})
        post(ip, "/v1/load_lora_adapter", {"lora_name": "swap-one", "lora_path": path})
    after = rss()
    post(ip, "/v1/unload_lora_adapter", {"lora_name": "swap-one"})
    print(f"vLLM pod {name} RSS over {swaps} swaps of one name: {before:.0f} -> {after:.0f} MiB "
          f"(ratio {after / before:.3f})")  # fmt: skip


def ready_on_all(body: dict[str, Any]) -> bool:
    status = body.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    return ready.get("status") == "True" and status.get("readyReplicas") == status.get("replicas") == 2


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[max(0, round(0.95 * len(ordered)) - 1)]


def ratio(value: float, base: float) -> str:
    return f"x{value / base:.2f}" if base > 0 else "-"


def settle(quiet: Quiet) -> float:
    """Seconds from now (all Ready) until the last change before QUIET_S of none."""
    ready = time.monotonic()
    quiet.wait()
    return max(0.0, quiet.last - ready)


def serving(bench: Bench, counts: list[int], samples: int) -> dict[str, float]:
    rows: list[dict[str, float]] = []
    quiet = Quiet(bench, ["pods", "loraadapters"])
    for count in counts:
        names = [f"scale-{i:04d}" for i in range(count)]
        began = time.monotonic()
        bench.apply([bench.adapter(n) for n in names])
        bench.wait(f"{count} Ready", lambda count=count: bench.ready_count() == count, interval_s=1.0)
        applied = time.monotonic() - began
        settled = settle(quiet)
        cores, rss = at_rest()
        new = [bench.one_ready(f"scale-new-{i:02d}") for i in range(samples)]
        p50, p95 = percentiles(new)
        gate = bench.replacement()
        bench.wait("replacement settled", lambda count=count: bench.ready_count() == count + samples)
        deleted = bench.delete_all()
        row = {"count": count, "applied": applied, "settled": settled, "cores": cores, "rss": rss,
               "p50": p50, "p95": p95, "gate": gate, "deleted": deleted}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]
    print(f"\nLoraAdapters on one Deployment (2 replicas); ratios to {int(base['count'])} adapter(s)")
    print(f"{'adapters':>9} {'apply->Ready s':>16} {'Ready->quiet s':>16} {'at rest cores':>16} "
          f"{'RSS MiB':>14} {'new p50 s':>14} {'new p95 s':>14} {'gate open s':>14} "
          f"{'delete all s':>14}")  # fmt: skip
    for row in rows:
        cells = [
            f"{row[k]:.{4 if k == 'cores' else 3}f} {ratio(row[k], base[k]):>6}"
            for k in ("applied", "settled", "cores", "rss", "p50", "p95", "gate", "deleted")
        ]
        print(f"{int(row['count']):>9} " + " ".join(f"{c:>15}" for c in cells))
    return base


SECOND = f"{DEPLOYMENT}-b"


def second_deployment(bench: Bench) -> None:
    """A copy of the demo's Deployment under another name (its own pods), Ready with no adapters."""
    apps = kubernetes.client.AppsV1Api(bench.api)
    body = bench.api.sanitize_for_serialization(apps.read_namespaced_deployment(DEPLOYMENT, bench.namespace))
    template = body["spec"]["template"]
    template["metadata"]["labels"]["app"] = SECOND
    copy_ = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": SECOND, "annotations": body["metadata"].get("annotations") or {}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": SECOND}}, "template": template},
    }
    apps.create_namespaced_deployment(bench.namespace, copy_)

    def available() -> bool:
        status = apps.read_namespaced_deployment_status(SECOND, bench.namespace).status
        return (status.available_replicas or 0) == 2

    bench.wait(f"Deployment {SECOND} available", available, interval_s=2.0)


def two_deployments(bench: Bench, per_deployment: int, base: dict[str, float]) -> None:
    """`per_deployment` LoraAdapters on each of two 2-replica Deployments, at once."""
    second_deployment(bench)
    names = [(f"two-{d}-{i:04d}", target) for d, target in (("a", DEPLOYMENT), ("b", SECOND))
             for i in range(per_deployment)]  # fmt: skip
    bodies = []
    for name, target in names:
        body = bench.adapter(name)
        body["spec"]["serving"]["deployment"] = target
        bodies.append(body)
    began = time.monotonic()
    bench.apply(bodies)
    bench.wait(f"{len(names)} Ready", lambda: bench.ready_count() == len(names), interval_s=1.0)
    applied = time.monotonic() - began
    settled = settle(Quiet(bench, ["pods", "loraadapters"]))
    cores, rss = at_rest()
    deleted = bench.delete_all()
    kubernetes.client.AppsV1Api(bench.api).delete_namespaced_deployment(SECOND, bench.namespace)
    print(f"\n{len(names)} LoraAdapters over two Deployments (2 replicas each); "
          f"ratios to {int(base['count'])} adapter(s) on one")  # fmt: skip
    for label, value, key in (("apply->Ready s", applied, "applied"), ("Ready->quiet s", settled, "settled"),
                              ("at rest cores", cores, "cores"), ("RSS MiB", rss, "rss"),
                              ("delete all s", deleted, "deleted")):  # fmt: skip
        print(f"  {label:>15}: {value:.{4 if key == 'cores' else 3}f} {ratio(value, base[key]):>7}")


def fresh_operator(bench: Bench) -> None:
    """Replace the operator pod (as a rollout or an eviction would) and wait for the new process to
    be Ready: the training figures are then the jobs' own, not what the adapter phases left."""
    old = operator_process()
    print(f"\noperator RSS after the adapter phases: {rss_mib(old):.0f} MiB; replacing its pod")
    selector = "app.kubernetes.io/instance=" + demo.RELEASE
    bench.core.delete_collection_namespaced_pod(demo.RELEASE_NAMESPACE, label_selector=selector)

    def ready() -> bool:
        try:
            if operator_process() == old:
                return False
        except RuntimeError:
            return False
        pods = bench.core.list_namespaced_pod(demo.RELEASE_NAMESPACE, label_selector=selector).items
        return any(
            p.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
            for p in pods
        )

    bench.wait("a new operator pod", ready, timeout_s=180, interval_s=1.0)


def training(bench: Bench, jobs: int) -> None:
    fresh_operator(bench)
    example = (vllm_e2e.EXAMPLES / "tiny-cpu" / "training-job.yaml").read_text()
    template = next(d for d in yaml.safe_load_all(example) if d and d["kind"] == "LoraTrainingJob")

    def body(name: str) -> dict[str, Any]:
        job = json.loads(json.dumps(template))
        job["metadata"] = {"name": name, "labels": {"bench": "serving-scale"}}
        job["spec"]["resources"]["gpus"] = 64  # never schedulable: waiting for good
        job["spec"].pop("adapter", None)
        return job

    def listed() -> list[dict[str, Any]]:
        found = bench.custom.list_namespaced_custom_object(
            "loraplane.io", "v1alpha1", bench.namespace, "loratrainingjobs", label_selector=LABEL
        )
        return list(found["items"])

    def started(count: int) -> bool:
        return sum(1 for j in listed() if (j.get("status") or {}).get("conditions")) >= count

    quiet = Quiet(bench, ["pods", "jobs", "loratrainingjobs"])
    results: list[tuple[str, float, float]] = []
    for label, count in (("1 waiting", 1), (f"{jobs} waiting", jobs)):
        names = [f"scale-job-{i:04d}" for i in range(count)]
        bench.apply([body(n) for n in names])
        bench.wait(f"{count} jobs started", lambda count=count: started(count), interval_s=2.0)
        # At rest means after the Job controller made every pod and the scheduler turned each down.
        bench.wait(f"{count} pods unschedulable", lambda count=count: unschedulable(bench) >= count,
                   interval_s=2.0)  # fmt: skip
        quiet.wait()
        results.append((label, *at_rest()))
        if count == jobs:
            # Finished: the same jobs, their status marked Failed (what a run's end writes).
            threads = [threading.Thread(target=finish, args=(bench, names[i::8])) for i in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            quiet.wait()
            results.append((f"{jobs} finished", *at_rest()))
        subprocess.run([*bench.kubectl, "delete", "ltj", "-l", LABEL, "--wait=true"], check=True,
                       capture_output=True, timeout=900)  # fmt: skip
    base = results[0]
    print("\nLoraTrainingJobs; ratios to 1 waiting job")
    for label, cores, rss in results:
        print(f"  {label:>14}: at rest {cores:.4f} cores {ratio(cores, base[1]):>7}   "
              f"RSS {rss:.0f} MiB {ratio(rss, base[2]):>6}")  # fmt: skip


def unschedulable(bench: Bench) -> int:
    """Training pods the scheduler has turned down (PodScheduled False)."""
    pods = bench.core.list_namespaced_pod(bench.namespace, label_selector=TRAINING_POD).items
    return sum(
        1
        for p in pods
        if any(c.type == "PodScheduled" and c.status == "False" for c in p.status.conditions or [])
    )


class Quiet:
    """Watches kinds in the bench's namespace; `wait` returns once none has changed for QUIET_S
    (what the operator is measured on at rest has then stopped arriving)."""

    def __init__(self, bench: Bench, plurals: list[str]) -> None:
        self.last = time.monotonic()
        api = kubernetes.client.ApiClient(bench.api.configuration)
        listers = {
            "pods": CoreV1Api(api).list_namespaced_pod,
            "jobs": kubernetes.client.BatchV1Api(api).list_namespaced_job,
        }
        for plural in plurals:
            lister = listers.get(plural) or functools.partial(
                CustomObjectsApi(api).list_namespaced_custom_object, "loraplane.io", "v1alpha1", plural=plural
            )
            threading.Thread(target=self._watch, args=(lister, bench.namespace), daemon=True).start()

    def _watch(self, lister: Any, namespace: str) -> None:
        while True:
            try:
                for _ in kubernetes.watch.Watch().stream(lister, namespace=namespace, timeout_seconds=300):
                    self.last = time.monotonic()
            except Exception:  # a dropped watch is restarted; the bench's end stops it
                time.sleep(1)

    def wait(self, timeout_s: float = 900) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() - self.last < QUIET_S:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the namespace never went {QUIET_S:.0f} s without a change")
            time.sleep(1)


def finish(bench: Bench, names: list[str]) -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for name in names:
        conditions = [
            {"type": t, "status": s, "reason": "Failed", "message": "bench", "lastTransitionTime": now}
            for t, s in (("Succeeded", "False"), ("Failed", "True"), ("Running", "False"))
        ]
        bench.custom.patch_namespaced_custom_object_status(
            "loraplane.io", "v1alpha1", bench.namespace, "loratrainingjobs", name,
            {"status": {"conditions": conditions}},
        )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--adapter-path", required=True, help="adapter folder inside the claim")
    parser.add_argument("--counts", default="1,100,1000")
    parser.add_argument("--samples", type=int, default=10, help="new adapters timed per count")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--memory-cycles", type=int, default=1000, help="vLLM load/unload cycles (0: skip)")
    parser.add_argument("--swaps", type=int, default=50)
    parser.add_argument("--two-deployments", type=int, default=1000, metavar="N",
                        help="N adapters on each of two Deployments (0: skip)")  # fmt: skip
    args = parser.parse_args()
    bench = Bench(args.kubeconfig, args.namespace, args.adapter_path)
    concurrent_loads(bench)
    if args.memory_cycles:
        vllm_memory(bench, args.kubeconfig, args.memory_cycles, args.swaps)
    base = serving(bench, [int(c) for c in args.counts.split(",")], args.samples)
    if args.two_deployments:
        two_deployments(bench, args.two_deployments, base)
    if args.jobs:
        training(bench, args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
