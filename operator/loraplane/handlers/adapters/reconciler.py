"""One reconciler per target Deployment, and its pass: resolve the adapters, make the Deployment-level
changes, reconcile every pod at once, and hand each adapter what its status is made from.

Passes of one Deployment never overlap (the reconciler's lock); a caller that asked while a pass was
queued reuses that pass."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from loraplane import fetcher, kube
from loraplane.api.adapter import LoraAdapter
from loraplane.builders import serving
from loraplane.handlers.adapters.api_keys import server_api_key
from loraplane.handlers.adapters.common import DeploymentKey
from loraplane.handlers.adapters.deployment_changes import RUNTIME_MODES, ensure_static, ensure_template
from loraplane.handlers.adapters.indexes import Indexes, pods_missing_from_index, selector_string, slim_pod
from loraplane.handlers.adapters.pod_loading import reconcile_pod
from loraplane.handlers.adapters.state import Outcome, PodPlan, Reconciler
from loraplane.metrics import ADAPTERS_LOADED, PODS_WAITING_ON_GATE
from loraplane.settings import get_settings
from loraplane.status import adapter as status_of
from loraplane.status import resolution
from loraplane.status.adapter import PodResult, PodView
from loraplane.status.resolution import Problem, Wanted
from loraplane.vllm import session

RECONCILERS: dict[DeploymentKey, Reconciler] = {}


def reconciler(namespace: str, deployment: str) -> Reconciler:
    key = (namespace, deployment)
    if key not in RECONCILERS:
        RECONCILERS[key] = Reconciler(namespace, deployment)
    return RECONCILERS[key]


async def reconcile_deployment(namespace: str, deployment: str, indexes: Indexes) -> Outcome:
    """A pass of the Deployment's reconciler that started after this call."""
    rec = reconciler(namespace, deployment)
    rec.adapters = list(indexes.adapters.get((namespace, deployment), []))
    return await fresh(rec, indexes)


async def fresh(rec: Reconciler, indexes: Indexes) -> Outcome:
    """A pass that started after this call: run one, or reuse the one that queued meanwhile."""
    asked = time.monotonic()
    async with rec.lock:
        if rec.outcome is not None and rec.started >= asked:
            return rec.outcome
        rec.started = time.monotonic()
        rec.outcome = await run_pass(rec, indexes)
        return rec.outcome


def selects(deployment: dict[str, Any], pod: dict[str, Any]) -> bool:
    """The Deployment's label selector matches the pod (an empty selector matches nothing)."""
    selector = deployment.get("spec", {}).get("selector", {})
    labels = pod["metadata"].get("labels") or {}
    wanted = selector.get("matchLabels") or {}
    if any(labels.get(k) != v for k, v in wanted.items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return bool(wanted or selector.get("matchExpressions"))


def resolve_all(
    namespace: str,
    adapters: list[LoraAdapter],
    deployment: serving.DeploymentView | None,
    indexes: Indexes,
) -> dict[str, Wanted | Problem]:
    """Each live adapter's path and rank, or why it cannot be served; a served name taken twice goes to
    the older LoraAdapter."""
    resolved: dict[str, Wanted | Problem] = {}
    for adapter in adapters:
        job = None
        if adapter.spec.source.training_job is not None:
            job = indexes.one(indexes.training_jobs, (namespace, adapter.spec.source.training_job.name))
        resolved[adapter.metadata["name"]] = resolution.resolve(
            adapter, deployment, job, get_settings().object_store
        )
    wanted = [w for w in resolved.values() if isinstance(w, Wanted)]
    for loser, keeper in resolution.conflicts(wanted).items():
        name = next(w.served_name for w in wanted if w.adapter == loser)
        resolved[loser] = Problem("Conflict", f"served name {name} is already taken by LoraAdapter {keeper}")
    return resolved


async def run_pass(rec: Reconciler, indexes: Indexes) -> Outcome:
    namespace = rec.namespace
    deployment = indexes.one(indexes.deployments, (namespace, rec.deployment))
    bodies = list(indexes.adapters.get((namespace, rec.deployment), []))
    if deployment is None:
        # Not indexed: it does not exist, or it has not changed since it became served.
        deployment = await asyncio.to_thread(kube.read_deployment, namespace, rec.deployment)
    adapters = [LoraAdapter.model_validate(b) for b in bodies]
    live = [a for a in adapters if not a.metadata.get("deletionTimestamp")]
    # The Deployment is parsed once here, and again only after this pass writes it.
    view = None if deployment is None else serving.DeploymentView.of(deployment)
    resolved = resolve_all(namespace, live, view, indexes)
    outcome = Outcome()
    if deployment is None or view is None:
        for name, found in resolved.items():
            outcome.passes[name] = status_of.Pass(found if isinstance(found, Problem) else None, None, [])
        return outcome
    note, written = await ensure_template(rec, deployment, view, resolved, bodies)
    if written is not deployment:
        deployment, view = written, serving.DeploymentView.of(written)
    wanted = [w for w in resolved.values() if isinstance(w, Wanted)]
    static_before = frozenset(view.managed_static)
    written = await ensure_static(rec, deployment, view, wanted)
    if written is not deployment:
        deployment, view = written, serving.DeploymentView.of(written)
    hot = [w for w in wanted if w.mode == "HotLoad"]
    current = {(w.adapter, w.path) for w in hot}
    rec.failures = {k: v for k, v in rec.failures.items() if (k[2], k[3]) in current}
    claimed = frozenset(resolution.served_name(a) for a in live)
    # Catalogued names count as loraplane's: vLLM may have loaded them on demand, and a deleted one
    # is unloaded like a hot-loaded one.
    ours = {w.served_name for w in wanted if w.mode in RUNTIME_MODES}
    recorded = await record_loads(rec, deployment, ours)

    pods = await serving_pods(namespace, deployment, indexes)
    views, predating = current_views(pods, view.container_name, view.lora)
    present = ({p["metadata"]["uid"] for p in pods}, {p["metadata"]["name"] for p in pods})
    for gone in rec.forget_pods_except(*present):
        with contextlib.suppress(KeyError):
            ADAPTERS_LOADED.remove(namespace, gone)
    plan = PodPlan(view, view.port, wanted, pick_swap(views, hot, rec.outcome))
    plan.claimed, plan.recorded = claimed, recorded
    plan.api_key, plan.unauthorized = await server_api_key(rec, view, adapters)
    plan.single = sum(1 for v, _ in views if not v.deleting) == 1
    async with session() as client:
        results = await asyncio.gather(*(reconcile_pod(rec, client, plan, view, uid) for view, uid in views))
    for result in results:
        outcome.holding_anywhere |= set(result.paths)
    # A deleted Static adapter leaves with the rollout that takes it out of --lora-modules.
    outcome.unwanted_held = set(((recorded | static_before) - claimed) & outcome.holding_anywhere)
    await forget_unloaded(rec, deployment, recorded, claimed, results)
    outcome.again_in = again_in(results, rec)
    outcome.port, outcome.api_key, outcome.base_model = plan.port, plan.api_key, view.base_model_name
    waiting = sum(1 for v, _ in views if v.gated and not v.deleting and v.gate_status != "True")
    PODS_WAITING_ON_GATE.labels(namespace, rec.deployment).set(waiting)
    if plan.single and hot and plan.swapping:
        note = "a single replica cannot swap versions without a gap: it is out of rotation while it swaps"
    for name, found in resolved.items():
        if isinstance(found, Problem):
            outcome.passes[name] = status_of.Pass(found, None, list(results), predating_pods=predating)
        else:
            outcome.passes[name] = status_of.Pass(None, found, list(results), note, predating)
    return outcome


async def current_record(rec: Reconciler) -> frozenset[str]:
    """The record of what loraplane loaded into the Deployment's pods: read from its ConfigMap once
    per operator process, then as this reconciler (its only writer) last wrote it. The digests vLLM
    loaded of OnDemand adapters come with it and win over what this process would take from the
    cache now: the cache may have moved on while no operator looked."""
    if rec.record is None:
        found = await asyncio.to_thread(
            kube.read_config_map, rec.namespace, serving.record_name(rec.deployment)
        )
        rec.record = serving.loaded_record(found)
        rec.recorded_on_demand = serving.on_demand_record(found)
        rec.on_demand_loaded = {**rec.on_demand_loaded, **rec.recorded_on_demand}
    return rec.record


async def write_record(rec: Reconciler, deployment: dict[str, Any], names: frozenset[str]) -> None:
    """Write the record: `names`, and the OnDemand digests as this reconciler knows them now."""
    on_demand = dict(rec.on_demand_loaded)
    body = serving.record_config_map(deployment, names, on_demand)
    await asyncio.to_thread(kube.write_config_map, rec.namespace, body)
    rec.record, rec.recorded_on_demand = names, on_demand


async def record_loads(rec: Reconciler, deployment: dict[str, Any], names: set[str]) -> frozenset[str]:
    """The record, with `names` added before any pod loads them (an operator that stops mid-load
    still finds them there)."""
    recorded = await current_record(rec)
    if names <= recorded:
        return recorded
    recorded |= names
    await write_record(rec, deployment, recorded)
    return recorded


async def forget_unloaded(
    rec: Reconciler,
    deployment: dict[str, Any],
    recorded: frozenset[str],
    claimed: frozenset[str],
    results: list[PodResult],
) -> None:
    """Take names out of the record once nobody claims them and no pod holds them (only after a pass
    that reached every live pod: a pod that did not answer may still hold one), and keep the digests
    of OnDemand loads the pass saw begin or end. One write, and none when neither changed."""
    names = recorded
    live = [r for r in results if not r.view.deleting]
    if all(r.reachable for r in live):
        held = {name for r in live for name in r.paths}
        names = recorded - ((recorded - claimed) - held)
    if names != recorded or rec.on_demand_loaded != rec.recorded_on_demand:
        await write_record(rec, deployment, names)


# How soon a pass comes back while something is in progress that no event announces.
SWAP_POLL_S = 2.0
IN_PROGRESS_POLL_S = 10.0


def again_in(results: list[PodResult], rec: Reconciler) -> float | None:
    """When the next pass must come without an event: soon while a pod waits to leave its Service or
    its gate is closed, at the retry time of a failed load; None when only events can change things."""
    settings = get_settings()
    soon: list[float] = []
    for result in results:
        if result.waiting:
            soon.append(SWAP_POLL_S)
        elif result.view.gated and not result.view.deleting and result.view.gate_status != "True":
            soon.append(IN_PROGRESS_POLL_S)
        reasons = {h.reason for h in result.holdings.values()}
        if fetcher.FETCHING in reasons:
            soon.append(SWAP_POLL_S)  # a fetch in progress answers in the fetcher's next reply
        if reasons & {"Unreachable", fetcher.FETCH_RETRYING}:
            soon.append(IN_PROGRESS_POLL_S)
    if rec.failures:
        oldest = min(when for when, _, _ in rec.failures.values())
        soon.append(max(1.0, settings.serving_retry_failed_seconds - (time.monotonic() - oldest)))
    return min(soon) if soon else None


def current_views(
    pods: list[dict[str, Any]], container: str | None, template: serving.LoraState
) -> tuple[list[tuple[PodView, str]], int]:
    """The pods a pass reconciles and reports, with their uids, and how many it leaves to the rollout:
    pods started before the template turned the runtime LoRA API on cannot load anything (trying
    would only report RuntimeLoadingDisabled), and the rollout that enabled it replaces them."""
    views = [(PodView.of(p, container), p["metadata"]["uid"]) for p in pods]
    current = [(v, uid) for v, uid in views if not v.predates(template)]
    return current, sum(1 for v, _ in views if v.predates(template) and not v.deleting)


async def serving_pods(namespace: str, deployment: dict[str, Any], indexes: Indexes) -> list[dict[str, Any]]:
    """The Deployment's pods from the index; read directly when the index holds fewer than the
    Deployment counts (pods that have not changed since the Deployment became served)."""
    pods = [p for p in indexes.pods.get(namespace, []) if selects(deployment, p)]
    if not pods_missing_from_index(deployment, pods):
        return pods
    selector = selector_string(deployment.get("spec", {}).get("selector") or {})
    if not selector:
        return pods
    listed = await asyncio.to_thread(kube.list_pods, namespace, selector)
    return [slim_pod(p) for p in listed if selects(deployment, p)]


def pick_swap(views: list[tuple[PodView, str]], hot: list[Wanted], previous: Outcome | None) -> str | None:
    """The one pod that may swap versions now: the pod already swapping, else the first Ready pod that
    holds an old version of some adapter (as the last pass saw), while no other pod is out of rotation."""
    for view, _ in views:
        if view.gate_reason == "SwappingVersion" and view.gate_status == "False" and not view.deleting:
            return view.name
    if previous is None or any(not v.ready for v, _ in views if not v.deleting):
        return None
    stale = previous_stale_pods(previous, hot)
    return next((v.name for v, _ in views if v.name in stale and v.gate_status == "True"), None)


def previous_stale_pods(previous: Outcome, hot: list[Wanted]) -> set[str]:
    """Pods that, in the last pass, held another path than the wanted one of some HotLoad adapter."""
    stale: set[str] = set()
    for want in hot:
        seen = previous.passes.get(want.adapter)
        for result in seen.pods if seen else []:
            held = result.paths.get(want.served_name)
            if held is not None and held != want.path:
                stale.add(result.view.name)
    return stale
