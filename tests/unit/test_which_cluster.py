"""Which cluster `make test` and `make bench` use: the local one, whatever $KUBECONFIG says; only
$LORAPLANE_KUBECONFIG names another, and its context and server can be told before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from loraplane_devcluster.testing import describe_kubeconfig, named_kubeconfig


def someones_kubeconfig(path: Path, server: str = "https://prod.example.com:6443") -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "prod", "cluster": {"server": server}}],
                "users": [{"name": "admin", "user": {"token": "not-a-real-token"}}],
                "contexts": [{"name": "prod-admin", "context": {"cluster": "prod", "user": "admin"}}],
                "current-context": "prod-admin",
            }
        )
    )
    return path


def test_kubeconfig_alone_leaves_the_local_cluster_chosen(tmp_path: Path) -> None:
    config = someones_kubeconfig(tmp_path / "config")
    assert named_kubeconfig({"KUBECONFIG": str(config)}) is None
    several = f"{config}:{tmp_path / 'other'}"
    assert named_kubeconfig({"KUBECONFIG": several, "LORAPLANE_KUBECONFIG": ""}) is None


@pytest.mark.parametrize("value", ["local", " ", ""])
def test_loraplane_kubeconfig_local_or_empty_is_the_local_cluster(value: str, tmp_path: Path) -> None:
    config = someones_kubeconfig(tmp_path / "config")
    assert named_kubeconfig({"KUBECONFIG": str(config), "LORAPLANE_KUBECONFIG": value}) is None


def test_loraplane_kubeconfig_names_the_cluster_and_tells_which_it_is(tmp_path: Path) -> None:
    named = someones_kubeconfig(tmp_path / "named", "https://staging.example.com:6443")
    other = someones_kubeconfig(tmp_path / "other")
    chosen = named_kubeconfig({"KUBECONFIG": str(other), "LORAPLANE_KUBECONFIG": str(named)})
    assert chosen == named
    assert describe_kubeconfig(chosen) == "context prod-admin, server https://staging.example.com:6443"


def test_a_kubeconfig_without_its_current_context_is_refused_with_the_variable_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.write_text(yaml.safe_dump({"contexts": [], "current-context": "gone"}))
    with pytest.raises(ValueError, match=r"LORAPLANE_KUBECONFIG=.*'gone'"):
        describe_kubeconfig(broken)
