"""Pod status from container state: phase, conditions, readiness gates, transition times."""

from __future__ import annotations

from typing import Any

import pytest

from loraplane_devcluster.nodeagent.status import (
    ContainerView,
    Running,
    Terminated,
    Waiting,
    conditions_json,
    container_status_json,
    owned_conditions,
    pod_phase,
    readiness_gate_problems,
    status_patch,
)

T0 = "2026-01-01T00:00:00Z"
T1 = "2026-01-01T00:01:00Z"


def running(name: str = "main", *, ready: bool = True) -> ContainerView:
    return ContainerView(name, "busybox", Running(T0), ready=ready, started=True)


def exited(code: int, name: str = "main") -> ContainerView:
    return ContainerView(name, "busybox", Terminated(code, "Completed" if code == 0 else "Error", T0, T1))


def waiting(reason: str = "ContainerCreating", name: str = "main") -> ContainerView:
    return ContainerView(name, "busybox", Waiting(reason))


def crash_looping(code: int = 1, name: str = "main") -> ContainerView:
    last = Terminated(code, "Error", T0, T1)
    return ContainerView(name, "busybox", Waiting("CrashLoopBackOff"), last_state=last, restart_count=2)


@pytest.mark.parametrize(
    ("policy", "init", "containers", "phase"),
    [
        ("Always", [], [waiting()], "Pending"),
        ("Always", [], [running()], "Running"),
        ("Always", [], [running(), waiting(name="b")], "Pending"),
        ("Never", [], [exited(0)], "Succeeded"),
        ("Never", [], [exited(3)], "Failed"),
        ("Never", [], [exited(0), exited(1, "b")], "Failed"),
        ("OnFailure", [], [exited(0)], "Succeeded"),
        ("OnFailure", [], [crash_looping()], "Running"),
        ("Always", [], [exited(0)], "Running"),
        ("Always", [], [crash_looping()], "Running"),
        ("Never", [running("init")], [waiting("PodInitializing")], "Pending"),
        ("Never", [exited(0, "init")], [running()], "Running"),
        ("Never", [exited(2, "init")], [waiting("PodInitializing")], "Failed"),
        ("OnFailure", [crash_looping(2, "init")], [waiting("PodInitializing")], "Pending"),
    ],
)
def test_phase_follows_the_kubelet(
    policy: str, init: list[ContainerView], containers: list[ContainerView], phase: str
) -> None:
    assert pod_phase(policy, init, containers, terminal=False) == phase


def test_a_deleted_pod_ends_succeeded_only_when_every_container_exited_zero() -> None:
    assert pod_phase("Always", [], [exited(0), exited(0, "b")], terminal=True) == "Succeeded"
    assert pod_phase("Always", [], [exited(0), exited(143, "b")], terminal=True) == "Failed"


def by_type(conditions: list[Any]) -> dict[str, Any]:
    return {c.type: c for c in conditions}


def conditions_for(
    containers: list[ContainerView],
    gates: list[str] | None = None,
    observed: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    phase = pod_phase("Always", [], containers, terminal=False)
    return by_type(
        owned_conditions(
            sandbox_ready=True,
            init=[],
            containers=containers,
            phase=phase,
            readiness_gates=gates or [],
            observed_conditions=observed or [],
        )
    )


def test_ready_when_every_container_is_ready() -> None:
    conditions = conditions_for([running(), running("b")])
    assert conditions["ContainersReady"].status
    assert conditions["Ready"].status
    assert conditions["Initialized"].status
    assert conditions["PodScheduled"].status


def test_an_unready_container_makes_both_ready_conditions_false_naming_it() -> None:
    conditions = conditions_for([running(), running("sidecar", ready=False)])
    assert not conditions["ContainersReady"].status
    assert conditions["ContainersReady"].message == "containers with unready status: [sidecar]"
    assert not conditions["Ready"].status
    assert conditions["Ready"].reason == "ContainersNotReady"


GATE = "loraplane.io/adapters-loaded"


@pytest.mark.parametrize(
    ("observed", "ready", "message"),
    [
        (
            [],
            False,
            'corresponding condition of pod readiness gate "loraplane.io/adapters-loaded" does not exist.',
        ),
        ([{"type": GATE, "status": "False"}], False, 'is not "True", but False'),
        ([{"type": GATE, "status": "True"}], True, ""),
    ],
)
def test_readiness_gates_hold_ready_until_their_condition_is_true(
    observed: list[dict[str, Any]], ready: bool, message: str
) -> None:
    conditions = conditions_for([running()], [GATE], observed)
    assert conditions["ContainersReady"].status  # the gate holds only Ready
    assert conditions["Ready"].status is ready
    if not ready:
        assert conditions["Ready"].reason == "ReadinessGatesNotReady"
        assert message in conditions["Ready"].message


def test_gates_are_checked_only_once_containers_are_ready() -> None:
    conditions = conditions_for([running(ready=False)], [GATE], [{"type": GATE, "status": "True"}])
    assert conditions["Ready"].reason == "ContainersNotReady"


def test_readiness_gate_problems_lists_each_gate() -> None:
    problems = readiness_gate_problems(
        ["a", "b", "c"], [{"type": "b", "status": "True"}, {"type": "c", "status": "Unknown"}]
    )
    assert len(problems) == 2
    assert '"a" does not exist' in problems[0]
    assert "but Unknown" in problems[1]


def test_a_succeeded_pod_reports_pod_completed() -> None:
    containers = [exited(0)]
    conditions = by_type(
        owned_conditions(
            sandbox_ready=True,
            init=[],
            containers=containers,
            phase="Succeeded",
            readiness_gates=[],
            observed_conditions=[],
        )
    )
    assert conditions["Ready"].reason == "PodCompleted"
    assert not conditions["PodReadyToStartContainers"].status


def test_transition_time_changes_only_when_the_status_changes() -> None:
    ready = conditions_for([running()])
    first, memory = conditions_json(list(ready.values()), {}, T0, 1)
    same, memory = conditions_json(list(ready.values()), memory, T1, 1)
    assert {c["lastTransitionTime"] for c in same} == {T0}
    unready = conditions_for([running(ready=False)])
    changed, _ = conditions_json(list(unready.values()), memory, T1, 2)
    times = {c["type"]: c["lastTransitionTime"] for c in changed}
    assert times["Ready"] == T1
    assert times["PodScheduled"] == T0
    assert all(c["observedGeneration"] == 2 for c in changed)
    assert first[0]["lastProbeTime"] is None


def test_container_status_carries_state_last_state_and_counts() -> None:
    status = container_status_json(crash_looping(3))
    assert status["state"] == {"waiting": {"reason": "CrashLoopBackOff"}}
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert status["lastState"]["terminated"]["reason"] == "Error"
    assert status["restartCount"] == 2
    assert status["ready"] is False
    message = container_status_json(
        ContainerView("m", "i", Terminated(0, "Completed", T0, T1, "done", "process://5"))
    )
    assert message["state"]["terminated"] == {
        "exitCode": 0,
        "reason": "Completed",
        "startedAt": T0,
        "finishedAt": T1,
        "message": "done",
        "containerID": "process://5",
    }
    assert message["lastState"] == {}


def test_status_patch_holds_only_what_the_node_owns() -> None:
    patch = status_patch(
        phase="Running",
        conditions=[{"type": "Ready", "status": "True"}],
        pod_ip="127.0.1.9",
        host_ip="127.0.0.1",
        start_time=T0,
        init=[],
        containers=[running()],
        generation=None,
    )
    status = patch["status"]
    assert status["podIP"] == "127.0.1.9"
    # replaced, not merged by ip: an adopted pod whose address changed must not end up with two
    assert status["podIPs"] == [{"ip": "127.0.1.9"}, {"$patch": "replace"}]
    assert status["hostIPs"] == [{"ip": "127.0.0.1"}, {"$patch": "replace"}]
    assert "initContainerStatuses" not in status
    assert "observedGeneration" not in status
    assert [c["type"] for c in status["conditions"]] == ["Ready"]
