"""Events on the objects a pass touches: LoraAdapters, the Deployment, pods."""

from __future__ import annotations

from typing import Any, cast

import kopf

from loraplane import GROUP, VERSION
from loraplane.handlers.adapters.common import KIND
from loraplane.handlers.adapters.state import Reconciler
from loraplane.status.adapter import PodView
from loraplane.status.resolution import Wanted


def event(target: dict[str, Any], type_: str, reason: str, message: str) -> None:
    """An Event on any object (a LoraAdapter, a Deployment, a pod) from its plain body."""
    ref = {
        "apiVersion": target.get("apiVersion", "v1"),
        "kind": target.get("kind", "Pod"),
        "metadata": target["metadata"],
    }
    kopf.event(cast(kopf.Body, ref), type=type_, reason=reason, message=message)


def pod_ref(namespace: str, pod: PodView, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": namespace, "uid": uid},
    }


def deployment_ref(deployment: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": deployment["metadata"]}


def adapters_named(rec: Reconciler, served: str) -> list[dict[str, Any]]:
    """References to the Deployment's LoraAdapters that serve the name `served`."""
    return [
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": b["metadata"]}
        for b in rec.adapters
        if (b["spec"].get("servedModelName") or b["metadata"]["name"]) == served
    ]


def announce(rec: Reconciler, want: Wanted, view: PodView, type_: str, reason: str, message: str) -> bool:
    """An Event on the adapter, once per (pod run, path, reason); False when it was already posted."""
    key = f"{view.name}/{view.started_at}/{want.adapter}/{want.path}"
    if rec.announced.get(key) == reason:
        return False
    rec.announced[key] = reason
    for adapter in rec.adapters:
        if adapter["metadata"]["name"] == want.adapter:
            event(adapter, type_, reason, message)
    return True
