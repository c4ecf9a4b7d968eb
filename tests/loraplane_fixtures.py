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

from loraplane_devcluster.testing import Kube, wait_until
from manifests import ROOT

CHART = ROOT / "charts" / "loraplane"
RELEASE = "loraplane"
RELEASE_NAMESPACE = "loraplane-system"
CRD_NAMES = ("loratrainingjobs.loraplane.io", "loraadapters.loraplane.io")


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
        "--wait=false",
    )  # fmt: skip
    wait_until("the loraplane CRDs to be established", lambda: crds_established(kube), timeout_s=60)
    yield Release(RELEASE, RELEASE_NAMESPACE, service_account=RELEASE)
    kube.helm("uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, check=False)


@pytest.fixture(scope="session")
def operator_kubeconfig(kube: Kube, chart_release: Release, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig that acts as the chart's operator ServiceAccount: an RBAC gap fails the test."""
    path = tmp_path_factory.mktemp("operator") / "operator.kubeconfig"
    return kube.service_account_kubeconfig(chart_release.namespace, chart_release.service_account, path)
