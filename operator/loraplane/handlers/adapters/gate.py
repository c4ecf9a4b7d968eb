"""A serving pod's readiness gate: closed (False) when the pod starts or its server restarts in place,
opened (True) once it holds every adapter that can load, or when the bounded wait runs out."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from loraplane import kube
from loraplane.builders import serving
from loraplane.handlers.adapters.common import now
from loraplane.handlers.adapters.events import event, pod_ref
from loraplane.handlers.adapters.state import Reconciler
from loraplane.settings import get_settings
from loraplane.status import adapter as status_of
from loraplane.status.adapter import PodResult, PodView
from loraplane.status.resolution import Wanted


def gate_condition(status: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": serving.GATE,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now().isoformat().replace("+00:00", "Z"),
        "lastProbeTime": None,
    }


async def set_gate(namespace: str, pod: PodView, status: str, reason: str, message: str) -> None:
    await asyncio.to_thread(
        kube.set_pod_condition, namespace, pod.name, gate_condition(status, reason, message)
    )


async def prepare_gate(namespace: str, view: PodView, uid: str) -> PodView:
    """A new pod's gate starts False; a pod whose server restarted in place closes its gate again."""
    if view.gated and view.gate_status is None:
        await set_gate(namespace, view, "False", "LoadingAdapters", "waiting for the server to start")
        return dataclasses.replace(view, gate_status="False", gate_reason="LoadingAdapters")
    if view.restarted_since_gate_opened:
        message = "vLLM restarted in place and lost its runtime adapters: out of rotation until they are back"
        await set_gate(namespace, view, "False", "ContainerRestarted", message)
        event(pod_ref(namespace, view, uid), "Warning", "ContainerRestarted", message)
        return dataclasses.replace(view, gate_status="False", gate_reason="ContainerRestarted")
    return view


async def open_gate_when_settled(
    rec: Reconciler, view: PodView, uid: str, result: PodResult, wanted: list[Wanted]
) -> None:
    """Open the gate once every wanted adapter is held or failed for good, or the wait ran out.
    `wanted` are the adapters it waits for (OnDemand ones are only counted in the message)."""
    settings = get_settings()
    if result.settled(wanted):
        names = {w.adapter for w in wanted}
        mine = {n: h for n, h in result.holdings.items() if n in names}
        held = sum(1 for h in mine.values() if h.loaded)
        failed = [n for n, h in mine.items() if not h.loaded]
        catalogued = sum(1 for n, h in result.holdings.items() if n not in names and h.loaded)
        message = f"holds {held} adapter(s)" + (
            f"; not loadable: {', '.join(sorted(failed))}" if failed else ""
        )
        if catalogued:
            message += f"; {catalogued} more catalogued, loaded on their first request"
        await set_gate(rec.namespace, view, "True", "AdaptersLoaded", message)
        event(pod_ref(rec.namespace, view, uid), "Normal", "AdaptersLoaded", message)
    elif status_of.gate_open_expired(view, now(), settings.serving_gate_timeout_seconds):
        names = {w.adapter for w in wanted}
        missing = sorted(n for n, h in result.holdings.items() if not h.loaded and n in names)
        message = (
            f"gave up waiting after {settings.serving_gate_timeout_seconds:.0f}s for: {', '.join(missing)}"
        )
        await set_gate(rec.namespace, view, "True", "GateWaitExpired", message)
        event(pod_ref(rec.namespace, view, uid), "Warning", "GateWaitExpired", message)
