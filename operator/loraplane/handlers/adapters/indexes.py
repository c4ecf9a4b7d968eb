"""The kopf indexes a pass reads instead of calling the API: the LoraAdapters by target Deployment, the
serving Deployments, their pods (slimmed), and the training jobs' statuses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import kopf

from loraplane import GROUP, VERSION, kube
from loraplane.handlers.adapters.common import RESOURCE, DeploymentKey


@kopf.index(*RESOURCE)
def adapters_by_deployment(
    body: kopf.Body, namespace: str | None, spec: kopf.Spec, **_: Any
) -> dict[DeploymentKey, dict[str, Any]]:
    return {(str(namespace), spec["serving"]["deployment"]): kube.to_plain(body)}


@kopf.index("apps", "v1", "deployments")
def serving_deployments(
    body: kopf.Body, namespace: str | None, name: str | None, **_: Any
) -> dict[DeploymentKey, dict[str, Any]]:
    return {(str(namespace), str(name)): kube.to_plain(body)}


def slim_pod(body: kopf.Body) -> dict[str, Any]:
    """What a pass needs of a pod; the rest is not kept in memory."""
    metadata, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status", {})
    return kube.to_plain(
        {
            "metadata": {
                key: metadata.get(key)
                for key in ("name", "namespace", "uid", "labels", "deletionTimestamp", "ownerReferences")
            },
            "spec": {"readinessGates": spec.get("readinessGates")},
            "status": {key: status.get(key) for key in ("phase", "podIP", "conditions", "containerStatuses")},
        }
    )


@kopf.index("", "v1", "pods")
def pods_by_namespace(body: kopf.Body, namespace: str | None, **_: Any) -> dict[str, dict[str, Any]]:
    return {str(namespace): slim_pod(body)}


@kopf.index(GROUP, VERSION, "loratrainingjobs")
def training_jobs_by_name(
    body: kopf.Body, namespace: str | None, name: str | None, **_: Any
) -> dict[DeploymentKey, dict[str, Any]]:
    return {(str(namespace), str(name)): {"status": kube.to_plain(body.get("status", {}))}}


@dataclass(frozen=True)
class Indexes:
    adapters: kopf.Index[DeploymentKey, dict[str, Any]]
    deployments: kopf.Index[DeploymentKey, dict[str, Any]]
    pods: kopf.Index[str, dict[str, Any]]
    training_jobs: kopf.Index[DeploymentKey, dict[str, Any]]

    def one(self, index: kopf.Index[Any, dict[str, Any]], key: Any) -> dict[str, Any] | None:
        return next(iter(index.get(key, [])), None)


def from_kwargs(kwargs: dict[str, Any]) -> Indexes:
    """The indexes, from the kwargs kopf passes to every handler."""
    return Indexes(
        adapters=kwargs["adapters_by_deployment"],
        deployments=kwargs["serving_deployments"],
        pods=kwargs["pods_by_namespace"],
        training_jobs=kwargs["training_jobs_by_name"],
    )
