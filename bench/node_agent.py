"""The dev node agent: how fast a bound pod runs and turns Ready, and what idle pods cost it.

    PYTHONPATH=devcluster .venv/bin/python bench/node_agent.py [--pods 20] [--levels 0,10,20,30,40,50]

1. Latency, one pod at a time (``registry.k8s.io/pause``, i.e. ``sleep infinity``, no probes):
   from the create call to the client's watch seeing the container running and the pod Ready,
   for pods created already bound (``spec.nodeName``) and pods the scheduler binds. Baseline,
   measured in the same run: create call → the same watch seeing the pod at all (the API
   server's round trip, no node involved); the ratio column is p50 / baseline p50.
2. Idle cost: the agent's CPU (percent of one core, from /proc utime+stime over ``--window`` s)
   and resident memory while it carries 0, 10, ... 50 idle Ready pods.

Starts a fresh local cluster (and stops it afterwards), or ``--kubeconfig K --agent-pid P``
measures a running one.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from loraplane_devcluster import binaries, controlplane, processes
from loraplane_devcluster.nodeagent.kubeapi import KubeApi, path_of
from loraplane_devcluster.testing import run_root_for_tests

IMAGE = "registry.k8s.io/pause:3.10"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class PodClock:
    """Watches a namespace and records when each pod was first seen, running, and Ready."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        self.api = KubeApi(kubeconfig)
        self.namespace = namespace
        self.seen: dict[str, dict[str, float]] = {}
        self.changed = threading.Condition()
        listing = self.api.get(path_of("v1", "pods", namespace))
        self._version = listing["metadata"]["resourceVersion"]
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        try:
            self._record_events()
        except Exception:  # the watch ends when the cluster stops after the run
            return

    def _record_events(self) -> None:
        for event in self.api.watch(path_of("v1", "pods", self.namespace), self._version, timeout_s=3600):
            now = time.perf_counter()
            pod = event.get("object") or {}
            name = pod.get("metadata", {}).get("name")
            if event.get("type") not in {"ADDED", "MODIFIED"} or not name:
                continue
            status = pod.get("status") or {}
            marks = self.seen.setdefault(name, {})
            marks.setdefault("seen", now)
            if any("running" in (s.get("state") or {}) for s in status.get("containerStatuses") or []):
                marks.setdefault("running", now)
            if any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or []):
                marks.setdefault("ready", now)
            with self.changed:
                self.changed.notify_all()

    def wait(self, name: str, mark: str, timeout_s: float = 60) -> float:
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while mark not in self.seen.get(name, {}):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"pod {name} never reached {mark}")
                self.changed.wait(0.5)
        return self.seen[name][mark]


def pod_body(name: str, node: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": 0,
        "containers": [{"name": "main", "image": IMAGE}],
    }
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def measure_latency(api: KubeApi, clock: PodClock, node: str, count: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {
        "create → seen (baseline)": [],
        "bound → running": [],
        "bound → Ready": [],
        "scheduled → Ready": [],
    }
    for index in range(count):
        for variant, bound in (("b", True), ("s", False)):
            name = f"lat-{variant}-{index}"
            began = time.perf_counter()
            api.create(path_of("v1", "pods", clock.namespace), pod_body(name, node if bound else None))
            ready = clock.wait(name, "ready")
            if bound:
                samples["create → seen (baseline)"].append(clock.wait(name, "seen") - began)
                samples["bound → running"].append(clock.wait(name, "running") - began)
                samples["bound → Ready"].append(ready - began)
            else:
                samples["scheduled → Ready"].append(ready - began)
            api.delete(path_of("v1", "pods", clock.namespace, name))
    return samples


def cpu_ticks(pid: int) -> int:
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure_idle_cost(
    api: KubeApi, clock: PodClock, node: str, agent_pid: int, levels: list[int], window_s: float
) -> list[tuple[int, float, float]]:
    rows = []
    created = 0
    for level in levels:
        while created < level:
            api.create(path_of("v1", "pods", clock.namespace), pod_body(f"idle-{created}", node))
            created += 1
        for index in range(level):
            clock.wait(f"idle-{index}", "ready", timeout_s=120)
        time.sleep(1.0)  # let the last status writes settle before the window opens
        before = cpu_ticks(agent_pid)
        time.sleep(window_s)
        used = (cpu_ticks(agent_pid) - before) / CLOCK_TICKS
        rows.append((level, 100 * used / window_s, rss_mib(agent_pid)))
    return rows


def print_latency(samples: dict[str, list[float]]) -> None:
    baseline = percentile(samples["create → seen (baseline)"], 0.5)
    count = len(samples["bound → Ready"])
    print(f"\nPod latency over {count} pods each, milliseconds (ratio: p50 / baseline p50)")
    print(f"{'interval':<28}{'p50':>10}{'p95':>10}{'max':>10}{'ratio':>10}")
    for name, values in samples.items():
        p50, p95 = percentile(values, 0.5), percentile(values, 0.95)
        print(
            f"{name:<28}{p50 * 1e3:>10.1f}{p95 * 1e3:>10.1f}{max(values) * 1e3:>10.1f}{p50 / baseline:>10.1f}"
        )


def print_idle(rows: list[tuple[int, float, float]], window_s: float) -> None:
    baseline = rows[0][1] if rows and rows[0][0] == 0 else None
    print(f"\nNode agent cost while carrying idle Ready pods ({window_s:g} s windows)")
    print(f"{'pods':>6}{'CPU % of a core':>18}{'RSS MiB':>10}")
    for level, cpu, rss in rows:
        print(f"{level:>6}{cpu:>18.2f}{rss:>10.1f}")
    if baseline is not None and len(rows) > 1:
        per_pod = (rows[-1][1] - baseline) / rows[-1][0]
        print(f"about {per_pod:.3f} % of a core per idle pod above the {baseline:.2f} % of an empty node")


def run(kubeconfig: Path, agent_pid: int, pods: int, levels: list[int], window_s: float) -> None:
    api = KubeApi(kubeconfig)
    node = next(n["metadata"]["name"] for n in api.get("/api/v1/nodes")["items"])
    namespace = f"bench-{secrets.token_hex(3)}"
    api.create("/api/v1/namespaces", {"metadata": {"name": namespace}})
    try:
        clock = PodClock(kubeconfig, namespace)
        latency = measure_latency(api, clock, node, pods)
        idle = measure_idle_cost(api, clock, node, agent_pid, levels, window_s)
    finally:
        api.delete(path_of("v1", "namespaces", None, namespace))
    print_latency(latency)
    print_idle(idle, window_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=20, help="pods per latency variant")
    parser.add_argument(
        "--levels", default="0,10,20,30,40,50", help="idle pod counts to measure the agent at"
    )
    parser.add_argument("--window", type=float, default=10.0, help="seconds of CPU measurement per level")
    parser.add_argument("--kubeconfig", type=Path, help="a running cluster (needs --agent-pid)")
    parser.add_argument("--agent-pid", type=int, help="PID of that cluster's node agent")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    if args.kubeconfig:
        if not args.agent_pid:
            parser.error("--kubeconfig needs --agent-pid")
        run(args.kubeconfig, args.agent_pid, args.pods, levels, args.window)
        return 0
    root = run_root_for_tests()
    root.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="bench-", dir=root))
    try:
        cluster = controlplane.up(run_dir, bin_dir=binaries.resolve_bin_dir(), die_with_parent=True)
        agent = next(r for r in processes.read_records(run_dir) if r.name == "nodeagent")
        run(cluster.kubeconfig, agent.pid, args.pods, levels, args.window)
    finally:
        controlplane.down(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
