"""$KUBECONFIG alone never points a test session at a cluster: a session started with it naming
someone's cluster (here a listener that counts connections) starts and uses the local one, and not
one connection reaches the named server."""

from __future__ import annotations

import os
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from manifests import ROOT

pytestmark = pytest.mark.cluster

INNER_TEST = """
import os

def test_the_session_cluster_is_the_local_one(kube, namespace):
    assert kube.run_dir is not None, "a cluster from a kubeconfig, not the local one"
    assert os.environ["KUBECONFIG"] == str(kube.kubeconfig), "tools the tests start must see the local one"
    kube.kubectl("create", "configmap", "written-here", "-n", namespace)
"""


class Counter(socketserver.BaseRequestHandler):
    connections = 0

    def handle(self) -> None:
        type(self).connections += 1


@pytest.fixture
def someones_cluster() -> Iterator[tuple[str, type[Counter]]]:
    """A listener on 127.0.0.1 standing for a real cluster's API server: it counts who connects."""

    class Seen(Counter):
        connections = 0

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Seen)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", Seen
    server.shutdown()
    server.server_close()


def test_kubeconfig_alone_changes_nothing(
    tmp_path: Path, someones_cluster: tuple[str, type[Counter]]
) -> None:
    url, seen = someones_cluster
    config = tmp_path / "someones-kubeconfig"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "prod", "cluster": {"server": url, "insecure-skip-tls-verify": True}}],
                "users": [{"name": "admin", "user": {"token": "not-a-real-token"}}],
                "contexts": [{"name": "prod-admin", "context": {"cluster": "prod", "user": "admin"}}],
                "current-context": "prod-admin",
            }
        )
    )
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    env = {k: v for k, v in os.environ.items() if k != "LORAPLANE_KUBECONFIG"}
    env["KUBECONFIG"] = str(config)
    env["PYTHONPATH"] = os.pathsep.join(str(ROOT / p) for p in ("operator", "worker", "devcluster", "tests"))
    argv = [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-c", os.devnull,
            "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")]  # fmt: skip
    done = subprocess.run(
        argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "cluster: a local control plane started for this session" in output
    assert seen.connections == 0, f"{seen.connections} connection(s) reached the cluster $KUBECONFIG named"
