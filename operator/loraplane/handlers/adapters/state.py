"""What one Deployment's reconciler remembers between passes, and what a pass hands its pods."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from loraplane.builders import serving
from loraplane.status import adapter as status_of
from loraplane.status.resolution import Wanted


@dataclass
class Outcome:
    """A pass's result: per adapter, what its status is made from."""

    passes: dict[str, status_of.Pass] = field(default_factory=dict)
    holding_anywhere: set[str] = field(default_factory=set)  # served names some reachable pod still lists
    unreachable_pods: int = 0
    # Served names that loraplane loaded, no live LoraAdapter claims, and a reachable pod still lists
    # after the pass (an unload that failed): a deleting adapter of that name waits for them.
    unwanted_held: set[str] = field(default_factory=set)
    # Something is in progress that no event will announce (a failed load waiting for its retry, a
    # pod waiting to leave its Service before a swap): the next pass, in seconds; None: on events.
    again_in: float | None = None
    # How the Deployment's servers are asked for a completion (the effect check): port, API key, and
    # the base model's served name.
    port: int = 0
    api_key: str | None = field(default=None, repr=False)
    base_model: str = ""


@dataclass
class Reconciler:
    """One target Deployment's reconciler: its lock, its last pass, and what it must not repeat."""

    namespace: str
    deployment: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    started: float = 0.0
    outcome: Outcome | None = None
    # (pod uid, restart count, adapter, path) -> (when, reason, message): failed loads wait before a retry.
    failures: dict[tuple[str, int, str, str], tuple[float, str, str]] = field(default_factory=dict)
    announced: dict[str, str] = field(default_factory=dict)  # last Event reason per (pod, adapter) key
    # The LoraAdapters (plain bodies) that target the Deployment, as of the latest request for a pass.
    adapters: list[dict[str, Any]] = field(default_factory=list)
    # The server's API key as last read: (secret, key) -> (value, when read); dropped after a 401.
    api_key: tuple[tuple[str, str], str, float] | None = field(default=None, repr=False)
    api_key_refused: bool = False  # a pod answered 401 in the last pass: read the Secret again
    # ("pod/startedAt", adapter, path) -> when a pass first saw it loaded there (status.pods[].loadedAt).
    loaded_at: dict[tuple[str, str, str], dt.datetime] = field(default_factory=dict)
    reported_pods: set[str] = field(default_factory=set)  # pods with an adapters-loaded gauge
    # ("pod/startedAt", served name) of OnDemand adapters vLLM holds -> the digest the cache held when
    # a pass first saw vLLM hold it (the version it loaded), and the digest the cache holds now. The
    # first is kept in the record ConfigMap too (a restarted operator must not take the cache's
    # current digest for the one loaded); the second is read again every pass.
    on_demand_loaded: dict[tuple[str, str], str] = field(default_factory=dict)
    catalogued: dict[tuple[str, str], str] = field(default_factory=dict)
    # The record of the served names loraplane loaded (its ConfigMap), as last read or written; None:
    # not read yet by this process. With it, the OnDemand digests as last read or written.
    record: frozenset[str] | None = None
    recorded_on_demand: dict[tuple[str, str], str] = field(default_factory=dict)

    def forget_pods_except(self, uids: set[str], names: set[str]) -> set[str]:
        """Drop what is remembered about pods that are gone (the Deployment's pods are ``uids`` and
        ``names``); returns the gone pods whose gauge must be removed."""
        self.failures = {k: v for k, v in self.failures.items() if k[0] in uids}
        self.announced = {
            k: v for k, v in self.announced.items() if k == "deployment" or k.split("/", 1)[0] in names
        }
        self.loaded_at = {k: v for k, v in self.loaded_at.items() if k[0].split("/", 1)[0] in names}
        self.on_demand_loaded = _of_pods(self.on_demand_loaded, names)
        self.catalogued = _of_pods(self.catalogued, names)
        gone = self.reported_pods - names
        self.reported_pods &= names
        return gone


def _of_pods(entries: dict[tuple[str, str], str], names: set[str]) -> dict[tuple[str, str], str]:
    """The entries keyed by ("pod/startedAt", ...) of pods still there."""
    return {k: v for k, v in entries.items() if k[0].split("/", 1)[0] in names}


@dataclass
class PodPlan:
    """What every pod of a pass must hold, and which one may swap versions now."""

    deployment: serving.DeploymentView
    port: int
    wanted: list[Wanted]
    swapping: str | None
    single: bool = False
    # Served names of every live LoraAdapter of the Deployment, served or not (a name in the record
    # that none claims is unloaded), and the record of what loraplane loaded.
    claimed: frozenset[str] = frozenset()
    recorded: frozenset[str] = frozenset()
    api_key: str | None = field(default=None, repr=False)  # sent as `Authorization: Bearer`
    unauthorized: str = ""  # what a pod's 401 means here, and the fix
