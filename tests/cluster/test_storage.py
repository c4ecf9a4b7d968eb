"""The worker's storage code and the serving fetcher against a real S3 server (versitygw over a
POSIX folder, built from the Go module proxy): round trips, the manifest-last rule that makes a
checkpoint or an adapter complete, resume from the newest complete checkpoint, digests, each store
error with its code and kind, and credentials kept out of logs and errors.

Marked `cluster` because the store is a built binary, as the control plane is; none of these tests
start a cluster, except the last, where a pod on the local cluster fetches from the store."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import CoreV1Api

from loraplane import crdgen
from loraplane.api.storage import S3Connection, S3Location, S3Path
from loraplane.api.worker import WorkerInput
from loraplane_devcluster import objectstore
from loraplane_devcluster.objectstore import ObjectStore
from loraplane_devcluster.testing import Kube, wait_until
from loraplane_worker import resume, sync
from loraplane_worker.errors import EXIT_INPUT_ERROR, exit_code_for
from loraplane_worker.fetch import Fetcher, Wanted, WantedAdapter
from loraplane_worker.fetch import main as fetch_main
from loraplane_worker.storage import (
    ADAPTER_WEIGHTS,
    MANIFEST,
    ClientOptions,
    DigestMismatchError,
    PermanentStoreError,
    StoreError,
)
from loraplane_worker.storage import ObjectStore as Store
from storage_fixtures import connection, credentials_env, unique_bucket

pytestmark = pytest.mark.cluster

# Fail fast on an unreachable endpoint: the retry path is the same, only shorter.
QUICK = ClientOptions(connect_timeout_s=2.0, read_timeout_s=10.0, retries=1, backoff_s=0.1)


def client(store: ObjectStore, options: ClientOptions = QUICK, **env: str) -> Store:
    return Store(connection(store), environ=env or credentials_env(store), options=options)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_adapter(folder: Path, weights: bytes | None = None) -> Path:
    write(folder / ADAPTER_WEIGHTS, weights if weights is not None else secrets.token_bytes(64 * 1024))
    write(folder / "adapter_config.json", json.dumps({"r": 8, "peft_type": "LORA"}).encode())
    return folder


def make_checkpoint(root: Path, step: int) -> Path:
    folder = make_adapter(root / f"checkpoint-{step}")
    write(folder / "trainer_state.json", json.dumps({"global_step": step}).encode())
    write(folder / "optimizer.pt", secrets.token_bytes(32 * 1024))
    return folder


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# ---- round trips -----------------------------------------------------------------------------------


def test_the_store_listens_on_loopback_only(object_store: ObjectStore) -> None:
    host = object_store.endpoint.removeprefix("http://").rsplit(":", 1)[0]
    assert host.startswith("127.0.0.")
    assert object_store.pod_endpoint is None
    argv = Path(f"/proc/{object_store.pid}/cmdline").read_bytes().split(b"\0")
    ports = [argv[i + 1].decode() for i, part in enumerate(argv) if part == b"--port"]
    assert ports == [object_store.endpoint.removeprefix("http://")]


def test_a_prefix_round_trips_with_its_layout(
    object_store: ObjectStore, bucket: S3Path, tmp_path: Path
) -> None:
    source = tmp_path / "model"
    write(source / "config.json", b'{"hidden_size": 8}')
    write(source / "tokenizer" / "vocab.json", b'{"a": 1}')
    write(source / "model.safetensors", secrets.token_bytes(300_000))
    store = client(object_store)
    store.upload_tree(source, bucket.child("models/tiny"))

    copied = tmp_path / "copy"
    store.download_prefix(bucket.child("models/tiny"), copied)
    assert tree(copied) == {**tree(source), MANIFEST: (copied / MANIFEST).read_bytes()}
    # one object named directly (a dataset file) lands under its own name
    single = tmp_path / "single"
    assert store.download_prefix(bucket.child("models/tiny/config.json"), single) == [single / "config.json"]
    assert (single / "config.json").read_bytes() == b'{"hidden_size": 8}'


def test_the_training_and_the_eval_data_are_fetched_each_to_its_own_folder(
    object_store: ObjectStore, bucket: S3Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a pod does first for `spec.dataset.s3` and `spec.evalDataset.s3` (the operator points
    them at two local folders)."""
    store = client(object_store)
    store.upload_file(
        write(tmp_path / "up" / "train.jsonl", b'{"text": "train"}\n'), bucket.child("d/train.jsonl")
    )
    store.upload_file(
        write(tmp_path / "up" / "eval.jsonl", b'{"text": "eval"}\n'), bucket.child("e/eval.jsonl")
    )
    for name, value in credentials_env(object_store).items():
        monkeypatch.setenv(name, value)

    def located(key: str) -> dict[str, Any]:
        return {"uri": bucket.child(key).uri, "connection": connection(object_store).to_wire()}

    config = WorkerInput.model_validate(
        {
            "model": {"nameOrPath": "tiny"},
            "dataset": {"s3": located("d/train.jsonl"), "path": str(tmp_path / "dataset")},
            "evalDataset": {"s3": located("e/eval.jsonl"), "path": str(tmp_path / "eval-dataset")},
            "output": {"dir": str(tmp_path / "out")},
        }
    )
    sync.fetch_inputs(config)
    assert tree(tmp_path / "dataset") == {"train.jsonl": b'{"text": "train"}\n'}
    assert tree(tmp_path / "eval-dataset") == {"eval.jsonl": b'{"text": "eval"}\n'}


def test_a_file_larger_than_a_part_goes_up_in_parts_and_comes_back_whole(
    object_store: ObjectStore, bucket: S3Path, tmp_path: Path
) -> None:
    data = secrets.token_bytes(12 * 1024 * 1024 + 17)  # three 5 MiB parts, the last one short
    big = write(tmp_path / "big" / "weights.bin", data)
    store = client(object_store, ClientOptions(part_size=5 * 1024 * 1024, parallel_parts=3, retries=1))
    manifest = store.upload_tree(big.parent, bucket.child("big"))
    assert [(f.path, f.size, f.sha256) for f in manifest.files] == [("weights.bin", len(data), sha256(data))]
    # S3 marks a multipart object's ETag with the part count: proof it was not one PUT
    stat = store.client.stat_object(bucket.bucket, "big/weights.bin")
    assert str(stat.etag).endswith("-3")
    out = tmp_path / "out"
    store.download_tree(bucket.child("big"), out)
    assert sha256((out / "weights.bin").read_bytes()) == sha256(data)


def test_an_adapter_carries_the_weights_digest_and_round_trips(
    object_store: ObjectStore, bucket: S3Path, tmp_path: Path
) -> None:
    adapter = make_adapter(tmp_path / "adapter")
    store = client(object_store)
    manifest = store.upload_adapter(adapter, bucket.child("jobs/demo/adapter"))
    weights_digest = sha256((adapter / ADAPTER_WEIGHTS).read_bytes())
    assert manifest.sha256 == weights_digest
    assert store.read_manifest(bucket.child("jobs/demo/adapter")) == manifest

    out = tmp_path / "fetched"
    store.download_tree(bucket.child("jobs/demo/adapter"), out, expect_sha256=weights_digest)
    assert tree(out) == {**tree(adapter), MANIFEST: manifest.to_json()}


def test_a_folder_without_its_manifest_is_not_taken_for_a_finished_upload(
    object_store: ObjectStore, bucket: S3Path, tmp_path: Path
) -> None:
    adapter = make_adapter(tmp_path / "adapter")
    store = client(object_store)
    # what a pod killed mid-upload leaves: the files, not the manifest that is written last
    for name in (ADAPTER_WEIGHTS, "adapter_config.json"):
        store.upload_file(adapter / name, bucket.child(f"cut/{name}"))
    assert store.read_manifest(bucket.child("cut")) is None
    with pytest.raises(PermanentStoreError) as caught:
        store.download_tree(bucket.child("cut"), tmp_path / "out")
    assert caught.value.code == "NoSuchKey"
    assert caught.value.uri == bucket.child(f"cut/{MANIFEST}").uri
    assert not (tmp_path / "out" / ADAPTER_WEIGHTS).exists()


def test_an_upload_cut_short_leaves_no_manifest(
    object_store: ObjectStore, bucket: S3Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest goes last: a pod killed after some files (here: the third upload fails) has
    written none, so the folder reads as absent."""
    folder = make_checkpoint(tmp_path, 3)
    store = client(object_store)
    real_upload, calls = store.upload_file, []

    def dies_on_the_third(path: Path, location: S3Path) -> None:
        calls.append(path.name)
        if len(calls) == 3:
            raise KeyboardInterrupt("the pod is killed")
        real_upload(path, location)

    monkeypatch.setattr(store, "upload_file", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        store.upload_checkpoint(folder, bucket.child("ck"))
    written = [o.key for o in store.list_objects(bucket.child("ck"))]
    assert len(written) == 2
    assert not any(key.endswith(MANIFEST) for key in written)
    assert store.newest_complete_checkpoint(bucket.child("ck")) is None


# ---- checkpoints -----------------------------------------------------------------------------------


def test_a_retried_pod_resumes_from_the_newest_complete_checkpoint(
    object_store: ObjectStore, bucket: S3Path, tmp_path: Path
) -> None:
    local = tmp_path / "first-pod" / "checkpoints"
    checkpoints = bucket.child("jobs/run/checkpoints")
    store = client(object_store)
    for step in (2, 4, 10):
        store.upload_checkpoint(make_checkpoint(local, step), checkpoints)
    # checkpoint-12 was being uploaded when the pod died: every file but the manifest
    partial = make_checkpoint(local, 12)
    for path in sorted(partial.iterdir()):
        store.upload_file(path, checkpoints.child(f"checkpoint-12/{path.name}"))

    newest = store.newest_complete_checkpoint(checkpoints)
    assert newest is not None
    assert newest.step == 10  # 12 is newer but incomplete; 10 beats 4 and 2 numerically, not as text
    assert newest.location == checkpoints.child("checkpoint-10")

    fresh = tmp_path / "second-pod" / "checkpoints"
    restored = store.download_checkpoint(newest, fresh)
    assert restored == fresh / "checkpoint-10"
    assert resume.incomplete_reason(restored) is None  # the worker's own resume rule accepts it
    assert resume.newest_complete_checkpoint(fresh) == resume.Checkpoint(restored, 10)
    assert [p.name for p in fresh.iterdir()] == ["checkpoint-10"]  # no staging folder left


def test_no_checkpoint_yet_is_none_and_a_missing_bucket_is_an_error(
    object_store: ObjectStore, bucket: S3Path
) -> None:
    store = client(object_store)
    assert store.newest_complete_checkpoint(bucket.child("jobs/new/checkpoints")) is None
    with pytest.raises(PermanentStoreError) as caught:
        store.newest_complete_checkpoint(S3Path.parse("s3://no-such-bucket-here/checkpoints"))
    assert caught.value.code == "NoSuchBucket"


# ---- digests ---------------------------------------------------------------------------------------


def test_a_changed_object_is_a_digest_mismatch_naming_both_digests(
    object_store: ObjectStore, bucket: S3Path, tmp_path: Path
) -> None:
    adapter = make_adapter(tmp_path / "adapter")
    store = client(object_store)
    manifest = store.upload_adapter(adapter, bucket.child("a"))
    corrupt = secrets.token_bytes(64 * 1024)  # same size, other bytes
    store.client.put_object(bucket.bucket, f"a/{ADAPTER_WEIGHTS}", io.BytesIO(corrupt), len(corrupt))

    out = tmp_path / "out"
    with pytest.raises(DigestMismatchError) as caught:
        store.download_tree(bucket.child("a"), out)
    error = caught.value
    assert (error.code, error.permanent) == ("DigestMismatch", True)
    assert error.uri == bucket.child(f"a/{ADAPTER_WEIGHTS}").uri
    assert (error.expected, error.actual) == (manifest.sha256, sha256(corrupt))
    assert manifest.sha256 in str(error)
    assert sha256(corrupt) in str(error)
    assert not list(out.rglob(f"*{ADAPTER_WEIGHTS}*"))  # nothing half-checked left behind
    assert exit_code_for(error) == EXIT_INPUT_ERROR


def test_a_pinned_digest_other_than_the_manifests_is_refused(
    object_store: ObjectStore, bucket: S3Path, tmp_path: Path
) -> None:
    store = client(object_store)
    manifest = store.upload_adapter(make_adapter(tmp_path / "adapter"), bucket.child("a"))
    with pytest.raises(DigestMismatchError) as caught:
        store.download_tree(bucket.child("a"), tmp_path / "out", expect_sha256="0" * 64)
    assert (caught.value.expected, caught.value.actual) == ("0" * 64, manifest.sha256)


# ---- errors ----------------------------------------------------------------------------------------


def closed_endpoint() -> str:
    with socket.socket() as probe:  # a port nothing listens on, on a loopback address
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def test_each_store_error_has_its_code_uri_and_kind(object_store: ObjectStore, bucket: S3Path) -> None:
    other_key, other_secret = "LPOTHER" + secrets.token_hex(4).upper(), secrets.token_urlsafe(24)
    objectstore.create_user(object_store, other_key, other_secret)
    good = credentials_env(object_store)
    other = {"AWS_ACCESS_KEY_ID": other_key, "AWS_SECRET_ACCESS_KEY": other_secret}
    unknown_key = {**good, "AWS_ACCESS_KEY_ID": "LPNOSUCHKEY0"}
    wrong_secret = {**good, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    unreachable = S3Connection(endpoint=closed_endpoint(), path_style=True)
    x = bucket.child("x")
    cases: list[tuple[str, Store, S3Path, bool]] = [
        ("NoSuchBucket", client(object_store), S3Path.parse("s3://no-such-bucket-at-all/x"), True),
        ("NoSuchKey", client(object_store), bucket.child("missing/key.json"), True),
        ("AccessDenied", client(object_store, **other), x, True),
        ("InvalidAccessKeyId", client(object_store, **unknown_key), x, True),
        ("SignatureDoesNotMatch", client(object_store, **wrong_secret), x, True),
        ("EndpointUnreachable", Store(unreachable, environ=good, options=QUICK), x, False),
    ]
    seen = {}
    for code, store, location, permanent in cases:
        with pytest.raises(StoreError) as caught:
            store.download_prefix(location, Path("/nonexistent-never-written"))
        error = caught.value
        seen[code] = (error.code, error.permanent, isinstance(error, PermanentStoreError))
        assert error.uri.startswith(location.uri), (code, error.uri)
        assert str(error).startswith(f"{error.uri}: {error.code}")
        assert exit_code_for(error) == (EXIT_INPUT_ERROR if permanent else 1)
    assert seen == {code: (code, permanent, permanent) for code, _, _, permanent in cases}


def test_credentials_stay_out_of_logs_errors_and_reprs(
    object_store: ObjectStore,
    bucket: S3Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)  # urllib3's and minio's debug output included
    good = credentials_env(object_store)
    store = client(object_store)
    texts = [repr(store)]
    store.upload_adapter(make_adapter(tmp_path / "adapter"), bucket.child("a"))
    store.download_tree(bucket.child("a"), tmp_path / "out")
    wrong_secret = "wrong-" + secrets.token_hex(8)
    for env in (
        {**good, "AWS_SECRET_ACCESS_KEY": wrong_secret},
        {**good, "AWS_SESSION_TOKEN": "tok-" + wrong_secret},
    ):
        with pytest.raises(StoreError) as caught:
            client(object_store, **env).read_bytes(bucket.child("a/" + MANIFEST))
        texts += [str(caught.value), repr(caught.value), caught.value.message]
    fetcher = Fetcher(tmp_path / "cache", options=QUICK)
    for key, value in good.items():  # the fetcher reads its credentials from its environment, as in a pod
        monkeypatch.setenv(key, value)
    fetcher.sync(Wanted(connection=connection(object_store),
                        adapters=[WantedAdapter(name="a", uri=bucket.child("nope").uri)]))  # fmt: skip
    texts.append((tmp_path / "cache" / ".status.json").read_text())
    # the store process itself: credentials in its environment, not its command line or PID record
    texts.append(Path(f"/proc/{object_store.pid}/cmdline").read_bytes().decode(errors="replace"))
    texts += [p.read_text() for p in (object_store.run_dir / "pids").glob("*.json")]
    logged = caplog.text + "\n".join(texts) + object_store.log.read_text(errors="replace")
    assert "NoSuchKey" in logged  # the failures were logged, so the check below looked at something
    for secret in (object_store.secret_access_key, wrong_secret):
        assert secret not in logged


# ---- the serving fetcher ---------------------------------------------------------------------------


def test_the_fetcher_fills_verifies_and_evicts_the_cache(
    object_store: ObjectStore, bucket: S3Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in credentials_env(object_store).items():
        monkeypatch.setenv(key, value)
    store = client(object_store)
    digests = {
        name: store.upload_adapter(make_adapter(tmp_path / name), bucket.child(f"adapters/{name}")).sha256
        for name in ("sql", "chat", "bad")
    }
    bad = secrets.token_bytes(64 * 1024)
    store.client.put_object(bucket.bucket, f"adapters/bad/{ADAPTER_WEIGHTS}", io.BytesIO(bad), len(bad))
    cache = tmp_path / "cache"

    def wanted(*names: str, **pins: str) -> Wanted:
        return Wanted(
            connection=connection(object_store),
            adapters=[
                WantedAdapter(name=n, uri=bucket.child(f"adapters/{n}").uri, sha256=pins.get(n, digests[n]))
                for n in names
            ],
        )

    fetcher = Fetcher(cache, options=QUICK)
    states = fetcher.sync(wanted("sql", "chat", "bad"))
    assert {n: (s.state, s.code) for n, s in states.items()} == {
        "sql": ("Ready", None), "chat": ("Ready", None), "bad": ("Failed", "DigestMismatch"),
    }  # fmt: skip
    assert states["bad"].permanent  # the corrupted adapter fails alone; the others are served
    for name in ("sql", "chat"):
        served = cache / name
        assert served.is_symlink()
        assert (served / ADAPTER_WEIGHTS).is_file()
        assert sha256((served / ADAPTER_WEIGHTS).read_bytes()) == digests[name]
    assert not (cache / "bad").exists()
    status = json.loads((cache / ".status.json").read_text())
    assert status["bad"]["code"] == "DigestMismatch"
    assert status["sql"]["state"] == "Ready"

    # a permanent failure is not retried while its entry stays the same
    assert fetcher.sync(wanted("sql", "chat", "bad"))["bad"].attempts == 1
    # a new pin is a new entry: tried again (and the same weights under the same pin fail again)
    assert fetcher.sync(wanted("sql", "chat", "bad", bad="1" * 64))["bad"].attempts == 1

    # no longer wanted: unlinked, and its files gone with it
    states = fetcher.sync(wanted("sql"))
    assert set(states) == {"sql"}
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == ["sql"]
    assert sorted(p.name for p in (cache / ".objects").iterdir()) == [digests["sql"]]


def test_the_fetcher_retries_an_unreachable_store_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "LPX")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    fetcher = Fetcher(tmp_path / "cache", options=QUICK)
    wanted = Wanted(
        connection=S3Connection(endpoint=closed_endpoint(), path_style=True),
        adapters=[WantedAdapter(name="a", uri="s3://bucket/a")],
    )
    state = fetcher.sync(wanted, now=100.0)["a"]
    assert (state.state, state.code, state.permanent) == ("Failed", "EndpointUnreachable", False)
    assert fetcher.next_retry() == state.next_try > 100.0
    assert fetcher.sync(wanted, now=100.5)["a"].attempts == 1  # not yet due: no new try
    assert fetcher.sync(wanted, now=state.next_try)["a"].attempts == 2  # due: tried again, longer backoff


# ---- a pod on the local cluster --------------------------------------------------------------------


def test_a_pod_fetches_an_adapter_from_the_store_with_a_secret(
    kube: Kube, namespace: str, cluster_object_store: ObjectStore, tmp_path: Path
) -> None:
    """The fetcher as an init container of a pod: it reaches the store on the pod network with the
    credentials of a Secret, and the main container finds the verified adapter in the emptyDir."""
    store = cluster_object_store
    assert store.pod_endpoint is not None
    bucket = unique_bucket("pods")
    objectstore.create_bucket(store, bucket)
    location = S3Path(bucket, "adapters/sql")
    digest = client(store).upload_adapter(make_adapter(tmp_path / "sql"), location).sha256
    objectstore.apply_credentials_secret(
        store, kube.bin_dir / "kubectl", kube.kubeconfig, "store-creds", namespace
    )
    wanted = {
        "connection": {"endpoint": store.pod_endpoint, "region": store.region, "pathStyle": True},
        "adapters": [{"name": "sql", "uri": location.uri, "sha256": digest}],
    }
    core: Any = CoreV1Api(kube.api)
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "wanted"}, "data": {"wanted.json": json.dumps(wanted)}}
    )
    secret_env = [
        {"name": env, "valueFrom": {"secretKeyRef": {"name": "store-creds", "key": key}}}
        for env, key in (("AWS_ACCESS_KEY_ID", "accessKeyId"), ("AWS_SECRET_ACCESS_KEY", "secretAccessKey"))
    ]
    mounts = [{"name": "cache", "mountPath": "/cache"}, {"name": "wanted", "mountPath": "/etc/loraplane"}]
    pod = {
        "metadata": {"name": "fetch"},
        "spec": {
            "restartPolicy": "Never",
            "initContainers": [{
                "name": "fetch", "image": "ghcr.io/loraplane/worker:dev",
                "command": ["python", "-m", "loraplane_worker.fetch", "--once",
                            "--wanted", "/etc/loraplane/wanted.json", "--cache-dir", "/cache"],
                "env": secret_env, "volumeMounts": mounts,
            }],
            "containers": [{
                "name": "main", "image": "python:3.11",
                "command": ["python", "-c", "import hashlib; print(hashlib.sha256("
                            "open('/cache/sql/adapter_model.safetensors','rb').read()).hexdigest())"],
                "volumeMounts": mounts[:1],
            }],
            "volumes": [{"name": "cache", "emptyDir": {}},
                        {"name": "wanted", "configMap": {"name": "wanted"}}],
        },
    }  # fmt: skip
    core.create_namespaced_pod(namespace, pod)

    def finished() -> str | None:
        phase = core.read_namespaced_pod("fetch", namespace).status.phase
        return phase if phase in ("Succeeded", "Failed") else None

    phase = wait_until("the fetch pod to finish", finished, timeout_s=120)
    fetch_log = core.read_namespaced_pod_log("fetch", namespace, container="fetch")
    assert phase == "Succeeded", fetch_log
    assert core.read_namespaced_pod_log("fetch", namespace, container="main").strip() == digest
    assert "sql: ready" in fetch_log
    assert store.secret_access_key not in fetch_log


# ---- the schema on a real API server ---------------------------------------------------------------

PROBE_GROUP = "storage-probe.test.loraplane.io"


@pytest.fixture
def s3_probe_crd(kube: Kube) -> Iterator[str]:
    """A throwaway namespaced kind whose spec is an S3Location, so the API server judges the
    generated pattern and CEL rule before any real kind carries them."""
    schema = S3Location.model_json_schema(by_alias=True, mode="validation")
    spec = crdgen.to_structural(schema, schema.get("$defs", {}))
    name = f"s3probes{secrets.token_hex(3)}"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{name}.{PROBE_GROUP}"},
        "spec": {
            "group": PROBE_GROUP,
            "names": {"kind": name.capitalize(), "plural": name, "singular": name},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": spec}}},
            }],
        },
    }  # fmt: skip
    kube.kubectl("apply", "-f", "-", input=json.dumps(crd))

    def established() -> bool:
        found = json.loads(kube.kubectl("get", "crd", f"{name}.{PROBE_GROUP}", "-o", "json").stdout)
        return any(
            c["type"] == "Established" and c["status"] == "True" for c in found["status"]["conditions"]
        )

    wait_until("the probe CRD to be established", established, timeout_s=30)
    yield name
    kube.kubectl("delete", "crd", f"{name}.{PROBE_GROUP}", "--wait=false", check=False)


@pytest.mark.parametrize(
    ("uri", "accepted"),
    [
        ("s3://adapters/jobs/sql/adapter", True),
        ("s3://my.bucket-2", True),
        ("s3://Adapters/x", False),
        ("gs://adapters/x", False),
        ("s3://adapters/../secrets", False),
    ],
)
def test_the_api_server_enforces_the_uri_rules(
    kube: Kube, namespace: str, s3_probe_crd: str, uri: str, accepted: bool
) -> None:
    body = {
        "apiVersion": f"{PROBE_GROUP}/v1",
        "kind": s3_probe_crd.capitalize(),
        "metadata": {"name": "probe", "namespace": namespace},
        "spec": {"uri": uri, "connection": {"endpoint": "http://10.250.1.1:9000", "pathStyle": True}},
    }
    result = kube.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(body), check=False)
    assert (result.returncode == 0) == accepted, result.stderr
    if not accepted:
        assert "spec.uri" in result.stderr


def test_a_restarted_fetcher_keeps_a_pinned_cache_without_asking_the_store(
    object_store: ObjectStore, bucket: S3Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in credentials_env(object_store).items():
        monkeypatch.setenv(key, value)
    store = client(object_store)
    digest = store.upload_adapter(make_adapter(tmp_path / "sql"), bucket.child("adapters/sql")).sha256
    pinned = WantedAdapter(name="sql", uri=bucket.child("adapters/sql").uri, sha256=digest)
    unpinned = WantedAdapter(name="chat", uri=bucket.child("adapters/sql").uri)
    first = Fetcher(tmp_path / "cache", options=QUICK)
    assert (
        first.sync(Wanted(connection=connection(object_store), adapters=[pinned, unpinned]))["chat"].state
        == "Ready"
    )
    # an unpinned entry is not fetched again while its URI stays the same
    again = first.sync(Wanted(connection=connection(object_store), adapters=[pinned, unpinned]))
    assert (again["chat"].attempts, again["sql"].attempts) == (0, 0)

    # the sidecar after the init container, or a restarted one: a store it cannot even reach
    unreachable = Wanted(
        connection=S3Connection(endpoint=closed_endpoint(), path_style=True), adapters=[pinned]
    )
    states = Fetcher(tmp_path / "cache", options=QUICK).sync(unreachable)
    assert (states["sql"].state, states["sql"].sha256) == ("Ready", digest)


def test_the_fetch_command_exit_codes(object_store: ObjectStore, bucket: S3Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    for key, value in credentials_env(object_store).items():
        monkeypatch.setenv(key, value)
    client(object_store).upload_adapter(make_adapter(tmp_path / "sql"), bucket.child("adapters/sql"))
    wanted_file = tmp_path / "wanted.json"
    args = ["--once", "--wanted", str(wanted_file), "--cache-dir", str(tmp_path / "cache")]

    def run(adapters: list[dict[str, str]]) -> int:
        wanted_file.write_text(
            json.dumps({"connection": connection(object_store).to_wire(), "adapters": adapters})
        )
        return fetch_main(args)

    assert run([{"name": "sql", "uri": bucket.child("adapters/sql").uri}]) == 0
    assert run([{"name": "sql", "uri": bucket.child("adapters/none").uri}]) == 1
    assert run([{"name": "Not A Name", "uri": "s3://x"}]) == 65  # a wanted list that does not parse


def test_old_checkpoints_are_pruned_manifest_first_keeping_the_newest_complete_ones(
    object_store: ObjectStore, bucket: S3Path, tmp_path: Path
) -> None:
    local = tmp_path / "pod" / "checkpoints"
    checkpoints = bucket.child("jobs/long/checkpoints")
    store = client(object_store)
    for step in (2, 4, 6, 8):
        store.upload_checkpoint(make_checkpoint(local, step), checkpoints)
    # checkpoint-1 never finished uploading: older than what is kept, so it goes too.
    store.upload_file(make_checkpoint(local, 1) / resume.TRAINER_STATE, checkpoints.child("checkpoint-1/x"))

    assert store.prune_checkpoints(checkpoints, keep=2) == [1, 2, 4]
    left = sorted({o.key.split("/")[3] for o in store.list_objects(checkpoints)})
    assert left == ["checkpoint-6", "checkpoint-8"]
    newest = store.newest_complete_checkpoint(checkpoints)
    assert newest is not None
    assert newest.step == 8
    assert store.prune_checkpoints(checkpoints, keep=2) == []
    assert store.prune_checkpoints(checkpoints, keep=0) == []  # no limit: keep everything


def test_a_catalogue_of_a_thousand_names_is_one_object_that_vllms_resolver_takes_under_each(
    object_store: ObjectStore, bucket: S3Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OnDemand: 1,000 served names of the same weights are one fetch and one object; each cached
    config names the server's `--model`, which is all vLLM's own filesystem resolver checks."""
    from vllm.plugins.lora_resolvers.filesystem_resolver import FilesystemResolver  # noqa: PLC0415

    for key, value in credentials_env(object_store).items():
        monkeypatch.setenv(key, value)
    digest = client(object_store).upload_adapter(make_adapter(tmp_path / "a"), bucket.child("a")).sha256
    assert digest is not None
    cache = tmp_path / "cache"
    names = [f"cat-{i:04d}" for i in range(1000)]
    entries = [WantedAdapter(name=n, uri=bucket.child("a").uri, sha256=digest) for n in names]
    wanted = Wanted(connection=connection(object_store), base_model="/models/model", adapters=entries)
    states = Fetcher(cache, options=QUICK).sync(wanted)
    assert {s.state for s in states.values()} == {"Ready"}
    assert [p.name for p in (cache / ".objects").iterdir()] == [digest], "one object for every name"
    config = json.loads((cache / "cat-0007" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "/models/model"
    assert sha256((cache / "cat-0007" / ADAPTER_WEIGHTS).read_bytes()) == digest, "the weights as verified"

    resolver = FilesystemResolver(str(cache))
    found = asyncio.run(resolver.resolve_lora("/models/model", "cat-0007"))
    assert found is not None
    assert found.lora_path == str(cache / "cat-0007")
    assert asyncio.run(resolver.resolve_lora("tiny-llama", "cat-0007")) is None, "only the --model string"
    assert asyncio.run(resolver.resolve_lora("/models/model", "not-catalogued")) is None
