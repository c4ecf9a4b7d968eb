"""The image map: image references to local commands, by the Kubernetes command/args rules."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from loraplane_devcluster.nodeagent.images import (
    ImageEntry,
    ImageMapSource,
    container_argv,
    load_image_map,
    repository_of,
)

VENV = Path("/opt/venv")
PROJECT = Path("/src/loraplane")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("busybox", "docker.io/library/busybox"),
        ("busybox:1.36", "docker.io/library/busybox"),
        ("vllm/vllm-openai:v0.9.2", "docker.io/vllm/vllm-openai"),
        ("docker.io/vllm/vllm-openai", "docker.io/vllm/vllm-openai"),
        ("index.docker.io/library/python:3.11", "docker.io/library/python"),
        ("ghcr.io/loraplane/worker:0.1.0", "ghcr.io/loraplane/worker"),
        ("ghcr.io/loraplane/worker@sha256:" + "a" * 64, "ghcr.io/loraplane/worker"),
        ("ghcr.io/loraplane/worker:0.1.0@sha256:" + "b" * 64, "ghcr.io/loraplane/worker"),
        ("localhost:5000/tools/x:dev", "localhost:5000/tools/x"),
        ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause"),
    ],
)
def test_repository_of_normalises_references(image: str, repository: str) -> None:
    assert repository_of(image) == repository


def test_project_images_run_from_the_venv_with_the_sources_on_pythonpath() -> None:
    images = load_image_map(VENV, PROJECT)
    worker = images.lookup("ghcr.io/loraplane/worker:any-tag")
    assert worker is not None
    assert worker.entrypoint == ("/opt/venv/bin/python", "-m", "loraplane_worker")
    assert worker.env["PYTHONPATH"] == "/src/loraplane/operator:/src/loraplane/worker"
    vllm = images.lookup("vllm/vllm-openai:latest")
    assert vllm is not None
    assert vllm.entrypoint == ("/opt/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server")
    operator = images.lookup("ghcr.io/loraplane/operator:0.1.0")
    assert operator is not None
    assert operator.entrypoint[0] == "/opt/venv/bin/kopf"


@pytest.mark.parametrize("name", ["operator", "worker"])
def test_project_images_run_what_their_dockerfiles_say(name: str) -> None:
    """ENTRYPOINT and CMD as docker/<name>.Dockerfile has them (the venv's python and kopf in place of
    the image's): a pod's command and args mean here what they mean on a real node."""
    dockerfile = (PROJECT_ROOT / "docker" / f"{name}.Dockerfile").read_text()
    said = {
        key: tuple(json.loads(rest))
        for key, _, rest in (line.partition(" ") for line in dockerfile.splitlines())
        if key in {"ENTRYPOINT", "CMD"}
    }
    entry = load_image_map(VENV, PROJECT).lookup(f"ghcr.io/loraplane/{name}:0.1.0")
    assert entry is not None
    in_venv = {"python": "/opt/venv/bin/python", "kopf": "/opt/venv/bin/kopf"}
    assert entry.entrypoint == tuple(in_venv.get(w, w) for w in said.get("ENTRYPOINT", ()))
    assert entry.cmd == said.get("CMD", ())


def test_every_container_path_starts_with_the_venv() -> None:
    images = load_image_map(VENV, PROJECT)
    busybox = images.lookup("busybox")
    assert busybox is not None
    assert images.container_env_defaults(busybox)["PATH"].startswith("/opt/venv/bin:")


def test_an_unmapped_image_has_no_entry_and_a_message_naming_image_and_map() -> None:
    images = load_image_map(VENV, PROJECT)
    assert images.lookup("nginx:1.27") is None
    message = images.unmapped_message("nginx:1.27")
    assert '"nginx:1.27"' in message
    assert "docker.io/library/nginx" in message
    assert "ghcr.io/loraplane/worker" in message
    assert "LORAPLANE_NODEAGENT_IMAGE_MAP" in message


def test_a_map_file_adds_entries_that_win_over_the_defaults(tmp_path: Path) -> None:
    extra = tmp_path / "images.json"
    extra.write_text(
        json.dumps(
            {
                "images": [
                    {
                        "repository": "nginx",
                        "entrypoint": ["{python}", "-m", "http.server"],
                        "env": {"P": "{project}"},
                    },
                    {"repository": "busybox", "cmd": ["echo", "mine"]},
                ]
            }
        )
    )
    images = load_image_map(VENV, PROJECT, extra)
    nginx = images.lookup("nginx:1.27")
    assert nginx is not None
    assert nginx.entrypoint == ("/opt/venv/bin/python", "-m", "http.server")
    assert nginx.env == {"P": "/src/loraplane"}
    busybox = images.lookup("busybox:1.36")
    assert busybox is not None
    assert busybox.cmd == ("echo", "mine")


ENTRY = ImageEntry("x", entrypoint=("/entry", "--flag"), cmd=("default-arg",))


@pytest.mark.parametrize(
    ("command", "args", "argv"),
    [
        (None, None, ["/entry", "--flag", "default-arg"]),
        (None, ["a", "b"], ["/entry", "--flag", "a", "b"]),
        (["run"], None, ["run"]),
        (["run"], ["a"], ["run", "a"]),
        ([], [], ["/entry", "--flag", "default-arg"]),
    ],
)
def test_command_replaces_the_entrypoint_and_args_replace_the_cmd(
    command: list[str] | None, args: list[str] | None, argv: list[str]
) -> None:
    assert container_argv(command, args, ENTRY) == argv


def test_the_map_file_is_read_again_when_it_changes_and_a_broken_one_keeps_the_map(tmp_path: Path) -> None:
    map_file = tmp_path / "image-map.yaml"
    source = ImageMapSource(VENV, PROJECT, map_file)
    assert source.current().lookup("nginx") is None
    map_file.write_text("images:\n  - repository: nginx\n    cmd: [sleep, '1']\n")
    nginx = source.current().lookup("nginx:1.27")
    assert nginx is not None
    assert nginx.cmd == ("sleep", "1")
    map_file.write_text("images: {not: a list}\n")
    os.utime(map_file, ns=(2, 2))
    assert source.current().lookup("nginx") is not None
    map_file.unlink()
    assert source.current().lookup("nginx") is None
