"""How long until an adapter answers on every replica: HotLoad against Static (the restart path users
have without loraplane), and loading many adapters onto one Deployment.

    PYTHONPATH=operator:devcluster:tests .venv/bin/python bench/serving.py --kubeconfig K \
        --namespace NS --adapter-path adapters/<uid> [--repeats 3] [--many 50]

Needs a cluster where the chart is installed and Deployment `vllm-tiny` serves in NS with LoRA
enabled (examples/tiny-cpu/vllm-deployment-lora.yaml as `make demo` leaves it, or
examples/tiny-cpu/vllm-deployment.yaml once loraplane enabled LoRA, as the e2e tests leave it),
and an adapter folder at `--adapter-path` inside the `loraplane-tiny` claim, whose host folder is
`--volume`. Each repeat copies the adapter to a fresh path, applies a LoraAdapter and polls
every Ready pod with a completion until all answer; the ratio is Static p50 / HotLoad p50.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

import vllm_e2e

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
CLAIM, DEPLOYMENT = vllm_e2e.CLAIM, vllm_e2e.DEPLOYMENT
OPERATOR_SELECTOR, OPERATOR_NAMESPACE = "app.kubernetes.io/instance=loraplane", "loraplane-system"


class Kubectl:
    def __init__(self, kubeconfig: str, namespace: str) -> None:
        self.base = ["kubectl", "--kubeconfig", kubeconfig, "-n", namespace]

    def __call__(self, *args: str, input: str | None = None) -> str:
        done = subprocess.run([*self.base, *args], input=input, capture_output=True, text=True, check=True)
        return done.stdout

    def ready_ips(self) -> list[str]:
        pods = json.loads(self("get", "pods", "-l", f"app={DEPLOYMENT}", "-o", "json"))["items"]
        return [
            p["status"]["podIP"]
            for p in pods
            if not p["metadata"].get("deletionTimestamp")
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
        ]


def answers(ip: str, model: str) -> bool:
    body = json.dumps({"model": model, "prompt": "a", "max_tokens": 1}).encode()
    request = urllib.request.Request(
        f"http://{ip}:8000/v1/completions", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with _DIRECT.open(request, timeout=30) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def group_rss_mib(pgid: int) -> float:
    """Resident memory of a container's whole process group (the node agent runs one group per
    container, so vLLM's API server and engine core are both counted)."""
    total_kib = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            status = (stat.parent / "status").read_text()
        except (OSError, IndexError, ValueError):
            continue
        total_kib += next(
            (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0
        )
    return total_kib / 1024


def pods_rss_mib(kubectl: Kubectl, selector: str, namespace: str | None = None) -> dict[str, float]:
    scope = ["-n", namespace] if namespace else []
    pods = json.loads(kubectl("get", "pods", *scope, "-l", selector, "-o", "json"))["items"]
    return {
        p["metadata"]["name"]: sum(
            group_rss_mib(int(s["containerID"].removeprefix("process://")))
            for s in p["status"].get("containerStatuses", [])
            if s.get("containerID", "").startswith("process://") and "running" in s.get("state", {})
        )
        for p in pods
    }


def adapter(name: str, path: str, mode: str) -> dict[str, Any]:
    return vllm_e2e.adapter(name, path, serving={"deployment": DEPLOYMENT, "mode": mode})


def served_everywhere(kubectl: Kubectl, names: list[str], replicas: int, timeout_s: float) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        ips = kubectl.ready_ips()
        if len(ips) == replicas and all(answers(ip, n) for ip in ips for n in names):
            return time.monotonic() - began
        time.sleep(0.05)
    raise TimeoutError(f"{names} not served on {replicas} replicas within {timeout_s} s")


def rolled_out(kubectl: Kubectl, replicas: int, timeout_s: float = 900) -> None:
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        deployment = json.loads(kubectl("get", "deployment", DEPLOYMENT, "-o", "json"))
        status = deployment.get("status", {})
        if (
            status.get("observedGeneration") == deployment["metadata"]["generation"]
            and status.get("updatedReplicas")
            == status.get("readyReplicas")
            == status.get("replicas")
            == replicas
        ):
            return
        time.sleep(0.5)
    raise TimeoutError(f"Deployment {DEPLOYMENT} did not finish its rollout within {timeout_s} s")


def one(kubectl: Kubectl, volume: Path, source: str, name: str, mode: str, replicas: int) -> float:
    shutil.copytree(volume / source, volume / "bench" / name, dirs_exist_ok=True)
    kubectl("apply", "-f", "-", input=yaml.safe_dump(adapter(name, f"bench/{name}", mode)))
    try:
        return served_everywhere(kubectl, [name], replicas, 900)
    finally:
        kubectl("delete", "lad", name, "--wait=true")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument(
        "--volume", type=Path, required=True, help="host folder behind the loraplane-tiny claim"
    )
    parser.add_argument("--adapter-path", required=True, help="adapter folder inside the claim")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--many", type=int, default=50)
    args = parser.parse_args()
    kubectl = Kubectl(args.kubeconfig, args.namespace)
    replicas = len(kubectl.ready_ips())
    times: dict[str, list[float]] = {"HotLoad": [], "Static": []}
    for index in range(args.repeats):
        for mode, samples in times.items():
            samples.append(
                one(kubectl, args.volume, args.adapter_path, f"b-{mode.lower()}-{index}", mode, replicas)
            )
            rolled_out(kubectl, replicas)  # Static's deletion rolls the pods once more
    hot, static = statistics.median(times["HotLoad"]), statistics.median(times["Static"])
    print(f"applied -> first completion on all {replicas} replicas, p50 over {args.repeats} (s)")
    print(f"  HotLoad {hot:8.2f}   (baseline, ratio 1.0)")
    print(f"  Static  {static:8.2f}   ratio {static / hot:.1f}")

    names = [f"many-{i}" for i in range(args.many)]
    server_before = pods_rss_mib(kubectl, f"app={DEPLOYMENT}")
    operator_before = pods_rss_mib(kubectl, OPERATOR_SELECTOR, OPERATOR_NAMESPACE)
    began = time.monotonic()
    for name in names:
        shutil.copytree(args.volume / args.adapter_path, args.volume / "bench" / name, dirs_exist_ok=True)
    documents = [adapter(n, f"bench/{n}", "HotLoad") for n in names]
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(documents))
    loaded = served_everywhere(kubectl, names, replicas, 1800)
    print(f"{args.many} adapters applied -> all served on {replicas} replicas: {loaded:.1f} s "
          f"({time.monotonic() - began:.1f} s with copying)")  # fmt: skip
    server_after = pods_rss_mib(kubectl, f"app={DEPLOYMENT}")
    operator_after = pods_rss_mib(kubectl, OPERATOR_SELECTOR, OPERATOR_NAMESPACE)
    for pod, before in server_before.items():
        after = server_after.get(pod, 0.0)
        print(f"  vLLM {pod}: {before:.0f} -> {after:.0f} MiB RSS (ratio {after / before:.2f})")
    for pod, before in operator_before.items():
        after = operator_after.get(pod, 0.0)
        print(f"  operator {pod}: {before:.0f} -> {after:.0f} MiB RSS (ratio {after / before:.2f})")
    victim = json.loads(kubectl("get", "pods", "-l", f"app={DEPLOYMENT}", "-o", "json"))["items"][0]
    kubectl("delete", "pod", victim["metadata"]["name"], "--wait=false")
    began = time.monotonic()
    while victim["status"]["podIP"] in kubectl.ready_ips():  # the deletion reaches the pod list first
        time.sleep(0.05)
    served_everywhere(kubectl, names, replicas, 1800)
    restarted = time.monotonic() - began
    print(f"a deleted replica Ready again with all {args.many}: {restarted:.1f} s")
    kubectl("delete", "lad", *names, "--wait=true")


if __name__ == "__main__":
    main()
