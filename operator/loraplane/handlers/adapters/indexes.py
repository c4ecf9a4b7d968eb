"""The kopf indexes a pass reads instead of calling the API: the LoraAdapters by target Deployment, the
Deployments loraplane serves, their pods (slimmed), and the training jobs' statuses.

The Deployment and pod indexes are filtered, so the operator holds only what it serves, not every
Deployment and pod of the cluster. A Deployment is served when a LoraAdapter names it, it opted in, or
loraplane changed it (its record annotations, or its template's readiness gate); a pod when it carries
the readiness gate or its Deployment is served. kopf evaluates a filter when an object changes, so an
object that became served without changing (a LoraAdapter created after its Deployment, or indexes
filled in another order at start-up) is missing until its next change: a pass then reads the
Deployment and its pods directly (`reconciler.run_pass`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from loraplane import GROUP, VERSION, kube
from loraplane.builders import serving
from loraplane.handlers.adapters.common import RESOURCE, DeploymentKey

# --- which Deployments and pods loraplane serves (pure) ------------------------------------------------


def deployment_is_served(deployment: Mapping[str, Any], targeted: bool) -> bool:
    """A LoraAdapter names the Deployment (`targeted`), it opted in, or loraplane changed it."""
    if targeted or serving.is_opted_in(dict(deployment)):
        return True
    annotations = deployment.get("metadata", {}).get("annotations") or {}
    if annotations.get(serving.SETTINGS_ANNOTATION) or annotations.get(serving.STATIC_ANNOTATION):
        return True
    template = deployment.get("spec", {}).get("template", {}).get("spec", {})
    return has_gate(template)


def has_gate(pod_spec: Mapping[str, Any]) -> bool:
    """A pod spec (or a Deployment's template spec) with loraplane's readiness gate."""
    return any(g.get("conditionType") == serving.GATE for g in pod_spec.get("readinessGates") or [])


def owner_deployment(pod: Mapping[str, Any]) -> str | None:
    """The Deployment of a pod, through its ReplicaSet's name (`<deployment>-<pod-template-hash>`)."""
    labels = pod.get("metadata", {}).get("labels") or {}
    template_hash = labels.get("pod-template-hash")
    for owner in pod.get("metadata", {}).get("ownerReferences") or []:
        if (
            owner.get("kind") == "ReplicaSet"
            and template_hash
            and owner["name"].endswith(f"-{template_hash}")
        ):
            return str(owner["name"][: -len(template_hash) - 1])
    return None


def pod_is_served(pod: Mapping[str, Any], deployment_served: bool) -> bool:
    """The pod carries loraplane's readiness gate, or its Deployment is served."""
    return deployment_served or has_gate(pod.get("spec", {}))


def selector_string(selector: Mapping[str, Any]) -> str:
    """A Deployment's label selector in the API's query form (`app=x,tier in (a,b),!legacy`)."""
    terms = [f"{key}={value}" for key, value in (selector.get("matchLabels") or {}).items()]
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator in {"In", "NotIn"}:
            terms.append(f"{key} {operator.lower()} ({','.join(values)})")
        elif operator == "Exists":
            terms.append(key)
        elif operator == "DoesNotExist":
            terms.append(f"!{key}")
    return ",".join(terms)


def pods_missing_from_index(deployment: Mapping[str, Any], indexed: list[dict[str, Any]]) -> bool:
    """The Deployment counts more running pods than the index holds for it (they have not changed since
    it became served): the pass lists them directly."""
    replicas = int((deployment.get("status") or {}).get("replicas") or 0)
    return replicas > sum(1 for p in indexed if not p["metadata"].get("deletionTimestamp"))


# --- the kopf filters ----------------------------------------------------------------------------------


def served_deployment_filter(body: kopf.Body, namespace: str | None, name: str | None, **kwargs: Any) -> bool:
    adapters: kopf.Index[DeploymentKey, Any] = kwargs["adapters_by_deployment"]
    return deployment_is_served(body, bool(adapters.get((str(namespace), str(name)))))


def served_pod_filter(body: kopf.Body, namespace: str | None, **kwargs: Any) -> bool:
    deployments: kopf.Index[DeploymentKey, Any] = kwargs["serving_deployments"]
    owner = owner_deployment(body)
    return pod_is_served(body, owner is not None and bool(deployments.get((str(namespace), owner))))


# --- the indexes ---------------------------------------------------------------------------------------


@kopf.index(*RESOURCE)
def adapters_by_deployment(
    body: kopf.Body, namespace: str | None, spec: kopf.Spec, **_: Any
) -> dict[DeploymentKey, dict[str, Any]]:
    # Without managedFields and the spec's copies (kubectl's, kopf's): most of a LoraAdapter's bytes.
    return {(str(namespace), spec["serving"]["deployment"]): kube.slim(body)}


@kopf.index("apps", "v1", "deployments", when=served_deployment_filter)
def serving_deployments(
    body: kopf.Body, namespace: str | None, name: str | None, **_: Any
) -> dict[DeploymentKey, dict[str, Any]]:
    return {(str(namespace), str(name)): kube.to_plain(body)}


def slim_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a pass needs of a pod; the rest is not kept in memory."""
    metadata, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status", {})
    return kube.to_plain(
        {
            "metadata": {
                key: metadata.get(key)
                for key in ("name", "namespace", "uid", "labels", "deletionTimestamp", "ownerReferences")
            },
            "spec": {
                "readinessGates": spec.get("readinessGates"),
                # What the pod was started with, as far as LoRA goes (a pod that predates LoRA being
                # enabled on its Deployment must not be loaded into); other variables are not kept.
                "containers": [
                    {
                        "name": c.get("name"),
                        "args": c.get("args"),
                        "env": [e for e in c.get("env") or [] if e.get("name") == serving.RUNTIME_ENV],
                    }
                    for c in spec.get("containers") or []
                ],
            },
            "status": {key: status.get(key) for key in ("phase", "podIP", "conditions", "containerStatuses")},
        }
    )


@kopf.index("", "v1", "pods", when=served_pod_filter)
def pods_by_namespace(body: kopf.Body, namespace: str | None, **_: Any) -> dict[str, dict[str, Any]]:
    return {str(namespace): slim_pod(body)}


@kopf.index(GROUP, VERSION, "loratrainingjobs")
def training_jobs_by_name(
    body: kopf.Body, namespace: str | None, name: str | None, **_: Any
) -> dict[DeploymentKey, dict[str, Any]]:
    # The job's result, and the connection of an object-store output: serving fetches the result
    # through the store the run wrote it to.
    kept: dict[str, Any] = {"status": job_result(body.get("status") or {})}
    output = (body.get("spec") or {}).get("output") or {}
    if output.get("s3"):
        kept["spec"] = {"output": {"s3": {"connection": kube.to_plain(output["s3"].get("connection") or {})}}}
    return {(str(namespace), str(name)): kept}


def job_result(status: Mapping[str, Any]) -> dict[str, Any]:
    """What serving reads of a training job's status: its adapter, its evaluation, and how it ended
    (the `Succeeded` condition); not the progress, history or other conditions of a thousand jobs."""
    kept = {key: status[key] for key in ("adapter", "evaluation") if status.get(key) is not None}
    kept["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") == "Succeeded"]
    return kube.to_plain(kept)


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
