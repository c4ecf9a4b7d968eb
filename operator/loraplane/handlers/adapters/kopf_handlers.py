"""The LoraAdapter controller's kopf handlers: each adapter's timer asks its Deployment's reconciler for
a pass and writes the adapter's status from it; the finalizer waits until no pod holds the adapter; an
event of a gated pod asks for a pass right away."""

from __future__ import annotations

from typing import Any

import kopf

from loraplane.api.adapter import LoraAdapterStatus
from loraplane.builders import serving
from loraplane.handlers.adapters import indexes
from loraplane.handlers.adapters.common import KIND, RESOURCE, now, parse
from loraplane.handlers.adapters.reconciler import reconcile_deployment
from loraplane.metrics import RECONCILE_ERRORS, RECONCILES
from loraplane.settings import get_settings
from loraplane.status import adapter as status_of
from loraplane.status.conditions import find


def _write_status(patch: kopf.Patch, old: LoraAdapterStatus, new: LoraAdapterStatus) -> None:
    wire, before = new.to_wire(), old.to_wire()
    changed = {key: value for key, value in wire.items() if before.get(key) != value}
    if changed:
        patch.status.update(changed)


def _announce_ready(body: kopf.Body, old: LoraAdapterStatus, new: LoraAdapterStatus) -> None:
    before, after = find(old.conditions, "Ready"), find(new.conditions, "Ready")
    if after is None or (
        before is not None and (before.status, before.reason) == (after.status, after.reason)
    ):
        return
    if after.status == "True":
        kopf.info(body, reason="Ready", message=after.message)
    elif after.reason not in {"Loading", "NoReplicas", "WaitingForRollout"}:
        kopf.warn(body, reason=after.reason, message=after.message)


@kopf.timer(*RESOURCE, interval=get_settings().serving_resync_seconds)
async def serve_adapter(body: kopf.Body, namespace: str | None, patch: kopf.Patch, **kwargs: Any) -> None:
    assert namespace is not None  # a namespaced kind
    adapter = parse(body)
    if adapter.metadata.get("deletionTimestamp"):
        return
    RECONCILES.labels(KIND).inc()
    try:
        outcome = await reconcile_deployment(
            namespace, adapter.spec.serving.deployment, indexes.from_kwargs(kwargs)
        )
        seen = outcome.passes.get(adapter.metadata["name"])
        if seen is None:
            return  # the index has not caught up with a just-created adapter
        new = status_of.observe(adapter, seen, now())
        _announce_ready(body, adapter.status, new)
        _write_status(patch, adapter.status, new)
    except Exception:
        RECONCILE_ERRORS.labels(KIND).inc()
        raise


@kopf.on.delete(*RESOURCE)
async def unload_adapter(body: kopf.Body, namespace: str | None, **kwargs: Any) -> None:
    """The finalizer: unload from every pod and drop it from Static args before the object goes."""
    assert namespace is not None
    adapter = parse(body)
    outcome = await reconcile_deployment(
        namespace, adapter.spec.serving.deployment, indexes.from_kwargs(kwargs)
    )
    name = status_of.served_name(adapter)
    if name in outcome.holding_anywhere:
        raise kopf.TemporaryError(f"{name} is still loaded on some pods", delay=2)
    kopf.info(body, reason="Unloaded", message=f"{name} is on no pod of {adapter.spec.serving.deployment}")


def is_gated(body: kopf.Body, **_: Any) -> bool:
    """The pod's spec has loraplane's readiness gate."""
    return indexes.has_gate(body.get("spec", {}))


@kopf.on.event("", "v1", "pods", when=is_gated)
async def gated_pod_changed(body: kopf.Body, namespace: str | None, type: str | None, **kwargs: Any) -> None:
    """A gated pod appeared or changed (started, restarted, became container-ready): reconcile its
    Deployment now rather than at the next timer, also when no LoraAdapter targets it any more."""
    deployment = indexes.owner_deployment(body)
    if namespace is None or deployment is None or type == "DELETED":
        return
    conditions = {c.get("type"): c.get("status") for c in body.get("status", {}).get("conditions") or []}
    if conditions.get(serving.GATE) == "True" and conditions.get("ContainersReady") == "True":
        return  # nothing to do for a serving pod; restarts show as ContainersReady changes
    try:
        await reconcile_deployment(namespace, deployment, indexes.from_kwargs(kwargs))
    except Exception:
        RECONCILE_ERRORS.labels(KIND).inc()
        raise
