"""LoraAdapter end to end: the chart's operator serves adapters trained by the real worker from a real
2-replica vLLM Deployment on the node agent, hot-loaded on every pod, behind the readiness gate.

vLLM cold starts are slow here (~30-45 s on 2 cores), so the module shares one namespace, one trained
adapter and one vLLM Deployment (`served`); the tests run in file order and each leaves it serving.
Tests wait on observed state (wait_until), never by sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from kubernetes import watch
from kubernetes.client import CoreV1Api, DiscoveryV1Api

from loraplane_devcluster.testing import Kube, wait_until
from loraplane_fixtures import CHART, ChartOperator, Release
from manifests import EXAMPLES
from vllm_e2e import (
    CLAIM,
    DEPLOYMENT,
    DIRECT,
    GATE,
    START_TIMEOUT_S,
    Cluster,
    adapter,
    completion,
    condition,
    models_on,
    module_cluster,
    replace_pod,
    vllm_deployment,
)

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

SERVED = "tiny-quotes"


cluster = module_cluster("adapters")


def test_a_server_without_the_runtime_api_reports_runtime_loading_disabled(cluster: Cluster) -> None:
    """No opt-in, no VLLM_ALLOW_RUNTIME_LORA_UPDATING: vLLM answers a bare 404; the condition says the fix."""
    cluster.apply(vllm_deployment("vllm-plain", replicas=1, opt_in=False))
    body = adapter("plain", "model")
    body["spec"]["serving"]["deployment"] = "vllm-plain"
    cluster.apply(body)
    try:
        reported = cluster.wait_adapter_reason("plain", "RuntimeLoadingDisabled", timeout_s=START_TIMEOUT_S)
        assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in reported["message"]
        assert "loraplane.io/manage-lora" in reported["message"]
        untouched = cluster.get("deployment", "vllm-plain")
        assert "--enable-lora" not in untouched["spec"]["template"]["spec"]["containers"][0]["args"]
    finally:
        cluster.delete("lad", "plain")
        cluster.delete("deployment", "vllm-plain")
        wait_until("the plain vLLM pod gone", lambda: not cluster.pods("vllm-plain"), timeout_s=120)


@dataclass(frozen=True)
class Served:
    cluster: Cluster
    adapter_path: str  # inside the claim
    enabled_at: float


@pytest.fixture(scope="module")
def served(cluster: Cluster) -> Served:
    """Train with a LoraTrainingJob that publishes to the vLLM Deployment; LoRA gets enabled on it (one
    restart) and the adapter is served on both replicas."""
    job = yaml.safe_load((EXAMPLES / "tiny-cpu" / "training-job.yaml").read_text())
    cluster.apply(vllm_deployment())
    cluster.apply(job)
    began = time.monotonic()
    ready = wait_until(f"LoraAdapter {SERVED} Ready on 2 pods",
                       lambda: cluster.ready_on(SERVED, 2),
                       timeout_s=2 * START_TIMEOUT_S, interval_s=1)  # fmt: skip
    trained = cluster.get("ltj", job["metadata"]["name"])["status"]["adapter"]
    print(f"train + enable LoRA + load on 2 replicas: {time.monotonic() - began:.0f} s")
    assert ready["status"]["path"] == f"/models/{trained['path']}"
    return Served(cluster, trained["path"], began)


def test_a_trained_adapter_is_served_by_every_replica_after_one_announced_restart(served: Served) -> None:
    cluster = served.cluster
    deployment = cluster.get("deployment", DEPLOYMENT)
    template = deployment["spec"]["template"]["spec"]
    args = template["containers"][0]["args"]
    assert "--enable-lora" in args
    assert args[:4] == ["--model", "/models/model", "--served-model-name", "tiny-llama"], "user args kept"
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in template["containers"][0]["env"]
    assert {"conditionType": GATE} in template["readinessGates"]
    assert deployment["metadata"]["generation"] == 2, "LoRA is enabled in one change: one restart"
    assert "LoraEnabled" in cluster.events(DEPLOYMENT)
    assert {"LoraEnabled", "Loaded", "Ready"} <= set(cluster.events(SERVED))
    # The replicas from before LoRA was enabled were left to the rollout, not tried and reported.
    assert "RuntimeLoadingDisabled" not in cluster.events(SERVED)

    pods = cluster.ready_pods()
    assert len(pods) == 2
    for pod in pods:
        assert condition(pod, GATE) == "True"
        status, answer = completion(pod["status"]["podIP"], SERVED)
        assert status == 200, answer
        assert answer["model"] == SERVED
        assert answer["choices"][0]["text"]
        assert models_on(pod["status"]["podIP"])[SERVED] == f"/models/{served.adapter_path}"
    status = cluster.get("lad", SERVED)["status"]
    assert (status["replicas"], status["readyReplicas"]) == (2, 2)
    assert status.get("pods", []) == [], "pods that hold it are counted, not listed"


def _watch_pod_window(cluster: Cluster, old: set[str], seen: dict[str, Any], stop: threading.Event) -> None:
    """Record whether a new pod was ever ContainersReady=True with Ready=False. The window can be short
    (a hot load takes milliseconds), so this follows every update of the pods through a watch."""
    core = CoreV1Api(cluster.kube.api)
    selector = f"app={DEPLOYMENT}"
    version = core.list_namespaced_pod(cluster.namespace, label_selector=selector).metadata.resource_version
    stream = watch.Watch()
    while not stop.is_set():
        for change in stream.stream(core.list_namespaced_pod, cluster.namespace, label_selector=selector,
                                    resource_version=version, timeout_seconds=2):  # fmt: skip
            pod = change["raw_object"]
            version = pod["metadata"]["resourceVersion"]
            if pod["metadata"]["name"] in old:
                continue
            # The gate False is the operator's doing; right after it opens, Ready lags by one kubelet write.
            gated = condition(pod, GATE) == "False"
            if gated and condition(pod, "ContainersReady") == "True" and condition(pod, "Ready") == "False":
                seen["window"] = pod["metadata"]["name"]
            if stop.is_set():
                break


def _watch_endpoints(cluster: Cluster, seen: dict[str, list[bool]], stop: threading.Event) -> None:
    """Record each pod's successive `ready` values in the Service's EndpointSlices (what routes)."""
    discovery = DiscoveryV1Api(cluster.kube.api)
    selector = f"kubernetes.io/service-name={DEPLOYMENT}"
    listing = discovery.list_namespaced_endpoint_slice(cluster.namespace, label_selector=selector)
    version = listing.metadata.resource_version
    stream = watch.Watch()
    while not stop.is_set():
        for change in stream.stream(discovery.list_namespaced_endpoint_slice, cluster.namespace,
                                    label_selector=selector, resource_version=version,
                                    timeout_seconds=2):  # fmt: skip
            piece = change["raw_object"]
            version = piece["metadata"]["resourceVersion"]
            for endpoint in piece.get("endpoints") or []:
                name = (endpoint.get("targetRef") or {}).get("name", "")
                ready = bool((endpoint.get("conditions") or {}).get("ready"))
                if not seen.get(name) or seen[name][-1] != ready:
                    seen.setdefault(name, []).append(ready)
            if stop.is_set():
                break


def test_a_bad_path_fails_alone_and_a_new_pod_is_gated_until_it_holds_the_adapter(served: Served) -> None:
    cluster = served.cluster
    cluster.apply(adapter("broken", "adapters/no-such-adapter"))
    failed = cluster.wait_adapter_reason("broken", "LoadFailed")
    assert "no-such-adapter" in failed["message"]
    assert cluster.adapter_ready(SERVED) is not None
    assert len(cluster.ready_pods()) == 2, "a failing adapter does not un-ready serving pods"

    old = {p["metadata"]["name"] for p in cluster.pods()}
    victim = sorted(old)[0]
    seen: dict[str, Any] = {}
    routed: dict[str, list[bool]] = {}
    stop = threading.Event()
    watchers = [
        threading.Thread(target=_watch_pod_window, args=(cluster, old, seen, stop), daemon=True),
        threading.Thread(target=_watch_endpoints, args=(cluster, routed, stop), daemon=True),
    ]
    for watcher in watchers:
        watcher.start()
    try:
        pods = replace_pod(cluster, victim)
        new = next(p for p in pods if p["metadata"]["name"] not in old)
        wait_until("the new pod routed", lambda: routed.get(new["metadata"]["name"], [])[-1:] == [True], 30)
    finally:
        stop.set()
        for watcher in watchers:
            watcher.join()
    assert seen.get("window"), (
        "the new pod was never ContainersReady=True with its gate closed and Ready=False"
    )
    # The Service listed the new pod as not ready first, and ready only once it held the adapter.
    assert routed[new["metadata"]["name"]] == [False, True]
    status, answer = completion(new["status"]["podIP"], SERVED)
    assert status == 200, answer
    assert "AdaptersLoaded" in cluster.events(new["metadata"]["name"])
    wait_until("both pods listed on the adapter",
               lambda: cluster.ready_on(SERVED, 2), 60)  # fmt: skip
    cluster.delete("lad", "broken")


def test_a_second_adapter_loads_without_unreadying_pods_and_deleting_it_unloads_it(served: Served) -> None:
    cluster = served.cluster
    path = cluster.copy_adapter(served.adapter_path, "adapters/second")
    unready: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if len(cluster.ready_pods()) < 2:
                unready.append(time.strftime("%X"))
            stop.wait(0.3)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        cluster.apply(adapter("second", path))
        wait_until("second Ready on 2 pods",
                   lambda: cluster.ready_on("second", 2), 120)  # fmt: skip
    finally:
        stop.set()
        watcher.join()
    assert not unready, f"serving pods went un-Ready at {unready}"
    ips = [p["status"]["podIP"] for p in cluster.ready_pods()]
    for ip in ips:
        assert completion(ip, "second")[0] == 200
        assert completion(ip, SERVED)[0] == 200

    cluster.delete("lad", "second")  # waits for the finalizer: unloaded everywhere first
    for ip in ips:
        assert "second" not in models_on(ip)
        assert completion(ip, "second")[0] == 404
        assert completion(ip, SERVED)[0] == 200


def test_a_rank_above_the_servers_ceiling_is_rank_too_high_and_the_server_stays_healthy(
    served: Served,
) -> None:
    cluster = served.cluster
    path = cluster.copy_adapter(served.adapter_path, "adapters/rank32", r=32)
    cluster.apply(adapter("wide", path))
    reported = cluster.wait_adapter_reason("wide", "RankTooHigh")
    assert "LoRA rank 32" in reported["message"]
    assert "--max-lora-rank 16" in reported["message"]
    for pod in cluster.ready_pods():
        with DIRECT.open(f"http://{pod['status']['podIP']}:8000/health", timeout=10) as response:
            assert response.status == 200
        assert completion(pod["status"]["podIP"], SERVED)[0] == 200
    cluster.delete("lad", "wide")


def test_a_new_version_is_swapped_pod_by_pod_while_the_other_replica_keeps_serving(served: Served) -> None:
    cluster = served.cluster
    new_path = cluster.copy_adapter(served.adapter_path, "adapters/v2")
    failures: list[str] = []
    served_by: dict[str, int] = {}
    stop = threading.Event()

    def clients() -> None:
        while not stop.is_set():
            ready = cluster.ready_pods()
            if not ready:
                failures.append("no Ready pod")
            for pod in ready:
                status, answer = completion(pod["status"]["podIP"], SERVED)
                served_by[pod["metadata"]["name"]] = served_by.get(pod["metadata"]["name"], 0) + 1
                if status != 200:
                    failures.append(f"{pod['metadata']['name']}: {status} {answer}")
            stop.wait(0.2)

    # The published adapter follows its training job; a second LoraAdapter serves a volume path instead.
    cluster.apply(adapter("versioned", served.adapter_path))
    wait_until("versioned Ready", lambda: cluster.adapter_ready("versioned"), 120)
    routed: dict[str, list[bool]] = {}
    threads = [
        threading.Thread(target=clients, daemon=True),
        threading.Thread(target=_watch_endpoints, args=(cluster, routed, stop), daemon=True),
    ]
    for thread in threads:
        thread.start()
    new_source = json.dumps({"spec": {"source": {"volume": {"claimName": CLAIM, "path": new_path}}}})
    try:
        cluster.kube.kubectl("patch", "lad", "versioned", "-n", cluster.namespace, "--type=merge", "-p",
                             new_source)  # fmt: skip

        def swapped() -> bool:
            pods = cluster.ready_pods()
            return len(pods) == 2 and all(
                models_on(p["status"]["podIP"]).get("versioned") == f"/models/{new_path}" for p in pods
            )

        # Each swap waits for the Service to stop routing to the pod: several passes per pod, slow on a
        # loaded 2-core machine (one pass took 18 s while the clients below kept both servers busy).
        wait_until("both pods on the new version", swapped, timeout_s=START_TIMEOUT_S, interval_s=0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures, failures[:5]
    # Each pod left the Service's rotation for its swap (clients above never lacked a Ready pod).
    for pod in cluster.pods():
        history = routed.get(pod["metadata"]["name"], [])
        assert False in history, routed
        assert history[-1], routed
    assert "SwappingVersion" not in json.dumps(cluster.pods()), "gates open again after the swap"
    cluster.delete("lad", "versioned")


def test_a_server_restarted_in_place_closes_its_gate_until_the_adapter_is_back(served: Served) -> None:
    cluster = served.cluster
    pod = cluster.ready_pods()[0]
    name = pod["metadata"]["name"]
    restarts = pod["status"]["containerStatuses"][0]["restartCount"]
    pid = int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("process://"))
    os.killpg(pid, signal.SIGKILL)

    def gate_closed() -> bool:
        current = cluster.get("pod", name) or {}
        statuses = current.get("status", {}).get("containerStatuses") or [{}]
        return statuses[0].get("restartCount", 0) > restarts and condition(current, GATE) == "False"

    wait_until("the gate to close after the restart", gate_closed, timeout_s=START_TIMEOUT_S, interval_s=0.5)
    wait_until("the gate to open again", lambda: condition(cluster.get("pod", name) or {}, GATE) == "True",
               timeout_s=START_TIMEOUT_S, interval_s=1)  # fmt: skip
    reopened = cluster.get("pod", name)
    assert condition(reopened, "Ready") == "True" or wait_until(
        "the pod Ready", lambda: condition(cluster.get("pod", name) or {}, "Ready") == "True", 30
    )
    assert models_on(reopened["status"]["podIP"])[SERVED] == f"/models/{served.adapter_path}"
    assert "ContainerRestarted" in cluster.events(name)


def test_static_mode_writes_one_merged_lora_modules_and_rolls_the_pods(served: Served) -> None:
    cluster = served.cluster
    path = cluster.copy_adapter(served.adapter_path, "adapters/static")
    before = cluster.get("deployment", DEPLOYMENT)["spec"]["template"]["spec"]["containers"][0]["args"]
    cluster.apply(adapter("pinned", path, serving={"deployment": DEPLOYMENT, "mode": "Static"}))
    ready = wait_until("pinned Ready on 2 pods after the rollout",
                       lambda: cluster.ready_on("pinned", 2),
                       timeout_s=2 * START_TIMEOUT_S, interval_s=1)  # fmt: skip
    args = cluster.get("deployment", DEPLOYMENT)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args.count("--lora-modules") == 1
    entry = json.loads(args[args.index("--lora-modules") + 1])
    assert entry == {"name": "pinned", "path": f"/models/{path}", "base_model_name": "tiny-llama"}
    assert [a for a in args if a not in before and a != "--lora-modules" and not a.startswith("{")] == []
    assert ready["status"]["path"] == f"/models/{path}"
    for pod in cluster.ready_pods():
        assert completion(pod["status"]["podIP"], "pinned")[0] == 200
        assert completion(pod["status"]["podIP"], SERVED)[0] == 200, "hot-loaded adapters reloaded after roll"
    assert "StaticAdaptersUpdated" in cluster.events(DEPLOYMENT)


def test_a_server_started_with_an_api_key_is_served_with_the_key_from_a_secret(
    served: Served, kube: Kube, chart_release: Release, operator: ChartOperator
) -> None:
    """vLLM started with an API key (VLLM_API_KEY from a Secret) answers 401 without it: the adapter
    says Unauthorized and which field to set; with the reference (and the chart's right to read the
    Secret in this namespace) it is loaded, and the key is in no status, Event or operator log."""
    cluster = served.cluster
    key = f"sk-e2e-{uuid.uuid4().hex}"
    upgrade = ("upgrade", chart_release.name, str(CHART), "--namespace", chart_release.namespace,
               "--reuse-values", "--wait=false")  # fmt: skip
    kube.helm(*upgrade, "--set-json", f'serving.apiKeySecrets.namespaces=["{cluster.namespace}"]')
    deployment, service = vllm_deployment("vllm-keyed", replicas=1, opt_in=False)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["args"].append("--enable-lora")  # LoRA and the runtime API on already: no restart
    container["env"] += [
        {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"},
        {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "vllm-key", "key": "api-key"}}},
    ]
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "vllm-key"},
              "stringData": {"api-key": key}}  # fmt: skip
    body = adapter("keyed", served.adapter_path)
    body["spec"]["serving"]["deployment"] = "vllm-keyed"
    try:
        cluster.apply([secret, deployment, service, body])
        refused = cluster.wait_adapter_reason("keyed", "Unauthorized", timeout_s=START_TIMEOUT_S)
        assert "spec.serving.apiKeySecretRef" in refused["message"]

        reference = {"spec": {"serving": {"apiKeySecretRef": {"name": "vllm-key", "key": "api-key"}}}}
        cluster.kube.kubectl("patch", "lad", "keyed", "-n", cluster.namespace, "--type=merge", "-p",
                             json.dumps(reference))  # fmt: skip
        ready = wait_until("keyed Ready on its pod", lambda: cluster.ready_on("keyed", 1), timeout_s=120)
        [pod] = cluster.ready_pods("vllm-keyed")
        ip = pod["status"]["podIP"]
        status, answer = completion(ip, "keyed", api_key=key)
        assert status == 200, answer
        assert answer["model"] == "keyed"
        assert completion(ip, "keyed")[0] == 401, "the server does want the key"
        events = cluster.kube.kubectl("get", "events", "-n", cluster.namespace, "-o", "json").stdout
        assert key not in json.dumps(ready) + events + operator.log_tail(2000)
    finally:
        cluster.delete("lad", "keyed")
        cluster.delete("deployment", "vllm-keyed")
        cluster.delete("secret", "vllm-key")
        kube.helm(*upgrade, "--set-json", "serving.apiKeySecrets.namespaces=[]")
        wait_until("the keyed vLLM pod gone", lambda: not cluster.pods("vllm-keyed"), timeout_s=120)
