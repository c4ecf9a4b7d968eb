"""Pure status of the serving reconciler: the pods as a pass sees them (`PodView`), what a pass saw and
did on each (`PodResult`), whether a pod's readiness gate may open, and each LoraAdapter's status from
what the pods hold (`observe`). What each adapter must be (resolution) is `status.resolution`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from loraplane.api.adapter import LoraAdapter, LoraAdapterStatus, PodAdapterState
from loraplane.builders import serving
from loraplane.status.conditions import Observed, merge
from loraplane.status.resolution import ON_DEMAND, TERMINAL_REASONS, Problem, Wanted
from loraplane.status.versions import CheckResult, record_version, with_check

# --- pods and their gate ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodView:
    """A serving pod as the reconciler needs it."""

    name: str
    ip: str | None
    phase: str
    containers_ready: bool
    ready: bool
    deleting: bool
    started_at: str | None  # the vLLM container's current run
    restart_count: int
    gated: bool  # its spec has loraplane's readiness gate
    gate_status: str | None  # None: the condition is not there yet
    gate_reason: str | None
    gate_since: str | None  # lastTransitionTime of the gate condition
    template_hash: str = ""
    # What the vLLM container was started with; None when the pod's spec was not seen.
    lora: serving.LoraState | None = None

    @classmethod
    def of(cls, pod: dict[str, Any], container_name: str | None) -> PodView:
        status = pod.get("status") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        gate = conditions.get(serving.GATE) or {}
        statuses = status.get("containerStatuses") or []
        mine = next((c for c in statuses if c.get("name") == container_name), statuses[0] if statuses else {})
        running = (mine.get("state") or {}).get("running") or {}
        containers = (pod.get("spec") or {}).get("containers") or []
        spec = next((c for c in containers if c.get("name") == container_name), None)
        if spec is None and len(containers) == 1:
            spec = containers[0]
        return cls(
            name=pod["metadata"]["name"],
            ip=status.get("podIP"),
            phase=status.get("phase", "Pending"),
            containers_ready=(conditions.get("ContainersReady") or {}).get("status") == "True",
            ready=(conditions.get("Ready") or {}).get("status") == "True",
            deleting=bool(pod["metadata"].get("deletionTimestamp")),
            started_at=running.get("startedAt"),
            restart_count=int(mine.get("restartCount", 0)),
            gated=any(
                g.get("conditionType") == serving.GATE
                for g in pod.get("spec", {}).get("readinessGates") or []
            ),
            gate_status=gate.get("status"),
            gate_reason=gate.get("reason"),
            gate_since=gate.get("lastTransitionTime"),
            template_hash=(pod["metadata"].get("labels") or {}).get("pod-template-hash", ""),
            lora=None if spec is None else serving.container_lora_state(spec),
        )

    def predates(self, template: serving.LoraState) -> bool:
        """The pod was started before its Deployment's template turned the runtime LoRA API on (the
        rollout of that change replaces it): nothing can be loaded into it, and it does not count."""
        return template.hot_loadable and self.lora is not None and not self.lora.hot_loadable

    def predates_rank(self, template: serving.LoraState) -> bool:
        """The pod was started with a lower `--max-lora-rank` than its Deployment's template has now."""
        return self.lora is not None and self.lora.max_lora_rank < template.max_lora_rank

    @property
    def serving_api_up(self) -> bool:
        """The server answers (its readiness probe passed): loads may start."""
        return self.phase == "Running" and self.containers_ready and bool(self.ip) and not self.deleting

    @property
    def restarted_since_gate_opened(self) -> bool:
        """The container started again after the gate turned True: the kubelet keeps custom conditions,
        but vLLM came back empty, so the gate must close until the adapters are back."""
        if self.gate_status != "True" or not self.started_at or not self.gate_since:
            return False
        return _time(self.started_at) > _time(self.gate_since)


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class Holding:
    """One adapter on one pod after a pass."""

    loaded: bool = False
    loaded_at: dt.datetime | None = None
    reason: str | None = None  # why not, when it is not loaded
    error: str | None = None


@dataclass
class PodResult:
    """What a pass saw and did on one pod."""

    view: PodView
    holdings: dict[str, Holding] = field(default_factory=dict)  # adapter name -> state
    reachable: bool = False
    paths: dict[str, str] = field(default_factory=dict)  # what /v1/models listed: served name -> path
    waiting: bool = False  # waiting for something no event announces (leaving the Service for a swap)

    def settled(self, wanted: list[Wanted]) -> bool:
        """Every wanted adapter is on the pod or has failed for good: the gate may open."""
        for want in wanted:
            holding = self.holdings.get(want.adapter)
            if holding is None:
                return False
            if not holding.loaded and holding.reason not in TERMINAL_REASONS:
                return False
        return self.reachable


def gate_open_expired(view: PodView, now: dt.datetime, limit_s: float) -> bool:
    """The gate has been closed longer than the bounded wait since the container started."""
    started = view.started_at or view.gate_since
    return started is not None and (now - _time(started)).total_seconds() > limit_s


# --- a LoraAdapter's status ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pass:
    """One reconcile pass of the adapter's Deployment, as far as this adapter is concerned."""

    problem: Problem | None
    wanted: Wanted | None
    pods: list[PodResult]
    note: str = ""  # extra words for the Ready message (a restart in progress, a single replica)
    predating_pods: int = 0  # pods started before LoRA was enabled, left to the rollout (not in `pods`)


def every_pod_holds(name: str, seen: Pass) -> bool:
    """Every live serving pod holds the wanted version (and there is one): a swap has completed."""
    live = [p for p in seen.pods if not p.view.deleting]
    return (
        seen.problem is None
        and seen.wanted is not None
        and bool(live)
        and all((p.holdings.get(name) or Holding()).loaded for p in live)
    )


def pod_to_ask(name: str, seen: Pass) -> str | None:
    """The address of one live pod that holds the adapter and answered this pass (the effect check
    asks it)."""
    for result in seen.pods:
        holding = result.holdings.get(name)
        if holding and holding.loaded and result.reachable and result.view.ip and not result.view.deleting:
            return result.view.ip
    return None


def observe(
    adapter: LoraAdapter, seen: Pass, now: dt.datetime, check: CheckResult | None = None
) -> LoraAdapterStatus:
    """The adapter's status: Ready when every Ready pod holds it (and at least one does), else the
    most specific reason the pods reported; the history gains the wanted version once every pod
    holds it; an effect check's result for the current path is recorded."""
    name = adapter.metadata["name"]
    status = adapter.status.model_copy(deep=True)
    live = [p for p in seen.pods if not p.view.deleting]
    status.replicas = len(live)
    entries = []
    holders = 0
    errors: list[tuple[str, str, str]] = []
    for result in live:
        holding = result.holdings.get(name) or Holding()
        if holding.loaded:
            holders += 1
        elif holding.reason:
            errors.append((holding.reason, result.view.name, holding.error or ""))
        if holding.loaded:
            continue  # counted in readyReplicas; only pods that lack it are listed (status stays small)
        entries.append(
            PodAdapterState(pod=result.view.name, ip=result.view.ip, loaded=False, last_error=holding.error)
        )
    status.pods = sorted(entries, key=lambda e: e.pod)
    status.ready_replicas = holders
    if seen.wanted is not None:
        status.path, status.rank, status.sha256 = seen.wanted.path, seen.wanted.rank, seen.wanted.sha256
    condition = _ready(seen, live, name, holders, errors)
    status.conditions = merge(status.conditions, [condition], adapter.metadata.get("generation"), now)
    status.observed_generation = adapter.metadata.get("generation")
    if seen.wanted is not None:
        status.history = record_version(status.history, seen.wanted, every_pod_holds(name, seen), now)
    if check is not None and check.path == status.path:
        status = with_check(status, check, adapter.metadata.get("generation"), now)
    return status


def _ready(
    seen: Pass, live: list[PodResult], name: str, holders: int, errors: list[tuple[str, str, str]]
) -> Observed:
    if seen.problem is not None:
        return Observed("Ready", "False", seen.problem.reason, seen.problem.message)
    ready_pods = [p for p in live if p.view.ready]
    missing = [p.view.name for p in ready_pods if not (p.holdings.get(name) or Holding()).loaded]
    if ready_pods and not missing and holders:
        if seen.wanted is not None and seen.wanted.mode == ON_DEMAND:
            reason = "Catalogued"
            message = f"catalogued on {holders}/{len(live)} pods; vLLM loads it on its first request"
        else:
            reason, message = "Loaded", f"served by {holders}/{len(live)} pods"
        return Observed("Ready", "True", reason, f"{message}; {seen.note}" if seen.note else message)
    if errors:
        # The most telling reason first: a terminal one over a pod that merely did not answer.
        errors.sort(key=lambda e: (e[0] not in TERMINAL_REASONS, e[1]))
        reason, pod, message = errors[0]
        return Observed("Ready", "False", reason, f"pod {pod}: {message}")
    if not live and seen.predating_pods:
        message = (
            f"{seen.predating_pods} pod(s) started before LoRA was enabled on the Deployment; "
            "waiting for the rollout to replace them"
        )
        return Observed("Ready", "False", "WaitingForRollout", message)
    if not live:
        return Observed("Ready", "False", "NoReplicas", "the Deployment has no pods")
    waiting = f"{holders}/{len(live)} pods hold it"
    lacking = sorted(p.view.name for p in live if not (p.holdings.get(name) or Holding()).loaded)
    if lacking:
        more = f" and {len(lacking) - 3} more" if len(lacking) > 3 else ""
        waiting = f"{waiting}; not yet on {', '.join(lacking[:3])}{more}"
    if seen.note:
        waiting = f"{waiting}; {seen.note}"
    return Observed("Ready", "False", "Loading", waiting)
