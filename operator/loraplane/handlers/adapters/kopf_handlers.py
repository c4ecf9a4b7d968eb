"""The LoraAdapter controller's kopf handlers: events of LoraAdapters, served Deployments, their pods
and training jobs wake the Deployment's task (`controller`); the finalizer waits for one pass after
the deletion and finishes unless a pod still holds a name loraplane loaded that nobody claims.

What kopf costs per object here, at rest: nothing. There is no timer or daemon per LoraAdapter (both
are an asyncio task per object, and a timer a pass per object per interval). The event handlers are
kopf's "watching" handlers: no progress annotations, no finalizer. The one changing handler, the
finalizer `unload_adapter`, makes kopf write its finalizer and its `last-handled-configuration`
annotation once when an adapter is created (and again on a spec change), and progress annotations
only while a deletion retries.

Each handler compares what it is told against what it saw last (a signature per object) and wakes
the Deployment only when something a pass reads changed: a status the operator wrote itself, or a
kubelet heartbeat of a pod, wakes nothing.
"""

from __future__ import annotations

import json
from typing import Any

import kopf

from loraplane import GROUP, VERSION
from loraplane.builders import serving
from loraplane.handlers.adapters import indexes
from loraplane.handlers.adapters.common import RESOURCE, parse
from loraplane.handlers.adapters.controller import fresh_outcome, wake
from loraplane.handlers.adapters.reconciler import RECONCILERS
from loraplane.status import adapter as status_of
from loraplane.status import resolution

# (kind, namespace, name) -> the signature last seen; one small entry per watched object.
_SEEN: dict[tuple[str, str, str], Any] = {}


def changed(kind: str, namespace: str, name: str, signature: Any, gone: bool = False) -> bool:
    """Whether the object's signature differs from the one last seen (and remember it)."""
    key = (kind, namespace, name)
    if gone:
        _SEEN.pop(key, None)
        return True
    if _SEEN.get(key) == signature:
        return False
    _SEEN[key] = signature
    return True


def adapter_signature(body: kopf.Body) -> tuple[Any, ...]:
    """What a pass reads of a LoraAdapter, outside its status (which the operator writes itself)."""
    metadata = body.get("metadata", {})
    return (metadata.get("uid"), metadata.get("generation"), bool(metadata.get("deletionTimestamp")))


def pod_signature(body: kopf.Body) -> tuple[Any, ...]:
    view = status_of.PodView.of(dict(body), None)
    return (
        view.phase,
        view.ip,
        view.containers_ready,
        view.ready,
        view.deleting,
        view.started_at,
        view.restart_count,
        view.gate_status,
        view.template_hash,
    )


def deployment_signature(body: kopf.Body) -> tuple[Any, ...]:
    metadata, status = body.get("metadata", {}), body.get("status") or {}
    annotations = dict(metadata.get("annotations") or {})
    return (metadata.get("generation"), json.dumps(annotations, sort_keys=True), status.get("replicas"))


@kopf.on.event(*RESOURCE)
async def adapter_changed(
    body: kopf.Body, namespace: str | None, name: str | None, type: str | None, **kwargs: Any
) -> None:
    """A LoraAdapter appeared, changed its spec, is being deleted, or went (also without its
    finalizer: the pass then unloads what nobody claims any more)."""
    if namespace is None or name is None:
        return
    target = body.get("spec", {}).get("serving", {}).get("deployment")
    key = ("LoraAdapter", namespace, name)
    before = _SEEN.get(key)
    gone = type == "DELETED"
    if not changed("LoraAdapter", namespace, name, (*adapter_signature(body), target), gone=gone):
        return
    found = indexes.from_kwargs(kwargs)
    if target:
        wake(namespace, str(target), found)
    if before is not None and before[-1] and before[-1] != target:
        wake(namespace, str(before[-1]), found)  # it moved to another Deployment


@kopf.on.event("apps", "v1", "deployments", when=indexes.served_deployment_filter)
async def deployment_changed(
    body: kopf.Body, namespace: str | None, name: str | None, type: str | None, **kwargs: Any
) -> None:
    if namespace is None or name is None:
        return
    if changed("Deployment", namespace, name, deployment_signature(body), gone=type == "DELETED"):
        wake(namespace, name, indexes.from_kwargs(kwargs))


@kopf.on.event("", "v1", "pods", when=indexes.served_pod_filter)
async def pod_changed(
    body: kopf.Body, namespace: str | None, name: str | None, type: str | None, **kwargs: Any
) -> None:
    """A served pod appeared, started, restarted, became ready or not, or went."""
    deployment = indexes.owner_deployment(body)
    if namespace is None or name is None or deployment is None:
        return
    if changed("Pod", namespace, name, pod_signature(body), gone=type == "DELETED"):
        wake(namespace, deployment, indexes.from_kwargs(kwargs))


@kopf.on.event(GROUP, VERSION, "loratrainingjobs")
async def training_job_changed(
    body: kopf.Body, namespace: str | None, name: str | None, type: str | None, **kwargs: Any
) -> None:
    """A training job's result (or failure) changed: wake the Deployments of adapters that read it."""
    if namespace is None or name is None:
        return
    status = body.get("status") or {}
    conditions: list[dict[str, Any]] = status.get("conditions") or []
    summary = next((c for c in conditions if c.get("type") == "Succeeded"), {})
    signature = (json.dumps(status.get("adapter"), sort_keys=True), summary.get("reason"))
    if not changed("LoraTrainingJob", namespace, name, signature, gone=type == "DELETED"):
        return
    found = indexes.from_kwargs(kwargs)
    for (adapter_namespace, deployment), store in list(found.adapters.items()):
        if adapter_namespace != namespace:
            continue
        for adapter in store:
            job = ((adapter.get("spec") or {}).get("source") or {}).get("trainingJob") or {}
            if job.get("name") == name:
                wake(namespace, deployment, found)
                break


@kopf.on.event("", "v1", "configmaps", labels={serving.RECORD_LABEL: kopf.PRESENT})
async def record_seen(
    body: kopf.Body, namespace: str | None, labels: kopf.Labels, type: str | None, **kwargs: Any
) -> None:
    """A record of what loraplane loaded, seen by a process that has not read it yet (at start-up):
    its Deployment gets a pass, also when no LoraAdapter names it any more (they went while the
    operator was down), so what nobody claims is unloaded. Later changes are this process's own."""
    deployment = labels.get(serving.RECORD_LABEL)
    if namespace is None or not deployment or type == "DELETED":
        return
    known = RECONCILERS.get((namespace, str(deployment)))
    if (known is None or known.record is None) and serving.loaded_record(dict(body)):
        wake(namespace, str(deployment), indexes.from_kwargs(kwargs))


@kopf.on.delete(*RESOURCE)
async def unload_adapter(body: kopf.Body, namespace: str | None, **kwargs: Any) -> None:
    """The finalizer: one pass after the deletion unloads the name from every pod (unless another
    LoraAdapter serves it) and drops it from Static args; it finishes at once when the adapter serves
    nothing (a Conflict loser, never loaded, its Deployment gone)."""
    assert namespace is not None
    adapter = parse(body)
    deployment = adapter.spec.serving.deployment
    outcome = await fresh_outcome(namespace, deployment, indexes.from_kwargs(kwargs))
    if outcome is None:
        raise kopf.TemporaryError(f"the pass of Deployment {deployment} failed; trying again", delay=5)
    name = resolution.served_name(adapter)
    if name in outcome.unwanted_held:
        raise kopf.TemporaryError(f"{name} is still loaded on some pods", delay=2)
    kopf.info(body, reason="Unloaded", message=f"{name} is on no pod of {deployment} for this adapter")


def is_gated(body: kopf.Body, **_: Any) -> bool:
    """The pod's spec has loraplane's readiness gate."""
    return indexes.has_gate(body.get("spec", {}))
