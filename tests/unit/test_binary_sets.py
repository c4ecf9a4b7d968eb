"""The two sets of local-cluster binaries: one list (binaries.py) that build-binaries.sh reads, each
set found and built on its own, and the demo's cluster needing only the control plane."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from loraplane_devcluster import binaries

SCRIPT = binaries.BUILD_SCRIPT


def test_the_sets_split_the_required_binaries_without_overlap() -> None:
    assert binaries.names(["control-plane"]) == binaries.CONTROL_PLANE
    assert binaries.names(["services", "control-plane"]) == binaries.REQUIRED  # SETS order, not the caller's
    assert set(binaries.CONTROL_PLANE).isdisjoint(binaries.SERVICES)
    assert {"kube-apiserver", "kubectl", "helm", "etcd"} <= set(binaries.CONTROL_PLANE)
    assert set(binaries.SERVICES) == {"kube-proxy", "coredns"}
    with pytest.raises(binaries.BinariesError, match="no binaries set dns"):
        binaries.names(["dns"])


def _fill(folder: Path, names: tuple[str, ...]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = folder / name
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    return folder


def _script(cache: Path, sets: list[str]) -> subprocess.CompletedProcess[str]:
    # No Go build can start: go stays (its version is part of the stamp), but with the module proxy
    # off and an empty module cache a set that is not complete fails at once instead of building.
    env = {**os.environ, "LORAPLANE_CACHE": str(cache), "GOPROXY": "off", "GOMODCACHE": str(cache / "mod")}
    return subprocess.run(
        ["bash", str(SCRIPT), *sets], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def _folder(cache: Path) -> Path:
    """The stamp folder of the pinned versions, as build-binaries.sh names it (unchanged by the sets)."""
    go = subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True, check=True).stdout.strip()
    pinned = binaries.versions()
    stamp = (
        f"k8s-{pinned['KUBERNETES_VERSION']}_etcd-{pinned['ETCD_VERSION']}_helm-{pinned['HELM_VERSION']}"
        f"_coredns-{pinned['COREDNS_VERSION']}_{go}"
    )
    return cache / "bin" / stamp


@pytest.mark.skipif(shutil.which("go") is None, reason="build-binaries.sh needs go")
def test_a_control_plane_folder_serves_the_demo_and_not_a_cluster_with_services(tmp_path: Path) -> None:
    folder = _fill(_folder(tmp_path), binaries.CONTROL_PLANE)

    demo = _script(tmp_path, ["control-plane"])
    assert demo.returncode == 0, demo.stderr
    assert demo.stdout.strip() == str(folder), "a complete set returns at once with its folder"
    assert binaries.resolve_bin_dir(folder, services=False) == folder
    with pytest.raises(binaries.BinariesError, match="lacks kube-proxy, coredns"):
        binaries.resolve_bin_dir(folder)

    everything = _script(tmp_path, [])  # no set named: both, so the services are built (and fail here)
    assert everything.returncode != 0
    assert f"building kube-proxy coredns into {folder}" in everything.stderr, everything.stderr

    _fill(folder, binaries.SERVICES)
    assert _script(tmp_path, []).stdout.strip() == str(folder)
    assert binaries.resolve_bin_dir(folder) == folder


def test_an_unknown_set_is_refused_by_name(tmp_path: Path) -> None:
    result = _script(tmp_path, ["dns"])
    assert result.returncode != 0
    assert "no binaries set dns" in result.stderr


def test_the_setup_progress_line_names_every_build_under_way(tmp_path: Path) -> None:
    """scripts/setup.sh's progress line reads the build scripts' log: helm compiles beside the
    Kubernetes build, so both are named until each says it is done."""
    log = tmp_path / "binaries.err"
    setup = binaries.DEVCLUSTER_DIR.parent / "scripts" / "setup.sh"

    def step(*lines: str) -> str:
        with log.open("a") as out:
            out.writelines(line + "\n" for line in lines)
        script = f'source "{setup}"; _setup_build_step "{log}"'
        env = {**os.environ, "SETUP_LOGS": str(tmp_path)}
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, check=True)
        return done.stdout.strip()

    assert step("[build-binaries] compiling helm v3.22.0", "go: added sigs.k8s.io/yaml v1.6.0") == (
        "compiling helm v3.22.0"
    )
    assert step("[build-binaries] compiling kube-apiserver kubectl etcd (slow on a cold cache)") == (
        "compiling helm v3.22.0 + kube-apiserver kubectl etcd"
    )
    assert step("[build-binaries] helm v3.22.0 compiled in 90 s") == "compiling kube-apiserver kubectl etcd"
    assert step(
        "[build-binaries] kube-apiserver kubectl etcd compiled in 400 s", "[build-binaries] built in 4"
    ) == ("[build-binaries] built in 4")
    # build-s3.sh says only "built in" when done: that ends its "compiling" too.
    assert step("[build-s3] compiling versitygw (slow on a cold cache)") == "compiling versitygw"
    assert (
        step("[build-s3] built in 3 s: /bin", "[build-kueue] compiling kueue v0.17.0")
        == "compiling kueue v0.17.0"
    )
