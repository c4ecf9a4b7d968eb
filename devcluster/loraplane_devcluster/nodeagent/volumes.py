"""Pod volumes on the host, and the bind mounts that put them at each container's mountPaths.

Every volume becomes a host folder: ``emptyDir`` and the API-data volumes (ConfigMap, Secret,
downward API, projected) live under the pod's folder in the run directory; a PVC resolves to the
host path of its bound PersistentVolume; ``hostPath`` is itself. :func:`container_mounts` then
turns a container's ``volumeMounts`` (``subPath``/``subPathExpr``, ``readOnly``) plus the pod's
private ``/tmp``, ``/etc/hosts`` and termination-message file into bind mounts, which the
sandbox applies in the container's own mount namespace (see ``sandbox_exec.py``).

As in the kubelet, ConfigMap, Secret, downward API and projected volumes are always read-only.
"""

from __future__ import annotations

import base64
import os
import posixpath
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraplane_devcluster.nodeagent.env import (
    ContainerConfigError,
    PodNetwork,
    expand,
    field_value,
    resource_value,
)

JsonObject = dict[str, Any]
DEFAULT_MODE = 0o644
DEFAULT_TOKEN_EXPIRATION_S = 3600


class VolumeError(Exception):
    """A volume cannot be set up yet (the kubelet's ``FailedMount``); the agent retries."""

    reason = "FailedMount"


@dataclass(frozen=True)
class PreparedVolume:
    name: str
    path: Path
    read_only: bool = False


@dataclass(frozen=True)
class Mount:
    """One bind mount: ``source`` on the host appears at ``target`` inside the container."""

    source: str
    target: str
    read_only: bool = False
    # A subPath that does not exist yet is created (as a folder) before mounting, as the kubelet does.
    create_source: bool = False


@dataclass(frozen=True)
class FileSpec:
    """One file of an API-data volume, relative to the volume's root."""

    path: str
    content: bytes
    mode: int


@dataclass(frozen=True)
class VolumeContext:
    """What preparing volumes needs from outside: API reads, token requests and the pod's addresses."""

    config_map: Callable[[str], JsonObject | None]
    secret: Callable[[str], JsonObject | None]
    claim_host_path: Callable[[str], str]  # PVC name → host path of its bound PV (raises VolumeError)
    token: Callable[[str, list[str], int], str]  # service account, audiences, expiration → token
    network: PodNetwork
    allocatable: Mapping[str, str]


# --- pure: the files of API-data volumes --------------------------------------------------------


def _checked_relative(path: str) -> str:
    normalized = posixpath.normpath(path)
    if path.startswith("/") or normalized == ".." or normalized.startswith("../"):
        raise VolumeError(f"volume item path {path!r} must be relative and must not contain '..'")
    return normalized


def keyed_files(
    values: Mapping[str, bytes],
    items: list[JsonObject] | None,
    default_mode: int | None,
    what: str,
    optional: bool,
) -> list[FileSpec]:
    """Files for a ConfigMap or Secret: all keys, or the listed ``items`` (key → path, mode)."""
    mode = DEFAULT_MODE if default_mode is None else default_mode
    if not items:
        return [FileSpec(_checked_relative(k), v, mode) for k, v in sorted(values.items())]
    files = []
    for item in items:
        if item["key"] not in values:
            if optional:
                continue
            raise VolumeError(f"configuration of {what} has no key {item['key']!r}")
        files.append(FileSpec(_checked_relative(item["path"]), values[item["key"]], item.get("mode", mode)))
    return files


def secret_bytes(secret: JsonObject) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}


def config_map_bytes(config_map: JsonObject) -> dict[str, bytes]:
    values = {k: str(v).encode() for k, v in (config_map.get("data") or {}).items()}
    values.update({k: base64.b64decode(v) for k, v in (config_map.get("binaryData") or {}).items()})
    return values


def downward_files(
    pod: JsonObject,
    items: list[JsonObject],
    default_mode: int | None,
    network: PodNetwork,
    allocatable: Mapping[str, str],
) -> list[FileSpec]:
    mode = DEFAULT_MODE if default_mode is None else default_mode
    files = []
    for item in items:
        if "fieldRef" in item:
            value = field_value(pod, item["fieldRef"]["fieldPath"], network)
        elif "resourceFieldRef" in item:
            ref = item["resourceFieldRef"]
            value = resource_value(
                pod, ref["containerName"], ref["resource"], ref.get("divisor"), allocatable
            )
        else:
            raise VolumeError(
                f"downwardAPI item {item.get('path')!r} has neither fieldRef nor resourceFieldRef"
            )
        files.append(FileSpec(_checked_relative(item["path"]), value.encode(), item.get("mode", mode)))
    return files


# --- I/O: materialising volumes --------------------------------------------------------------------


def write_files(root: Path, files: list[FileSpec]) -> None:
    """Write (or rewrite) the files; each is replaced atomically, so a reader never sees half a token."""
    root.mkdir(parents=True, exist_ok=True)
    for spec in files:
        target = root / spec.path
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(spec.content)
        os.chmod(tmp, spec.mode)
        os.replace(tmp, target)


def _lookup(kind: str, name: str, optional: bool, ctx: VolumeContext) -> dict[str, bytes] | None:
    found = ctx.config_map(name) if kind == "configMap" else ctx.secret(name)
    if found is None:
        if optional:
            return None
        raise VolumeError(f'{kind} "{name}" not found')
    return config_map_bytes(found) if kind == "configMap" else secret_bytes(found)


def projected_files(pod: JsonObject, projected: JsonObject, ctx: VolumeContext) -> list[FileSpec]:
    default_mode = projected.get("defaultMode")
    mode = DEFAULT_MODE if default_mode is None else default_mode
    files: list[FileSpec] = []
    service_account = pod["spec"].get("serviceAccountName") or "default"
    for source in projected.get("sources") or []:
        if "serviceAccountToken" in source:
            token_source = source["serviceAccountToken"]
            audience = token_source.get("audience")
            expiration = int(token_source.get("expirationSeconds", DEFAULT_TOKEN_EXPIRATION_S))
            token = ctx.token(service_account, [audience] if audience else [], expiration)
            files.append(FileSpec(_checked_relative(token_source["path"]), token.encode(), mode))
        elif "configMap" in source or "secret" in source:
            kind = "configMap" if "configMap" in source else "secret"
            ref = source[kind]
            optional = bool(ref.get("optional"))
            values = _lookup(kind, ref["name"], optional, ctx)
            if values is not None:
                files.extend(keyed_files(values, ref.get("items"), mode, f"{kind} {ref['name']}", optional))
        elif "downwardAPI" in source:
            files.extend(
                downward_files(
                    pod, source["downwardAPI"].get("items") or [], mode, ctx.network, ctx.allocatable
                )
            )
        else:
            raise VolumeError(f"projected volume source {sorted(source)} is not supported by the dev node")
    return files


def token_lifetime_s(pod: JsonObject) -> int | None:
    """The shortest requested lifetime of the pod's projected service-account tokens (None: no token)."""
    lifetimes = [
        int(source["serviceAccountToken"].get("expirationSeconds", DEFAULT_TOKEN_EXPIRATION_S))
        for volume in pod["spec"].get("volumes") or []
        for source in (volume.get("projected") or {}).get("sources") or []
        if "serviceAccountToken" in source
    ]
    return min(lifetimes, default=None)


def _host_path(volume: JsonObject) -> Path:
    spec = volume["hostPath"]
    path = Path(spec["path"])
    kind = spec.get("type") or ""
    if kind in {"", "DirectoryOrCreate"} and not path.exists():
        path.mkdir(parents=True, exist_ok=True, mode=0o755)
    elif kind == "FileOrCreate" and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o644)
    checks: dict[str, Callable[[Path], bool]] = {
        "Directory": Path.is_dir,
        "DirectoryOrCreate": Path.is_dir,
        "File": Path.is_file,
        "FileOrCreate": Path.is_file,
        "Socket": Path.is_socket,
        "CharDevice": Path.is_char_device,
        "BlockDevice": Path.is_block_device,
    }
    if kind in checks and not checks[kind](path):
        raise VolumeError(f"hostPath {path} is not of type {kind}")
    return path


def prepare_volume(pod: JsonObject, volume: JsonObject, pod_dir: Path, ctx: VolumeContext) -> PreparedVolume:
    """Make one volume's host folder (or find it) and fill it; raises VolumeError to retry later."""
    name = volume["name"]
    own_dir = pod_dir / "volumes" / name
    if "emptyDir" in volume:
        own_dir.mkdir(parents=True, exist_ok=True)
        return PreparedVolume(name, own_dir)
    if "configMap" in volume or "secret" in volume:
        kind = "configMap" if "configMap" in volume else "secret"
        ref = volume[kind]
        ref_name = ref["name"] if kind == "configMap" else ref["secretName"]
        optional = bool(ref.get("optional"))
        values = _lookup(kind, ref_name, optional, ctx)
        files = keyed_files(
            values or {}, ref.get("items"), ref.get("defaultMode"), f"{kind} {ref_name}", optional
        )
        write_files(own_dir, files)
        return PreparedVolume(name, own_dir, read_only=True)
    if "downwardAPI" in volume:
        spec = volume["downwardAPI"]
        write_files(
            own_dir,
            downward_files(
                pod, spec.get("items") or [], spec.get("defaultMode"), ctx.network, ctx.allocatable
            ),
        )
        return PreparedVolume(name, own_dir, read_only=True)
    if "projected" in volume:
        write_files(own_dir, projected_files(pod, volume["projected"], ctx))
        return PreparedVolume(name, own_dir, read_only=True)
    if "persistentVolumeClaim" in volume:
        claim = volume["persistentVolumeClaim"]
        return PreparedVolume(
            name, Path(ctx.claim_host_path(claim["claimName"])), bool(claim.get("readOnly"))
        )
    if "ephemeral" in volume:
        # The ephemeral-volume controller names the claim <pod>-<volume>.
        claim_name = f"{pod['metadata']['name']}-{name}"
        return PreparedVolume(name, Path(ctx.claim_host_path(claim_name)))
    if "hostPath" in volume:
        return PreparedVolume(name, _host_path(volume))
    kinds = sorted(k for k in volume if k != "name")
    raise VolumeError(
        f"volume {name!r} of type {kinds} is not supported by the dev node (see docs/node-agent.md)"
    )


def prepare_volumes(pod: JsonObject, pod_dir: Path, ctx: VolumeContext) -> dict[str, PreparedVolume]:
    try:
        return {v["name"]: prepare_volume(pod, v, pod_dir, ctx) for v in pod["spec"].get("volumes") or []}
    except ContainerConfigError as error:  # a bad downward-API reference
        raise VolumeError(str(error)) from error


def refresh_tokens(pod: JsonObject, pod_dir: Path, ctx: VolumeContext) -> None:
    """Rewrite projected volumes that carry a service-account token (the kubelet does this before expiry)."""
    for volume in pod["spec"].get("volumes") or []:
        if "projected" in volume and token_lifetime_s({"spec": {"volumes": [volume]}}) is not None:
            write_files(pod_dir / "volumes" / volume["name"], projected_files(pod, volume["projected"], ctx))


# --- pure: the mount plan of one container ---------------------------------------------------------


def _depth(target: str) -> int:
    return 0 if target == "/" else target.count("/")


def container_mounts(
    container: JsonObject,
    volumes: Mapping[str, PreparedVolume],
    env: Mapping[str, str],
    *,
    pod_tmp: Path,
    hosts_file: Path,
    termination_log: Path,
    resolv_conf: Path | None = None,
    host_paths: Sequence[Path] = (),
) -> list[Mount]:
    """The bind mounts for ``container``, parents before children (so ``/tmp`` comes before ``/tmp/x``).

    The pod's private ``/tmp``, ``/etc/hosts`` and ``/etc/resolv.conf`` (when it has one of its own)
    are left out where a volumeMount takes that path.
    ``host_paths`` (the checkout and the venv the image map runs from) stay visible, read-only, even
    when they live under ``/tmp``, where the pod's private ``/tmp`` would hide them (a CI clone there).
    """
    mounts: list[Mount] = []
    for volume_mount in container.get("volumeMounts") or []:
        volume = volumes.get(volume_mount["name"])
        if volume is None:
            raise VolumeError(f"volumeMount {volume_mount['name']!r} names no volume of the pod")
        sub_path = volume_mount.get("subPath") or ""
        if not sub_path and volume_mount.get("subPathExpr"):
            sub_path = expand(volume_mount["subPathExpr"], env)
        source = volume.path / _checked_relative(sub_path) if sub_path else volume.path
        read_only = bool(volume_mount.get("readOnly")) or volume.read_only
        target = posixpath.normpath(volume_mount["mountPath"])
        mounts.append(Mount(str(source), target, read_only, create_source=bool(sub_path)))
    taken = {m.target for m in mounts}
    # Paths inside the container's namespace, not the agent's own temporary files.
    extras = [Mount(str(pod_tmp), "/tmp"), Mount(str(hosts_file), "/etc/hosts")]  # noqa: S108
    if resolv_conf is not None:
        extras.append(Mount(str(resolv_conf), "/etc/resolv.conf"))
    message_path = posixpath.normpath(container.get("terminationMessagePath") or "/dev/termination-log")
    extras.append(Mount(str(termination_log), message_path))
    mounts.extend(m for m in extras if m.target not in taken)
    mounts.extend(
        Mount(str(path), str(path), True)
        for path in host_paths
        if str(path).startswith("/tmp/") and str(path) not in taken  # noqa: S108
    )
    return sorted(mounts, key=lambda m: _depth(m.target))


def hosts_file_content(pod_ip: str, hostname: str, domain: str = "") -> str:
    """The pod's /etc/hosts, like the kubelet's managed one: loopback names plus the pod's own name
    (its FQDN first when it has a subdomain). Nothing else: other names are the cluster DNS's."""
    own = f"{hostname}.{domain}\t{hostname}" if domain else hostname
    return (
        "# Kubernetes-managed hosts file (loraplane dev node).\n"
        "127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        f"{pod_ip}\t{own}\n"
    )
