"""Fixtures for tests that need loraplane installed: the chart, as a user installs it.

Loaded as a pytest plugin (`-p loraplane_fixtures` in pyproject), beside the cluster fixtures in
conftest.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from loraplane_devcluster.testing import Kube, KubectlError, wait_until
from manifests import ROOT

CHART = ROOT / "charts" / "loraplane"
RELEASE = "loraplane"
RELEASE_NAMESPACE = "loraplane-system"
CRD_NAMES = ("loratrainingjobs.loraplane.io", "loraadapters.loraplane.io")
# Namespaces of tests that install a release of their own (to uninstall it, say): the session release
# leaves them alone (the chart's excludeNamespaces), so two operators never act on the same objects.
OWN_RELEASE_NAMESPACES = "own-release-*"


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    service_account: str


def crds_established(kube: Kube) -> bool:
    for name in CRD_NAMES:
        found = kube.kubectl("get", "crd", name, "-o", "json", check=False)
        if found.returncode != 0:
            return False
        conditions = json.loads(found.stdout).get("status", {}).get("conditions", [])
        if not any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
            return False
    return True


@pytest.fixture(scope="session")
def chart_release(kube: Kube) -> Iterator[Release]:
    """`helm install` of the chart (CRDs included) into loraplane-system, once per session.

    The CRDs stay after the session's uninstall (crds.keep), as they would for a user."""
    kube.helm(
        "upgrade", "--install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, "--create-namespace",
        # Tests read progress every second rather than the default five: a tiny run's 80 steps take
        # only a few seconds on a quiet machine, and the tests look for a mid-run reading.
        "--set", "training.progressIntervalSeconds=1", "--set", "logLevel=DEBUG", "--wait=false",
        # Multi-node tests wait this long for a peer that never comes.
        "--set", "training.rendezvousTimeoutSeconds=90",
        "--set", f"excludeNamespaces={{{OWN_RELEASE_NAMESPACES}}}",
    )  # fmt: skip
    wait_until("the loraplane CRDs to be established", lambda: crds_established(kube), timeout_s=60)
    yield Release(RELEASE, RELEASE_NAMESPACE, service_account=RELEASE)
    kube.helm("uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, check=False)


def own_release_namespace(kube: Kube, hint: str) -> str:
    """A fresh namespace that the session release does not watch, for a release of the test's own."""
    return kube.create_namespace(OWN_RELEASE_NAMESPACES.replace("*", hint))


@pytest.fixture(scope="session")
def operator_kubeconfig(kube: Kube, chart_release: Release, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig that acts as the chart's operator ServiceAccount: an RBAC gap fails the test."""
    path = tmp_path_factory.mktemp("operator") / "operator.kubeconfig"
    return kube.service_account_kubeconfig(chart_release.namespace, chart_release.service_account, path)


# --- the operator: the chart's own Deployment, as a pod under its ServiceAccount ----------------------


class ChartOperator:
    """The operator pod the chart runs (the node agent runs it as a local process). Kill it as a
    crash or eviction would, and its Deployment brings a new one."""

    def __init__(self, kube: Kube, release: Release) -> None:
        self.kube, self.release = kube, release

    def ready_pod(self) -> dict | None:
        out = self.kube.kubectl(
            "get", "pods", "-n", self.release.namespace,
            "-l", f"app.kubernetes.io/instance={self.release.name}", "-o", "json",
        )  # fmt: skip
        for pod in json.loads(out.stdout)["items"]:
            if pod["metadata"].get("deletionTimestamp"):
                continue
            conditions = pod.get("status", {}).get("conditions", [])
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                return dict(pod)
        return None

    def wait_ready(self, timeout_s: float = 120) -> dict:
        return wait_until("the operator pod to be Ready", self.ready_pod, timeout_s=timeout_s)

    def kill(self) -> None:
        """Delete the pod with no grace period; wait for the replacement to be Ready."""
        old = self.wait_ready()["metadata"]
        self.kube.kubectl("delete", "pod", old["name"], "-n", self.release.namespace,
                          "--grace-period=0", "--force", "--wait=false")  # fmt: skip
        wait_until(
            "a new operator pod", lambda: (p := self.ready_pod()) and p["metadata"]["uid"] != old["uid"], 120
        )

    def log_tail(self, lines: int = 80) -> str:
        try:
            pod = self.ready_pod()
        except KubectlError as error:  # the cluster went first (a teardown failure): report that
            said = (error.stderr or "").strip().splitlines()
            return f"(no operator log: {said[-1] if said else error})"
        if pod is None:
            return "(no operator pod)"
        name = pod["metadata"]["name"]
        out = self.kube.kubectl("logs", name, "-n", self.release.namespace, f"--tail={lines}", check=False)
        return out.stdout + out.stderr


@pytest.fixture(scope="session")
def operator(kube: Kube, chart_release: Release) -> ChartOperator:
    running = ChartOperator(kube, chart_release)
    running.wait_ready()
    return running


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """A failed test that used the operator shows the end of the operator's log."""
    report = yield
    running = getattr(item, "funcargs", {}).get("operator")
    if report.failed and isinstance(running, ChartOperator):
        report.sections.append(("operator log (last lines)", running.log_tail()))
    return report
