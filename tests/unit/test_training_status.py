"""The pure status function of a LoraTrainingJob, from Job, pods and worker reports."""

from __future__ import annotations

import copy
import datetime as dt
import json

import pytest

from loraplane import progress
from loraplane.api.training_job import LoraTrainingJob
from loraplane.status import training as status_of
from loraplane.status.conditions import find
from manifests import example_training_job

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
UID = "uid-1"


def job(status: dict | None = None) -> LoraTrainingJob:
    body = copy.deepcopy(example_training_job())
    body["metadata"].update(uid=UID, generation=1)
    if status:
        body["status"] = status
    return LoraTrainingJob.model_validate(body)


def batch(conditions: list[dict] | None = None, **counts: int) -> dict:
    return {
        "metadata": {"name": "opt-350m-quotes-train"},
        "status": {"conditions": conditions or [], **counts},
    }


def pod(state: dict, *, created: str = "2026-01-01T11:00:00Z", conditions: list | None = None) -> dict:
    return {
        "metadata": {"name": "p", "creationTimestamp": created},
        "status": {
            "phase": "Running" if "running" in state else "Pending",
            "conditions": conditions or [],
            "containerStatuses": [{"name": "worker", "state": state}],
        },
    }


def summary(status) -> tuple[str, str]:
    condition = find(status.conditions, "Succeeded")
    return condition.status, condition.reason


def test_running_pod_means_running() -> None:
    status = status_of.observe(job(), batch(active=1), [pod({"running": {}})], None, NOW)
    assert summary(status) == ("Unknown", "Running")
    assert find(status.conditions, "Running").status == "True"
    assert status.attempts == 1


def test_the_jobs_times_are_held_as_times() -> None:
    """The Job's timestamps become datetimes (a string in a datetime field serialises with a warning)."""
    counts = {"active": 1, "startTime": "2026-01-01T11:00:00Z"}
    status = status_of.observe(job(), {"metadata": {"name": "x"}, "status": counts}, [], None, NOW)
    assert status.start_time == dt.datetime(2026, 1, 1, 11, tzinfo=dt.UTC)
    assert status.to_wire()["startTime"] == "2026-01-01T11:00:00Z"


def test_unschedulable_carries_the_schedulers_message() -> None:
    message = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    unscheduled = pod({}, conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                       "message": message}])  # fmt: skip
    status = status_of.observe(job(), batch(active=1), [unscheduled], None, NOW)
    assert summary(status) == ("Unknown", "Unschedulable")
    assert find(status.conditions, "Succeeded").message.startswith(message)
    assert "retries" in find(status.conditions, "Succeeded").message


@pytest.mark.parametrize(
    ("kubelet_reason", "kubelet_message", "reason", "fix"),
    [
        ("CreateContainerConfigError", 'secret "hf-token" not found', "CreateContainerConfigError", "Secret"),
        (
            "CreateContainerConfigError",
            "couldn't find key token in Secret team/hf-token",
            "CreateContainerConfigError",
            "Secret",
        ),
        ("CreateContainerConfigError", 'configmap "x" not found', "CreateContainerConfigError", "ConfigMap"),
        (
            "CreateContainerError",
            "container name already in use",
            "CreateContainerError",
            "fix what it names",
        ),
        ("RunContainerError", "exec format error", "RunContainerError", "fix what it names"),
        ("ErrImagePull", "image not found", "ImagePullFailed", "image name"),
        ("ImagePullBackOff", 'Back-off pulling image "w:1"', "ImagePullFailed", "pull secret"),
        ("InvalidImageName", 'invalid image name "W:"', "ImagePullFailed", "image name"),
        ("CrashLoopBackOff", "back-off 10s restarting failed container", "CrashLoopBackOff", "logs"),
        (
            "ContainerCreating",
            'MountVolume.SetUp failed for volume "config": configmap "j-config" not found',
            "VolumeNotReady",
            "ConfigMap",
        ),
    ],
)
def test_every_waiting_reason_reaches_the_condition_in_the_kubelets_words(
    kubelet_reason: str, kubelet_message: str, reason: str, fix: str
) -> None:
    """Not terminal (the kubelet retries, so fixing the cause lets the run go on), a Warning, and the
    message is what the kubelet said plus what to do."""
    waiting = pod({"waiting": {"reason": kubelet_reason, "message": kubelet_message}})
    status = status_of.observe(job(), batch(active=1), [waiting], None, NOW)
    assert summary(status) == ("Unknown", reason)
    message = find(status.conditions, "Succeeded").message
    assert kubelet_message in message
    assert fix in message
    assert not status_of.is_terminal(status)
    assert status_of.Phase(reason, message).stuck


def test_a_missing_claim_is_the_schedulers_words() -> None:
    said = '0/1 nodes are available: persistentvolumeclaim "models" not found.'
    unscheduled = pod({}, conditions=[{"type": "PodScheduled", "status": "False", "message": said}])
    status = status_of.observe(job(), batch(active=1), [unscheduled], None, NOW)
    assert summary(status) == ("Unknown", "Unschedulable")
    assert said in find(status.conditions, "Succeeded").message


def test_container_creating_without_a_reason_given_is_plain_pending() -> None:
    status = status_of.observe(
        job(), batch(active=1), [pod({"waiting": {"reason": "ContainerCreating"}})], None, NOW
    )
    assert summary(status) == ("Unknown", "Pending")


def test_success_records_the_adapter_as_claim_and_path() -> None:
    report = {"adapterDir": "/mnt/claims/loraplane-adapters/opt-350m/uid-1", "sha256": "ab" * 32,
              "sizeBytes": 1024, "r": 16, "loraAlpha": 32, "targetModules": ["q_proj", "v_proj"],
              "baseModel": "facebook/opt-350m", "trainLoss": 1.5, "steps": 30,
              "trainableParameters": 1000, "allParameters": 100000}  # fmt: skip
    done = pod({"terminated": {"exitCode": 0, "message": json.dumps(report)}})
    complete = batch([{"type": "Complete", "status": "True"}], succeeded=1)
    status = status_of.observe(job(), complete, [done], None, NOW)
    assert summary(status) == ("True", "Succeeded")
    assert find(status.conditions, "Failed").status == "False"
    assert status.adapter.claim_name == "loraplane-adapters"
    assert status.adapter.path == "opt-350m/uid-1"
    assert status.adapter.sha256 == "ab" * 32
    assert status.train_loss == 1.5
    assert (
        status.trainable_parameters == "trainable params: 1,000 || all params: 100,000 || trainable%: 1.0000"
    )
    assert status_of.is_terminal(status)


def test_a_termination_message_that_is_not_json_is_the_logs_last_line() -> None:
    crashed = pod({"terminated": {"exitCode": 1, "reason": "Error", "message": "Traceback\nKilled\n"}})
    failed = batch([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}], failed=4)
    status = status_of.observe(job(), failed, [crashed], None, NOW)
    assert summary(status) == ("False", "Failed")
    assert find(status.conditions, "Failed").message == "Error: Killed"


def test_input_error_fails_with_the_workers_line() -> None:
    report = {"error": "DatasetFieldError", "message": "column 'quote' not in dataset", "inputError": True}
    failed_pod = pod({"terminated": {"exitCode": 65, "message": json.dumps(report)}})
    failed = batch([{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}], failed=1)
    status = status_of.observe(job(), failed, [failed_pod], None, NOW)
    assert summary(status) == ("False", "InputError")
    assert find(status.conditions, "Failed").message == "DatasetFieldError: column 'quote' not in dataset"


def test_deadline_exceeded() -> None:
    failed = batch(
        [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "too long"}]
    )
    status = status_of.observe(job(), failed, [], None, NOW)
    assert summary(status) == ("False", "DeadlineExceeded")


def test_a_failed_attempt_with_no_running_pod_is_retrying() -> None:
    status = status_of.observe(job(), batch(failed=1), [], None, NOW)
    assert summary(status) == ("Unknown", "Retrying")


def test_transition_time_only_moves_when_status_changes() -> None:
    first = status_of.observe(job(), batch(active=1), [pod({"running": {}})], None, NOW)
    again = status_of.observe(
        job(first.to_wire()), batch(active=1), [pod({"running": {}})], None, NOW + dt.timedelta(minutes=5)
    )
    assert find(again.conditions, "Running").last_transition_time == NOW


def test_progress_from_the_workers_gauges() -> None:
    text = "\n".join([
        "# HELP loraplane_worker_step Optimizer steps done.", "loraplane_worker_step 12.0",
        "loraplane_worker_total_steps 30.0", "loraplane_worker_loss 2.5", "loraplane_worker_eval_loss NaN",
        "loraplane_worker_progress_ratio 0.4", "loraplane_worker_eta_seconds 250.0",
    ])  # fmt: skip
    got = progress.to_progress(progress.parse_gauges(text), NOW)
    assert (got.step, got.total_steps, got.percent, got.loss, got.eta) == (12, 30, 40.0, 2.5, "4m10s")
    assert got.eval_loss is None
    status = status_of.observe(job(), batch(active=1), [pod({"running": {}})], got, NOW, resumed_from_step=10)
    assert status.progress.step == 12
    assert status.resumed_from_step == 10


def test_eta_formats() -> None:
    assert [status_of.format_eta(s) for s in (None, float("nan"), 9, 61, 7322)] == [
        None,
        None,
        "9s",
        "1m1s",
        "2h2m",
    ]


def test_jobs_by_state_gauge_counts_each_job_once() -> None:
    from loraplane.handlers import training_jobs  # noqa: PLC0415
    from loraplane.metrics import TRAINING_JOBS  # noqa: PLC0415

    training_jobs._count_phase("ns", "a", "Running")
    training_jobs._count_phase("ns", "b", "Running")
    training_jobs._count_phase("ns", "a", "Succeeded")
    assert TRAINING_JOBS.labels("Running")._value.get() == 1
    assert TRAINING_JOBS.labels("Succeeded")._value.get() == 1
    training_jobs._count_phase("ns", "a", None)
    training_jobs._count_phase("ns", "b", None)
    assert TRAINING_JOBS.labels("Running")._value.get() == 0


def test_a_finished_worker_before_the_job_completes_is_still_running() -> None:
    """No flip back to Pending between the worker's exit and the Job controller's Complete."""
    done = pod({"terminated": {"exitCode": 0, "message": "{}"}})
    status = status_of.observe(job(), batch(active=0, succeeded=1), [done], None, NOW)
    assert summary(status) == ("Unknown", "Running")


def test_loss_is_rounded_for_people() -> None:
    got = progress.to_progress({"step": 1.0, "total_steps": 2.0, "loss": 5.270626068115234}, NOW)
    assert got.loss == 5.271


def test_success_records_the_evaluation_with_its_change_against_the_base() -> None:
    report = {"adapterDir": "/x", "sha256": "ab" * 32, "r": 16, "loraAlpha": 32, "evalLoss": 2.0,
              "evaluation": {"baseLoss": 2.5, "loss": 2.0, "meanTokenAccuracy": 0.4, "examples": 20,
                             "digest": "sha256:" + "d" * 64}}  # fmt: skip
    done = pod({"terminated": {"exitCode": 0, "message": json.dumps(report)}})
    complete = batch([{"type": "Complete", "status": "True"}], succeeded=1)
    status = status_of.observe(job(), complete, [done], None, NOW)
    assert status.evaluation is not None
    assert (status.evaluation.base_loss, status.evaluation.loss) == (2.5, 2.0)
    assert status.evaluation.change == "-20.0%"
    assert status.evaluation.digest == "sha256:" + "d" * 64
    assert status.to_wire()["evaluation"]["meanTokenAccuracy"] == 0.4
    assert find(status.conditions, "Promoted") is None, "the handler decides promotion, not observe()"


# --- Kueue and many nodes ------------------------------------------------------------------------------


def suspended(**status: object) -> dict:
    body = batch()
    body["spec"] = {"suspend": True}
    body["status"].update(status)
    return body


def workload(*conditions: dict) -> dict:
    return {"metadata": {"name": "job-opt-350m-quotes-train-1"}, "status": {"conditions": list(conditions)}}


PENDING_QUOTA = {
    "type": "QuotaReserved",
    "status": "False",
    "reason": "Pending",
    "message": "couldn't assign flavors to pod set main: insufficient quota for cpu in flavor default",
}


def test_a_job_kueue_holds_is_queued_in_the_workloads_words() -> None:
    status = status_of.observe(job(), suspended(), [], None, NOW, workload=workload(PENDING_QUOTA))
    assert summary(status) == ("Unknown", "Queued")
    message = find(status.conditions, "Succeeded").message
    assert message.startswith(PENDING_QUOTA["message"])
    assert "Kueue" in message


def test_queued_before_kueue_made_a_workload() -> None:
    status = status_of.observe(job(), suspended(), [], None, NOW)
    assert summary(status) == ("Unknown", "Queued")


def test_suspended_again_after_running_is_preempted() -> None:
    ran = job({"attempts": 1, "startTime": "2026-01-01T11:00:00Z"})
    evicted = {"type": "Evicted", "status": "True", "reason": "Preempted",
               "message": "Preempted to accommodate a workload (UID: x) due to prioritization"}  # fmt: skip
    status = status_of.observe(ran, suspended(), [], None, NOW, workload=workload(PENDING_QUOTA, evicted))
    assert summary(status) == ("Unknown", "Preempted")
    message = find(status.conditions, "Succeeded").message
    assert message.startswith("Preempted to accommodate")
    assert "newest checkpoint" in message
    assert not status_of.is_terminal(status)


def test_an_admitted_job_runs_as_any_other() -> None:
    admitted = batch(active=1)
    admitted["spec"] = {"suspend": False}
    status = status_of.observe(job(), admitted, [pod({"running": {}})], None, NOW, workload=workload())
    assert summary(status) == ("Unknown", "Running")


def test_a_rendezvous_timeout_is_terminal_with_its_own_reason() -> None:
    report = {"error": "RendezvousTimeout", "message": "the 2 nodes did not all join", "inputError": False}
    failed_pod = pod({"terminated": {"exitCode": 69, "message": json.dumps(report)}})
    failed = batch([{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}], failed=1)
    status = status_of.observe(job(), failed, [failed_pod], None, NOW)
    assert summary(status) == ("False", "RendezvousTimeout")
    assert find(status.conditions, "Failed").message == "the 2 nodes did not all join"


def test_status_shows_nodes_world_size_and_the_strategy_auto_chose() -> None:
    spec = job()
    spec.spec.resources.nodes, spec.spec.resources.gpus = 2, 4
    status = status_of.observe(spec, batch(active=2), [], None, NOW)
    assert (status.nodes, status.world_size) == (2, 8)
    assert status.distributed == status_of.AUTO_PENDING, "on GPUs the worker decides"
    report = {"adapterDir": "/x", "sha256": "ab" * 32, "r": 16, "loraAlpha": 32, "worldSize": 8,
              "distributed": "fsdp", "distributedReason": "30.0 GiB of weights, 40 GiB per GPU"}  # fmt: skip
    done = pod({"terminated": {"exitCode": 0, "message": json.dumps(report)}})
    complete = batch([{"type": "Complete", "status": "True"}], succeeded=2)
    finished = status_of.observe(spec, complete, [done], None, NOW)
    assert finished.distributed == "FSDP (auto: 30.0 GiB of weights, 40 GiB per GPU)"
    spec.status = finished
    assert status_of.observe(spec, complete, [], None, NOW).distributed == finished.distributed, "kept"

    cpu = job()
    cpu.spec.resources.gpus = 0
    assert status_of.observe(cpu, batch(active=1), [], None, NOW).distributed == (
        "DDP (auto: CPU pods run data parallel)"
    )
    spec.spec.training.distributed = "fsdp"
    assert status_of.observe(spec, batch(active=2), [], None, NOW).distributed == "FSDP"


def indexed(active: int, nodes: int = 2) -> dict:
    body = batch(active=active)
    body["spec"] = {"completionMode": "Indexed", "completions": nodes, "parallelism": nodes}
    return body


def node_pod(index: int, state: dict, conditions: list | None = None) -> dict:
    body = pod(state, conditions=conditions, created=f"2026-01-01T11:00:0{index}Z")
    body["metadata"].update(name=f"opt-350m-quotes-train-{index}-x",
                            annotations={"batch.kubernetes.io/job-completion-index": str(index)})  # fmt: skip
    return body


@pytest.mark.parametrize("first", [{"running": {}}, {"waiting": {"reason": "ContainerCreating"}}])
def test_a_peer_pod_the_scheduler_cannot_place_makes_the_run_unschedulable(first: dict) -> None:
    """Index 0 runs (waiting at the rendezvous) or starts; index 1 is Pending and Unschedulable: the
    run cannot train until it is placed, so it reads Unschedulable in the scheduler's words."""
    said = "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    unplaced = node_pod(1, {}, [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                 "message": said}])  # fmt: skip
    status = status_of.observe(job(), indexed(active=2), [node_pod(0, first), unplaced], None, NOW)
    assert summary(status) == ("Unknown", "Unschedulable")
    assert find(status.conditions, "Running").status == "False"
    message = find(status.conditions, "Succeeded").message
    assert message.startswith("index 1 cannot be scheduled")
    assert said in message
    assert "retries" in message


def test_every_pod_of_a_many_node_run_placed_is_running() -> None:
    scheduled = [{"type": "PodScheduled", "status": "True"}]
    pods = [node_pod(0, {"running": {}}, scheduled), node_pod(1, {"running": {}}, scheduled)]
    assert summary(status_of.observe(job(), indexed(active=2), pods, None, NOW)) == ("Unknown", "Running")


def test_a_finished_unplaced_pod_of_an_earlier_attempt_is_not_unschedulable() -> None:
    gone = node_pod(1, {}, [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}])
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T11:30:00Z"
    failed = node_pod(1, {"terminated": {"exitCode": 1}}, [{"type": "PodScheduled", "status": "False"}])
    failed["status"]["phase"] = "Failed"
    pods = [node_pod(0, {"running": {}}), gone, failed]
    assert summary(status_of.observe(job(), indexed(active=2), pods, None, NOW)) == ("Unknown", "Running")
