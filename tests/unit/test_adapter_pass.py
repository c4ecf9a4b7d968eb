"""One reconcile pass of a Deployment, with the Kubernetes calls replaced by recorders and a local HTTP
server that answers like vLLM: what the pass writes, which pods it talks to, which Events it posts."""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import kopf
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from loraplane import kube
from loraplane.api.adapter import LoraAdapter
from loraplane.builders import serving
from loraplane.handlers.adapters import deployment_changes, pod_loading, reconciler
from loraplane.handlers.adapters.common import now
from loraplane.handlers.adapters.indexes import Indexes, slim_pod
from loraplane.handlers.adapters.reconciler import RECONCILERS, reconcile_deployment
from loraplane.settings import Settings
from loraplane.status import adapter as status_of
from loraplane_worker.fetch import Fetcher, Service, serve
from manifests import EXAMPLES

GATE = "loraplane.io/adapters-loaded"
RUNTIME_ENV = {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"}


class Vllm(BaseHTTPRequestHandler):
    """A vLLM server on 127.0.0.1: `runtime_api` says whether its runtime LoRA routes exist;
    `api_key`, when set, is required as a Bearer token on /v1 routes (vLLM's `--api-key`)."""

    runtime_api = False
    api_key: str | None = None
    adapters: dict[str, str] = {}
    posts: list[str] = []
    auth: list[str | None] = []
    barrier: threading.Barrier | None = None

    def _reply(self, status: int, body: Any) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        self.auth.append(self.headers.get("Authorization"))
        if self.api_key and self.headers.get("Authorization") != f"Bearer {self.api_key}":
            self._reply(401, {"error": "Unauthorized"})
            return False
        return True

    def do_GET(self) -> None:
        if not self._authorized():
            return
        cards = [{"id": "tiny-llama", "root": "/models/model", "parent": None}]
        cards += [{"id": n, "root": p, "parent": "tiny-llama"} for n, p in self.adapters.items()]
        self._reply(200, {"data": cards})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if not self._authorized():
            return
        self.posts.append(self.path)
        if not self.runtime_api:
            self._reply(404, {"detail": "Not Found"})
        elif self.path == "/v1/load_lora_adapter":
            if self.barrier is not None:
                self.barrier.wait()  # raises BrokenBarrierError unless enough loads are in flight together
            self.adapters[body["lora_name"]] = body["lora_path"]
            self._reply(200, "Success")
        else:
            self._reply(200 if self.adapters.pop(body["lora_name"], None) else 404, "{}")

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def vllm() -> Iterator[int]:
    Vllm.runtime_api, Vllm.api_key, Vllm.adapters, Vllm.posts, Vllm.auth = False, None, {}, [], []
    Vllm.barrier = None
    server = ThreadingHTTPServer(("127.0.0.1", 0), Vllm)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()


@dataclass
class Cluster:
    """The API calls of a pass, recorded; `deployment` follows what the pass wrote."""

    deployment: dict[str, Any]
    written: list[dict[str, Any]] = field(default_factory=list)
    gates: list[tuple[str, str, str]] = field(default_factory=list)
    events: list[tuple[str, str, str, str]] = field(default_factory=list)  # (kind, name, type, reason)
    secrets: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    records: list[list[str]] = field(default_factory=list)  # what each write of the record listed
    config_maps: dict[str, dict[str, Any]] = field(default_factory=dict)

    def replace_deployment(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        version = int(body["metadata"]["resourceVersion"]) + 1
        self.deployment = copy.deepcopy(body) | {"status": self.deployment.get("status", {})}
        self.deployment["metadata"]["resourceVersion"] = str(version)
        self.written.append(body)
        return self.deployment

    def read_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.config_maps.get(name)

    def write_config_map(self, namespace: str, body: dict[str, Any]) -> None:
        self.config_maps[body["metadata"]["name"]] = copy.deepcopy(body)
        self.records.append(json.loads(body["data"]["loaded"]))

    def set_pod_condition(self, namespace: str, pod: str, condition: dict[str, Any]) -> None:
        self.gates.append((pod, condition["status"], condition["reason"]))

    def event(self, body: Any, *, type: str, reason: str, message: str) -> None:
        self.events.append((body["kind"], body["metadata"]["name"], type, reason))

    def read_secret_key(self, namespace: str, name: str, key: str) -> str:
        if (namespace, name) not in self.secrets:
            raise ApiException(status=404, reason="Not Found")
        return self.secrets[(namespace, name)][key]

    def reasons(self, type_: str = "Warning") -> set[str]:
        return {reason for _, _, kind, reason in self.events if kind == type_}


def vllm_deployment(port: int, namespace: str) -> dict[str, Any]:
    manifest = (EXAMPLES / "tiny-cpu" / "vllm-deployment.yaml").read_text()
    body: dict[str, Any] = next(yaml.safe_load_all(manifest))
    body["metadata"] |= {"namespace": namespace, "resourceVersion": "1", "uid": "d-uid", "generation": 1}
    container = body["spec"]["template"]["spec"]["containers"][0]
    container["args"][container["args"].index("--port") + 1] = str(port)
    body["status"] = {"replicas": 1}
    return body


def pod_of(deployment: dict[str, Any], name: str, template_hash: str) -> dict[str, Any]:
    """A running, container-ready pod made from the Deployment's current template."""
    template = copy.deepcopy(deployment["spec"]["template"])
    return {
        "metadata": {
            "name": name,
            "namespace": deployment["metadata"]["namespace"],
            "uid": f"uid-{name}",
            "labels": {**template["metadata"]["labels"], "pod-template-hash": template_hash},
            "ownerReferences": [{"kind": "ReplicaSet", "name": f"vllm-tiny-{template_hash}"}],
        },
        "spec": template["spec"],
        "status": {
            "phase": "Running",
            "podIP": "127.0.0.1",
            "conditions": [
                {"type": "ContainersReady", "status": "True"},
                {"type": "Ready", "status": "True"},
            ],
            "containerStatuses": [
                {
                    "name": "vllm",
                    "restartCount": 0,
                    "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}},
                },
            ],
        },
    }


def lora_adapter(namespace: str, **serving: Any) -> dict[str, Any]:
    return {
        "apiVersion": "loraplane.io/v1alpha1",
        "kind": "LoraAdapter",
        "metadata": {
            "name": "quotes",
            "namespace": namespace,
            "uid": "a-uid",
            "generation": 1,
            "creationTimestamp": "2025-01-01T00:00:00Z",
        },
        "spec": {
            "baseModel": "tiny-llama",
            "source": {"volume": {"claimName": "loraplane-tiny", "path": "adapters/a"}},
            "serving": {"deployment": "vllm-tiny", **serving},
        },
    }


def run_pass(
    cluster: Cluster, adapter: dict[str, Any], pods: list[dict[str, Any]]
) -> status_of.LoraAdapterStatus:
    """One pass over what the indexes would hold now; the adapter's status from it."""
    namespace = adapter["metadata"]["namespace"]
    indexes = Indexes(
        adapters={(namespace, "vllm-tiny"): [adapter]},  # type: ignore[arg-type]
        deployments={(namespace, "vllm-tiny"): [cluster.deployment]},  # type: ignore[arg-type]
        pods={namespace: [slim_pod(p) for p in pods]},  # type: ignore[arg-type]
        training_jobs={},  # type: ignore[arg-type]
    )
    outcome = asyncio.run(reconcile_deployment(namespace, "vllm-tiny", indexes))
    model = LoraAdapter.model_validate(adapter)
    return status_of.observe(model, outcome.passes["quotes"], now())


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch, vllm: int, request: pytest.FixtureRequest) -> Cluster:
    # Each test has a namespace of its own: reconcilers are kept per (namespace, Deployment).
    recorder = Cluster(vllm_deployment(vllm, namespace=request.node.name[:60].lower().replace("_", "-")))
    monkeypatch.setattr(kube, "replace_deployment", recorder.replace_deployment)
    monkeypatch.setattr(kube, "set_pod_condition", recorder.set_pod_condition)
    monkeypatch.setattr(kube, "read_config_map", recorder.read_config_map)
    monkeypatch.setattr(kube, "write_config_map", recorder.write_config_map)
    monkeypatch.setattr(kube, "endpoint_ready", lambda namespace, pod: None)
    monkeypatch.setattr(kube, "read_secret_key", recorder.read_secret_key)
    monkeypatch.setattr(kopf, "event", recorder.event)
    return recorder


def ready(status: status_of.LoraAdapterStatus) -> tuple[str, str, str]:
    condition = next(c for c in status.conditions if c.type == "Ready")
    return condition.status, condition.reason, condition.message


def test_pods_from_before_lora_was_enabled_are_neither_loaded_into_nor_reported(cluster: Cluster) -> None:
    """Enabling LoRA restarts every replica; until the rollout replaces them, the old pods (no runtime
    LoRA API) must not be tried, or each would post a spurious RuntimeLoadingDisabled Warning."""
    namespace = cluster.deployment["metadata"]["namespace"]
    old = pod_of(cluster.deployment, "vllm-tiny-old-1", "old")
    adapter = lora_adapter(namespace)

    status = run_pass(cluster, adapter, [old])
    [enabled] = cluster.written
    container = enabled["spec"]["template"]["spec"]["containers"][0]
    assert "--enable-lora" in container["args"]
    assert RUNTIME_ENV in container["env"]
    assert "LoraEnabled" in cluster.reasons("Normal")
    assert Vllm.posts == [], "nothing is loaded into a pod that predates LoRA being enabled"
    assert "RuntimeLoadingDisabled" not in cluster.reasons()
    assert ready(status)[1] != "RuntimeLoadingDisabled"

    # The next passes see the enabled template in the index; the old pod is still there (rolling).
    for _ in range(2):
        status = run_pass(cluster, adapter, [old])
    assert Vllm.posts == []
    assert "RuntimeLoadingDisabled" not in cluster.reasons()
    assert ready(status)[:2] == ("False", "WaitingForRollout")
    assert status.replicas == 0, "only pods of the current template count"

    # The rollout's new pod has the runtime API and the gate: loaded, gate opened, Ready.
    Vllm.runtime_api = True
    new = pod_of(cluster.deployment, "vllm-tiny-new-1", "new")
    status = run_pass(cluster, adapter, [old, new])
    assert Vllm.posts == ["/v1/load_lora_adapter"]
    assert ("vllm-tiny-new-1", "True", "AdaptersLoaded") in cluster.gates
    assert (status.replicas, status.ready_replicas) == (1, 1)
    assert "RuntimeLoadingDisabled" not in cluster.reasons()


def test_a_server_without_the_runtime_api_and_no_opt_in_is_still_runtime_loading_disabled(
    cluster: Cluster,
) -> None:
    cluster.deployment["metadata"]["annotations"] = {}
    cluster.deployment["spec"]["template"]["spec"]["containers"][0]["args"].append("--enable-lora")
    namespace = cluster.deployment["metadata"]["namespace"]
    status = run_pass(cluster, lora_adapter(namespace), [pod_of(cluster.deployment, "vllm-tiny-p-1", "p")])
    assert cluster.written == [], "no opt-in: the Deployment is not changed"
    assert Vllm.posts == ["/v1/load_lora_adapter"]
    assert ready(status)[:2] == ("False", "RuntimeLoadingDisabled")
    assert "RuntimeLoadingDisabled" in cluster.reasons()


# --- API keys -------------------------------------------------------------------------------------------

KEY = "sk-test-0123456789"


def keyed(cluster: Cluster) -> tuple[str, list[dict[str, Any]]]:
    """A server started with an API key and the runtime API on; one pod of the current template."""
    Vllm.runtime_api, Vllm.api_key = True, KEY
    container = cluster.deployment["spec"]["template"]["spec"]["containers"][0]
    container["args"] += ["--enable-lora"]
    container["env"] += [RUNTIME_ENV, {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "k"}}}]
    cluster.deployment["metadata"]["annotations"] = {}
    namespace = cluster.deployment["metadata"]["namespace"]
    return namespace, [pod_of(cluster.deployment, "vllm-tiny-k-1", "k")]


def everything_said(cluster: Cluster, status: status_of.LoraAdapterStatus) -> str:
    return json.dumps([cluster.events, cluster.gates, status.to_wire()]) + repr(RECONCILERS)


def test_without_a_key_a_server_that_wants_one_is_unauthorized_and_the_message_names_the_field(
    cluster: Cluster,
) -> None:
    namespace, pods = keyed(cluster)
    status = run_pass(cluster, lora_adapter(namespace), pods)
    state, reason, message = ready(status)
    assert (state, reason) == ("False", "Unauthorized")
    assert "spec.serving.apiKeySecretRef" in message
    assert "loraplane.io/api-key-secret" in message
    assert Vllm.posts == []
    assert set(Vllm.auth) == {None}


def test_the_key_from_the_adapters_secret_goes_with_every_call(cluster: Cluster) -> None:
    namespace, pods = keyed(cluster)
    cluster.secrets[(namespace, "vllm-key")] = {"api-key": KEY}
    adapter = lora_adapter(namespace, apiKeySecretRef={"name": "vllm-key", "key": "api-key"})
    status = run_pass(cluster, adapter, pods)
    assert ready(status)[:2] == ("True", "Loaded")
    assert Vllm.posts == ["/v1/load_lora_adapter"]
    assert set(Vllm.auth) == {f"Bearer {KEY}"}, "models, load and the confirming models call"
    assert KEY not in everything_said(cluster, status)


def test_the_deployments_annotation_names_the_key_for_every_adapter(cluster: Cluster) -> None:
    namespace, pods = keyed(cluster)
    cluster.secrets[(namespace, "vllm-key")] = {"token": KEY}
    cluster.deployment["metadata"]["annotations"] = {"loraplane.io/api-key-secret": "vllm-key"}
    adapter = lora_adapter(namespace, apiKeySecretRef={"name": "other", "key": "api-key"})
    assert ready(run_pass(cluster, adapter, pods))[:2] == ("True", "Loaded"), "the annotation wins"


@pytest.mark.parametrize(
    ("secrets", "said"),
    [
        ({}, "Secret vllm-key does not exist"),
        ({"vllm-key": {"other": KEY}}, "Secret vllm-key has no key api-key"),
        ({"vllm-key": {"api-key": "wrong"}}, "refused the API key from Secret vllm-key key api-key"),
    ],
)
def test_a_key_that_cannot_be_read_or_is_refused_says_so(
    cluster: Cluster, secrets: dict[str, dict[str, str]], said: str
) -> None:
    namespace, pods = keyed(cluster)
    cluster.secrets = {(namespace, name): data for name, data in secrets.items()}
    adapter = lora_adapter(namespace, apiKeySecretRef={"name": "vllm-key", "key": "api-key"})
    state, reason, message = ready(run_pass(cluster, adapter, pods))
    assert (state, reason) == ("False", "Unauthorized")
    assert said in message
    assert "spec.serving.apiKeySecretRef of LoraAdapter quotes" in message


def test_a_forbidden_secret_names_the_chart_value(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    namespace, pods = keyed(cluster)

    def forbidden(namespace: str, name: str, key: str) -> str:
        raise ApiException(status=403, reason="Forbidden")

    monkeypatch.setattr(kube, "read_secret_key", forbidden)
    adapter = lora_adapter(namespace, apiKeySecretRef={"name": "vllm-key", "key": "api-key"})
    message = ready(run_pass(cluster, adapter, pods))[2]
    assert "serving.apiKeySecrets.namespaces" in message


def test_a_rotated_key_is_read_again_after_a_401(cluster: Cluster) -> None:
    namespace, pods = keyed(cluster)
    cluster.secrets[(namespace, "vllm-key")] = {"api-key": KEY}
    adapter = lora_adapter(namespace, apiKeySecretRef={"name": "vllm-key", "key": "api-key"})
    assert ready(run_pass(cluster, adapter, pods))[1] == "Loaded"
    Vllm.api_key = "sk-rotated"  # the server restarted with a new key, and the Secret holds it
    cluster.secrets[(namespace, "vllm-key")] = {"api-key": "sk-rotated"}
    assert ready(run_pass(cluster, adapter, pods))[1] == "Unauthorized", "the cached key is refused once"
    assert ready(run_pass(cluster, adapter, pods))[1] == "Loaded"


def test_a_deployment_and_pods_the_filtered_indexes_lack_are_read_directly(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A LoraAdapter created after its Deployment and pods: kopf has not indexed them (they have not
    changed since the adapter named them), so the pass reads them."""
    namespace, pods = keyed(cluster)
    Vllm.api_key = None
    read: list[str] = []

    def read_deployment(namespace: str, name: str) -> dict[str, Any]:
        read.append(f"deployment {name}")
        return cluster.deployment

    def list_pods(namespace: str, selector: str) -> list[dict[str, Any]]:
        read.append(f"pods {selector}")
        return pods

    monkeypatch.setattr(kube, "read_deployment", read_deployment)
    monkeypatch.setattr(kube, "list_pods", list_pods)
    adapter = lora_adapter(namespace)
    empty = Indexes(
        adapters={(namespace, "vllm-tiny"): [adapter]},  # type: ignore[arg-type]
        deployments={},  # type: ignore[arg-type]
        pods={},  # type: ignore[arg-type]
        training_jobs={},  # type: ignore[arg-type]
    )
    outcome = asyncio.run(reconcile_deployment(namespace, "vllm-tiny", empty))
    status = status_of.observe(LoraAdapter.model_validate(adapter), outcome.passes["quotes"], now())
    assert read == ["deployment vllm-tiny", "pods app=vllm-tiny"]
    assert ready(status)[:2] == ("True", "Loaded")


# --- what loraplane loaded, and what nobody wants any more -----------------------------------------------


def hot_cluster(cluster: Cluster) -> tuple[str, list[dict[str, Any]]]:
    """LoRA and the runtime API already on, no opt-in needed; one pod of the current template."""
    Vllm.runtime_api = True
    container = cluster.deployment["spec"]["template"]["spec"]["containers"][0]
    container["args"] += ["--enable-lora"]
    container["env"] += [RUNTIME_ENV]
    cluster.deployment["metadata"]["annotations"] = {}
    namespace = cluster.deployment["metadata"]["namespace"]
    return namespace, [pod_of(cluster.deployment, "vllm-tiny-r-1", "r")]


def named(namespace: str, name: str, served: str | None = None, created: str = "2025-01-01T00:00:00Z") -> Any:
    adapter = lora_adapter(namespace)
    adapter["metadata"] |= {"name": name, "uid": f"uid-{name}", "creationTimestamp": created}
    if served:
        adapter["spec"]["servedModelName"] = served
    return adapter


def pass_over(cluster: Cluster, adapters: list[dict[str, Any]], pods: list[dict[str, Any]]) -> Any:
    namespace = cluster.deployment["metadata"]["namespace"]
    indexes = Indexes(
        adapters={(namespace, "vllm-tiny"): adapters},  # type: ignore[arg-type]
        deployments={(namespace, "vllm-tiny"): [cluster.deployment]},  # type: ignore[arg-type]
        pods={namespace: [slim_pod(p) for p in pods]},  # type: ignore[arg-type]
        training_jobs={},  # type: ignore[arg-type]
    )
    return asyncio.run(reconcile_deployment(namespace, "vllm-tiny", indexes))


def record(cluster: Cluster) -> list[str]:
    """What the record ConfigMap (owned by the Deployment) lists."""
    found = cluster.config_maps.get("vllm-tiny-loraplane-loaded")
    if found is not None:
        assert found["metadata"]["ownerReferences"][0]["uid"] == cluster.deployment["metadata"]["uid"]
    return list(json.loads(found["data"]["loaded"])) if found else []


def test_the_record_names_what_loraplane_loads_before_it_loads_and_forgets_it_once_unloaded(
    cluster: Cluster,
) -> None:
    namespace, pods = hot_cluster(cluster)
    Vllm.adapters = {"by-hand": "/models/adapters/x"}  # loaded by a user, not through a LoraAdapter
    pass_over(cluster, [named(namespace, "a"), named(namespace, "b")], pods)
    assert cluster.records[0] == ["a", "b"], "written before the loads"
    assert Vllm.posts == ["/v1/load_lora_adapter"] * 2
    assert set(Vllm.adapters) == {"a", "b", "by-hand"}

    # b's LoraAdapter went without its finalizer (or while the operator was down): the index lacks it.
    outcome = pass_over(cluster, [named(namespace, "a")], pods)
    assert set(Vllm.adapters) == {"a", "by-hand"}, "unloaded what nobody claims; the user's own stays"
    assert record(cluster) == ["a"]
    assert outcome.unwanted_held == set()

    pass_over(cluster, [], pods)
    assert set(Vllm.adapters) == {"by-hand"}
    assert record(cluster) == []
    # Another operator process (a restart) reads the record from the cluster, not from memory.
    RECONCILERS.clear()
    cluster.config_maps["vllm-tiny-loraplane-loaded"]["data"]["loaded"] = '["gone-while-down"]'
    Vllm.adapters["gone-while-down"] = "/models/adapters/y"
    pass_over(cluster, [], pods)
    assert set(Vllm.adapters) == {"by-hand"}


def test_a_name_stays_recorded_while_a_pod_that_may_hold_it_does_not_answer(cluster: Cluster) -> None:
    namespace, pods = hot_cluster(cluster)
    pass_over(cluster, [named(namespace, "a")], pods)
    silent = pod_of(cluster.deployment, "vllm-tiny-r-2", "r")
    silent["status"]["podIP"] = "127.0.0.2"  # nothing listens there
    cluster.deployment["status"]["replicas"] = 2
    pass_over(cluster, [], [*pods, silent])
    assert Vllm.adapters == {}
    assert record(cluster) == ["a"], "the pod that did not answer may still hold it"


def test_deleting_the_conflict_loser_never_unloads_the_winner(cluster: Cluster) -> None:
    namespace, pods = hot_cluster(cluster)
    winner = named(namespace, "winner", served="quotes", created="2025-01-01T00:00:00Z")
    loser = named(namespace, "loser", served="quotes", created="2025-01-02T00:00:00Z")
    outcome = pass_over(cluster, [winner, loser], pods)
    assert outcome.passes["loser"].problem.reason == "Conflict"
    assert set(Vllm.adapters) == {"quotes"}

    loser["metadata"]["deletionTimestamp"] = "2025-01-03T00:00:00Z"
    outcome = pass_over(cluster, [winner, loser], pods)
    assert "quotes" not in outcome.unwanted_held, "the loser's finalizer finishes at once"
    assert set(Vllm.adapters) == {"quotes"}, "the winner keeps serving"
    assert Vllm.posts.count("/v1/unload_lora_adapter") == 0


def test_a_pod_loads_its_adapters_side_by_side(cluster: Cluster) -> None:
    cluster.deployment["spec"]["template"]["spec"]["readinessGates"] = [{"conditionType": GATE}]
    namespace, pods = hot_cluster(cluster)
    # Four loads must be in flight at once, or the barrier breaks and the loads fail.
    Vllm.barrier = threading.Barrier(4, timeout=10)
    outcome = pass_over(cluster, [named(namespace, f"a{i}") for i in range(8)], pods)
    assert set(Vllm.adapters) == {f"a{i}" for i in range(8)}
    assert all(h.loaded for h in outcome.passes["a0"].pods[0].holdings.values())
    assert cluster.gates == [
        ("vllm-tiny-r-1", "False", "LoadingAdapters"),
        ("vllm-tiny-r-1", "True", "AdaptersLoaded"),
    ]


# ---- one pass against a real fetcher (loopback, no store) --------------------------------------------


@pytest.fixture
def fetcher_port(tmp_path: Any) -> Iterator[int]:
    """The worker's fetcher service on 127.0.0.1 with an empty environment: a Secret's values are
    missing, so an adapter that needs them fails for good without any store traffic."""
    service = Service(Fetcher(tmp_path / "cache", max_bytes=10 * 1024 * 1024, environ={}))
    service.start()
    server = serve(service, "127.0.0.1", 0, wait_s=5.0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()


def test_one_pass_adds_lora_and_the_fetcher_in_one_write_and_a_fetch_failure_is_terminal(
    cluster: Cluster, vllm: int, fetcher_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(serving_fetcher_port=fetcher_port, serving_retry_failed_seconds=30)
    for module in (pod_loading, deployment_changes, reconciler):
        monkeypatch.setattr(module, "get_settings", lambda: settings)
    body = lora_adapter(cluster.deployment["metadata"]["namespace"])
    body["spec"]["source"] = {"s3": {"uri": "s3://adapters/quotes", "connection": {
        "endpoint": "http://127.0.0.1:1", "credentialsSecret": {"name": "store-creds"}}}}  # fmt: skip
    before = pod_of(cluster.deployment, "vllm-tiny-old", "h1")  # from before LoRA: left to the rollout
    run_pass(cluster, body, [before])
    assert len(cluster.written) == 1, "LoRA and the fetcher in one change: one restart"
    assert {"LoraEnabled", "FetcherAdded"} <= cluster.reasons("Normal")
    pod = pod_of(cluster.deployment, "vllm-tiny-a", "h2")
    pod["status"]["conditions"].append({"type": serving.GATE, "status": "False", "reason": "Loading"})
    Vllm.runtime_api = True
    status = run_pass(cluster, body, [pod])
    condition = next(c for c in status.conditions if c.type == "Ready")
    assert condition.reason == "FetchFailed"
    assert "s3://adapters/quotes" in condition.message
    assert "CredentialsMissing" in condition.message
    assert "FetchFailed" in cluster.reasons("Warning")
    assert "/v1/load_lora_adapter" not in Vllm.posts, "nothing to load until the cache holds it"
    assert ("vllm-tiny-a", "True", "AdaptersLoaded") in cluster.gates, (
        "a permanent failure does not hold the gate"
    )
