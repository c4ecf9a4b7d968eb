"""The image map: which local program stands in for which container image.

The dev node has no container runtime and pulls no images. Each image repository the project
uses is mapped to what its Dockerfile would run, using the project venv instead of the image's
filesystem. The tag is ignored: whatever the tag, the code that runs is the checkout's.

- ``ghcr.io/loraplane/worker`` → ENTRYPOINT ``python -m loraplane_worker``,
  CMD ``--config /etc/loraplane/config.yaml``
- ``ghcr.io/loraplane/operator`` → ENTRYPOINT ``kopf run --standalone -m loraplane.main``,
  CMD ``--all-namespaces``
- ``vllm/vllm-openai`` → ENTRYPOINT ``python -m vllm.entrypoints.openai.api_server``
- ``busybox`` → CMD ``sh``; ``python`` → CMD ``python3`` (small images for tests)
- ``registry.k8s.io/pause`` → ENTRYPOINT ``sleep infinity``

Any tag or digest matches. ``python`` is the venv's interpreter; every container's PATH starts
with the venv's ``bin``, so ``python``, ``kopf`` and the other console scripts resolve to the
venv, and ``sh``, ``cat`` and friends to the host's. The project's source folders are on
PYTHONPATH for the project images.

Any other image ends the container in ``ErrImagePull``, as a node that cannot pull it would.
More images can be mapped in a JSON or YAML file, ``RUN_DIR/image-map.yaml`` or the file named by
``LORAPLANE_NODEAGENT_IMAGE_MAP`` (entries there win over these; the agent re-reads the file when
it changes, so a test can add an image without restarting the node)::

    images:
      - repository: docker.io/library/nginx
        entrypoint: ["{python}", "-m", "http.server"]
        cmd: []
        env: {PYTHONUNBUFFERED: "1"}
        workingDir: /

``{python}``, ``{venv}`` and ``{project}`` are replaced by the venv's python, the venv and the
project checkout.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)
DOCKER_HUB = "docker.io"
STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ImageEntry:
    """What one image repository runs: its ENTRYPOINT, CMD, ENV and WORKDIR, in local terms."""

    repository: str
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    working_dir: str = "/"


def _project_env() -> dict[str, str]:
    return {"PYTHONPATH": "{project}/operator:{project}/worker", "PYTHONUNBUFFERED": "1"}


DEFAULT_IMAGE_MAP: tuple[ImageEntry, ...] = (
    # The project images as docker/*.Dockerfile build them (tests/unit/test_nodeagent_images.py
    # compares): ENTRYPOINT and CMD, with the venv's python and kopf.
    ImageEntry(
        "ghcr.io/loraplane/worker",
        entrypoint=("{python}", "-m", "loraplane_worker"),
        cmd=("--config", "/etc/loraplane/config.yaml"),
        env=_project_env(),
    ),
    ImageEntry(
        "ghcr.io/loraplane/operator",
        entrypoint=("{venv}/bin/kopf", "run", "--standalone", "-m", "loraplane.main"),
        cmd=("--all-namespaces",),
        env=_project_env(),
    ),
    ImageEntry(
        "docker.io/vllm/vllm-openai",
        entrypoint=("{python}", "-m", "vllm.entrypoints.openai.api_server"),
        env={"PYTHONUNBUFFERED": "1"},
    ),
    ImageEntry("docker.io/library/busybox", cmd=("sh",)),
    ImageEntry("docker.io/library/python", cmd=("python3",)),
    ImageEntry("registry.k8s.io/pause", entrypoint=("sleep", "infinity")),
)


def repository_of(image: str) -> str:
    """The fully qualified repository of an image reference, without tag or digest.

    ``busybox:1.36`` → ``docker.io/library/busybox``; ``vllm/vllm-openai:v0.9`` →
    ``docker.io/vllm/vllm-openai``; ``ghcr.io/x/y@sha256:...`` → ``ghcr.io/x/y``.
    """
    name = image.strip().split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:  # a tag (a colon before the last slash is a registry port)
        name = name[:colon]
    parts = name.split("/")
    first = parts[0]
    has_registry = len(parts) > 1 and ("." in first or ":" in first or first == "localhost")
    if not has_registry:
        name = f"{DOCKER_HUB}/library/{name}" if len(parts) == 1 else f"{DOCKER_HUB}/{name}"
    elif first == "index.docker.io":
        name = DOCKER_HUB + name[len(first) :]
    return name


def _substitute(text: str, values: Mapping[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def _entry_from_dict(raw: Mapping[str, Any], values: Mapping[str, str]) -> ImageEntry:
    def words(key: str) -> tuple[str, ...]:
        return tuple(_substitute(str(word), values) for word in raw.get(key) or ())

    return ImageEntry(
        repository=repository_of(str(raw["repository"])),
        entrypoint=words("entrypoint"),
        cmd=words("cmd"),
        env={str(k): _substitute(str(v), values) for k, v in (raw.get("env") or {}).items()},
        working_dir=_substitute(str(raw.get("workingDir") or "/"), values),
    )


def _resolved(entry: ImageEntry, values: Mapping[str, str]) -> ImageEntry:
    return _entry_from_dict(
        {
            "repository": entry.repository,
            "entrypoint": list(entry.entrypoint),
            "cmd": list(entry.cmd),
            "env": dict(entry.env),
            "workingDir": entry.working_dir,
        },
        values,
    )


@dataclass(frozen=True)
class ImageMap:
    entries: tuple[ImageEntry, ...]
    # Put in front of every container's PATH (the venv's bin).
    path_prefix: str = ""

    def lookup(self, image: str) -> ImageEntry | None:
        repository = repository_of(image)
        return next((e for e in self.entries if e.repository == repository), None)

    def unmapped_message(self, image: str) -> str:
        known = ", ".join(sorted({e.repository for e in self.entries}))
        return (
            f'image "{image}" is not in the dev node\'s image map (repository {repository_of(image)}); '
            f"this node runs no container runtime and maps only: {known}. "
            "See docs/node-agent.md to add an image (LORAPLANE_NODEAGENT_IMAGE_MAP)."
        )

    def container_env_defaults(self, entry: ImageEntry) -> dict[str, str]:
        """The image's own environment (under the pod's): PATH first, then the entry's ENV."""
        path = f"{self.path_prefix}:{STANDARD_PATH}" if self.path_prefix else STANDARD_PATH
        return {"PATH": path, **entry.env}


def load_image_map(venv: Path, project_dir: Path, extra_file: Path | None = None) -> ImageMap:
    """The default map with ``{python}``/``{venv}``/``{project}`` filled in, behind a file's entries."""
    values = {"python": str(venv / "bin" / "python"), "venv": str(venv), "project": str(project_dir)}
    entries: list[ImageEntry] = []
    if extra_file is not None:
        entries.extend(_entry_from_dict(raw, values) for raw in read_map_file(extra_file))
    entries.extend(_resolved(entry, values) for entry in DEFAULT_IMAGE_MAP)
    return ImageMap(tuple(entries), path_prefix=str(venv / "bin"))


def read_map_file(path: Path) -> Iterable[Mapping[str, Any]]:
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    images = (data or {}).get("images") or []
    if not isinstance(images, list):
        raise ValueError(f"{path}: 'images' must be a list of entries")
    return images


def container_argv(command: Sequence[str] | None, args: Sequence[str] | None, entry: ImageEntry) -> list[str]:
    """What the runtime executes, by the Kubernetes rules for ``command`` and ``args``.

    ``command`` replaces the image's ENTRYPOINT (and drops its CMD); ``args`` replace the CMD.
    """
    if command:
        return [*command, *(args or [])]
    if args:
        return [*entry.entrypoint, *args]
    return [*entry.entrypoint, *entry.cmd]


class ImageMapSource:
    """The image map as of now: the defaults behind the map file, re-read whenever the file changes.

    A file that cannot be read keeps the map as it was (and says so in the log).
    """

    def __init__(self, venv: Path, project_dir: Path, map_file: Path) -> None:
        self.venv = venv
        self.project_dir = project_dir
        self.map_file = map_file
        self._stamp: int | None = None
        self._map = load_image_map(venv, project_dir)

    def current(self) -> ImageMap:
        try:
            stamp: int | None = self.map_file.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            try:
                self._map = load_image_map(self.venv, self.project_dir, self.map_file if stamp else None)
                log.info(
                    "image map: %d entries (file %s)",
                    len(self._map.entries),
                    self.map_file if stamp else "absent",
                )
            except (OSError, ValueError, KeyError, yaml.YAMLError) as error:
                log.error("image map file %s not usable, keeping the previous map: %s", self.map_file, error)
            self._stamp = stamp
        return self._map
