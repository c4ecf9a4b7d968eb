"""One pod of a pass: list what its server holds, unload what was deleted, load and confirm what is
missing (swapping versions only when the pass says this pod may), then open its gate if it was closed."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time

import aiohttp

from loraplane import fetcher, kube
from loraplane.builders import serving
from loraplane.handlers.adapters.common import now
from loraplane.handlers.adapters.events import adapters_named, announce, event
from loraplane.handlers.adapters.gate import open_gate_when_settled, prepare_gate, set_gate
from loraplane.handlers.adapters.state import PodPlan, Reconciler
from loraplane.metrics import ADAPTER_LOAD_FAILURES, ADAPTER_LOAD_SECONDS, ADAPTERS_LOADED
from loraplane.settings import get_settings
from loraplane.status import resolution
from loraplane.status.adapter import Holding, PodResult, PodView
from loraplane.status.resolution import ON_DEMAND, Wanted
from loraplane.vllm import Models, Server, VllmError


async def reconcile_pod(
    rec: Reconciler, client: aiohttp.ClientSession, plan: PodPlan, view: PodView, uid: str
) -> PodResult:
    namespace, settings = rec.namespace, get_settings()
    result = PodResult(view=view)
    if view.deleting:
        return result
    view = result.view = await prepare_gate(namespace, view, uid)
    if not view.serving_api_up:
        if view.phase == "Running" and view.ip:
            # vLLM is still starting: its fetcher can already fill the cache (a start and a large
            # fetch overlap instead of adding up).
            await fetch_into_cache(rec, client, plan, view, Models())
        return result
    server = Server(f"http://{view.ip}:{plan.port}", plan.api_key, settings.vllm_timeout_seconds)
    try:
        models = await server.models(client)
    except VllmError as error:
        if error.reason == "Unauthorized":
            rec.api_key_refused = True
            result.holdings = {w.adapter: unauthorized(plan) for w in plan.wanted}
        return result
    result.reachable = True
    # The cache first: a deleted OnDemand name leaves it before vLLM unloads the name, so the
    # filesystem resolver cannot bring it back in between.
    fetching = await fetch_into_cache(rec, client, plan, view, models)
    models = await unload_unwanted(rec, server, client, view, models, plan)
    models = await unload_replaced(rec, server, client, view, models, plan.wanted)
    forget_unheld(rec, view, models)
    result.paths = dict(models.adapters)
    swap_now = view.name == plan.swapping
    if swap_now and view.gate_status == "True":
        message = "out of rotation to swap an adapter version"
        await set_gate(namespace, view, "False", "SwappingVersion", message)
        result.waiting = True
        return result
    if swap_now and not plan.single:
        endpoint = await asyncio.to_thread(kube.endpoint_ready, namespace, view.name)
        if view.ready or endpoint:
            result.waiting = True
            return result  # wait until no Service routes to it any more
    may_swap = swap_now or view.gate_status != "True"
    loadable = dataclasses.replace(
        plan, wanted=[w for w in plan.wanted if w.adapter not in fetching and w.mode != ON_DEMAND]
    )
    result.holdings, models = await hold_all(rec, server, client, loadable, view, uid, models, may_swap)
    result.holdings.update(fetching)
    ADAPTERS_LOADED.labels(namespace, view.name).set(len(models.adapters))
    rec.reported_pods.add(view.name)
    result.paths = dict(models.adapters)
    if view.gated and view.gate_status != "True":
        warm = [w for w in plan.wanted if w.mode != ON_DEMAND]  # the gate never waits for OnDemand ones
        await open_gate_when_settled(rec, view, uid, result, warm)
    return result


async def fetch_into_cache(
    rec: Reconciler, client: aiohttp.ClientSession, plan: PodPlan, view: PodView, models: Models
) -> dict[str, Holding]:
    """Send the pod's fetcher every object-store adapter the pod must hold (it fetches what its cache
    lacks and evicts the rest), in one request whatever their number; the adapters that are not in the
    cache yet, or failed, and why, and every OnDemand adapter the cache holds (catalogued: that is all
    it needs). An adapter vLLM already holds at its path counts as held whatever the fetcher says (it
    may have restarted). Nothing to do for a Deployment without a fetcher."""
    if not plan.deployment.has_fetcher:
        return {}
    settings = get_settings()
    stored = [w for w in plan.wanted if w.fetch is not None and w.mode in {"HotLoad", ON_DEMAND}]
    epoch = str(int(time.time() // settings.serving_resync_seconds))
    url = f"http://{view.ip}:{settings.serving_fetcher_port}"
    body = fetcher.wanted_list(stored, epoch, plan.deployment.model)
    try:
        states = await fetcher.sync(client, url, body, settings.vllm_timeout_seconds)
    except fetcher.FetcherUnreachableError as error:
        waiting = Holding(reason=fetcher.FETCHING, error=f"the pod's fetcher does not answer yet ({error})")
        unanswered: dict[str, Holding] = {}
        for want in stored:
            if not models.holds(want.served_name, want.path):
                unanswered[want.adapter] = waiting
            elif want.mode == ON_DEMAND:  # vLLM loaded it from the cache: it was catalogued
                unanswered[want.adapter] = Holding(loaded=True, loaded_at=first_seen(rec, view, want))
        return unanswered
    holdings: dict[str, Holding] = {}
    for want in stored:
        state = states.get(want.served_name)
        problem = (fetcher.FETCHING, "not in the fetcher's answer") if state is None else state.problem()
        if problem is None or models.holds(want.served_name, want.path):
            if want.mode == ON_DEMAND:
                holdings[want.adapter] = Holding(loaded=True, loaded_at=first_seen(rec, view, want))
                if state is not None and state.sha256 and models.holds(want.served_name, want.path):
                    # What the cache held when vLLM was first seen holding it: the version it loaded.
                    rec.on_demand_loaded.setdefault(on_demand_key(view, want), state.sha256)
                    rec.catalogued[on_demand_key(view, want)] = state.sha256
            continue
        reason, message = problem
        said = f"pod {view.name}: {message}"
        if reason != fetcher.FETCHING and announce(rec, want, view, "Warning", reason, said):
            ADAPTER_LOAD_FAILURES.labels(rec.namespace, reason).inc()
        holdings[want.adapter] = Holding(reason=reason, error=message)
    return holdings


async def unload_unwanted(
    rec: Reconciler,
    server: Server,
    client: aiohttp.ClientSession,
    view: PodView,
    models: Models,
    plan: PodPlan,
) -> Models:
    """Unload what loraplane loaded (the Deployment's record) and no live LoraAdapter claims any more:
    deleted adapters, also those whose finalizer was removed by hand or that went while the operator
    was down. Names users loaded themselves are not in the record and stay."""
    names = sorted((plan.recorded - plan.claimed) & set(models.adapters))
    if not names:
        return models
    limit = asyncio.Semaphore(get_settings().serving_load_concurrency)

    async def one(name: str) -> str | None:
        async with limit:
            return name if await unload_quietly(server, client, name) else None

    unloaded = {n for n in await asyncio.gather(*(one(n) for n in names)) if n is not None}
    for name in sorted(unloaded):
        for adapter in adapters_named(rec, name):
            event(adapter, "Normal", "Unloaded", f"unloaded {name} from pod {view.name}")
    return without(models, unloaded)


def without(models: Models, names: set[str]) -> Models:
    """The listing with `names` unloaded."""
    kept = {k: v for k, v in models.adapters.items() if k not in names}
    return Models(models.base_id, models.base_root, kept)


def on_demand_key(view: PodView, want: Wanted) -> tuple[str, str]:
    return (f"{view.name}/{view.started_at}", want.served_name)


async def unload_replaced(rec: Reconciler, server: Server, client: aiohttp.ClientSession, view: PodView,
                          models: Models, wanted: list[Wanted]) -> Models:  # fmt: skip
    """Unload an OnDemand adapter whose cache entry now holds another version than the one vLLM loaded
    (its path, the served name's link, stays the same, so vLLM would go on serving the old weights from
    memory, and the new ones only after an eviction): the next request loads the new files."""
    replaced = []
    for want in wanted:
        key = on_demand_key(view, want)
        loaded, now_held = rec.on_demand_loaded.get(key), rec.catalogued.get(key)
        if want.mode == ON_DEMAND and loaded and now_held and loaded != now_held:
            replaced.append(want)
    if not replaced:
        return models
    unloaded = set()
    for want in replaced:
        if await unload_quietly(server, client, want.served_name):
            unloaded.add(want.served_name)
            rec.on_demand_loaded.pop(on_demand_key(view, want), None)
            message = f"unloaded from pod {view.name}: its cache holds a new version, loaded on next use"
            for adapter in adapters_named(rec, want.served_name):
                event(adapter, "Normal", "Unloaded", message)
    return without(models, unloaded)


def forget_unheld(rec: Reconciler, view: PodView, models: Models) -> None:
    """Keep the OnDemand digests of the pod's current run for names its server still lists: a name it
    no longer holds loads whatever the cache holds on its next request, and an earlier run of the
    container holds nothing (the record stays as small as what vLLM holds)."""
    run = f"{view.name}/{view.started_at}"
    rec.on_demand_loaded = {
        key: digest
        for key, digest in rec.on_demand_loaded.items()
        if key[0].split("/", 1)[0] != view.name or (key[0] == run and key[1] in models.adapters)
    }


async def unload_quietly(server: Server, client: aiohttp.ClientSession, name: str) -> bool:
    try:
        return await server.unload(client, name)
    except VllmError:
        return False


def base_model_mismatch(
    rec: Reconciler, want: Wanted, view: PodView, models: Models, deployment: serving.DeploymentView
) -> Holding | None:
    """`BaseModelMismatch` (a Warning and a counted failure, once per pod run) when the pod serves
    another base model than the adapter's spec.baseModel; None when they match."""
    if resolution.base_model_matches(want, models.base_id, models.base_root, deployment):
        return None
    mismatch = f"spec.baseModel is {want.base_model} but the pod serves {models.base_id}"
    if announce(rec, want, view, "Warning", "BaseModelMismatch", f"pod {view.name}: {mismatch}"):
        ADAPTER_LOAD_FAILURES.labels(rec.namespace, "BaseModelMismatch").inc()
    return Holding(reason="BaseModelMismatch", error=mismatch)


def decide(
    rec: Reconciler, plan: PodPlan, view: PodView, uid: str, want: Wanted, models: Models, may_swap: bool
) -> Holding | None:
    """What the pod's listing says about `want` without a call: a Holding, or None when it must load."""
    mismatch = base_model_mismatch(rec, want, view, models, plan.deployment)
    if mismatch is not None:
        return mismatch
    if models.holds(want.served_name, want.path):
        return Holding(loaded=True, loaded_at=first_seen(rec, view, want))
    if want.mode == "Static":
        return Holding(reason="WaitingForRollout", error="the pod predates the --lora-modules change")
    held_path = models.adapters.get(want.served_name)
    if held_path is not None and not may_swap:
        return Holding(reason="VersionSwapPending", error=f"holds the previous version ({held_path})")
    failed = rec.failures.get((uid, view.restart_count, want.adapter, want.path))
    if failed and time.monotonic() - failed[0] < get_settings().serving_retry_failed_seconds:
        return Holding(reason=failed[1], error=failed[2])
    return None


async def hold_all(
    rec: Reconciler,
    server: Server,
    client: aiohttp.ClientSession,
    plan: PodPlan,
    view: PodView,
    uid: str,
    models: Models,
    may_swap: bool,
) -> tuple[dict[str, Holding], Models]:
    """Make the pod hold every wanted adapter (HotLoad), or report whether it does (Static). The loads
    run side by side, at most `serving_load_concurrency` at a time, and one listing afterwards confirms
    them all (a listing per load would cost the size of the catalogue each time)."""
    holdings: dict[str, Holding] = {}
    to_load: list[Wanted] = []
    for want in plan.wanted:
        decided = decide(rec, plan, view, uid, want, models, may_swap)
        if decided is None:
            to_load.append(want)
        else:
            holdings[want.adapter] = decided
    if not to_load:
        return holdings, models
    limit = asyncio.Semaphore(get_settings().serving_load_concurrency)
    before = dict(models.adapters)

    async def one(want: Wanted) -> tuple[Holding | None, float]:
        async with limit:
            if want.served_name in before:  # an old version: this pod may swap now
                await unload_quietly(server, client, want.served_name)
            began = time.monotonic()
            return await load_one(rec, server, client, plan, view, uid, want), began

    attempts = await asyncio.gather(*(one(w) for w in to_load))
    try:
        listed = await server.models(client)
    except VllmError as error:
        for want, (refused, _) in zip(to_load, attempts, strict=True):
            holdings[want.adapter] = refused or (
                unauthorized(plan)
                if error.reason == "Unauthorized"
                else Holding(reason="Unreachable", error=error.message)
            )
        return holdings, models
    for want, (refused, began) in zip(to_load, attempts, strict=True):
        if refused is not None:
            holdings[want.adapter] = refused
        elif not listed.holds(want.served_name, want.path):
            message = f"/v1/models does not list {want.served_name} at {want.path} after the load"
            holdings[want.adapter] = Holding(reason="LoadFailed", error=message)
        else:
            ADAPTER_LOAD_SECONDS.observe(time.monotonic() - began)
            rec.failures.pop((uid, view.restart_count, want.adapter, want.path), None)
            held_path = before.get(want.served_name)
            swapped = f" (replacing {held_path})" if held_path else ""
            message = f"loaded on pod {view.name} from {want.path}{swapped}"
            announce(rec, want, view, "Normal", "Loaded", message)
            holdings[want.adapter] = Holding(loaded=True, loaded_at=first_seen(rec, view, want))
    return holdings, listed


async def load_one(
    rec: Reconciler,
    server: Server,
    client: aiohttp.ClientSession,
    plan: PodPlan,
    view: PodView,
    uid: str,
    want: Wanted,
) -> Holding | None:
    """One load call: None when the server took it (or had it already: the listing confirms), else
    why not."""
    try:
        await server.load(client, want.served_name, want.path)
    except VllmError as error:
        if error.reason == "Unauthorized":
            rec.api_key_refused = True
            return unauthorized(plan)
        key = (uid, view.restart_count, want.adapter, want.path)
        return load_failed(rec, plan.deployment, view, want, key, error)
    return None


def unauthorized(plan: PodPlan) -> Holding:
    """The pod's server wants an API key that loraplane does not have (or has wrong): the message says
    which field to set. Not a failure for good: the next pass after the fix loads."""
    return Holding(reason="Unauthorized", error=plan.unauthorized)


def load_failed(
    rec: Reconciler,
    deployment: serving.DeploymentView,
    view: PodView,
    want: Wanted,
    key: tuple[str, int, str, str],
    error: VllmError,
) -> Holding | None:
    """What a refused load means for the pod; None for `AlreadyLoaded` (the caller confirms it). A
    failure for good is remembered (retried later) and announced once."""
    template = deployment.lora
    if error.reason == "RuntimeLoadingDisabled" and template.runtime_api:
        # The template has the runtime API on: this pod predates that change and the rollout replaces it.
        return Holding(reason="WaitingForRollout", error="the pod predates LoRA being enabled")
    if error.reason == "RankTooHigh" and view.predates_rank(template):
        # The template's --max-lora-rank was raised: the rollout replaces this pod with one that loads it.
        return Holding(reason="WaitingForRollout", error="the pod predates the --max-lora-rank change")
    if error.reason == "AlreadyLoaded":
        return None
    if error.transient:
        return Holding(reason="Unreachable", error=error.message)
    rec.failures[key] = (time.monotonic(), error.reason, error.message)
    ADAPTER_LOAD_FAILURES.labels(rec.namespace, error.reason).inc()
    announce(rec, want, view, "Warning", error.reason, f"pod {view.name}: {error.message}")
    return Holding(reason=error.reason, error=error.message)


def first_seen(rec: Reconciler, view: PodView, want: Wanted) -> dt.datetime:
    key = (f"{view.name}/{view.started_at}", want.adapter, want.path)
    return rec.loaded_at.setdefault(key, now())
