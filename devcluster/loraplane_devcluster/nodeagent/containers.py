"""One container of a pod across its restarts: state, run count, back-off and probe bookkeeping.

Plain bookkeeping, no API calls: :class:`~loraplane_devcluster.nodeagent.pods.PodRunner` decides
when to start, restart or stop a container and uses these to remember what happened.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from loraplane_devcluster.nodeagent import status as st
from loraplane_devcluster.nodeagent.probes import (
    PROBE_FIELDS,
    ProbeKind,
    ProbeResult,
    ProbeSettings,
    ProbeTracker,
)
from loraplane_devcluster.nodeagent.runtime import ContainerProcess

JsonObject = dict[str, Any]
CONTAINER_ID_SCHEME = "process://"


class Backoff:
    """The kubelet's crash-loop back-off: the first restart at once, then base, 2 x base, ... up to cap.

    It starts over once a run lasted longer than twice the cap.
    """

    def __init__(self, base_s: float, cap_s: float) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self._current: float | None = None

    def next_delay(self, ran_for_s: float) -> float:
        if self._current is None or ran_for_s > 2 * self.cap_s:
            self._current = self.base_s
            return 0.0
        delay = self._current
        self._current = min(self._current * 2, self.cap_s)
        return delay


class ContainerRunner:
    """One container (init or regular) of one pod, across its restarts."""

    def __init__(self, spec: JsonObject, *, is_init: bool, waiting_reason: str, backoff: Backoff) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.is_init = is_init
        self.process: ContainerProcess | None = None
        self.state: st.ContainerState = st.Waiting(waiting_reason)
        self.last_state: st.Terminated | None = None
        self.runs = 0
        self.backoff = backoff
        self.not_before = 0.0  # monotonic: no start attempt before this
        self.done = False  # ended and will not run again
        self.env: dict[str, str] = {}
        self.trackers: dict[ProbeKind, ProbeTracker] = {}
        self.probe_next: dict[ProbeKind, float] = {}
        self.probe_futures: dict[ProbeKind, Future[ProbeResult]] = {}
        self.kill_deadline: float | None = None
        self.sigkill_sent = False
        self.started_mono = 0.0

    @property
    def restart_count(self) -> int:
        return max(0, self.runs - 1)

    @property
    def succeeded(self) -> bool:
        return isinstance(self.state, st.Terminated) and self.state.exit_code == 0 and self.done

    @property
    def started(self) -> bool:
        if self.process is None:
            return False
        startup = self.trackers.get("startup")
        return startup is None or startup.verdict

    @property
    def ready(self) -> bool:
        if not self.started or self.kill_deadline is not None:
            return False
        readiness = self.trackers.get("readiness")
        return readiness is None or readiness.verdict

    @property
    def container_id(self) -> str:
        return f"{CONTAINER_ID_SCHEME}{self.process.pid}" if self.process else ""

    def view(self, *, ready_allowed: bool = True) -> st.ContainerView:
        return st.ContainerView(
            name=self.name,
            image=self.spec.get("image", ""),
            state=self.state,
            last_state=self.last_state,
            restart_count=self.restart_count,
            ready=self.ready and ready_allowed,
            started=self.started,
            container_id=self.container_id,
        )

    def reset_probes(self, now: float) -> None:
        self.trackers = {}
        self.probe_next = {}
        self.probe_futures = {}
        for kind, field_name in PROBE_FIELDS.items():
            probe = self.spec.get(field_name)
            if probe and not self.is_init:
                settings = ProbeSettings.of(probe)
                self.trackers[kind] = ProbeTracker(kind, settings)
                self.probe_next[kind] = now + settings.initial_delay_s
