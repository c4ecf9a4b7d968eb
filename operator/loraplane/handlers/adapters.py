"""LoraAdapter handlers: one reconciler per target Deployment decides what every pod must hold.

The desired set of a Deployment comes from an index of the LoraAdapters that name it; its pods and the
Deployment itself come from indexes too. Each LoraAdapter's timer (and every event of a gated pod)
asks its Deployment's reconciler for a pass; passes of one Deployment never overlap (a lock) and a
caller that asked while a pass was queued reuses that pass, so handlers of different adapters never
race on a pod. A pass: enable LoRA under the Deployment's opt-in (once: a restart), keep Static
adapters in the one merged `--lora-modules`, then per pod: list `/v1/models`, unload what was deleted,
load what is missing, swap versions one pod at a time, and open the pod's readiness gate once it holds
every adapter that can load. Each adapter's status is then a pure function of the pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import kopf
from kubernetes.client.exceptions import ApiException

from loraplane import GROUP, VERSION, kube
from loraplane.api.adapter import PLURAL, LoraAdapter, LoraAdapterStatus
from loraplane.builders import serving
from loraplane.metrics import (
    ADAPTER_LOAD_FAILURES,
    ADAPTER_LOAD_SECONDS,
    ADAPTERS_LOADED,
    PODS_WAITING_ON_GATE,
    RECONCILE_ERRORS,
    RECONCILES,
)
from loraplane.settings import get_settings
from loraplane.status import adapter as status_of
from loraplane.status.adapter import Holding, PodResult, PodView, Problem, Wanted
from loraplane.status.conditions import find
from loraplane.vllm import Models, Server, VllmError, session

RESOURCE = (GROUP, VERSION, PLURAL)
KIND = "LoraAdapter"
DeploymentKey = tuple[str, str]


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def parse(body: Any) -> LoraAdapter:
    return LoraAdapter.model_validate(kube.to_plain(body))


# --- indexes: what the reconciler reads instead of calling the API --------------------------------------


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


# --- one reconciler per Deployment --------------------------------------------------------------------------


@dataclass
class Outcome:
    """A pass's result: per adapter, what its status is made from."""

    passes: dict[str, status_of.Pass] = field(default_factory=dict)
    holding_anywhere: set[str] = field(default_factory=set)  # served names some reachable pod still lists
    unreachable_pods: int = 0


@dataclass
class Reconciler:
    namespace: str
    deployment: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    started: float = 0.0
    outcome: Outcome | None = None
    # (pod uid, restart count, adapter, path) -> (when, reason, message): failed loads wait before a retry.
    failures: dict[tuple[str, int, str, str], tuple[float, str, str]] = field(default_factory=dict)
    announced: dict[str, str] = field(default_factory=dict)  # last Event reason per (pod, adapter) key

    async def fresh(self, indexes: Indexes) -> Outcome:
        """A pass that started after this call: run one, or reuse the one that queued meanwhile."""
        asked = time.monotonic()
        async with self.lock:
            if self.outcome is not None and self.started >= asked:
                return self.outcome
            self.started = time.monotonic()
            self.outcome = await run_pass(self, indexes)
            return self.outcome


RECONCILERS: dict[DeploymentKey, Reconciler] = {}


def reconciler(namespace: str, deployment: str) -> Reconciler:
    key = (namespace, deployment)
    if key not in RECONCILERS:
        RECONCILERS[key] = Reconciler(namespace, deployment)
    return RECONCILERS[key]


def selects(deployment: dict[str, Any], pod: dict[str, Any]) -> bool:
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


async def write_deployment(namespace: str, deployment: dict[str, Any], patch: dict[str, Any]) -> bool:
    """Read-modify-write against the indexed `resourceVersion`; False on a conflict (next pass retries
    with what the index has by then)."""
    body = serving.merged(deployment, patch)
    body.pop("status", None)
    try:
        await asyncio.to_thread(kube.replace_deployment, namespace, body)
    except ApiException as error:
        if error.status == 409:
            return False
        raise
    return True


def base_model_name(deployment: dict[str, Any]) -> str:
    container = serving.serving_container(deployment) or {}
    args = container.get("args") or []
    names = serving.flag_values(args, "--served-model-name", multi=True)
    return names[0] if names else serving.flag_value(args, "--model") or ""


def resolve_all(
    namespace: str, adapters: list[LoraAdapter], deployment: dict[str, Any] | None, indexes: Indexes
) -> dict[str, Wanted | Problem]:
    """Each live adapter's path and rank, or why it cannot be served; a served name taken twice goes to
    the older LoraAdapter."""
    resolved: dict[str, Wanted | Problem] = {}
    for adapter in adapters:
        job = None
        if adapter.spec.source.training_job is not None:
            job = indexes.one(indexes.training_jobs, (namespace, adapter.spec.source.training_job.name))
        resolved[adapter.metadata["name"]] = status_of.resolve(adapter, deployment, job)
    wanted = [w for w in resolved.values() if isinstance(w, Wanted)]
    for loser, keeper in status_of.conflicts(wanted).items():
        name = next(w.served_name for w in wanted if w.adapter == loser)
        resolved[loser] = Problem("Conflict", f"served name {name} is already taken by LoraAdapter {keeper}")
    return resolved


def _deployment_ref(deployment: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": deployment["metadata"]}


async def ensure_hotload(
    rec: Reconciler,
    deployment: dict[str, Any],
    resolved: dict[str, Wanted | Problem],
    bodies: list[dict[str, Any]],
) -> str:
    """Enable LoRA for HotLoad under the Deployment's opt-in (once: a restart, announced); without the
    opt-in, an adapter whose known rank is above `--max-lora-rank` is RankTooHigh. Returns a note for
    the adapters' messages."""
    settings = get_settings()
    hot = [w for w in resolved.values() if isinstance(w, Wanted) and w.mode == "HotLoad"]
    if not hot:
        return ""
    state = serving.lora_state(deployment)
    ranks = [w.rank for w in resolved.values() if isinstance(w, Wanted) and w.rank is not None]
    needed_rank = max(ranks) if ranks else None
    opted_in = serving.is_opted_in(deployment) or not settings.serving_require_opt_in
    removed = serving.additions_removed(deployment)
    key = f"removed:{deployment['metadata'].get('resourceVersion')}"
    if removed and rec.announced.get("deployment") != key:
        rec.announced["deployment"] = key
        message = f"someone else's change removed loraplane's {', '.join(removed)}"
        message += "; adding them back" if opted_in else ""
        event(_deployment_ref(deployment), "Warning", "LoraSettingsRemoved", message)
    missing = state.missing(needed_rank)
    if opted_in and missing:
        lora = serving.LoraSettings(settings.serving_max_loras, settings.serving_max_cpu_loras)
        patch = serving.enable_lora_patch(deployment, lora, needed_rank)
        if patch is not None and await write_deployment(rec.namespace, deployment, patch):
            message = f"enabled LoRA ({', '.join(missing)}): every replica restarts once"
            event(_deployment_ref(deployment), "Normal", "LoraEnabled", message)
            for adapter in bodies:
                event(adapter, "Normal", "LoraEnabled", f"Deployment {rec.deployment}: {message}")
        return f"LoRA is being enabled on Deployment {rec.deployment} (its pods restart once)"
    if not opted_in:
        for want in hot:
            if want.rank is not None and want.rank > state.max_lora_rank:
                resolved[want.adapter] = Problem(
                    "RankTooHigh",
                    f"rank {want.rank} is above Deployment {rec.deployment}'s --max-lora-rank "
                    f"{state.max_lora_rank}; raise it, or annotate the Deployment "
                    f'{serving.OPT_IN_ANNOTATION}: "true" to let loraplane raise it (one restart)',
                )
    return ""


async def ensure_static(rec: Reconciler, deployment: dict[str, Any], wanted: list[Wanted]) -> None:
    """Keep the Deployment's one merged `--lora-modules` equal to its Static adapters (a rollout)."""
    modules = [
        serving.StaticModule(w.served_name, w.path, base_model_name(deployment))
        for w in wanted
        if w.mode == "Static"
    ]
    change = serving.static_patch(deployment, modules)
    if change is not None and await write_deployment(rec.namespace, deployment, change):
        names = ", ".join(sorted(m.name for m in modules)) or "none"
        message = f"--lora-modules now holds loraplane's adapters: {names}; the rollout restarts the pods"
        event(_deployment_ref(deployment), "Normal", "StaticAdaptersUpdated", message)


async def run_pass(rec: Reconciler, indexes: Indexes) -> Outcome:
    namespace = rec.namespace
    deployment = indexes.one(indexes.deployments, (namespace, rec.deployment))
    bodies = list(indexes.adapters.get((namespace, rec.deployment), []))
    adapters = [LoraAdapter.model_validate(b) for b in bodies]
    live = [a for a in adapters if not a.metadata.get("deletionTimestamp")]
    resolved = resolve_all(namespace, live, deployment, indexes)
    outcome = Outcome()
    if deployment is None:
        for name, found in resolved.items():
            outcome.passes[name] = status_of.Pass(found if isinstance(found, Problem) else None, None, [])
        return outcome
    note = await ensure_hotload(rec, deployment, resolved, bodies)
    wanted = [w for w in resolved.values() if isinstance(w, Wanted)]
    await ensure_static(rec, deployment, wanted)
    deleting = {status_of.served_name(a) for a in adapters if a.metadata.get("deletionTimestamp")}
    deleting -= {w.served_name for w in wanted}

    container = serving.serving_container(deployment) or {}
    port = serving.api_port(container)
    pods = [p for p in indexes.pods.get(namespace, []) if selects(deployment, p)]
    views = [(PodView.of(p, container.get("name")), p["metadata"]["uid"]) for p in pods]
    hot = [w for w in wanted if w.mode == "HotLoad"]
    plan = PodPlan(deployment, port, wanted, deleting, _pick_swap(views, hot, rec.outcome))
    plan.single = sum(1 for v, _ in views if not v.deleting) == 1
    async with session() as client:
        results = await asyncio.gather(*(reconcile_pod(rec, client, plan, view, uid) for view, uid in views))
    for result in results:
        outcome.holding_anywhere |= set(result.paths)
    waiting = sum(1 for v, _ in views if v.gated and not v.deleting and v.gate_status != "True")
    PODS_WAITING_ON_GATE.labels(namespace, rec.deployment).set(waiting)
    if plan.single and hot and plan.swapping:
        note = "a single replica cannot swap versions without a gap: it is out of rotation while it swaps"
    for name, found in resolved.items():
        if isinstance(found, Problem):
            outcome.passes[name] = status_of.Pass(found, None, list(results))
        else:
            outcome.passes[name] = status_of.Pass(None, found, list(results), note)
    return outcome


@dataclass
class PodPlan:
    """What every pod of a pass must hold, and which one may swap versions now."""

    deployment: dict[str, Any]
    port: int
    wanted: list[Wanted]
    deleting: set[str]
    swapping: str | None
    single: bool = False


def _pick_swap(views: list[tuple[PodView, str]], hot: list[Wanted], previous: Outcome | None) -> str | None:
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
    stale: set[str] = set()
    for want in hot:
        seen = previous.passes.get(want.adapter)
        for result in seen.pods if seen else []:
            held = result.paths.get(want.served_name)
            if held is not None and held != want.path:
                stale.add(result.view.name)
    return stale


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


async def unload_deleted(
    rec: Reconciler,
    server: Server,
    client: aiohttp.ClientSession,
    view: PodView,
    models: Models,
    names: set[str],
) -> Models:
    for name in sorted(names & set(models.adapters)):
        if await _unload(server, client, name):
            for adapter in adapters_named(rec, name):
                event(adapter, "Normal", "Unloaded", f"unloaded {name} from pod {view.name}")
    return Models(
        models.base_id, models.base_root, {k: v for k, v in models.adapters.items() if k not in names}
    )


async def reconcile_pod(
    rec: Reconciler, client: aiohttp.ClientSession, plan: PodPlan, view: PodView, uid: str
) -> PodResult:
    namespace, settings = rec.namespace, get_settings()
    result = PodResult(view=view)
    if view.deleting:
        return result
    view = result.view = await prepare_gate(namespace, view, uid)
    if not view.serving_api_up:
        return result
    server = Server(f"http://{view.ip}:{plan.port}", timeout_s=settings.vllm_timeout_seconds)
    try:
        models = await server.models(client)
    except VllmError:
        return result
    result.reachable = True
    models = await unload_deleted(rec, server, client, view, models, plan.deleting)
    result.paths = dict(models.adapters)
    swap_now = view.name == plan.swapping
    if swap_now and view.gate_status == "True":
        message = "out of rotation to swap an adapter version"
        await set_gate(namespace, view, "False", "SwappingVersion", message)
        return result
    if swap_now and not plan.single:
        endpoint = await asyncio.to_thread(kube.endpoint_ready, namespace, view.name)
        if view.ready or endpoint:
            return result  # wait until no Service routes to it any more
    may_swap = swap_now or view.gate_status != "True"
    for want in plan.wanted:
        holding = await _hold(rec, server, client, plan.deployment, view, uid, want, models, may_swap)
        result.holdings[want.adapter] = holding
    with contextlib.suppress(VllmError):
        models = await server.models(client)
    ADAPTERS_LOADED.labels(namespace, view.name).set(len(models.adapters))
    result.paths = dict(models.adapters)
    if view.gated and view.gate_status != "True":
        await _maybe_open_gate(rec, view, uid, result, plan.wanted)
    return result


def adapters_named(rec: Reconciler, served: str) -> list[dict[str, Any]]:
    return [
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": b["metadata"]}
        for b in CURRENT_ADAPTERS.get((rec.namespace, rec.deployment), [])
        if (b["spec"].get("servedModelName") or b["metadata"]["name"]) == served
    ]


CURRENT_ADAPTERS: dict[DeploymentKey, list[dict[str, Any]]] = {}


async def _unload(server: Server, client: aiohttp.ClientSession, name: str) -> bool:
    try:
        return await server.unload(client, name)
    except VllmError:
        return False


async def _hold(
    rec: Reconciler,
    server: Server,
    client: aiohttp.ClientSession,
    deployment: dict[str, Any],
    view: PodView,
    uid: str,
    want: Wanted,
    models: Models,
    may_swap: bool,
) -> Holding:
    """Make the pod hold `want` (HotLoad), or report whether it does (Static)."""
    settings = get_settings()
    if not status_of.base_model_matches(want, models.base_id, models.base_root, deployment):
        return Holding(
            reason="BaseModelMismatch",
            error=f"spec.baseModel is {want.base_model} but the pod serves {models.base_id}",
        )
    if models.holds(want.served_name, want.path):
        return Holding(loaded=True, loaded_at=_first_seen(rec, view, want))
    if want.mode == "Static":
        return Holding(reason="WaitingForRollout", error="the pod predates the --lora-modules change")
    held_path = models.adapters.get(want.served_name)
    if held_path is not None:
        if not may_swap:
            return Holding(reason="VersionSwapPending", error=f"holds the previous version ({held_path})")
        await _unload(server, client, want.served_name)
    key = (uid, view.restart_count, want.adapter, want.path)
    failed = rec.failures.get(key)
    if failed and time.monotonic() - failed[0] < settings.serving_retry_failed_seconds:
        return Holding(reason=failed[1], error=failed[2])
    began = time.monotonic()
    try:
        await server.load(client, want.served_name, want.path)
    except VllmError as error:
        if error.reason == "RuntimeLoadingDisabled" and serving.lora_state(deployment).runtime_api:
            # The template has the runtime API on: this pod predates that change and the rollout replaces it.
            return Holding(reason="WaitingForRollout", error="the pod predates LoRA being enabled")
        if error.reason != "AlreadyLoaded":
            if not error.transient:
                rec.failures[key] = (time.monotonic(), error.reason, error.message)
                ADAPTER_LOAD_FAILURES.labels(rec.namespace, error.reason).inc()
                _announce(rec, want, view, "Warning", error.reason, f"pod {view.name}: {error.message}")
            return Holding(reason="Unreachable" if error.transient else error.reason, error=error.message)
    try:
        confirmed = (await server.models(client)).holds(want.served_name, want.path)
    except VllmError as error:
        return Holding(reason="Unreachable", error=error.message)
    if not confirmed:
        message = f"/v1/models does not list {want.served_name} at {want.path} after the load"
        return Holding(reason="LoadFailed", error=message)
    ADAPTER_LOAD_SECONDS.observe(time.monotonic() - began)
    rec.failures.pop(key, None)
    swapped = f" (replacing {held_path})" if held_path else ""
    _announce(rec, want, view, "Normal", "Loaded", f"loaded on pod {view.name} from {want.path}{swapped}")
    return Holding(loaded=True, loaded_at=_first_seen(rec, view, want))


LOADED_AT: dict[tuple[str, str, str], dt.datetime] = {}


def _first_seen(rec: Reconciler, view: PodView, want: Wanted) -> dt.datetime:
    key = (f"{view.name}/{view.started_at}", want.adapter, want.path)
    return LOADED_AT.setdefault(key, now())


def _announce(rec: Reconciler, want: Wanted, view: PodView, type_: str, reason: str, message: str) -> None:
    """An Event on the adapter, once per (pod run, path, reason)."""
    key = f"{view.name}/{view.started_at}/{want.adapter}/{want.path}"
    if rec.announced.get(key) == reason:
        return
    rec.announced[key] = reason
    for adapter in CURRENT_ADAPTERS.get((rec.namespace, rec.deployment), []):
        if adapter["metadata"]["name"] == want.adapter:
            event(adapter, type_, reason, message)


async def _maybe_open_gate(
    rec: Reconciler, view: PodView, uid: str, result: PodResult, wanted: list[Wanted]
) -> None:
    settings = get_settings()
    if result.settled(wanted):
        held = sum(1 for h in result.holdings.values() if h.loaded)
        failed = [n for n, h in result.holdings.items() if not h.loaded]
        message = f"holds {held} adapter(s)" + (
            f"; not loadable: {', '.join(sorted(failed))}" if failed else ""
        )
        await set_gate(rec.namespace, view, "True", "AdaptersLoaded", message)
        event(pod_ref(rec.namespace, view, uid), "Normal", "AdaptersLoaded", message)
    elif status_of.gate_open_expired(view, now(), settings.serving_gate_timeout_seconds):
        missing = sorted(n for n, h in result.holdings.items() if not h.loaded)
        message = (
            f"gave up waiting after {settings.serving_gate_timeout_seconds:.0f}s for: {', '.join(missing)}"
        )
        await set_gate(rec.namespace, view, "True", "GateWaitExpired", message)
        event(pod_ref(rec.namespace, view, uid), "Warning", "GateWaitExpired", message)


# --- handlers -----------------------------------------------------------------------------------------------


def _indexes(kwargs: dict[str, Any]) -> Indexes:
    return Indexes(
        adapters=kwargs["adapters_by_deployment"],
        deployments=kwargs["serving_deployments"],
        pods=kwargs["pods_by_namespace"],
        training_jobs=kwargs["training_jobs_by_name"],
    )


async def reconcile_deployment(namespace: str, deployment: str, indexes: Indexes) -> Outcome:
    CURRENT_ADAPTERS[(namespace, deployment)] = list(indexes.adapters.get((namespace, deployment), []))
    return await reconciler(namespace, deployment).fresh(indexes)


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
    elif after.reason not in {"Loading", "NoReplicas"}:
        kopf.warn(body, reason=after.reason, message=after.message)


@kopf.timer(*RESOURCE, interval=get_settings().serving_resync_seconds)
async def serve_adapter(body: kopf.Body, namespace: str | None, patch: kopf.Patch, **kwargs: Any) -> None:
    assert namespace is not None  # a namespaced kind
    adapter = parse(body)
    if adapter.metadata.get("deletionTimestamp"):
        return
    RECONCILES.labels(KIND).inc()
    try:
        outcome = await reconcile_deployment(namespace, adapter.spec.serving.deployment, _indexes(kwargs))
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
    outcome = await reconcile_deployment(namespace, adapter.spec.serving.deployment, _indexes(kwargs))
    name = status_of.served_name(adapter)
    if name in outcome.holding_anywhere:
        raise kopf.TemporaryError(f"{name} is still loaded on some pods", delay=2)
    kopf.info(body, reason="Unloaded", message=f"{name} is on no pod of {adapter.spec.serving.deployment}")


def _owner_deployment(pod: kopf.Body) -> str | None:
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


def _gated(body: kopf.Body, **_: Any) -> bool:
    return any(
        g.get("conditionType") == serving.GATE for g in body.get("spec", {}).get("readinessGates") or []
    )


@kopf.on.event("", "v1", "pods", when=_gated)
async def gated_pod_changed(body: kopf.Body, namespace: str | None, type: str | None, **kwargs: Any) -> None:
    """A gated pod appeared or changed (started, restarted, became container-ready): reconcile its
    Deployment now rather than at the next timer, also when no LoraAdapter targets it any more."""
    deployment = _owner_deployment(body)
    if namespace is None or deployment is None or type == "DELETED":
        return
    conditions = {c.get("type"): c.get("status") for c in body.get("status", {}).get("conditions") or []}
    if conditions.get(serving.GATE) == "True" and conditions.get("ContainersReady") == "True":
        return  # nothing to do for a serving pod; restarts show as ContainersReady changes
    try:
        await reconcile_deployment(namespace, deployment, _indexes(kwargs))
    except Exception:
        RECONCILE_ERRORS.labels(KIND).inc()
        raise
