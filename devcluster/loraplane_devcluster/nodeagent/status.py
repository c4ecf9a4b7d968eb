"""Pod status from observed container state, by the kubelet's rules. Pure: no API, no processes.

The agent describes what it sees as :class:`ContainerView` values; :func:`pod_phase`,
:func:`owned_conditions` and :func:`status_patch` turn them into the ``status`` it sends. The
agent owns only the condition types in :data:`OWNED_CONDITIONS`; the patch carries only those, and
a strategic merge patch merges ``conditions`` by ``type``, so conditions set by others (readiness
gates) are never rewritten or dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

JsonObject = dict[str, Any]

POD_READY_TO_START = "PodReadyToStartContainers"
INITIALIZED = "Initialized"
CONTAINERS_READY = "ContainersReady"
READY = "Ready"
POD_SCHEDULED = "PodScheduled"
OWNED_CONDITIONS = (POD_READY_TO_START, INITIALIZED, READY, CONTAINERS_READY, POD_SCHEDULED)
TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Waiting:
    reason: str
    message: str = ""


@dataclass(frozen=True)
class Running:
    started_at: str


@dataclass(frozen=True)
class Terminated:
    exit_code: int
    reason: str
    started_at: str
    finished_at: str
    message: str = ""
    container_id: str = ""


ContainerState = Waiting | Running | Terminated


@dataclass(frozen=True)
class ContainerView:
    name: str
    image: str
    state: ContainerState
    last_state: Terminated | None = None
    restart_count: int = 0
    ready: bool = False
    started: bool = False
    container_id: str = ""


def exit_reason(exit_code: int) -> str:
    """The ``terminated.reason`` a container runtime gives an exit code."""
    return "Completed" if exit_code == 0 else "Error"


def state_json(state: ContainerState) -> JsonObject:
    if isinstance(state, Waiting):
        waiting: JsonObject = {"reason": state.reason}
        if state.message:
            waiting["message"] = state.message
        return {"waiting": waiting}
    if isinstance(state, Running):
        return {"running": {"startedAt": state.started_at}}
    terminated: JsonObject = {
        "exitCode": state.exit_code,
        "reason": state.reason,
        "startedAt": state.started_at,
        "finishedAt": state.finished_at,
    }
    if state.message:
        terminated["message"] = state.message
    if state.container_id:
        terminated["containerID"] = state.container_id
    return {"terminated": terminated}


def container_status_json(view: ContainerView) -> JsonObject:
    status: JsonObject = {
        "name": view.name,
        "image": view.image,
        "imageID": "",
        "state": state_json(view.state),
        "lastState": state_json(view.last_state) if view.last_state else {},
        "ready": view.ready,
        "started": view.started,
        "restartCount": view.restart_count,
    }
    if view.container_id:
        status["containerID"] = view.container_id
    return status


# --- phase ---------------------------------------------------------------------------------------


def _init_counts(init: Sequence[ContainerView]) -> tuple[int, int]:
    """(pending, failed) init containers, as the kubelet's getPhase counts them."""
    pending = failed = 0
    for view in init:
        state = view.state
        if isinstance(state, Terminated):
            failed += state.exit_code != 0
        elif isinstance(state, Waiting) and view.last_state is not None:
            failed += view.last_state.exit_code != 0
        else:
            pending += 1
    return pending, failed


def pod_phase(
    restart_policy: str, init: Sequence[ContainerView], containers: Sequence[ContainerView], *, terminal: bool
) -> str:
    """The pod phase. ``terminal``: the pod is done for good (being deleted), nothing restarts."""
    pending_init, failed_init = _init_counts(init)
    if failed_init and (restart_policy == "Never" or terminal):
        return "Failed"
    running = waiting = stopped = succeeded = 0
    for view in containers:
        state = view.state
        if isinstance(state, Running):
            running += 1
        elif isinstance(state, Terminated):
            stopped += 1
            succeeded += state.exit_code == 0
        elif view.last_state is not None:  # waiting to restart after a run
            stopped += 1
        else:
            waiting += 1
    if terminal and running == 0:
        return "Succeeded" if stopped and stopped == succeeded and waiting == 0 else "Failed"
    if pending_init or waiting:
        return "Pending"
    if running:
        return "Running"
    if stopped:
        if restart_policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        return "Failed" if restart_policy == "Never" else "Running"
    return "Pending"


# --- conditions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str = ""
    message: str = ""


def _names(views: Sequence[ContainerView]) -> str:
    return "[" + " ".join(v.name for v in views) + "]"


def readiness_gate_problems(gates: Sequence[str], conditions: Sequence[JsonObject]) -> list[str]:
    """Why each readiness gate blocks Ready (empty when all are True), in the kubelet's words."""
    by_type = {c.get("type"): c for c in conditions}
    problems = []
    for gate in gates:
        condition = by_type.get(gate)
        if condition is None:
            problems.append(f'corresponding condition of pod readiness gate "{gate}" does not exist.')
        elif condition.get("status") != "True":
            problems.append(
                f'the status of pod readiness gate "{gate}" is not "True", but {condition.get("status")}'
            )
    return problems


def owned_conditions(
    *,
    sandbox_ready: bool,
    init: Sequence[ContainerView],
    containers: Sequence[ContainerView],
    phase: str,
    readiness_gates: Sequence[str],
    observed_conditions: Sequence[JsonObject],
) -> list[Condition]:
    """The conditions the node owns. ``observed_conditions``: the pod's current ones (for the gates)."""
    incomplete_init = [v for v in init if not (isinstance(v.state, Terminated) and v.state.exit_code == 0)]
    if not incomplete_init:
        initialized = Condition(INITIALIZED, True)
    elif phase == "Succeeded":
        initialized = Condition(INITIALIZED, True, "PodCompleted")
    else:
        initialized = Condition(
            INITIALIZED,
            False,
            "ContainersNotInitialized",
            f"containers with incomplete status: {_names(incomplete_init)}",
        )
    unready = [v for v in containers if not v.ready]
    if phase == "Succeeded":
        containers_ready = Condition(CONTAINERS_READY, False, "PodCompleted")
    elif unready:
        containers_ready = Condition(
            CONTAINERS_READY,
            False,
            "ContainersNotReady",
            f"containers with unready status: {_names(unready)}",
        )
    else:
        containers_ready = Condition(CONTAINERS_READY, True)
    gate_problems = readiness_gate_problems(readiness_gates, observed_conditions)
    if not containers_ready.status:
        ready = Condition(READY, False, containers_ready.reason, containers_ready.message)
    elif gate_problems:
        ready = Condition(READY, False, "ReadinessGatesNotReady", ", ".join(gate_problems))
    else:
        ready = Condition(READY, True)
    return [
        Condition(POD_READY_TO_START, sandbox_ready and phase not in TERMINAL_PHASES),
        initialized,
        ready,
        containers_ready,
        Condition(POD_SCHEDULED, True),
    ]


def conditions_json(
    conditions: Sequence[Condition], previous: Mapping[str, tuple[str, str]], now: str, generation: int | None
) -> tuple[list[JsonObject], dict[str, tuple[str, str]]]:
    """Conditions as JSON, keeping ``lastTransitionTime`` while a status stays the same.

    ``previous`` maps type → (status, lastTransitionTime); the second value returned is the new map.
    """
    out: list[JsonObject] = []
    remembered: dict[str, tuple[str, str]] = {}
    for condition in conditions:
        status = "True" if condition.status else "False"
        before = previous.get(condition.type)
        transition = before[1] if before and before[0] == status else now
        remembered[condition.type] = (status, transition)
        entry: JsonObject = {
            "type": condition.type,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": transition,
        }
        if condition.reason:
            entry["reason"] = condition.reason
        if condition.message:
            entry["message"] = condition.message
        if generation is not None:
            entry["observedGeneration"] = generation
        out.append(entry)
    return out, remembered


REPLACE_LIST: JsonObject = {"$patch": "replace"}  # strategic merge patch: this list replaces the old one


def status_patch(
    *,
    phase: str,
    conditions: list[JsonObject],
    pod_ip: str,
    host_ip: str,
    start_time: str,
    init: Sequence[ContainerView],
    containers: Sequence[ContainerView],
    generation: int | None,
    reason: str = "",
    message: str = "",
) -> JsonObject:
    """The strategic merge patch body for ``pods/status``.

    The address lists are replaced, not merged by ``ip``: a pod adopted from an earlier agent (or
    made before pods had addresses of their own) may come back with another address, and a merged
    list would then hold two of one family, which the API server refuses."""
    status: JsonObject = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}, REPLACE_LIST],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}, REPLACE_LIST],
        "startTime": start_time,
        "containerStatuses": [container_status_json(v) for v in containers],
    }
    if init:
        status["initContainerStatuses"] = [container_status_json(v) for v in init]
    if generation is not None:
        status["observedGeneration"] = generation
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    return {"status": status}
