"""`make demo`: the whole life of an adapter on one machine: install, train, serve, ask.

Every step is what a user does on a real cluster (helm install, kubectl apply, wait on conditions,
call vLLM's OpenAI API); only the cluster itself and the staged tiny model are local stand-ins. The
end-to-end test calls `run()` too, so the demo and the test cannot drift apart.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loraplane_devcluster import binaries, controlplane
from loraplane_devcluster.staging import stage_tiny_model
from loraplane_devcluster.testing import Kube, wait_until

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "loraplane"
EXAMPLES = ROOT / "examples" / "tiny-cpu"
RELEASE, RELEASE_NAMESPACE = "loraplane", "loraplane-system"
CLAIM = "loraplane-tiny"
PROMPT = "A quote about patience:"
TRAINING_TIMEOUT_S = 900
SERVING_TIMEOUT_S = 600


class DemoError(Exception):
    """A demo step failed; the message says which, and what the logs said."""


@dataclass
class DemoResult:
    base_model: str
    adapter_model: str
    base_answer: str
    adapter_answers: dict[str, str]  # pod name -> answer through the adapter
    timings: dict[str, float] = field(default_factory=dict)


class Steps:
    """Numbered, timed steps; a failure names its step and shows the logs that explain it."""

    def __init__(self, kube: Kube, say: Callable[[str], None]) -> None:
        self.kube, self.say = kube, say
        self.timings: dict[str, float] = {}

    @contextmanager
    def step(self, name: str, logs: Callable[[], str] = lambda: "") -> Iterator[None]:
        self.say(f"==> {name}")
        start = time.monotonic()
        try:
            yield
        except Exception as error:
            tail = logs() or self.kube.log_tails(20)
            raise DemoError(f"step '{name}' failed: {error}\n{tail}") from error
        self.timings[name] = time.monotonic() - start


def _load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _get(kube: Kube, kind: str, name: str, namespace: str) -> dict[str, Any]:
    result = kube.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else {}


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def progress_bar(progress: dict[str, Any], width: int = 30) -> str:
    percent = float(progress.get("percent", 0))
    filled = int(width * percent / 100)
    loss = progress.get("loss")
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {percent:5.1f}%  step {progress.get('step', 0)}/"
        f"{progress.get('totalSteps', '?')}  loss {loss:.3f}  ETA {progress.get('eta', '?')}"
        if loss is not None
        else f"[{'.' * width}] waiting for the first step"
    )


def complete(ip: str, model: str, prompt: str, port: int = 8000) -> dict[str, Any]:
    """One completion through vLLM's OpenAI API on a pod IP (greedy, so answers are comparable)."""
    request = urllib.request.Request(
        f"http://{ip}:{port}/v1/completions",
        data=json.dumps({"model": model, "prompt": prompt, "max_tokens": 24, "temperature": 0}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - a pod IP on loopback
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def _pod_logs(kube: Kube, namespace: str, selector: str) -> Callable[[], str]:
    def tail() -> str:
        out = kube.kubectl("logs", "-n", namespace, "-l", selector, "--tail=30", "--prefix", check=False)
        return out.stdout + out.stderr

    return tail


def _install(kube: Kube) -> None:
    # Progress every second: the tiny run takes seconds, not the hours the default 5 s is made for.
    kube.helm("upgrade", "--install", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, "--create-namespace",
              "--set", "training.progressIntervalSeconds=1")  # fmt: skip
    kube.kubectl("rollout", "status", f"deployment/{RELEASE}", "-n", RELEASE_NAMESPACE, "--timeout=180s",
                 timeout_s=200)  # fmt: skip


def _stage(kube: Kube, namespace: str) -> None:
    if not _get(kube, "namespace", namespace, ""):
        kube.kubectl("create", "namespace", namespace)
    if not _get(kube, "pvc", CLAIM, namespace):
        stage_tiny_model(kube.api, namespace, CLAIM, binaries.cache_dir() / "demo" / namespace / CLAIM)


def _serve_base(kube: Kube, namespace: str, deployment: str) -> None:
    kube.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "vllm-deployment.yaml"))
    kube.kubectl("rollout", "status", f"deployment/{deployment}", "-n", namespace,
                 f"--timeout={SERVING_TIMEOUT_S}s", timeout_s=SERVING_TIMEOUT_S + 30)  # fmt: skip


def _train(kube: Kube, namespace: str, job_name: str, say: Callable[[str], None]) -> None:
    if not _get(kube, "ltj", job_name, namespace):
        kube.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "training-job.yaml"))
    last = ""

    def finished() -> bool:
        nonlocal last
        job = _get(kube, "ltj", job_name, namespace)
        line = progress_bar(job.get("status", {}).get("progress") or {})
        if line != last:
            say(f"    {line}")
            last = line
        summary = _condition(job, "Succeeded")
        if summary.get("status") == "False":
            raise DemoError(f"training failed: {summary.get('reason')}: {summary.get('message')}")
        return summary.get("status") == "True"

    wait_until("training to succeed", finished, timeout_s=TRAINING_TIMEOUT_S, interval_s=1.0)


def _adapter_ready(kube: Kube, namespace: str, name: str, say: Callable[[str], None]) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        adapter = _get(kube, "lad", name, namespace)
        status = adapter.get("status", {})
        if _condition(adapter, "Ready").get("status") == "True" and status.get("readyReplicas") == 2:
            return adapter
        return None

    adapter = wait_until("the adapter to be Ready on 2 replicas", ready, timeout_s=SERVING_TIMEOUT_S)
    for pod in adapter["status"].get("pods", []):
        say(f"    {pod['pod']} ({pod.get('ip')}): loaded at {pod.get('loadedAt')}")
    return adapter


def _ask(adapter: dict[str, Any]) -> tuple[str, str, str, dict[str, str]]:
    """The base model's answer on one replica and the adapter's on every replica."""
    served = adapter["spec"].get("servedModelName") or adapter["metadata"]["name"]
    pods = [p for p in adapter["status"]["pods"] if p.get("loaded")]
    with urllib.request.urlopen(f"http://{pods[0]['ip']}:8000/v1/models", timeout=30) as models:
        cards = json.loads(models.read())["data"]
    base_model = next(c["id"] for c in cards if not c.get("parent"))
    base = complete(pods[0]["ip"], base_model, PROMPT)
    answers = {}
    for pod in pods:
        reply = complete(pod["ip"], served, PROMPT)
        if reply.get("model") != served:
            raise DemoError(f"{pod['pod']} answered as {reply.get('model')!r}, not {served!r}")
        answers[pod["pod"]] = reply["choices"][0]["text"]
    return base_model, served, base["choices"][0]["text"], answers


def run(kube: Kube, namespace: str = "demo", say: Callable[[str], None] = print) -> DemoResult:
    """Every step of the demo against `kube`; raises DemoError naming the step that failed."""
    steps = Steps(kube, say)
    training = _load(EXAMPLES / "training-job.yaml")[0]
    deployment = next(d for d in _load(EXAMPLES / "vllm-deployment.yaml") if d["kind"] == "Deployment")
    deployment_name = deployment["metadata"]["name"]
    job_name, adapter_name = training["metadata"]["name"], training["spec"]["adapter"]["name"]
    operator_logs = _pod_logs(kube, RELEASE_NAMESPACE, f"app.kubernetes.io/instance={RELEASE}")
    vllm_logs = _pod_logs(kube, namespace, f"app={deployment_name}")

    with steps.step("install loraplane with Helm"):
        _install(kube)
    with steps.step(f"stage the tiny model and data on claim {CLAIM}"):
        _stage(kube, namespace)
    with steps.step("deploy vLLM serving the base model (2 replicas)", vllm_logs):
        _serve_base(kube, namespace, deployment_name)
    with steps.step(f"train LoraTrainingJob {job_name}", operator_logs):
        _train(kube, namespace, job_name, say)
    with steps.step(f"load LoraAdapter {adapter_name} on every replica", operator_logs):
        adapter = _adapter_ready(kube, namespace, adapter_name, say)
    with steps.step("ask the base model and the adapter the same question", vllm_logs):
        base_model, served, base_answer, answers = _ask(adapter)
    result = DemoResult(base_model, served, base_answer, answers, steps.timings)
    _show(result, say)
    return result


def _show(result: DemoResult, say: Callable[[str], None]) -> None:
    say("")
    say(f"prompt: {PROMPT!r}")
    say(f"  base model   {result.base_model.rsplit('/', 1)[-1]:<14} -> {result.base_answer.strip()!r}")
    for pod, answer in result.adapter_answers.items():
        say(f"  {result.adapter_model:<12} on {pod[-5:]:<5}    -> {answer.strip()!r}")
    say("")
    say("time per step:")
    for name, seconds in result.timings.items():
        say(f"  {seconds:6.1f} s  {name}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loraplane_devcluster demo", description=__doc__)
    parser.add_argument("--run-dir", type=Path, default=None, help="local cluster run directory")
    parser.add_argument("--namespace", default="demo")
    args = parser.parse_args(argv)
    say = print
    start = time.monotonic()
    say("==> start the local cluster (or reuse the running one)")
    cluster = controlplane.up(args.run_dir, report=lambda m: say(f"    {m}"))
    kube = Kube.connect(cluster.kubeconfig, cluster.bin_dir, cluster.run_dir)
    try:
        result = run(kube, args.namespace, say)
    except DemoError as error:
        say(f"\ndemo failed: {error}")
        return 1
    total = time.monotonic() - start
    say(f"\ndone in {total:.0f} s (cluster start: {total - sum(result.timings.values()):.0f} s)")
    say("\nlook around (the cluster keeps running):")
    kubeconfig, bin_dir = shlex.quote(str(cluster.kubeconfig)), shlex.quote(str(cluster.bin_dir))
    say(f"  export KUBECONFIG={kubeconfig} PATH={bin_dir}:$PATH")
    for command in (
        "kubectl get lora -A",
        f"kubectl describe ltj -n {args.namespace}",
        f"kubectl describe lad -n {args.namespace}",
        f"kubectl get events -n {args.namespace} --sort-by=.lastTimestamp",
        f"kubectl get pods -n {args.namespace} -o wide",
    ):
        say(f"  {command}")
    say("stop everything: make demo-down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
