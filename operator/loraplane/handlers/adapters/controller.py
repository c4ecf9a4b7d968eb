"""One long-lived task per served Deployment: it sleeps until something changes, runs a pass, writes
the statuses that changed, and sleeps again.

Cost follows change: the task wakes on an event (a LoraAdapter, the Deployment, one of its pods, a
training job an adapter reads), when a pass left something in progress (`Outcome.again_in`), or once
per `serving_resync_seconds` (what no event announces: a server that lost adapters, a hand-made
load). Whatever arrives while a pass runs is coalesced into the one pass after it. A Deployment that
no LoraAdapter names and whose record lists nothing loraplane loaded has no task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from loraplane import kube
from loraplane.api.adapter import LoraAdapter, LoraAdapterStatus
from loraplane.handlers.adapters import effect_check
from loraplane.handlers.adapters.common import KIND, DeploymentKey, now
from loraplane.handlers.adapters.indexes import Indexes
from loraplane.handlers.adapters.reconciler import RECONCILERS, reconcile_deployment
from loraplane.handlers.adapters.state import Outcome
from loraplane.metrics import RECONCILE_ERRORS, RECONCILES
from loraplane.settings import get_settings
from loraplane.status import adapter as status_of
from loraplane.status import resolution, versions
from loraplane.status.conditions import find
from loraplane.vllm import Server

logger = logging.getLogger(__name__)

ERROR_RETRY_S = 5.0  # a pass that raised comes back this soon
STATUS_WRITES_IN_FLIGHT = 8
CHECKS_IN_FLIGHT = 2  # effect checks of one Deployment at a time (two completions each)
RECORD_CHECKS_AFTER_S = 2.0
SLOW_PASS_S = 10.0  # a pass that took longer says so in the log (events meanwhile wait for the next)


@dataclass
class Controller:
    namespace: str
    deployment: str
    indexes: Indexes
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Condition = field(default_factory=asyncio.Condition)
    task: asyncio.Task[None] | None = None
    started: int = 0  # passes started
    finished: int = 0  # passes finished (passes never overlap: finished is started or started - 1)
    last: Outcome | None = None  # the last finished pass (None: it raised)
    # adapter uid -> (the indexed resourceVersion it was written against, the status written): a pass
    # that runs before the write comes back through the watch judges against what was written.
    written: dict[str, tuple[str, LoraAdapterStatus]] = field(default_factory=dict)
    # Effect checks: running (adapter uid -> task), and finished but not yet in a written status.
    checking: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    checked: dict[str, versions.CheckResult] = field(default_factory=dict)
    check_limit: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(CHECKS_IN_FLIGHT))
    # (path, prompt) -> what a check found on this Deployment: adapters that serve the same files
    # are checked once (the answer depends on the weights, the base model and the prompt only).
    found: dict[tuple[str, str], versions.CheckResult] = field(default_factory=dict)
    # The pass that records finished checks, due shortly (one pass for many results, not one each).
    record_due: asyncio.TimerHandle | None = None

    @property
    def key(self) -> DeploymentKey:
        return (self.namespace, self.deployment)

    async def run(self) -> None:
        settings = get_settings()
        delay = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), timeout=delay)
            self.wakeup.clear()
            self.started += 1
            number, outcome = self.started, None
            RECONCILES.labels(KIND).inc()
            began = asyncio.get_running_loop().time()
            try:
                outcome = await reconcile_deployment(self.namespace, self.deployment, self.indexes)
                await self.write_statuses(outcome)
                took = asyncio.get_running_loop().time() - began
                if took > SLOW_PASS_S:
                    logger.info("a pass of Deployment %s/%s took %.1f s (%d adapters)", self.namespace,
                                self.deployment, took, len(outcome.passes))  # fmt: skip
            except Exception:
                RECONCILE_ERRORS.labels(KIND).inc()
                logger.exception("reconciling Deployment %s/%s failed", self.namespace, self.deployment)
            self.last, self.finished = outcome, number
            async with self.done:
                self.done.notify_all()
            resync = settings.serving_resync_seconds
            delay = ERROR_RETRY_S if outcome is None else min(resync, outcome.again_in or resync)
            if self.idle():
                CONTROLLERS.pop(self.key, None)
                RECONCILERS.pop(self.key, None)
                return

    def idle(self) -> bool:
        """Nothing for this task to do, ever, until an event starts a new one: no LoraAdapter names
        the Deployment, and its record lists nothing loraplane loaded."""
        if self.wakeup.is_set() or self.indexes.adapters.get(self.key):
            return False
        reconciler = RECONCILERS.get(self.key)
        return reconciler is None or not reconciler.record

    async def write_statuses(self, outcome: Outcome) -> None:
        limit = asyncio.Semaphore(STATUS_WRITES_IN_FLIGHT)

        async def one(body: dict[str, Any]) -> None:
            async with limit:
                await self.write_status(body, outcome)

        bodies = list(self.indexes.adapters.get(self.key, []))
        await asyncio.gather(*(one(b) for b in bodies))
        uids = {b["metadata"].get("uid") for b in bodies}
        self.written = {uid: entry for uid, entry in self.written.items() if uid in uids}
        served = {p.wanted.path for p in outcome.passes.values() if p.wanted is not None}
        self.found = {key: result for key, result in self.found.items() if key[0] in served}

    async def write_status(self, body: dict[str, Any], outcome: Outcome) -> None:
        """The adapter's status from the pass, written only when it changed."""
        metadata = body["metadata"]
        seen = outcome.passes.get(metadata["name"])
        if seen is None or metadata.get("deletionTimestamp"):
            return
        adapter = LoraAdapter.model_validate(body)
        version, uid = str(metadata.get("resourceVersion")), str(metadata.get("uid"))
        cached = self.written.get(uid)
        if cached is not None and cached[0] == version:
            adapter = adapter.model_copy(update={"status": cached[1]})
        check = self.checked.get(uid)
        new = status_of.observe(adapter, seen, now(), check)
        if check is not None and check.path != new.path:
            self.checked.pop(uid, None)  # a version that no longer serves: its result is dropped
        self.start_check(adapter, uid, new, seen, outcome)
        wire, before = new.to_wire(), adapter.status.to_wire()
        changed = {key: value for key, value in wire.items() if before.get(key) != value}
        if not changed:
            if (
                check is not None
                and adapter.status.effect_check
                and adapter.status.effect_check.path == check.path
            ):
                self.checked.pop(uid, None)
            return
        try:
            await asyncio.to_thread(kube.patch_adapter_status, self.namespace, metadata["name"], changed)
        except ApiException as error:
            if error.status == 404:
                return  # deleted meanwhile
            raise
        self.written[uid] = (version, new)
        if check is not None and new.effect_check and new.effect_check.path == check.path:
            self.checked.pop(uid, None)  # the cluster remembers it now
        announce_ready(body, adapter.status, new)
        announce_effect(body, adapter.status, new)

    def start_check(
        self,
        adapter: LoraAdapter,
        uid: str,
        status: LoraAdapterStatus,
        seen: status_of.Pass,
        outcome: Outcome,
    ) -> None:
        """Start the effect check of the version every pod holds, once (not in this pass: it only
        reads the answers of two completions, and Ready never waits for it)."""
        name = adapter.metadata["name"]
        path = versions.check_due(status, status_of.every_pod_holds(name, seen))
        if not get_settings().serving_effect_check or path is None:
            return
        if adapter.spec.serving.mode == resolution.ON_DEMAND:
            return  # its completion would load it: a catalogue of a thousand would be loaded whole
        if uid in self.checking or uid in self.checked:
            return
        prompt, served = versions.probe_prompt(adapter), resolution.served_name(adapter)
        known = self.found.get((path, prompt))
        if known is not None:
            self.checked[uid] = known
            self.record_soon()
            return
        ip = status_of.pod_to_ask(name, seen)
        if ip is None:
            return
        server = Server(f"http://{ip}:{outcome.port}", outcome.api_key, get_settings().vllm_timeout_seconds)

        async def check() -> None:
            try:
                async with self.check_limit:
                    known = self.found.get((path, prompt))  # another adapter of these files, meanwhile
                    result = known or await effect_check.run(server, outcome.base_model, served, path, prompt)
                self.checked[uid] = result
                if result.status != "Unknown":  # a check that failed is not an answer to share
                    self.found[(path, prompt)] = result
            finally:
                self.checking.pop(uid, None)
                self.record_soon()

        self.checking[uid] = asyncio.create_task(check(), name=f"effect check {self.namespace}/{name}")

    def record_soon(self) -> None:
        """Wake a pass to write finished checks: one, RECORD_CHECKS_AFTER_S after the first result
        since the last such pass, so a thousand new adapters cost a few passes, not a thousand."""
        if self.record_due is not None:
            return

        def due() -> None:
            self.record_due = None
            self.wakeup.set()

        self.record_due = asyncio.get_running_loop().call_later(RECORD_CHECKS_AFTER_S, due)


def announce_ready(body: dict[str, Any], old: LoraAdapterStatus, new: LoraAdapterStatus) -> None:
    """An Event when the Ready condition changes its status or reason."""
    before, after = find(old.conditions, "Ready"), find(new.conditions, "Ready")
    if after is None or (
        before is not None and (before.status, before.reason) == (after.status, after.reason)
    ):
        return
    target: Any = body
    if after.status == "True":
        kopf.info(target, reason="Ready", message=after.message)
    elif after.reason not in {"Loading", "NoReplicas", "WaitingForRollout"}:
        kopf.warn(target, reason=after.reason, message=after.message)


def announce_effect(body: dict[str, Any], old: LoraAdapterStatus, new: LoraAdapterStatus) -> None:
    """An Event when the effect check of a version reports: a Warning for no effect or a failed check."""
    before, after = find(old.conditions, versions.CONDITION), find(new.conditions, versions.CONDITION)
    if after is None or (old.effect_check == new.effect_check and before is not None):
        return
    target: Any = body
    if after.status == "True":
        kopf.warn(target, reason=versions.CONDITION, message=after.message)
    elif after.status == "Unknown":
        kopf.warn(target, reason=after.reason, message=after.message)
    else:
        kopf.info(target, reason="EffectChecked", message=after.message)


CONTROLLERS: dict[DeploymentKey, Controller] = {}


def wake(namespace: str, deployment: str, indexes: Indexes) -> Controller:
    """Ask the Deployment's task for a pass (starting the task if there is none)."""
    key = (namespace, deployment)
    controller = CONTROLLERS.get(key)
    if controller is None or controller.task is None or controller.task.done():
        controller = Controller(namespace, deployment, indexes)
        CONTROLLERS[key] = controller
        controller.task = asyncio.create_task(controller.run(), name=f"serve {namespace}/{deployment}")
    controller.indexes = indexes
    controller.wakeup.set()
    return controller


async def fresh_outcome(namespace: str, deployment: str, indexes: Indexes) -> Outcome | None:
    """The outcome of a pass that started after this call (None: that pass raised)."""
    controller = wake(namespace, deployment, indexes)
    wanted = controller.started + 1
    async with controller.done:
        await controller.done.wait_for(lambda: controller.finished >= wanted)
    return controller.last
