"""A real S3-compatible object store for tests and the demo: versitygw over a POSIX folder.

versitygw (github.com/versity/versitygw, Apache-2.0) is built from the Go module proxy by
``devcluster/build-s3.sh`` into the cache, keyed by version. ``start`` runs it as a process of the
run directory (recorded like the control plane's, so ``controlplane.down`` stops it too):

* on a loopback address of its own (127.0.0.x, a free port), never 0.0.0.0;
* optionally also on the host end of a local cluster's pod network (10.250.N.1, see
  docs/node-agent.md): pods share a layer-2 segment with that address, so they reach the store
  there with no relay and no route, while nothing outside the machine can;
* with root credentials generated per start and handed to the process in its environment (not its
  argv, which /proc and the PID record show), an IAM folder so an unknown key is refused as
  ``InvalidAccessKeyId`` as on AWS, and the objects under ``RUN_DIR/objectstore/data``.

Nothing here runs on cluster start: tests and the demo call ``start`` when they need a store.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraplane_devcluster import probes, processes
from loraplane_devcluster.binaries import DEVCLUSTER_DIR, cache_dir, versions
from loraplane_devcluster.nodeagent.network import Subnet, lock_index

BUILD_SCRIPT = DEVCLUSTER_DIR / "build-s3.sh"
PROCESS_NAME = "objectstore"
REGION = "us-east-1"
START_TIMEOUT_S = 30.0
# The Secret keys loraplane's S3CredentialsSecret defaults to (operator/loraplane/api/storage.py).
ACCESS_KEY_ID_KEY = "accessKeyId"
SECRET_ACCESS_KEY_KEY = "secretAccessKey"  # noqa: S105 - a key name, not a secret


class ObjectStoreError(RuntimeError):
    pass


@dataclass(frozen=True)
class ObjectStore:
    """A running store. ``endpoint`` is for the host; ``pod_endpoint`` for pods, when it listens there."""

    endpoint: str
    pod_endpoint: str | None
    region: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    data_dir: Path
    run_dir: Path
    pid: int
    log: Path

    @property
    def state_file(self) -> Path:
        return state_file(self.run_dir)

    def secret_manifest(self, name: str, namespace: str) -> dict[str, Any]:
        """A Secret with this store's credentials under the keys loraplane reads by default."""
        return credentials_secret(name, namespace, self.access_key_id, self.secret_access_key)


def versitygw_binary(*, build: bool = True) -> Path:
    """$LORAPLANE_VERSITYGW, else what build-s3.sh prints (at once when cached; ~3 min cold)."""
    explicit = os.environ.get("LORAPLANE_VERSITYGW")
    if explicit:
        return Path(explicit)
    stamp_dir = cache_dir() / "s3"
    if not build:
        found = sorted(stamp_dir.glob(f"versitygw-{versions()['VERSITYGW_VERSION']}_*/versitygw"))
        if not found:
            raise ObjectStoreError(f"versitygw is not built; run {BUILD_SCRIPT}")
        return found[-1]
    result = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ObjectStoreError(f"{BUILD_SCRIPT} failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def state_file(run_dir: Path) -> Path:
    return run_dir / "objectstore" / "store.json"


def store_dir(run_dir: Path) -> Path:
    return run_dir / "objectstore"


def _free_address() -> tuple[str, int]:
    """A loopback address of the store's own (so a port clash with the control plane, which uses
    127.0.0.1, cannot happen) and a port free on it."""
    rng = random.SystemRandom()
    for _ in range(20):
        host = f"127.0.0.{rng.randint(2, 254)}"
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, 0))
            except OSError:
                continue
            return host, int(probe.getsockname()[1])
    raise ObjectStoreError("no free loopback address for the object store")


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def argv(binary: Path, listen: Sequence[str], data_dir: Path, iam_dir: Path, region: str) -> list[str]:
    """versitygw's command line: no credential in it (they come from the environment)."""
    ports = [part for address in listen for part in ("--port", address)]
    return [
        str(binary),
        *ports,
        "--region",
        region,
        "--iam-dir",
        str(iam_dir),
        "--quiet",
        "posix",
        str(data_dir),
    ]


def _answers(endpoint: str) -> bool:
    # Any HTTP answer (an anonymous request gets 403) means the listener is up.
    return probes.request(endpoint + "/", timeout_s=1.0) is not None


def start(
    run_dir: Path,
    *,
    buckets: Iterable[str] = (),
    pod_address: str | None = None,
    die_with_parent: bool = False,
    binary: Path | None = None,
) -> ObjectStore:
    """Start versitygw for ``run_dir`` (one per run directory), create ``buckets`` and return it.

    ``pod_address`` (e.g. ``pod_network_host_address(run_dir)``) adds a listener pods can reach on
    the same port."""
    run_dir = run_dir.resolve()
    if state_file(run_dir).exists():
        existing = load(run_dir)
        if existing is not None:
            raise ObjectStoreError(f"an object store already runs for {run_dir} at {existing.endpoint}")
    binary = binary or versitygw_binary()
    root = store_dir(run_dir)
    data_dir, iam_dir = root / "data", root / "iam"
    for folder in (data_dir, iam_dir):
        folder.mkdir(parents=True, exist_ok=True)
    host, port = _free_address()
    if pod_address is not None and not _port_free(pod_address, port):
        raise ObjectStoreError(f"port {port} is taken on {pod_address}")
    listen = [f"{host}:{port}"] + ([f"{pod_address}:{port}"] if pod_address else [])
    access_key_id = "LP" + secrets.token_hex(9).upper()
    secret_access_key = secrets.token_urlsafe(30)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROOT_", "VGW_", "AWS_"))}
    env |= {"ROOT_ACCESS_KEY_ID": access_key_id, "ROOT_SECRET_ACCESS_KEY": secret_access_key}
    command = argv(binary, listen, data_dir, iam_dir, REGION)
    log = run_dir / "logs" / f"{PROCESS_NAME}.log"
    child = processes.spawn(command, log, env=env, cwd=root, die_with_parent=die_with_parent)
    entry = processes.record(run_dir, PROCESS_NAME, child.pid, command, log)
    store = ObjectStore(
        endpoint=f"http://{host}:{port}",
        pod_endpoint=f"http://{pod_address}:{port}" if pod_address else None,
        region=REGION,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        data_dir=data_dir,
        run_dir=run_dir,
        pid=child.pid,
        log=log,
    )

    def exited() -> str | None:
        if processes.is_alive(entry):
            return None
        return f"versitygw exited; its log ends:\n{_tail(log)}"

    try:
        probes.wait_for(f"versitygw on {store.endpoint}", lambda: _answers(store.endpoint), START_TIMEOUT_S,
                        still_possible=exited)  # fmt: skip
        if store.pod_endpoint:
            probes.wait_for(f"versitygw on {store.pod_endpoint}", lambda: _answers(str(store.pod_endpoint)),
                            START_TIMEOUT_S, still_possible=exited)  # fmt: skip
    except probes.WaitTimeoutError as error:
        processes.stop(entry, grace_s=2)
        processes.forget(run_dir, entry)
        raise ObjectStoreError(str(error)) from error
    _save(store)
    for bucket in buckets:
        create_bucket(store, bucket)
    return store


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _save(store: ObjectStore) -> None:
    # The run directory already holds the cluster's private keys; the store's credentials sit beside
    # them, readable by the owner only, so a later `demo` step can make Secrets from them.
    path = store.state_file
    tmp = path.with_suffix(".tmp")
    payload = {
        "endpoint": store.endpoint,
        "podEndpoint": store.pod_endpoint,
        "region": store.region,
        "accessKeyId": store.access_key_id,
        "secretAccessKey": store.secret_access_key,
        "dataDir": str(store.data_dir),
        "pid": store.pid,
        "log": str(store.log),
    }
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(payload, out, indent=2)
    tmp.replace(path)


def _record(run_dir: Path) -> processes.ProcessRecord | None:
    return next((r for r in processes.read_records(run_dir) if r.name == PROCESS_NAME), None)


def load(run_dir: Path) -> ObjectStore | None:
    """The store running for ``run_dir``, or None (never started, or its process is gone)."""
    run_dir = run_dir.resolve()
    entry = _record(run_dir)
    path = state_file(run_dir)
    if entry is None or not processes.is_alive(entry) or not path.exists():
        return None
    saved = json.loads(path.read_text())
    return ObjectStore(
        endpoint=saved["endpoint"],
        pod_endpoint=saved["podEndpoint"],
        region=saved["region"],
        access_key_id=saved["accessKeyId"],
        secret_access_key=saved["secretAccessKey"],
        data_dir=Path(saved["dataDir"]),
        run_dir=run_dir,
        pid=entry.pid,
        log=Path(saved["log"]),
    )


def stop(run_dir: Path, *, grace_s: float = 5.0) -> bool:
    """Stop the store of ``run_dir`` by its recorded PID; True when one was running. Its data stays."""
    run_dir = run_dir.resolve()
    entry = _record(run_dir)
    if entry is None:
        return False
    result = processes.stop(entry, grace_s)
    processes.forget(run_dir, entry)
    state_file(run_dir).unlink(missing_ok=True)
    return result.was_running


def create_bucket(store: ObjectStore, bucket: str) -> None:
    """Create ``bucket`` (no error when it exists) with the store's root credentials."""
    # Imported here: the control plane's own code does not need the S3 client.
    from minio import Minio  # noqa: PLC0415
    from minio.error import S3Error  # noqa: PLC0415

    client = Minio(
        store.endpoint.removeprefix("http://"),
        access_key=store.access_key_id,
        secret_key=store.secret_access_key,
        secure=False,
        region=store.region,
    )
    try:
        client.make_bucket(bucket)
    except S3Error as error:
        if error.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


def create_user(store: ObjectStore, access_key_id: str, secret_access_key: str, role: str = "user") -> None:
    """A second account (role ``user``: it sees only its own buckets, so the root's answer it
    AccessDenied) through versitygw's admin API. The admin's credentials go in the environment; the
    new account's secret is on the admin tool's short-lived argv, acceptable for a test account."""
    binary = Path(_record_argv0(store.run_dir))
    env = {
        **os.environ,
        "ADMIN_ACCESS_KEY_ID": store.access_key_id,
        "ADMIN_SECRET_ACCESS_KEY": store.secret_access_key,
    }
    command = [str(binary), "admin", "--endpoint-url", store.endpoint, "create-user",
               "--access", access_key_id, "--secret", secret_access_key, "--role", role]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise ObjectStoreError(f"creating user {access_key_id} failed: {result.stderr.strip()}")


def _record_argv0(run_dir: Path) -> str:
    entry = _record(run_dir)
    if entry is None:
        raise ObjectStoreError(f"no object store runs for {run_dir}")
    return entry.argv[0]


def credentials_secret(
    name: str, namespace: str, access_key_id: str, secret_access_key: str
) -> dict[str, Any]:
    """A Secret manifest with S3 credentials under ``accessKeyId`` / ``secretAccessKey``."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "loraplane"},
        },
        "type": "Opaque",
        "stringData": {ACCESS_KEY_ID_KEY: access_key_id, SECRET_ACCESS_KEY_KEY: secret_access_key},
    }


def apply_credentials_secret(
    store: ObjectStore, kubectl: Path, kubeconfig: Path, name: str, namespace: str
) -> None:
    """Create (or update) the Secret through kubectl, the manifest on stdin so the values never
    appear in an argv."""
    manifest = json.dumps(store.secret_manifest(name, namespace))
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    result = subprocess.run(
        [str(kubectl), "apply", "-f", "-"],
        input=manifest,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        # kubectl's error names the object, never the stdin payload.
        raise ObjectStoreError(f"creating Secret {namespace}/{name} failed: {result.stderr.strip()}")


# ---- how pods reach it ----------------------------------------------------------------------------


def node_index_of(pid: int) -> int | None:
    """The pod-network index N a running node agent holds: it keeps ``node-N.lock`` open (and locked)
    for its whole life, and nothing else of it is named like that."""
    fd_dir = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                index = lock_index(os.readlink(fd))
                if index is not None:
                    return index
    return None


def pod_network_host_address(run_dir: Path, timeout_s: float = 10.0) -> str | None:
    """The host's address on the pod network of the cluster in ``run_dir`` (10.250.N.1), or None
    when the cluster has no node agent. The agent claims N as it starts, so wait a little for it."""
    entry = next((r for r in processes.read_records(run_dir.resolve()) if r.name == "nodeagent"), None)
    if entry is None or not processes.is_alive(entry):
        return None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        index = node_index_of(entry.pid)
        if index is not None:
            return Subnet(index).host_address
        time.sleep(0.1)
    raise ObjectStoreError(f"the node agent (pid {entry.pid}) holds no pod-network index")
