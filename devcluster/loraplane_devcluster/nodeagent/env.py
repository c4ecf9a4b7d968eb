"""A container's environment, resolved the way the kubelet resolves it.

Order and rules follow the kubelet (``makeEnvironmentVariables``): ``envFrom`` sources in order
(later keys win, each with its prefix), then ``env`` in order, where a literal ``value`` is
expanded with ``$(VAR)`` against the variables defined so far plus the service variables, and a
``valueFrom`` is used as is; finally the service variables the pod did not set itself. Command,
args and ``subPathExpr`` are then expanded against the finished environment.

Everything here is pure: ConfigMaps and Secrets come in through :class:`ObjectLookup`.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity as _parse_quantity

JsonObject = dict[str, Any]


class ContainerConfigError(Exception):
    """The container cannot be created yet (the kubelet's ``CreateContainerConfigError``)."""

    reason = "CreateContainerConfigError"


@dataclass(frozen=True)
class ObjectLookup:
    """Reads a ConfigMap or Secret of the pod's namespace by name; None when it does not exist."""

    config_map: Callable[[str], JsonObject | None]
    secret: Callable[[str], JsonObject | None]


@dataclass(frozen=True)
class PodNetwork:
    """The addresses the agent gave the pod (known before the API status shows them)."""

    pod_ip: str
    host_ip: str


@dataclass(frozen=True)
class EnvContext:
    """Everything outside the pod spec that a container's environment depends on."""

    objects: ObjectLookup
    network: PodNetwork
    service_env: Mapping[str, str]
    allocatable: Mapping[str, str]


def parse_quantity(quantity: str) -> Decimal:
    """A Kubernetes quantity (``500m``, ``2Gi``, ``1e3``) as an exact Decimal."""
    return Decimal(_parse_quantity(quantity))  # type: ignore[no-untyped-call]


# --- $(VAR) expansion: a port of k8s.io/kubernetes/third_party/forked/golang/expansion -------------


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Replace ``$(NAME)`` with the variable's value; ``$$`` is a literal ``$``.

    A reference to an undefined variable is left as written, as is an unclosed ``$(``.
    """
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            following = text[cursor + 1]
            if following == "$":
                out.append("$")
                advance = 1
            elif following == "(":
                closing = text.find(")", cursor + 2)
                if closing == -1:
                    out.append("$(")
                    advance = 1
                else:
                    name = text[cursor + 2 : closing]
                    out.append(variables.get(name, f"$({name})"))
                    advance = closing - cursor
            else:
                out.append("$" + following)
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


# --- downward API -----------------------------------------------------------------------------

_SUBSCRIPT = re.compile(r"^(metadata\.(?:labels|annotations))\['(.*)'\]$")


def _format_map(values: Mapping[str, str]) -> str:
    """Labels/annotations as the downward API writes a whole map: ``key="value"`` lines, sorted."""
    return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))


def field_value(pod: JsonObject, field_path: str, network: PodNetwork) -> str:
    """The value of a ``fieldRef.fieldPath`` (the paths the API allows for env and volumes)."""
    metadata = pod.get("metadata", {})
    spec = pod.get("spec", {})
    subscript = _SUBSCRIPT.match(field_path)
    if subscript:
        values = metadata.get(subscript.group(1).split(".")[1]) or {}
        return str(values.get(subscript.group(2), ""))
    simple: dict[str, Callable[[], str]] = {
        "metadata.name": lambda: metadata.get("name", ""),
        "metadata.namespace": lambda: metadata.get("namespace", ""),
        "metadata.uid": lambda: metadata.get("uid", ""),
        "metadata.labels": lambda: _format_map(metadata.get("labels") or {}),
        "metadata.annotations": lambda: _format_map(metadata.get("annotations") or {}),
        "spec.nodeName": lambda: spec.get("nodeName", ""),
        "spec.serviceAccountName": lambda: spec.get("serviceAccountName", ""),
        "status.podIP": lambda: network.pod_ip,
        "status.podIPs": lambda: network.pod_ip,
        "status.hostIP": lambda: network.host_ip,
        "status.hostIPs": lambda: network.host_ip,
    }
    if field_path not in simple:
        raise ContainerConfigError(f"unsupported fieldRef fieldPath {field_path!r}")
    return simple[field_path]()


def resource_value(
    pod: JsonObject, container_name: str, resource: str, divisor: str | None, allocatable: Mapping[str, str]
) -> str:
    """The value of a ``resourceFieldRef``: limits fall back to the node's allocatable, as in the kubelet."""
    container = next(
        (
            c
            for c in [*pod["spec"].get("containers", []), *pod["spec"].get("initContainers", [])]
            if c["name"] == container_name
        ),
        None,
    )
    if container is None:
        raise ContainerConfigError(f"resourceFieldRef names unknown container {container_name!r}")
    kind, _, name = resource.partition(".")
    if kind not in {"limits", "requests"} or not name:
        raise ContainerConfigError(f"unsupported resourceFieldRef resource {resource!r}")
    resources = container.get("resources") or {}
    raw = (resources.get(kind) or {}).get(name)
    if raw is None and kind == "limits":
        raw = allocatable.get(name)
    quantity = parse_quantity(raw) if raw is not None else Decimal(0)
    by = parse_quantity(divisor) if divisor else Decimal(1)
    if by == 0:
        raise ContainerConfigError(f"resourceFieldRef {resource} has divisor 0")
    return str(math.ceil(quantity / by))


# --- ConfigMap and Secret values --------------------------------------------------------------


def config_map_values(config_map: JsonObject) -> dict[str, str]:
    values = {k: str(v) for k, v in (config_map.get("data") or {}).items()}
    for key, encoded in (config_map.get("binaryData") or {}).items():
        values[key] = base64.b64decode(encoded).decode(errors="surrogateescape")
    return values


def secret_values(secret: JsonObject) -> dict[str, str]:
    values = {
        k: base64.b64decode(v).decode(errors="surrogateescape") for k, v in (secret.get("data") or {}).items()
    }
    values.update({k: str(v) for k, v in (secret.get("stringData") or {}).items()})
    return values


def _source_values(kind: str, name: str, optional: bool, objects: ObjectLookup) -> dict[str, str] | None:
    if kind == "configmap":
        found = objects.config_map(name)
        values = config_map_values(found) if found is not None else None
    else:
        found = objects.secret(name)
        values = secret_values(found) if found is not None else None
    if values is None and not optional:
        raise ContainerConfigError(f'{kind} "{name}" not found')
    return values


def _key_ref(kind: str, ref: Mapping[str, Any], namespace: str, objects: ObjectLookup) -> str | None:
    """A ``configMapKeyRef``/``secretKeyRef`` value; None when optional and missing."""
    optional = bool(ref.get("optional"))
    values = _source_values(kind, ref["name"], optional, objects)
    if values is None:
        return None
    if ref["key"] not in values:
        if optional:
            return None
        kind_name = "ConfigMap" if kind == "configmap" else "Secret"
        raise ContainerConfigError(f"couldn't find key {ref['key']} in {kind_name} {namespace}/{ref['name']}")
    return values[ref["key"]]


def _value_from(
    source: Mapping[str, Any], pod: JsonObject, container_name: str, ctx: EnvContext
) -> str | None:
    namespace = pod["metadata"].get("namespace", "")
    if "fieldRef" in source:
        return field_value(pod, source["fieldRef"]["fieldPath"], ctx.network)
    if "resourceFieldRef" in source:
        ref = source["resourceFieldRef"]
        return resource_value(
            pod,
            ref.get("containerName") or container_name,
            ref["resource"],
            ref.get("divisor"),
            ctx.allocatable,
        )
    if "configMapKeyRef" in source:
        return _key_ref("configmap", source["configMapKeyRef"], namespace, ctx.objects)
    if "secretKeyRef" in source:
        return _key_ref("secret", source["secretKeyRef"], namespace, ctx.objects)
    raise ContainerConfigError(f"unsupported valueFrom {sorted(source)}")


def container_env(pod: JsonObject, container: JsonObject, ctx: EnvContext) -> dict[str, str]:
    """The variables Kubernetes defines for ``container`` (without the image's own ENV)."""
    defined: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            ref, kind = source["configMapRef"], "configmap"
        elif "secretRef" in source:
            ref, kind = source["secretRef"], "secret"
        else:
            raise ContainerConfigError(f"unsupported envFrom source {sorted(source)}")
        values = _source_values(kind, ref["name"], bool(ref.get("optional")), ctx.objects)
        for key, value in (values or {}).items():
            name = prefix + key
            if name and "=" not in name:  # what the API accepts as a variable name
                defined[name] = value
    for variable in container.get("env") or []:
        name = variable["name"]
        if "valueFrom" in variable:
            resolved = _value_from(variable["valueFrom"], pod, container["name"], ctx)
            if resolved is None:  # optional and missing: the variable is not defined at all
                continue
            defined[name] = resolved
        else:
            defined[name] = expand(variable.get("value", ""), {**ctx.service_env, **defined})
    return {**ctx.service_env, **defined}


def expand_all(words: list[str], variables: Mapping[str, str]) -> list[str]:
    return [expand(word, variables) for word in words]


def service_env(host: str, port: int) -> dict[str, str]:
    """The ``kubernetes`` Service's variables: where a pod's in-cluster clients find the API server."""
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": str(port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
        "KUBERNETES_PORT": f"tcp://{host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP": f"tcp://{host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
        f"KUBERNETES_PORT_{port}_TCP_PORT": str(port),
        f"KUBERNETES_PORT_{port}_TCP_ADDR": host,
    }
