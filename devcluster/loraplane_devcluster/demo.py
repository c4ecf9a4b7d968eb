"""`make demo`: the whole life of an adapter on one machine: install, train, serve, ask.

Every step is what a user does on a real cluster (helm install, kubectl apply, wait on conditions,
call vLLM's OpenAI API through the API server's pod proxy); only the cluster itself and the staged
tiny model are local stand-ins. With ``--existing-cluster`` the same steps run on the cluster of the
current KUBECONFIG context, with the chart's real images and the GPU examples (facebook/opt-350m).
The end-to-end test calls `run()` too, so the demo and the test cannot drift apart.

With ``--storage s3`` the local demo keeps everything in an object store instead of a claim: it starts
versitygw (a real S3 server, built into the cache) on the pod network, puts its credentials in a
Secret, uploads the tiny model and data, trains with the base model, data and output in ``s3://``,
and serves the job's result through loraplane's fetcher; each vLLM pod copies its base model from
the store into an ``emptyDir`` in an init container. The namespace holds no PersistentVolumeClaim.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from loraplane.api.storage import S3Connection, S3CredentialsSecret, S3Path
from loraplane.builders import serving
from loraplane_devcluster import binaries, controlplane, objectstore, tinymodel
from loraplane_devcluster.objectstore import ObjectStore
from loraplane_devcluster.staging import stage_tiny_model
from loraplane_devcluster.testing import Kube, wait_until

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "loraplane"
EXAMPLES = ROOT / "examples"
RELEASE, RELEASE_NAMESPACE = "loraplane", "loraplane-system"
CLAIM = "loraplane-tiny"
PROMPT = "A quote about patience:"
VLLM_PORT = 8000
STORAGES = ("volume", "s3")
# --storage s3: the Secret with the store's credentials, and where each thing lives in the bucket.
STORE_SECRET = "loraplane-demo-store"  # noqa: S105 - a Secret's name, not a secret
MODEL_KEY, DATA_KEY, RUNS_KEY = "models/tiny-llama", "data/quotes.jsonl", "runs"
BASE_MODEL_VOLUME = "base-model"


@dataclass(frozen=True)
class Scenario:
    """What the demo deploys, and how long each wait may take there."""

    training_job: Path  # a LoraTrainingJob (and what it needs) that publishes a HotLoad LoraAdapter
    vllm: Path  # the vLLM Deployment (and Service) the adapter targets
    stage_tiny_model: bool  # build the tiny model and data on a host-path claim (local cluster only)
    learned: str  # what the adapter learned from its data, in words, for the last line
    # Train while vLLM starts (one machine: both are CPU work that overlaps well); on a real cluster
    # the job waits for the base model, so that it never holds a GPU the serving pods need.
    train_while_serving_starts: bool = False
    helm_values: tuple[str, ...] = ()
    training_timeout_s: float = 900
    serving_timeout_s: float = 600
    storage: str = "volume"  # or "s3": the same manifests, rewritten to keep everything in the store


# The local cluster: a tiny Llama built on the spot, trained and served on CPU in minutes. Its vLLM
# starts with LoRA on as loraplane would turn it on, so vLLM starts once: the operator finds nothing to
# enable and hot-loads the adapter into the running pods. (The opt-in path, where loraplane enables
# LoRA with one restart, is examples/tiny-cpu/vllm-deployment.yaml and docs/serving.md.)
# Progress every second: the tiny run takes seconds, not the hours the default 5 s is made for.
LOCAL = Scenario(
    EXAMPLES / "tiny-cpu" / "training-job.yaml",
    EXAMPLES / "tiny-cpu" / "vllm-deployment-lora.yaml",
    stage_tiny_model=True,
    learned=f"to answer in the one quote form of its training data ({tinymodel.quote('<topic>')[:-1]}); "
    "the random base model never does",
    train_while_serving_starts=True,
    helm_values=("training.progressIntervalSeconds=1",),
)
# The same story with the object store only (--storage s3): no claim for the model, the data, the
# output or the serving pods.
LOCAL_S3 = replace(LOCAL, stage_tiny_model=False, storage="s3")
# A real cluster: the README's quick start, facebook/opt-350m from the Hub on one GPU per pod.
EXISTING = Scenario(
    EXAMPLES / "opt-350m-english-quotes.yaml",
    EXAMPLES / "vllm-opt-350m.yaml",
    stage_tiny_model=False,
    learned="the style of Abirate/english_quotes: a short quote, as its training data holds them",
    training_timeout_s=3 * 3600,
    serving_timeout_s=1800,
)


class DemoError(Exception):
    """A demo step failed; the message says which, and what the logs said."""


# ---- --storage s3: the manifests with the object store in place of the claim -----------------------


@dataclass(frozen=True)
class StoreLayout:
    """The demo's bucket and how pods reach it (the store's pod-network endpoint, the Secret)."""

    bucket: str
    endpoint: str
    region: str
    secret: str = STORE_SECRET

    def uri(self, key: str) -> str:
        return S3Path(self.bucket, key).uri

    def connection(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "region": self.region, "pathStyle": True,
                "credentialsSecret": {"name": self.secret}}  # fmt: skip

    def location(self, key: str) -> dict[str, Any]:
        return {"uri": self.uri(key), "connection": self.connection()}


def bucket_for(namespace: str) -> str:
    """One bucket per demo namespace (a namespace name is a valid bucket name once prefixed)."""
    return f"loraplane-{namespace}"[:63]


def s3_training_job(job: dict[str, Any], layout: StoreLayout) -> dict[str, Any]:
    """The job with its base model, data and output in the store (no claim): the worker copies the
    inputs to the pod's disk, uploads checkpoints as they are saved and the adapter, manifest last."""
    out = copy.deepcopy(job)
    spec = out["spec"]
    spec["baseModel"] = {"s3": layout.location(MODEL_KEY)}
    for field_name, key in (("dataset", DATA_KEY), ("output", RUNS_KEY)):
        kept = {k: v for k, v in spec[field_name].items() if k != "volume"}  # textField, merge, ...
        spec[field_name] = {"s3": layout.location(key), **kept}
    return out


# The base model for vLLM, as the worker image copies a model: every file checked against the
# manifest `upload_tree` wrote last. vLLM reads only local paths, so an init container fills an
# emptyDir before it starts (the image's entry point is the trainer; this runs its storage module).
BASE_MODEL_DOWNLOAD = """\
import os, pathlib
from loraplane.api.storage import S3Connection, S3Path
from loraplane_worker.storage import ObjectStore
uri, target = os.environ["MODEL_URI"], pathlib.Path(os.environ["MODEL_DIR"])
store = ObjectStore(S3Connection.model_validate_json(os.environ["S3_CONNECTION"]))
manifest = store.download_tree(S3Path.parse(uri), target)
print(f"{uri} -> {target}: {len(manifest.files)} files, {manifest.size_bytes} bytes, verified", flush=True)
"""


def base_model_init_container(layout: StoreLayout, image: str, model_dir: str, mount: str) -> dict[str, Any]:
    connection = {k: v for k, v in layout.connection().items() if k != "credentialsSecret"}
    secret = S3CredentialsSecret(name=layout.secret)
    credentials = [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": layout.secret, "key": key}}}
        for name, key in (
            ("AWS_ACCESS_KEY_ID", secret.access_key_id_key),
            ("AWS_SECRET_ACCESS_KEY", secret.secret_access_key_key),
        )
    ]
    return {
        "name": "fetch-base-model",
        "image": image,
        "command": ["python", "-c", BASE_MODEL_DOWNLOAD],
        "env": [
            {"name": "MODEL_URI", "value": layout.uri(MODEL_KEY)},
            {"name": "MODEL_DIR", "value": model_dir},
            {"name": "S3_CONNECTION", "value": json.dumps(connection)},
            *credentials,
        ],
        "volumeMounts": [{"name": BASE_MODEL_VOLUME, "mountPath": mount}],
    }


def s3_deployment(
    deployment: dict[str, Any], layout: StoreLayout, fetcher: serving.FetcherSettings
) -> dict[str, Any]:
    """The vLLM Deployment with no claim: its base model copied from the store into an emptyDir by an
    init container, and loraplane's fetcher and adapter cache written in already, exactly as the
    operator would add them (so vLLM starts once: the operator uses a fetcher it finds as it is)."""
    out = copy.deepcopy(deployment)
    spec = out["spec"]["template"]["spec"]
    claims = {v["name"] for v in spec.get("volumes") or [] if "persistentVolumeClaim" in v}
    server = spec["containers"][0]
    mounts = [m for m in server.get("volumeMounts") or [] if m["name"] in claims]
    if len(mounts) != 1:
        raise DemoError(f"expected one claim mount in the vLLM container, found {mounts}")
    mount = mounts[0]["mountPath"]
    model_dir = serving.flag_value([str(a) for a in server["args"]], "--model") or f"{mount}/model"
    server["volumeMounts"] = [m for m in server["volumeMounts"] if m["name"] not in claims] + [
        {"name": BASE_MODEL_VOLUME, "mountPath": mount, "readOnly": True}
    ]
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] not in claims] + [
        {"name": BASE_MODEL_VOLUME, "emptyDir": {}}
    ]
    spec["initContainers"] = [base_model_init_container(layout, fetcher.image, model_dir, mount)]
    patch = serving.fetcher_patch(out, fetcher, [S3CredentialsSecret(name=layout.secret)])
    if patch is None:
        raise DemoError("the fetcher patch was empty for a Deployment without a fetcher")
    spec["containers"] = patch["spec"]["template"]["spec"]["containers"]
    spec["volumes"] = patch["spec"]["template"]["spec"]["volumes"]
    return out


def chart_fetcher_settings() -> serving.FetcherSettings:
    """The fetcher the chart's operator would add (its default values: the worker image, the port,
    the cache size)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    fetcher = values["serving"]["fetcher"]
    return serving.FetcherSettings(
        values["training"]["workerImage"], int(fetcher["port"]), int(fetcher["cacheMiB"])
    )


def manifests(
    scenario: Scenario, layout: StoreLayout | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The training job's and vLLM's manifests of the scenario, rewritten for the store when it has one."""
    training, vllm = _load(scenario.training_job), _load(scenario.vllm)
    if layout is None:
        return training, vllm
    fetcher = chart_fetcher_settings()
    training = [s3_training_job(d, layout) if d["kind"] == "LoraTrainingJob" else d for d in training]
    vllm = [s3_deployment(d, layout, fetcher) if d["kind"] == "Deployment" else d for d in vllm]
    return training, vllm


def upload_tiny_model(store: ObjectStore, bucket: str) -> tuple[int, int]:
    """The tiny model and its quotes into the bucket, from the host (the store's loopback endpoint);
    returns (files, bytes)."""
    from loraplane_worker.storage import ObjectStore as Client  # noqa: PLC0415 - the s3 demo only

    objectstore.create_bucket(store, bucket)
    client = Client(
        S3Connection(endpoint=store.endpoint, region=store.region, path_style=True),
        environ={"AWS_ACCESS_KEY_ID": store.access_key_id, "AWS_SECRET_ACCESS_KEY": store.secret_access_key},
    )
    tiny = tinymodel.ensure_tiny_model()
    model = client.upload_tree(tiny.model_dir, S3Path(bucket, MODEL_KEY))
    client.upload_file(tiny.text_dataset, S3Path(bucket, DATA_KEY))
    return len(model.files) + 1, model.size_bytes + tiny.text_dataset.stat().st_size


@dataclass
class DemoResult:
    base_model: str
    adapter_model: str
    base_answer: str
    adapter_answers: dict[str, str]  # pod name -> answer through the adapter
    learned: str = ""
    serving_pods: list[str] = field(default_factory=list)  # the vLLM pods once the base model served
    timings: dict[str, float] = field(default_factory=dict)
    storage: str = "volume"
    locations: dict[str, str] = field(default_factory=dict)  # what -> where it lives (--storage s3)
    claims: list[str] = field(default_factory=list)  # PersistentVolumeClaims in the demo's namespace


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


def pod_proxy_path(namespace: str, pod: str, path: str, port: int = VLLM_PORT) -> str:
    """The API server's proxy to one pod's port: reaches every replica, in-cluster or not."""
    return f"/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy{path}"


def through_proxy(
    kube: Kube, namespace: str, pod: str, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """GET (or POST ``body`` as JSON to) one pod's vLLM through the API server's pod proxy.

    The client, not `kubectl create --raw`: that sends no JSON content type, which vLLM refuses."""
    method, url, headers, payload, _ = kube.api.param_serialize(
        "POST" if body is not None else "GET",
        pod_proxy_path(namespace, pod, path),
        header_params={"Content-Type": "application/json", "Accept": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = kube.api.call_api(method, url, headers, payload, _request_timeout=120)
    text = response.read()  # type: ignore[no-untyped-call]
    if response.status != 200:
        raise DemoError(f"{pod} answered {response.status} on {path}: {text[:300]!r}")
    answer: dict[str, Any] = json.loads(text)
    return answer


def complete(kube: Kube, namespace: str, pod: str, model: str, prompt: str) -> dict[str, Any]:
    """One completion through vLLM's OpenAI API on one pod (greedy, so answers are comparable)."""
    request = {"model": model, "prompt": prompt, "max_tokens": 24, "temperature": 0}
    return through_proxy(kube, namespace, pod, "/v1/completions", request)


def models(kube: Kube, namespace: str, pod: str) -> list[dict[str, Any]]:
    cards: list[dict[str, Any]] = through_proxy(kube, namespace, pod, "/v1/models")["data"]
    return cards


def _pod_logs(kube: Kube, namespace: str, selector: str) -> Callable[[], str]:
    def tail() -> str:
        # Every container: an init container that failed (the s3 demo's base-model copy) says why.
        out = kube.kubectl("logs", "-n", namespace, "-l", selector, "--tail=30", "--prefix",
                           "--all-containers", check=False)  # fmt: skip
        return out.stdout + out.stderr

    return tail


def _install(kube: Kube, values: Sequence[str]) -> None:
    settings = [arg for value in values for arg in ("--set", value)]
    # An existing release keeps the values it was installed with (a second demo run, or a cluster
    # where loraplane is installed already): the new chart's defaults, then those values, then ours.
    kube.helm("upgrade", "--install", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, "--create-namespace",
              "--reset-then-reuse-values", *settings)  # fmt: skip
    kube.kubectl("rollout", "status", f"deployment/{RELEASE}", "-n", RELEASE_NAMESPACE, "--timeout=180s",
                 timeout_s=200)  # fmt: skip


def _prepare(kube: Kube, namespace: str, scenario: Scenario) -> None:
    if not _get(kube, "namespace", namespace, ""):
        kube.kubectl("create", "namespace", namespace)
    if scenario.stage_tiny_model and not _get(kube, "pvc", CLAIM, namespace):
        stage_tiny_model(kube.api, namespace, CLAIM, binaries.cache_dir() / "demo" / namespace / CLAIM)


def _await_serving(kube: Kube, namespace: str, deployment: str, scenario: Scenario) -> list[str]:
    """Wait for the vLLM Deployment's rollout and return its pods' names."""
    timeout = int(scenario.serving_timeout_s)
    kube.kubectl("rollout", "status", f"deployment/{deployment}", "-n", namespace,
                 f"--timeout={timeout}s", timeout_s=timeout + 30)  # fmt: skip
    selector = ",".join(f"{k}={v}" for k, v in _selector(scenario).items())
    listed = json.loads(kube.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout)
    return sorted(
        p["metadata"]["name"] for p in listed["items"] if not p["metadata"].get("deletionTimestamp")
    )


def _selector(scenario: Scenario) -> dict[str, str]:
    deployment = next(d for d in _load(scenario.vllm) if d["kind"] == "Deployment")
    labels: dict[str, str] = deployment["spec"]["selector"]["matchLabels"]
    return labels


def _train(
    kube: Kube,
    namespace: str,
    job_name: str,
    scenario: Scenario,
    say: Callable[[str], None],
    docs: list[dict[str, Any]],
) -> None:
    if _get(kube, "ltj", job_name, namespace):
        # A run left by an earlier demo on this cluster may come from older data or code: the answer
        # shown below must come from an adapter trained now. (Its LoraAdapter stays and swaps to it.)
        kube.kubectl("delete", "ltj", job_name, "-n", namespace, "--wait=true", timeout_s=120)
    _apply(kube, namespace, docs)
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

    wait_until("training to succeed", finished, timeout_s=scenario.training_timeout_s, interval_s=1.0)


def _adapter_ready(
    kube: Kube, namespace: str, name: str, job_name: str, scenario: Scenario, say: Callable[[str], None]
) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        adapter = _get(kube, "lad", name, namespace)
        status = adapter.get("status", {})
        if _condition(adapter, "Ready").get("status") != "True" or status.get("readyReplicas") != 2:
            return None
        # Every pod holds this run's adapter (not one an earlier demo's run left loaded): its path
        # on the claim, or, from the store, the pods' cache folder named by its digest.
        serving = (status.get("history") or [{}])[0].get("path", "")
        return adapter if trained and serving.endswith(trained) else None

    result = _get(kube, "ltj", job_name, namespace).get("status", {}).get("adapter") or {}
    trained = result.get("path") or result.get("sha256") or ""

    adapter = wait_until("the adapter to be Ready on 2 replicas", ready, timeout_s=scenario.serving_timeout_s)
    # status.pods lists only pods that lack the adapter; the ones that hold it are the Ready pods.
    for pod in _serving_pods(kube, namespace, adapter):
        say(f"    {pod}: holds {adapter['metadata']['name']}")
    return adapter


def _serving_pods(kube: Kube, namespace: str, adapter: dict[str, Any]) -> list[str]:
    """The Ready pods of the adapter's Deployment (its status says all of them hold it)."""
    deployment = _get(kube, "deployment", adapter["spec"]["serving"]["deployment"], namespace)
    labels = deployment["spec"]["selector"]["matchLabels"]
    selector = ",".join(f"{key}={value}" for key, value in labels.items())
    listed = json.loads(kube.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout)
    return sorted(
        p["metadata"]["name"]
        for p in listed["items"]
        if not p["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
    )


def _ask(kube: Kube, namespace: str, adapter: dict[str, Any]) -> tuple[str, str, str, dict[str, str]]:
    """The base model's answer on one replica and the adapter's on every replica."""
    served = adapter["spec"].get("servedModelName") or adapter["metadata"]["name"]
    pods = _serving_pods(kube, namespace, adapter)
    base_model = next(c["id"] for c in models(kube, namespace, pods[0]) if not c.get("parent"))
    base = complete(kube, namespace, pods[0], base_model, PROMPT)
    answers = {}
    for pod in pods:
        reply = complete(kube, namespace, pod, served, PROMPT)
        if reply.get("model") != served:
            raise DemoError(f"{pod} answered as {reply.get('model')!r}, not {served!r}")
        answers[pod] = reply["choices"][0]["text"]
    return base_model, served, base["choices"][0]["text"], answers


def _apply(kube: Kube, namespace: str, docs: list[dict[str, Any]]) -> None:
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(docs))


def _claims(kube: Kube, namespace: str) -> list[str]:
    listed = json.loads(kube.kubectl("get", "pvc", "-n", namespace, "-o", "json").stdout)
    return sorted(c["metadata"]["name"] for c in listed["items"])


def _layout(store: ObjectStore | None, namespace: str, scenario: Scenario) -> StoreLayout | None:
    if scenario.storage != "s3":
        return None
    if store is None or store.pod_endpoint is None:
        raise DemoError(
            "--storage s3 needs an object store that the pods reach (objectstore.start with pod_address)"
        )
    return StoreLayout(bucket_for(namespace), store.pod_endpoint, store.region)


def _stage_in_store(kube: Kube, namespace: str, store: ObjectStore, layout: StoreLayout) -> None:
    if not _get(kube, "namespace", namespace, ""):
        kube.kubectl("create", "namespace", namespace)
    # The credentials go to the cluster through kubectl's stdin, never an argv.
    objectstore.apply_credentials_secret(
        store, kube.bin_dir / "kubectl", kube.kubeconfig, layout.secret, namespace
    )
    upload_tiny_model(store, layout.bucket)


def _locations(kube: Kube, namespace: str, job_name: str, layout: StoreLayout, adapter: dict[str, Any],
               store: ObjectStore) -> dict[str, str]:  # fmt: skip
    result = _get(kube, "ltj", job_name, namespace).get("status", {}).get("adapter") or {}
    uri, digest = result.get("uri", "?"), result.get("sha256") or "?"
    return {
        "base model": f"{layout.uri(MODEL_KEY)} (the trainer and each vLLM pod's init container copy it "
        "to the pod's emptyDir)",
        "training data": layout.uri(DATA_KEY),
        "checkpoints": f"{uri}/checkpoints (uploaded as they are saved; a retried pod resumes from them)",
        "adapter": f"{uri} (sha256 {digest[:12]}..., its manifest written last)",
        "in each pod": f"{adapter.get('status', {}).get('path', '?')} (the fetcher's verified emptyDir copy)",
        "on this machine": f"{store.data_dir / layout.bucket} (versitygw's POSIX folder)",
    }


def run(
    kube: Kube,
    namespace: str = "demo",
    say: Callable[[str], None] = print,
    scenario: Scenario = LOCAL,
    store: ObjectStore | None = None,
) -> DemoResult:
    """Every step of the demo against `kube`; raises DemoError naming the step that failed.
    ``store``: the object store that ``--storage s3`` (``LOCAL_S3``) keeps everything in."""
    steps = Steps(kube, say)
    layout = _layout(store, namespace, scenario)
    training_docs, vllm_docs = manifests(scenario, layout)
    training = next(d for d in training_docs if d["kind"] == "LoraTrainingJob")
    deployment = next(d for d in vllm_docs if d["kind"] == "Deployment")
    deployment_name = deployment["metadata"]["name"]
    job_name, adapter_name = training["metadata"]["name"], training["spec"]["adapter"]["name"]
    operator_logs = _pod_logs(kube, RELEASE_NAMESPACE, f"app.kubernetes.io/instance={RELEASE}")
    vllm_logs = _pod_logs(kube, namespace, f"app={deployment_name}")

    with steps.step("install loraplane with Helm"):
        _install(kube, scenario.helm_values)
    if layout is not None and store is not None:
        with steps.step(f"upload the tiny model and data to s3://{layout.bucket} (credentials in Secret "
                        f"{layout.secret})"):  # fmt: skip
            _stage_in_store(kube, namespace, store, layout)
    else:
        staging = f"stage the tiny model and data on claim {CLAIM}" if scenario.stage_tiny_model else ""
        with steps.step(staging or f"create namespace {namespace}"):
            _prepare(kube, namespace, scenario)
    serve = "deploy vLLM serving the base model (2 replicas)"
    if scenario.train_while_serving_starts:
        serve = "deploy vLLM serving the base model (2 replicas: they start while the adapter trains)"
    if layout is not None:
        serve += "; each pod copies it from the store first"
    with steps.step(serve, vllm_logs):
        _apply(kube, namespace, vllm_docs)
        if not scenario.train_while_serving_starts:
            serving_pods = _await_serving(kube, namespace, deployment_name, scenario)
    with steps.step(f"train LoraTrainingJob {job_name}", operator_logs):
        _train(kube, namespace, job_name, scenario, say, training_docs)
    if scenario.train_while_serving_starts:
        with steps.step("wait for vLLM to serve on both replicas", vllm_logs):
            serving_pods = _await_serving(kube, namespace, deployment_name, scenario)
    with steps.step(f"load LoraAdapter {adapter_name} on every replica", operator_logs):
        adapter = _adapter_ready(kube, namespace, adapter_name, job_name, scenario, say)
    with steps.step("ask the base model and the adapter the same question", vllm_logs):
        base_model, served, base_answer, answers = _ask(kube, namespace, adapter)
    result = DemoResult(
        base_model, served, base_answer, answers, scenario.learned, serving_pods, steps.timings,
        storage=scenario.storage, claims=_claims(kube, namespace),
    )  # fmt: skip
    if layout is not None and store is not None:
        result.locations = _locations(kube, namespace, job_name, layout, adapter, store)
    _show(result, say, namespace)
    return result


def _show(result: DemoResult, say: Callable[[str], None], namespace: str = "demo") -> None:
    say("")
    say(f"prompt: {PROMPT!r}")
    say(f"  base model   {result.base_model.rsplit('/', 1)[-1]:<14} -> {result.base_answer.strip()!r}")
    for pod, answer in result.adapter_answers.items():
        say(f"  {result.adapter_model:<12} on {pod[-5:]:<5}    -> {answer.strip()!r}")
    say(f"what the adapter learned: {result.learned}")
    if result.serving_pods and sorted(result.adapter_answers) == result.serving_pods:
        say("  (loaded into the pods that were already serving: no restart)")
    if result.locations:
        say("")
        say("where each thing lives (the object store only):")
        for what, where in result.locations.items():
            say(f"  {what:<16} {where}")
        claims = ", ".join(result.claims) or "none"
        say(f"  claims in namespace {namespace}: {claims}")
    say("")
    say("time per step:")
    for name, seconds in result.timings.items():
        say(f"  {seconds:6.1f} s  {name}")


@dataclass(frozen=True)
class Target:
    """Where the demo runs: the kubeconfig, the kubectl/helm folder, and what to deploy."""

    kube: Kube
    kubeconfig: Path
    bin_dir: Path
    scenario: Scenario
    local: bool
    store: ObjectStore | None = None


def existing_kubeconfig(environ: dict[str, str]) -> Path:
    """$KUBECONFIG (its first file), else ~/.kube/config: the cluster kubectl would talk to."""
    first = environ.get("KUBECONFIG", "").split(":")[0]
    path = Path(first) if first else Path.home() / ".kube" / "config"
    if not path.is_file():
        raise DemoError(f"--existing-cluster needs a kubeconfig: {path} does not exist (set KUBECONFIG)")
    return path


def connect(args: argparse.Namespace, say: Callable[[str], None]) -> Target:
    if args.existing_cluster:
        kubeconfig = existing_kubeconfig(dict(os.environ))
        bin_dir = binaries.resolve_bin_dir(None, services=False)  # kubectl and helm of the pinned versions
        say(f"==> use the cluster of {kubeconfig} (current context), with the chart's images")
        scenario = replace(EXISTING, helm_values=(*EXISTING.helm_values, *args.set)) if args.set else EXISTING
        return Target(Kube.connect(kubeconfig, bin_dir, None), kubeconfig, bin_dir, scenario, local=False)
    say("==> start the local cluster (or reuse the running one)")
    # Without kube-proxy and CoreDNS: the operator and the demo reach pods by their addresses and
    # pods reach the API server at 10.96.0.1, which the node's bridge holds, so the demo needs
    # neither, and `make demo` does not build them (docs/local-cluster.md).
    cluster = controlplane.up(args.run_dir, cluster_services=False, report=lambda m: say(f"    {m}"))
    kube = Kube.connect(cluster.kubeconfig, cluster.bin_dir, cluster.run_dir)
    if args.storage == "s3":
        store = local_store(cluster.run_dir, say)
        return Target(kube, cluster.kubeconfig, cluster.bin_dir, LOCAL_S3, local=True, store=store)
    return Target(kube, cluster.kubeconfig, cluster.bin_dir, LOCAL, local=True)


def local_store(run_dir: Path, say: Callable[[str], None]) -> ObjectStore:
    """The cluster's object store: the one running for it when pods reach it, else a new one. It is a
    process of the run directory, so `make demo-down` stops it with the cluster (its data stays)."""
    address = objectstore.pod_network_host_address(run_dir)
    if address is None:
        raise DemoError("--storage s3 needs the local cluster's node agent (the pods' network)")
    running = objectstore.load(run_dir)
    if running is not None and (running.pod_endpoint or "").startswith(f"http://{address}:"):
        say(f"==> reuse the object store (versitygw) at {running.pod_endpoint}")
        return running
    if running is not None:
        objectstore.stop(run_dir)  # started for another pod network (the cluster was restarted)
    say("==> start the object store: versitygw on the pod network (a cached build; the first takes ~3 min)")
    try:
        store = objectstore.start(run_dir, pod_address=address)
    except objectstore.ObjectStoreError as error:
        raise DemoError(f"the object store did not start: {error}") from error
    say(f"    versitygw at {store.pod_endpoint} for pods, {store.endpoint} for this machine")
    return store


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loraplane_devcluster demo", description=__doc__)
    parser.add_argument("--run-dir", type=Path, default=None, help="local cluster run directory")
    parser.add_argument("--namespace", default="demo")
    parser.add_argument(
        "--existing-cluster",
        action="store_true",
        help="run on the cluster of the current KUBECONFIG context instead of the local one "
        "(needs GPUs, ReadWriteMany storage and access to the Hugging Face Hub)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a chart value for --existing-cluster's helm install, e.g. the images you built: "
        "--set image.repository=REGISTRY/operator --set training.workerImage=REGISTRY/worker:TAG",
    )
    parser.add_argument(
        "--storage",
        choices=STORAGES,
        default="volume",
        help="where the model, data and adapters live: a claim (volume, the default) or an object store "
        "(s3: a real S3 server beside the local cluster, no claim at all)",
    )
    args = parser.parse_args(argv)
    if args.set and not args.existing_cluster:
        parser.error("--set is for --existing-cluster (the local cluster runs the checkout's code)")
    if args.storage == "s3" and args.existing_cluster:
        parser.error("--storage s3 runs on the local cluster (it starts the S3 server beside it)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    say = print
    start = time.monotonic()
    try:
        target = connect(args, say)
        result = run(target.kube, args.namespace, say, target.scenario, target.store)
    except DemoError as error:
        say(f"\ndemo failed: {error}")
        return 1
    total = time.monotonic() - start
    say(f"\ndone in {total:.0f} s (cluster start: {total - sum(result.timings.values()):.0f} s)")
    say("\nlook around (the cluster keeps running):")
    kubeconfig, bin_dir = shlex.quote(str(target.kubeconfig)), shlex.quote(str(target.bin_dir))
    say(f"  export KUBECONFIG={kubeconfig} PATH={bin_dir}:$PATH")
    first_pod = next(iter(result.adapter_answers))
    for command in (
        "kubectl get lora -A",
        f"kubectl describe ltj -n {args.namespace}",
        f"kubectl describe lad -n {args.namespace}",
        f"kubectl get events -n {args.namespace} --sort-by=.lastTimestamp",
        f"kubectl get pods -n {args.namespace} -o wide",
        f"kubectl get --raw {pod_proxy_path(args.namespace, first_pod, '/v1/models')}",
    ):
        say(f"  {command}")
    if target.store is not None:
        say(f"  find {shlex.quote(str(target.store.data_dir / bucket_for(args.namespace)))} -type f")
    if target.local:
        say(
            "stop everything (the object store too): make demo-down"
            if target.store
            else "stop everything: make demo-down"
        )
    else:
        uninstall = f"helm uninstall {RELEASE} -n {RELEASE_NAMESPACE}"
        say(f"remove the demo: kubectl delete namespace {args.namespace} && {uninstall}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
