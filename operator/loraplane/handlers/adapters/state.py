"""What one Deployment's reconciler remembers between passes, and what a pass hands its pods."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from loraplane.status import adapter as status_of
from loraplane.status.adapter import Wanted


@dataclass
class Outcome:
    """A pass's result: per adapter, what its status is made from."""

    passes: dict[str, status_of.Pass] = field(default_factory=dict)
    holding_anywhere: set[str] = field(default_factory=set)  # served names some reachable pod still lists
    unreachable_pods: int = 0


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


@dataclass
class PodPlan:
    """What every pod of a pass must hold, and which one may swap versions now."""

    deployment: dict[str, Any]
    port: int
    wanted: list[Wanted]
    deleting: set[str]
    swapping: str | None
    single: bool = False
    api_key: str | None = field(default=None, repr=False)  # sent as `Authorization: Bearer`
    unauthorized: str = ""  # what a pod's 401 means here, and the fix
