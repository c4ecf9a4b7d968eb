"""The operator image, built for real and run as the operator against the session's cluster.

`scripts/base-image.sh` makes a Debian base (debootstrap, Python in a venv) where no registry serves
python:3.11-slim, `scripts/images.sh` builds docker/operator.Dockerfile on it with buildah, and the
image's own ENTRYPOINT runs under buildah's chroot isolation (host network, the image's user) with
the chart's ServiceAccount token: it reconciles a LoraTrainingJob into its Job, its Event and its
status. Needs root, buildah, podman and debootstrap (Debian packages); skipped, saying so, without
them. Cold: about 90 s for the base, 40 s for the image; cached: seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from loraplane_devcluster.testing import Kube, wait_until
from loraplane_fixtures import own_release_namespace
from manifests import EXAMPLES, ROOT

pytestmark = pytest.mark.cluster

TOOLS = ("buildah", "podman", "debootstrap")
IMAGE_KUBECONFIG = "/loraplane-test/kubeconfig"  # not under /var/run: a symlink in Debian


def _run(argv: list[str], env: dict[str, str] | None = None, timeout_s: float = 1800) -> str:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    assert done.returncode == 0, f"{' '.join(argv)} exited with {done.returncode}:\n{done.stderr[-4000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def operator_image() -> str:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        pytest.skip(f"building images needs root and {', '.join(TOOLS)}; missing: {missing or 'root'} "
                    "(apt-get install buildah podman debootstrap)")  # fmt: skip
    base = _run([str(ROOT / "scripts" / "base-image.sh")]).strip().splitlines()[-1]
    env = {**os.environ, "IMAGE_TOOL": "buildah", "IMAGES": "operator", "PYTHON_IMAGE": base,
           "IMAGE_REGISTRY": "localhost/loraplane-test", "IMAGE_TAG": "test"}  # fmt: skip
    return _run([str(ROOT / "scripts" / "images.sh")], env=env).strip().splitlines()[-1]


def entry_point(image: str) -> list[str]:
    """What the image runs: its ENTRYPOINT (the chart replaces only the arguments)."""
    config = json.loads(_run(["buildah", "inspect", "--type", "image", image]))["OCIv1"]["config"]
    return list(config.get("Entrypoint") or [])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def image_operator(
    operator_image: str, kube: Kube, operator_kubeconfig: Path, tmp_path: Path
) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    """The image's operator watching a namespace of its own (one the session's release leaves alone),
    acting as the chart's ServiceAccount. Yields the namespace, the operator's log and its process."""
    namespace = own_release_namespace(kube, "image")
    kubeconfig = tmp_path / "kubeconfig"
    shutil.copy(operator_kubeconfig, kubeconfig)
    kubeconfig.chmod(0o644)  # the image runs as its own non-root user
    container = _run(["buildah", "from", operator_image]).strip().splitlines()[-1]
    log = tmp_path / "operator.log"
    argv = ["buildah", "run", "--isolation", "chroot", "-v", f"{kubeconfig}:{IMAGE_KUBECONFIG}:ro",
            "--env", f"KUBECONFIG={IMAGE_KUBECONFIG}", "--env", f"LORAPLANE_METRICS_PORT={free_port()}",
            container, "--", *entry_point(operator_image), f"--namespace={namespace}"]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield namespace, log, process
    finally:
        # While the operator still runs its finalizers go with the objects; if it died, they go by hand:
        # nothing else watches this namespace, and it could never be deleted otherwise.
        if process.poll() is None:
            kube.kubectl("delete", "ltj", "--all", "-n", namespace, "--timeout=60s", check=False)
        unfinalize = '{"metadata":{"finalizers":null}}'
        for name in kube.kubectl("get", "ltj", "-n", namespace, "-o", "name", check=False).stdout.split():
            kube.kubectl("patch", name, "-n", namespace, "--type=merge", "-p", unfinalize, check=False)
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
        kube.delete_namespace(namespace)


def test_the_built_operator_image_reconciles_a_training_job(
    kube: Kube, image_operator: tuple[str, Path, subprocess.Popen[bytes]]
) -> None:
    namespace, log, operator = image_operator
    job = yaml.safe_load((EXAMPLES / "tiny-cpu" / "training-job.yaml").read_text())
    job["metadata"]["name"] = "from-image"
    job["spec"].pop("adapter", None)
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "loraplane-tiny"},
             "spec": {"accessModes": ["ReadWriteOnce"],
                      "resources": {"requests": {"storage": "1Gi"}}}}  # fmt: skip
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all([claim, job]))

    def created() -> dict | None:
        if operator.poll() is not None:
            raise AssertionError(f"the image's operator exited with {operator.returncode}")
        found = kube.kubectl("get", "job", "from-image-train", "-n", namespace, "-o", "json", check=False)
        return json.loads(found.stdout) if found.returncode == 0 else None

    try:
        batch = wait_until("the image's operator to create the Job", created, timeout_s=120)
    except AssertionError as error:
        raise AssertionError(f"{error}\noperator log:\n{log.read_text()[-4000:]}") from error
    assert batch["metadata"]["ownerReferences"][0]["kind"] == "LoraTrainingJob"
    events = kube.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert any(e["reason"] == "JobCreated" and e["involvedObject"]["name"] == "from-image"
               for e in json.loads(events)["items"]), events[-2000:]  # fmt: skip
