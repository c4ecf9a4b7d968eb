"""Deployment-level changes a pass makes: enable LoRA for HotLoad (once, under the opt-in: a restart of
every replica), keep Static adapters in the one merged `--lora-modules` (a rollout). Both are whole-list
read-modify-writes against the indexed `resourceVersion`; a conflict waits for the next pass."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException

from loraplane import kube
from loraplane.builders import serving
from loraplane.handlers.adapters.events import deployment_ref, event
from loraplane.handlers.adapters.state import Reconciler
from loraplane.settings import get_settings
from loraplane.status.resolution import ON_DEMAND, Problem, Wanted

RUNTIME_MODES = frozenset({"HotLoad", ON_DEMAND})  # the modes served through a running server


async def write_deployment(
    namespace: str, deployment: dict[str, Any], patch: dict[str, Any]
) -> dict[str, Any] | None:
    """Read-modify-write against the indexed `resourceVersion`: the Deployment as written, or None on a
    conflict (the next pass retries with what the index has by then)."""
    body = serving.merged(deployment, patch)
    body.pop("status", None)
    try:
        written = await asyncio.to_thread(kube.replace_deployment, namespace, body)
    except ApiException as error:
        if error.status == 409:
            return None
        raise
    # The rest of the pass judges pods against the template as it is now; the status is still the
    # indexed one (a PUT of the object does not change it).
    return {**written, "status": deployment.get("status") or {}}


@dataclass
class TemplateChange:
    """A change of the pod template one pass wants, and what to announce once it is written."""

    patch: dict[str, Any]
    events: list[tuple[dict[str, Any], str, str]] = field(default_factory=list)  # (object, reason, message)


def hotload_change(
    rec: Reconciler,
    deployment: dict[str, Any],
    view: serving.DeploymentView,
    resolved: dict[str, Wanted | Problem],
    bodies: list[dict[str, Any]],
) -> tuple[str, TemplateChange | None]:
    """Enable LoRA for HotLoad under the Deployment's opt-in (once: a restart, announced); without the
    opt-in, an adapter whose known rank is above `--max-lora-rank` is RankTooHigh. Returns a note for
    the adapters' messages, and the change to write, if any."""
    settings = get_settings()
    # OnDemand adapters need the same: LoRA on, the runtime API (vLLM's resolver loads only with it).
    hot = [w for w in resolved.values() if isinstance(w, Wanted) and w.mode in RUNTIME_MODES]
    if not hot:
        return "", None
    state = view.lora
    ranks = [w.rank for w in resolved.values() if isinstance(w, Wanted) and w.rank is not None]
    needed_rank = max(ranks) if ranks else None
    opted_in = view.opted_in or not settings.serving_require_opt_in
    removed = view.additions_removed
    key = f"removed:{view.resource_version}"
    if removed and rec.announced.get("deployment") != key:
        rec.announced["deployment"] = key
        message = f"someone else's change removed loraplane's {', '.join(removed)}"
        message += "; adding them back" if opted_in else ""
        event(deployment_ref(deployment), "Warning", "LoraSettingsRemoved", message)
    missing = state.missing(needed_rank)
    if opted_in and missing:
        lora = serving.LoraSettings(settings.serving_max_loras, settings.serving_max_cpu_loras)
        patch = serving.enable_lora_patch(deployment, lora, needed_rank)
        note = f"LoRA is being enabled on Deployment {rec.deployment} (its pods restart once)"
        if patch is None:
            return note, None
        message = f"enabled LoRA ({', '.join(missing)}): every replica restarts once"
        change = TemplateChange(patch, [(deployment_ref(deployment), "LoraEnabled", message)])
        change.events += [(a, "LoraEnabled", f"Deployment {rec.deployment}: {message}") for a in bodies]
        return note, change
    if not opted_in:
        for want in hot:
            if want.rank is not None and want.rank > state.max_lora_rank:
                resolved[want.adapter] = Problem(
                    "RankTooHigh",
                    f"rank {want.rank} is above Deployment {rec.deployment}'s --max-lora-rank "
                    f"{state.max_lora_rank}; raise it, or annotate the Deployment "
                    f'{serving.OPT_IN_ANNOTATION}: "true" to let loraplane raise it (one restart)',
                )
    return "", None


def fetcher_change(
    rec: Reconciler,
    deployment: dict[str, Any],
    view: serving.DeploymentView,
    resolved: dict[str, Wanted | Problem],
    bodies: list[dict[str, Any]],
) -> TemplateChange | None:
    """Give the pod template loraplane's fetcher and cache when an adapter comes from the object
    store, with the variables of every credentials Secret those adapters name (under the opt-in: a
    restart of every replica, announced; again when the set of Secrets changes). Without the opt-in
    such adapters are FetcherMissing; in Static mode, not supported (vLLM would read the path at
    start, before any fetch). OnDemand adapters also get vLLM's filesystem resolver on the cache, in the
    same change. `deployment` is the body with the pass's earlier change applied."""
    settings = get_settings()
    stored = [w for w in resolved.values() if isinstance(w, Wanted) and w.fetch is not None]
    for want in [w for w in stored if w.mode == "Static"]:
        resolved[want.adapter] = Problem(
            "InvalidSpec",
            "an adapter from the object store is served in HotLoad mode only (a Static adapter is read by "
            "vLLM at start, before loraplane's fetcher has copied it); set spec.serving.mode: HotLoad",
        )
    stored = [w for w in stored if w.mode in RUNTIME_MODES]
    if not stored:
        return None
    secrets = [w.fetch.connection.credentials_secret for w in stored if w.fetch is not None]
    fetcher_settings = serving.FetcherSettings(
        settings.worker_image, settings.serving_fetcher_port, settings.serving_cache_mib
    )
    # vLLM's resolver goes on with the first OnDemand adapter and stays (taking it off is a restart).
    on_demand = [w for w in stored if w.mode == ON_DEMAND]
    catalogue = bool(on_demand) or view.resolver_on
    found = [s for s in secrets if s is not None]
    patch = serving.fetcher_patch(deployment, fetcher_settings, found, catalogue)
    if patch is None:
        return None
    if not (view.opted_in or not settings.serving_require_opt_in):
        if view.has_fetcher:
            # The user's own fetcher (or an older one): used as it is; OnDemand also needs the resolver.
            for want in [] if view.resolver_on else on_demand:
                resolved[want.adapter] = Problem(
                    "ResolverMissing",
                    f"Deployment {rec.deployment}'s vLLM container does not read its adapter cache for "
                    f"unknown names: an OnDemand adapter needs {serving.RESOLVER_ENV}={serving.CACHE_MOUNT} "
                    f"(and {serving.RESOLVER_PLUGIN} in {serving.PLUGINS_ENV} if set); annotate the "
                    f'Deployment {serving.OPT_IN_ANNOTATION}: "true" to let loraplane add it (one restart)',
                )
            return None
        for want in stored:
            resolved[want.adapter] = Problem(
                "FetcherMissing",
                f"Deployment {rec.deployment} has no adapter cache: an adapter from the object store is "
                "copied into each serving pod by a fetcher container loraplane adds; annotate the "
                f'Deployment {serving.OPT_IN_ANNOTATION}: "true" to let it (one restart of every replica)',
            )
        return None
    message = (
        "added the adapter fetcher and its cache for adapters from the object store: every replica restarts"
    )
    if catalogue and not view.resolver_on:
        message = (
            "added the adapter fetcher and its cache for adapters from the object store, and vLLM's "
            f"filesystem resolver on that cache ({serving.RESOLVER_ENV}) for OnDemand adapters: every "
            "replica restarts"
        )
    change = TemplateChange(patch, [(deployment_ref(deployment), "FetcherAdded", message)])
    change.events += [(a, "FetcherAdded", f"Deployment {rec.deployment}: {message}") for a in bodies]
    return change


async def ensure_template(
    rec: Reconciler,
    deployment: dict[str, Any],
    view: serving.DeploymentView,
    resolved: dict[str, Wanted | Problem],
    bodies: list[dict[str, Any]],
) -> tuple[str, dict[str, Any]]:
    """LoRA on for HotLoad and the fetcher for adapters from the object store, written as one change
    (one restart of every replica, not one per addition). Returns the note for the adapters' messages
    and the Deployment as the rest of the pass must see it (as written)."""
    note, lora = hotload_change(rec, deployment, view, resolved, bodies)
    staged = deployment if lora is None else serving.merged(deployment, lora.patch)
    fetch = fetcher_change(rec, staged, view, resolved, bodies)
    changes = [c for c in (lora, fetch) if c is not None]
    if not changes:
        return note, deployment
    patch: dict[str, Any] = {}
    for change in changes:  # each later patch was made from the body with the earlier ones applied
        patch = serving.merged(patch, change.patch)
    written = await write_deployment(rec.namespace, deployment, patch)
    if written is None:
        return note, deployment
    for change in changes:
        for target, reason, message in change.events:
            event(target, "Normal", reason, message)
    return note, written


async def ensure_static(
    rec: Reconciler, deployment: dict[str, Any], view: serving.DeploymentView, wanted: list[Wanted]
) -> dict[str, Any]:
    """Keep the Deployment's one merged `--lora-modules` equal to its Static adapters (a rollout).
    Returns the Deployment as the rest of the pass must see it."""
    modules = [
        serving.StaticModule(w.served_name, w.path, view.base_model_name)
        for w in wanted
        if w.mode == "Static"
    ]
    change = serving.static_patch(deployment, modules)
    written = None if change is None else await write_deployment(rec.namespace, deployment, change)
    if written is None:
        return deployment
    names = ", ".join(sorted(m.name for m in modules)) or "none"
    message = f"--lora-modules now holds loraplane's adapters: {names}; the rollout restarts the pods"
    event(deployment_ref(deployment), "Normal", "StaticAdaptersUpdated", message)
    return written
