"""Fixtures shared by the cluster and end-to-end tests.

``kube`` is the cluster: a local control plane started once per session in
~/.cache/loraplane/run/test-* and always stopped at the end (its processes also die with pytest if
pytest is killed), whatever $KUBECONFIG says. Only $LORAPLANE_KUBECONFIG points the session at another
cluster, and the session then prints that cluster's context and server before it writes anything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest

from loraplane_devcluster import binaries, controlplane
from loraplane_devcluster.testing import (
    CLUSTER_VARIABLE,
    Kube,
    describe_kubeconfig,
    named_kubeconfig,
    prune_stale_test_run_dirs,
    run_root_for_tests,
)

# The session's cluster, for the failure hook below (hooks cannot ask for fixtures).
_session_kube: Kube | None = None


def _report(message: str) -> None:
    print(f"[devcluster] {message}", file=sys.stderr, flush=True)


def pytest_report_header(config: pytest.Config) -> str:
    """Which cluster the session will use, before any test runs."""
    named = named_kubeconfig(os.environ)
    if named is None:
        return "cluster: a local control plane started for this session ($KUBECONFIG is not used)"
    return f"cluster: {CLUSTER_VARIABLE}={named} ({describe_kubeconfig(named)})"


@contextmanager
def _exported_kubeconfig(path: Path) -> Iterator[None]:
    """$KUBECONFIG set to the session's cluster while it runs: the tools and clients the tests start
    (helm, kopf, the operator, the demo) never fall back to the user's own cluster."""
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous


def _say_now(request: pytest.FixtureRequest, message: str) -> None:
    """Print past pytest's output capture: the user sees it before the session writes anything."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else nullcontext():
        _report(message)


@pytest.fixture(scope="session")
def kube(request: pytest.FixtureRequest) -> Iterator[Kube]:
    global _session_kube  # noqa: PLW0603 - the failure hook reads it
    named = named_kubeconfig(os.environ)
    if named is not None:
        which = describe_kubeconfig(named)
        _say_now(request, f"using the cluster {CLUSTER_VARIABLE} names: {named} ({which})")
        handle = Kube.connect(named, binaries.resolve_bin_dir(), run_dir=None)
        _session_kube = handle
        with _exported_kubeconfig(named):
            yield handle
        _session_kube = None
        handle.close()
        return

    root = run_root_for_tests()
    root.mkdir(parents=True, exist_ok=True)
    prune_stale_test_run_dirs(root)
    run_dir = Path(tempfile.mkdtemp(prefix="test-", dir=root))
    keep_run_dir = True  # until the session shows no failure: the logs explain it
    try:
        cluster = controlplane.up(run_dir, die_with_parent=True, report=_report)
        handle = Kube.connect(cluster.kubeconfig, cluster.bin_dir, run_dir)
        _session_kube = handle
        with _exported_kubeconfig(cluster.kubeconfig):
            yield handle
        handle.close()
        keep_run_dir = bool(request.session.testsfailed)
    finally:
        _session_kube = None
        controlplane.down(run_dir, grace_s=5)
        if keep_run_dir:
            _report(f"logs and data of the test cluster kept in {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def kubectl(kube: Kube) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``kubectl("get", "pods", "-o", "json")`` with the session's kubeconfig."""
    return kube.kubectl


@pytest.fixture
def namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of the test's own, deleted afterwards."""
    name = kube.create_namespace(request.node.name)
    yield name
    kube.delete_namespace(name)


@pytest.fixture
def service_account_kubeconfig(kube: Kube, tmp_path: Path) -> Callable[[str, str], Path]:
    """``service_account_kubeconfig(namespace, name) -> Path``: a kubeconfig that acts as that
    ServiceAccount, with a token from the TokenRequest API. The ServiceAccount must exist."""
    made = 0

    def make(namespace: str, name: str) -> Path:
        nonlocal made
        made += 1
        return kube.service_account_kubeconfig(
            namespace, name, tmp_path / f"sa-{made}-{namespace}-{name}.kubeconfig"
        )

    return make


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On a failed test that used the cluster, append the tail of every component log."""
    report = yield
    if report.failed and _session_kube is not None and "kube" in getattr(item, "fixturenames", ()):
        report.sections.append(("control plane logs (last lines)", _session_kube.log_tails()))
    return report
