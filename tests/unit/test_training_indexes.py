"""The Job and pod indexes keep only what a refresh reads: enough for every status the run can
show (Kueue's suspend, a many-node group, which index a pod is), not the pod template."""

import asyncio
from typing import Any

from loraplane import kube, naming
from loraplane.handlers import training_jobs
from loraplane.handlers.training_jobs import _slim
from loraplane.status import training as status_of


def test_a_jobs_slim_copy_keeps_suspend_and_the_group_size_but_not_the_template() -> None:
    job: dict[str, Any] = {
        "metadata": {"name": "j", "uid": "u", "labels": {"a": "b"}, "annotations": {"big": "x" * 100}},
        "spec": {
            "suspend": True,
            "completions": 2,
            "parallelism": 2,
            "template": {"spec": {"containers": []}},
        },
        "status": {"active": 1},
    }
    slim = _slim(job)
    assert slim["spec"] == {"suspend": True, "completions": 2, "parallelism": 2}
    assert slim["metadata"]["annotations"] == {}
    assert slim["status"] == {"active": 1}


def test_a_pods_slim_copy_keeps_its_completion_index_for_the_unschedulable_message() -> None:
    pod: dict[str, Any] = {
        "metadata": {
            "name": "p-1",
            "annotations": {status_of.JOB_COMPLETION_INDEX_ANNOTATION: "1", "other": "dropped"},
        },
        "spec": {"containers": [{"name": "worker"}]},
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "message": "0/1 nodes are available"}],
        },
    }
    slim = _slim(pod)
    assert slim["metadata"]["annotations"] == {status_of.JOB_COMPLETION_INDEX_ANNOTATION: "1"}
    assert "containers" not in slim["spec"]
    job = {"metadata": {"name": "j"}, "spec": {"completions": 2}, "status": {}}
    phase = status_of._unschedulable_peer(job, [slim])
    assert phase is not None
    assert phase.message.startswith("index 1 cannot be scheduled")


def test_the_indexes_keep_one_packed_entry_per_object_and_readers_get_the_slim_copy_back() -> None:
    """Packed (compact JSON bytes): a thousand waiting jobs are three thousand entries nothing reads at
    rest, and one bytes object each pins none of Python's small-object arenas."""
    pod: dict[str, Any] = {
        "metadata": {"name": "p", "uid": "pu", "labels": {naming.LABEL_TRAINING_JOB_UID: "run"}},
        "spec": {"containers": [{"name": "worker", "image": "w" * 200}]},
        "status": {"phase": "Pending"},
    }
    entry = training_jobs.training_pods(labels=pod["metadata"]["labels"], body=pod)  # type: ignore[arg-type]
    assert list(entry) == ["run"]
    assert isinstance(entry["run"], bytes)
    assert b" " not in entry["run"]  # compact
    assert b"w" * 200 not in entry["run"]  # the pod template is not kept
    index = {"run": [entry["run"]]}
    assert training_jobs.first(index, "run") == _slim(pod)  # type: ignore[arg-type]
    assert training_jobs.first(index, "other") is None  # type: ignore[arg-type]


def test_a_workload_event_refreshes_the_run_of_the_job_it_belongs_to(monkeypatch: Any) -> None:
    """The Workload names its Job; the Job's uid leads to the run without unpacking other entries."""
    refreshed: list[str] = []

    async def refresh(body: dict[str, Any], *_: Any, **__: Any) -> None:
        refreshed.append(body["metadata"]["uid"])

    monkeypatch.setattr(training_jobs, "refresh", refresh)
    run = {"metadata": {"uid": "run-b"}, "status": {}}
    job = {"metadata": {"uid": "job-b", "labels": {naming.LABEL_TRAINING_JOB_UID: "run-b"}}}
    by_job = training_jobs.training_runs_by_job(labels=job["metadata"]["labels"], uid="job-b")  # type: ignore[arg-type]
    assert by_job == {"job-b": "run-b"}
    workload = {"metadata": {"ownerReferences": [{"kind": "Job", "uid": "job-b"}]}}
    asyncio.run(
        training_jobs.training_workload_changed(  # type: ignore[call-arg]
            body=workload,  # type: ignore[arg-type]
            live_training_jobs={"run-b": [kube.pack(run)], "run-a": [b"not unpacked"]},  # type: ignore[arg-type]
            training_batch_jobs={"run-a": [b"not unpacked"]},  # type: ignore[arg-type]
            training_pods={},  # type: ignore[arg-type]
            training_runs_by_job={"job-a": ["run-a"], "job-b": ["run-b"]},  # type: ignore[arg-type]
        )
    )
    assert refreshed == ["run-b"]
