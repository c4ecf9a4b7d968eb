"""The README's real-cluster quick start, run against the API server (server-side dry run where the
command would start real training or serving)."""

from __future__ import annotations

import re
import shlex

import pytest

from loraplane_devcluster.testing import Kube
from loraplane_fixtures import Release
from manifests import ROOT

pytestmark = pytest.mark.cluster


def quick_start_commands() -> list[list[str]]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## On a real cluster", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the quick start has a shell block"
    joined = block.group(1).replace("\\\n", " ")
    return [shlex.split(line.split("#", 1)[0]) for line in joined.splitlines() if line.strip()]


def test_quick_start_names_files_that_exist() -> None:
    for words in quick_start_commands():
        for i, word in enumerate(words):
            if word == "-f" or (words[:2] == ["helm", "install"] and i == 3):
                assert (ROOT / words[i + 1 if word == "-f" else i]).exists(), words


def test_quick_start_manifests_are_accepted_by_the_api_server(
    kube: Kube, chart_release: Release, namespace: str
) -> None:
    applied = [w for w in quick_start_commands() if w[:2] == ["kubectl", "apply"]]
    assert len(applied) >= 2
    for words in applied:
        result = kube.kubectl(*words[1:], "-n", namespace, "--dry-run=server")
        assert "(server dry run)" in result.stdout


def test_quick_start_helm_values_render(kube: Kube) -> None:
    [install] = [w for w in quick_start_commands() if w[:2] == ["helm", "install"]]
    values = [w for i, w in enumerate(install) if i and install[i - 1] == "--set"]
    args = ["template", install[2], str(ROOT / install[3]), "--kube-version", "1.36.3"]
    for value in values:
        args += ["--set", value]
    assert "kind: Deployment" in kube.helm(*args).stdout
