"""What the pytest fixtures hand to tests: a handle on a cluster (local or given by a kubeconfig),
kubectl, per-test namespaces and kubeconfigs that act as a ServiceAccount.

Needs the ``kubernetes`` package (the operator's dependencies); the control plane itself does not.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import kubernetes
import yaml
from kubernetes.client import (
    ApiClient,
    AuthenticationV1TokenRequest,
    CoreV1Api,
    V1Namespace,
    V1ObjectMeta,
    V1TokenRequestSpec,
)
from kubernetes.client.exceptions import ApiException

from loraplane_devcluster import binaries, controlplane, kubeconfig, processes

T = TypeVar("T")
TEST_RUN_PREFIX = "test-"
TEST_NAMESPACE_LABEL = "loraplane.io/test"
# The only variable that points the tests and benchmarks at a cluster other than the local one they start.
# $KUBECONFIG is never read for that: most Kubernetes users have it set, to a cluster nobody named.
CLUSTER_VARIABLE = "LORAPLANE_KUBECONFIG"
# A test run directory older than this whose processes are all gone is left from a killed session.
_STALE_RUN_DIR_S = 3600


def wait_until(
    what: str, probe: Callable[[], T | None], timeout_s: float = 60.0, interval_s: float = 0.2
) -> T:
    """Poll ``probe`` until it returns something truthy and return that; fail at the deadline
    with ``what`` and the last value seen. Tests wait on observed state this way, never by sleeping."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})")
        time.sleep(interval_s)


def named_kubeconfig(environ: Mapping[str, str]) -> Path | None:
    """The kubeconfig $LORAPLANE_KUBECONFIG names, or None for the local cluster (also when it is
    empty or ``local``). $KUBECONFIG plays no part."""
    chosen = environ.get(CLUSTER_VARIABLE, "").strip()
    if not chosen or chosen == "local":
        return None
    return Path(chosen.split(os.pathsep)[0]).expanduser()


def describe_kubeconfig(path: Path) -> str:
    """`context C, server S` of the kubeconfig's current context, for saying which cluster is used
    before anything is written to it. Raises ValueError when the file names no usable context."""
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{CLUSTER_VARIABLE}={path}: cannot read it as a kubeconfig: {error}") from error
    current = config.get("current-context")
    context = next((c for c in config.get("contexts") or [] if c.get("name") == current), None)
    if context is None:
        raise ValueError(f"{CLUSTER_VARIABLE}={path}: current-context {current!r} is not among its contexts")
    cluster_name = (context.get("context") or {}).get("cluster")
    cluster = next((c for c in config.get("clusters") or [] if c.get("name") == cluster_name), None)
    server = (cluster or {}).get("cluster", {}).get("server", "?")
    return f"context {current}, server {server}"


class KubectlError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"{' '.join(map(str, self.cmd))} exited with {self.returncode}:\n{self.stderr}{self.stdout}"


@dataclass
class Kube:
    """A cluster the tests talk to."""

    kubeconfig: Path
    api: ApiClient
    bin_dir: Path
    run_dir: Path | None  # None for a cluster named by LORAPLANE_KUBECONFIG / KUBECONFIG

    @classmethod
    def connect(cls, kubeconfig_path: Path, bin_dir: Path, run_dir: Path | None) -> Kube:
        api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig_path))  # type: ignore[no-untyped-call]
        return cls(kubeconfig_path, api, bin_dir, run_dir)

    @property
    def core(self) -> CoreV1Api:
        return CoreV1Api(self.api)

    def tool_env(self, kubeconfig_path: Path | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["KUBECONFIG"] = str(kubeconfig_path or self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        kubeconfig_path: Path | None = None,
        timeout_s: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster; with ``check``, a failure raises and shows stderr."""
        return self._run(
            "kubectl",
            args,
            check=check,
            input_text=input,
            kubeconfig_path=kubeconfig_path,
            timeout_s=timeout_s,
        )

    def helm(
        self, *args: str, check: bool = True, timeout_s: float = 300.0
    ) -> subprocess.CompletedProcess[str]:
        return self._run("helm", args, check=check, timeout_s=timeout_s)

    def _run(
        self,
        tool: str,
        args: tuple[str, ...],
        *,
        check: bool,
        timeout_s: float,
        input_text: str | None = None,
        kubeconfig_path: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bin_dir / tool), *args]
        result = subprocess.run(
            argv,
            input=input_text,
            capture_output=True,
            text=True,
            env=self.tool_env(kubeconfig_path),
            timeout=timeout_s,
            check=False,
        )
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, argv, result.stdout, result.stderr)
        return result

    def delete_all(self, kind: str, namespace: str, timeout_s: float = 180.0) -> None:
        """Delete every ``kind`` in ``namespace`` and wait until the API server lists none.

        Not ``kubectl delete --all --wait``: that waits on each object in turn with a watch of its
        own, and took over three minutes for a thousand LoraAdapters already gone."""
        self.kubectl("delete", kind, "--all", "-n", namespace, "--wait=false", timeout_s=timeout_s)

        def none_left() -> bool:
            listed = self.kubectl("get", kind, "-n", namespace, "-o", "name", timeout_s=60)
            return not listed.stdout.strip()

        wait_until(f"every {kind} in {namespace} deleted", none_left, timeout_s=timeout_s, interval_s=1.0)

    # ---- namespaces ----------------------------------------------------------------------------

    def create_namespace(self, hint: str) -> str:
        """A fresh namespace named after ``hint`` (a test name), labelled as a test namespace."""
        base = re.sub(r"[^a-z0-9-]+", "-", hint.lower()).strip("-")[:48].strip("-") or "test"
        name = f"{base}-{secrets.token_hex(3)}"
        body = V1Namespace(metadata=V1ObjectMeta(name=name, labels={TEST_NAMESPACE_LABEL: "true"}))
        self.core.create_namespace(body)
        return name

    def delete_namespace(self, name: str) -> None:
        """Ask for deletion and return; the namespace controller finishes it in the background."""
        try:
            self.core.delete_namespace(name)
        except ApiException as error:
            if error.status != 404:
                raise

    # ---- acting as a ServiceAccount ------------------------------------------------------------

    def service_account_kubeconfig(
        self, namespace: str, name: str, path: Path, *, expiration_s: int = 3600
    ) -> Path:
        """A kubeconfig for ServiceAccount ``namespace/name`` with a token from the TokenRequest
        API (the way a pod's projected token is made), same server and CA as this cluster."""
        request = AuthenticationV1TokenRequest(spec=V1TokenRequestSpec(expiration_seconds=expiration_s))
        response = self.core.create_namespaced_service_account_token(name, namespace, request)
        if response.status is None or not response.status.token:
            raise RuntimeError(f"TokenRequest for {namespace}/{name} returned no token")
        token = response.status.token
        configuration = self.api.configuration
        cluster: dict[str, object] = {"server": configuration.host}
        if configuration.ssl_ca_cert:
            cluster["certificate-authority-data"] = base64.b64encode(
                Path(configuration.ssl_ca_cert).read_bytes()
            ).decode()
        if not configuration.verify_ssl:
            cluster["insecure-skip-tls-verify"] = True
        user = f"system:serviceaccount:{namespace}:{name}"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "cluster", "cluster": cluster}],
            "users": [{"name": user, "user": kubeconfig.token_credentials(token)}],
            "contexts": [
                {"name": "sa", "context": {"cluster": "cluster", "user": user, "namespace": namespace}}
            ],
            "current-context": "sa",
        }
        return kubeconfig.write(path, config)

    # ---- diagnostics ---------------------------------------------------------------------------

    def log_tails(self, lines: int = 30) -> str:
        """The last lines of every component log of a cluster started by the fixture."""
        if self.run_dir is None:
            return "(cluster given by kubeconfig: no component logs here)"
        logs = sorted((self.run_dir / "logs").glob("*.log"))
        return "\n".join(f"--- {log.name}\n{controlplane.log_tail(log, lines)}" for log in logs)

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]


def run_root_for_tests() -> Path:
    """Where test sessions put their run directories: ~/.cache/loraplane/run/test-*."""
    return binaries.cache_dir() / "run"


def prune_stale_test_run_dirs(root: Path) -> list[Path]:
    """Delete test run directories left by sessions that were killed before their teardown."""
    removed = []
    for candidate in root.glob(f"{TEST_RUN_PREFIX}*"):
        if not candidate.is_dir() or time.time() - candidate.stat().st_mtime < _STALE_RUN_DIR_S:
            continue
        if any(processes.is_alive(r) for r in processes.read_records(candidate)):
            continue
        shutil.rmtree(candidate, ignore_errors=True)
        removed.append(candidate)
    return removed


def main() -> int:
    """``python -m loraplane_devcluster.testing``: say which cluster a test or benchmark run will use."""
    named = named_kubeconfig(os.environ)
    if named is None:
        print("local clusters started for this run ($KUBECONFIG is not used)")
    else:
        print(f"the cluster {CLUSTER_VARIABLE} names: {named} ({describe_kubeconfig(named)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
