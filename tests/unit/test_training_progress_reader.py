"""The progress reader: one task per running job, reading through kopf's live indexes, and none for
a waiting or finished job (kopf timers are not used: kopf would keep every job's body for them)."""

import asyncio
from typing import Any

import pytest

from loraplane import kube
from loraplane.handlers import training_jobs
from loraplane.settings import Settings


def _job(uid: str, reason: str) -> bytes:
    """A live job as its index keeps it (packed)."""
    return kube.pack(
        {
            "metadata": {"uid": uid, "name": uid, "namespace": "ns"},
            "status": {"conditions": [{"type": "Succeeded", "status": "Unknown", "reason": reason}]},
        }
    )


@pytest.fixture
def refreshes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    calls: list[tuple[str, bool]] = []

    async def refresh(body: dict[str, Any], _jobs: Any, _pods: Any, read_metrics: bool) -> None:
        calls.append((body["metadata"]["uid"], read_metrics))

    monkeypatch.setattr(training_jobs, "refresh", refresh)
    monkeypatch.setattr(training_jobs, "get_settings", lambda: Settings(progress_interval_seconds=0.01))
    return calls


async def _until(condition: Any) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.01)


def test_a_running_job_is_read_by_one_task_until_it_stops_running(refreshes: list[Any]) -> None:
    asyncio.run(_test_a_running_job_is_read_by_one_task_until_it_stops_running(refreshes))


async def _test_a_running_job_is_read_by_one_task_until_it_stops_running(refreshes: list[Any]) -> None:
    live: dict[str, list[bytes]] = {"run": [_job("run", "Running")]}
    training_jobs.follow_if_running("run", live, {}, {})  # type: ignore[arg-type]
    training_jobs.follow_if_running("run", live, {}, {})  # type: ignore[arg-type]  # a second event
    assert list(training_jobs._FOLLOWING) == ["run"]
    await _until(lambda: len(refreshes) >= 2)
    assert set(refreshes) == {("run", True)}  # the metrics are read, not just the children

    live["run"] = [_job("run", "Succeeded")]  # the index now holds the finished status
    await _until(lambda: "run" not in training_jobs._FOLLOWING)
    count = len(refreshes)
    await asyncio.sleep(0.05)
    assert len(refreshes) == count


def test_waiting_finished_and_unknown_jobs_get_no_task(refreshes: list[Any]) -> None:
    asyncio.run(_test_waiting_finished_and_unknown_jobs_get_no_task(refreshes))


async def _test_waiting_finished_and_unknown_jobs_get_no_task(refreshes: list[Any]) -> None:
    live = {"wait": [_job("wait", "Unschedulable")], "done": [_job("done", "Succeeded")]}
    for uid in ("wait", "done", "gone"):
        training_jobs.follow_if_running(uid, live, {}, {})  # type: ignore[arg-type]
    assert training_jobs._FOLLOWING == {}
    await asyncio.sleep(0.05)
    assert refreshes == []


def test_a_failing_read_is_tried_again_at_the_next_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    asyncio.run(_test_a_failing_read_is_tried_again_at_the_next_tick(monkeypatch))


async def _test_a_failing_read_is_tried_again_at_the_next_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0

    async def refresh(*_: Any, **__: Any) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("the API server went away")

    monkeypatch.setattr(training_jobs, "refresh", refresh)
    monkeypatch.setattr(training_jobs, "get_settings", lambda: Settings(progress_interval_seconds=0.01))
    live = {"run": [_job("run", "Running")]}
    training_jobs.follow_if_running("run", live, {}, {})  # type: ignore[arg-type]
    await _until(lambda: calls >= 3)
    training_jobs.forget_training(namespace="ns", name="run", uid="run")  # deleted: the task ends
    await _until(lambda: "run" not in training_jobs._FOLLOWING)


def test_the_live_index_filter_drops_finished_refused_and_unstarted_jobs() -> None:
    # kopf keeps an object's last value when its indexer returns None: leaving the index must go
    # through the filter, or a finished job's last live body would be refreshed for ever.
    assert training_jobs._live(kube.unpack(_job("a", "Running")))  # type: ignore[arg-type]
    assert training_jobs._live(kube.unpack(_job("a", "Unschedulable")))  # type: ignore[arg-type]
    assert not training_jobs._live(kube.unpack(_job("a", "Succeeded")))  # type: ignore[arg-type]
    assert not training_jobs._live(kube.unpack(_job("a", "InvalidSpec")))  # type: ignore[arg-type]
    assert not training_jobs._live({"metadata": {"uid": "a"}, "status": {}})  # type: ignore[arg-type]
