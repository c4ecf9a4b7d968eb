"""A LoraTrainingJob's status, from what its batch Job, its pods and its worker report.

Condition types: `Accepted`, `Running`, `Succeeded` and `Failed`. `Succeeded` is always present and
its reason says where the run is (Pending, Unschedulable, ImagePullFailed, a container's waiting
reason such as CreateContainerConfigError, Queued and Preempted under Kueue, Running, Retrying,
Succeeded, Failed, InputError, RendezvousTimeout, DeadlineExceeded, InvalidSpec): the printer column
reads it, and
`kubectl wait --for=condition=Succeeded` / `--for=condition=Failed` work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from loraplane import naming
from loraplane.api.common import ConditionStatus
from loraplane.api.training_job import AdapterResult, LoraTrainingJob, LoraTrainingJobStatus, Progress
from loraplane.api.worker import RENDEZVOUS_TIMEOUT_ERROR, FailureReport, TrainingReport, read_report
from loraplane.status.conditions import Observed, find, merge
from loraplane.status.evaluation import evaluation_of

# The pull reasons alternate (ErrImagePull, ImagePullBackOff, ...) while the kubelet retries: one
# condition reason for all of them, so the condition (and its Event) does not flap; the kubelet's
# reason leads the message.
IMAGE_PULL_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
# Container waiting reasons that mean "stuck until someone fixes something", with what to fix. The
# condition's reason is the kubelet's own; the message is the kubelet's words, then this.
CONTAINER_PROBLEMS = {
    "CreateContainerConfigError": (
        "the kubelet retries: create or fix the Secret or ConfigMap it names and the pod starts"
    ),
    "CreateContainerError": "the kubelet retries: fix what it names and the pod starts",
    "RunContainerError": "the kubelet retries: fix what it names and the pod starts",
    "CrashLoopBackOff": "the container keeps failing; see its logs",
    "PreStartHookError": "the kubelet retries: fix what it names and the pod starts",
}
PULL_HINT = "the kubelet retries the pull: fix the image name, the registry access or the pull secret"
# Waiting while volumes are set up: a kubelet that says why (the local node agent does) is quoted.
CREATING_REASONS = {"ContainerCreating", "PodInitializing"}
CREATING_HINT = "the kubelet retries: create the ConfigMap, Secret or claim it names and the pod starts"
UNSCHEDULABLE_HINT = "the scheduler retries: it places the pod once that is fixed"
TERMINAL_REASONS = {
    "Succeeded", "Failed", "InputError", RENDEZVOUS_TIMEOUT_ERROR, "DeadlineExceeded", "InvalidSpec"
}  # fmt: skip
QUEUED_HINT = "Kueue admits it when its ClusterQueue has quota; the operator leaves suspend to Kueue"
PREEMPTED_HINT = (
    "Kueue suspended it to free quota; on the next admission it resumes from its newest checkpoint"
)
# Set by the Job controller on each pod of an Indexed Job (many-node runs).
JOB_COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
# Not terminal, but nothing improves until someone acts: announced as Warnings.
STUCK_REASONS = {"Unschedulable", "ImagePullFailed", "VolumeNotReady", *CONTAINER_PROBLEMS}


@dataclass(frozen=True)
class Phase:
    """Where the run is, in one word (the `Succeeded` condition's reason) and one sentence."""

    reason: str
    message: str

    @property
    def succeeded(self) -> bool:
        return self.reason == "Succeeded"

    @property
    def failed(self) -> bool:
        return self.reason in TERMINAL_REASONS and not self.succeeded

    @property
    def running(self) -> bool:
        return self.reason == "Running"

    @property
    def stuck(self) -> bool:
        """Waits on something a person must fix (retried by Kubernetes meanwhile)."""
        return self.reason in STUCK_REASONS


def is_terminal(status: LoraTrainingJobStatus) -> bool:
    summary = find(status.conditions, "Succeeded")
    return summary is not None and summary.reason in TERMINAL_REASONS


def _job_condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for condition in job.get("status", {}).get("conditions", []) or []:
        if condition.get("type") == type_ and condition.get("status") == "True":
            return dict(condition)
    return None


def _worker_state(pod: dict[str, Any]) -> dict[str, Any]:
    for container in pod.get("status", {}).get("containerStatuses", []) or []:
        if container.get("name") == naming.WORKER_CONTAINER:
            return dict(container.get("state") or {})
    return {}


def termination_report(pod: dict[str, Any]) -> TrainingReport | FailureReport | None:
    """The worker's result (or error) from its termination message, if it wrote one."""
    terminated = _worker_state(pod).get("terminated") or {}
    return read_report(terminated.get("message") or "", terminated.get("reason") or "Error")


def _newest(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True)


def _waiting_phase(pods: list[dict[str, Any]]) -> Phase | None:
    """Why the newest pod is not running yet, as a real scheduler or kubelet reported it."""
    for pod in _newest(pods)[:1]:
        for condition in pod.get("status", {}).get("conditions", []) or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                said = condition.get("message") or "the scheduler found no node"
                return Phase("Unschedulable", f"{said} ({UNSCHEDULABLE_HINT})")
        waiting = _worker_state(pod).get("waiting") or {}
        reason, said = waiting.get("reason") or "", (waiting.get("message") or "").strip()
        if reason in IMAGE_PULL_REASONS:
            return Phase(
                "ImagePullFailed", f"{reason}: {said} ({PULL_HINT})" if said else f"{reason} ({PULL_HINT})"
            )
        if reason in CONTAINER_PROBLEMS:
            return Phase(reason, f"{said or reason} ({CONTAINER_PROBLEMS[reason]})")
        if reason in CREATING_REASONS and said:
            return Phase("VolumeNotReady", f"{said} ({CREATING_HINT})")
    return None


def _unschedulable_peer(job: dict[str, Any], pods: list[dict[str, Any]]) -> Phase | None:
    """A pod of a many-node run that the scheduler cannot place, while the others run or wait at the
    rendezvous: the run cannot make progress until it is placed, so it is not `Running`."""
    if (job.get("spec", {}).get("completions") or 1) <= 1:
        return None  # one pod: `_waiting_phase` reads it once nothing runs
    for pod in _newest(pods):
        finished = pod.get("status", {}).get("phase") not in (None, "Pending")
        if finished or pod["metadata"].get("deletionTimestamp"):
            continue
        for condition in pod.get("status", {}).get("conditions", []) or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                said = condition.get("message") or "the scheduler found no node"
                index = (pod["metadata"].get("annotations") or {}).get(JOB_COMPLETION_INDEX_ANNOTATION)
                which = f"index {index}" if index is not None else pod["metadata"].get("name", "a pod")
                waits = f"{which} cannot be scheduled, the other nodes wait for it"
                return Phase("Unschedulable", f"{waits}: {said} ({UNSCHEDULABLE_HINT})")
    return None


def _workload_condition(workload: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for condition in (workload or {}).get("status", {}).get("conditions", []) or []:
        if condition.get("type") == type_:
            return dict(condition)
    return {}


def queue_phase(job: dict[str, Any], workload: dict[str, Any] | None, ran_before: bool) -> Phase | None:
    """A Job Kueue holds suspended: `Queued` (never admitted yet) or `Preempted` (it ran, then was
    suspended again), in the Workload's own words. None when the Job is not suspended. `ran_before`
    comes from the LoraTrainingJob's status (the Job controller clears startTime on suspension)."""
    if not job.get("spec", {}).get("suspend"):
        return None
    evicted = _workload_condition(workload, "Evicted")
    preempted = _workload_condition(workload, "Preempted")
    if ran_before or evicted.get("status") == "True":
        said = (
            (evicted.get("status") == "True" and evicted.get("message"))
            or (preempted.get("status") == "True" and preempted.get("message"))
            or _workload_condition(workload, "QuotaReserved").get("message")
            or "the Job was suspended after it ran"
        )
        return Phase("Preempted", f"{said} ({PREEMPTED_HINT})")
    if workload is None:
        return Phase("Queued", f"waiting for Kueue to create the Job's Workload ({QUEUED_HINT})")
    reserved = _workload_condition(workload, "QuotaReserved")
    said = reserved.get("message") or _workload_condition(workload, "Admitted").get("message")
    return Phase("Queued", f"{said or 'waiting for admission'} ({QUEUED_HINT})")


def phase(
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    workload: dict[str, Any] | None = None,
    ran_before: bool = False,
) -> Phase:
    """The run's phase from the batch Job, its pods and (under Kueue) its Workload."""
    if job is None:
        return Phase("Pending", "creating the training Job")
    if _job_condition(job, "Complete") or _job_condition(job, "SuccessCriteriaMet"):
        return Phase("Succeeded", "training finished and the adapter was saved")
    failed = _job_condition(job, "Failed") or _job_condition(job, "FailureTarget")
    if failed:
        return _failure_phase(failed, pods)
    queued = queue_phase(job, workload, ran_before)
    if queued is not None:
        return queued
    peer = _unschedulable_peer(job, pods)
    if peer is not None:
        return peer
    if any("running" in _worker_state(p) for p in pods):
        return Phase("Running", "training")
    if any((_worker_state(p).get("terminated") or {}).get("exitCode") == 0 for p in pods):
        # The worker is done; the Job controller has not marked the Job complete yet.
        return Phase("Running", "training finished; waiting for the Job to complete")
    waiting = _waiting_phase(pods)
    if waiting is not None:
        return waiting
    if job.get("status", {}).get("failed"):
        return Phase("Retrying", f"attempt {job['status']['failed']} failed; starting another")
    return Phase("Pending", "waiting for the training pod to start")


def _failure_phase(job_condition: dict[str, Any], pods: list[dict[str, Any]]) -> Phase:
    reason = job_condition.get("reason", "")
    if reason == "DeadlineExceeded":
        return Phase("DeadlineExceeded", job_condition.get("message") or "activeDeadlineSeconds passed")
    for pod in _newest(pods):
        report = termination_report(pod)
        if isinstance(report, FailureReport):
            line = f"{report.error}: {report.message}"
            if report.error == RENDEZVOUS_TIMEOUT_ERROR:
                return Phase(RENDEZVOUS_TIMEOUT_ERROR, report.message)
            return Phase("InputError" if report.input_error else "Failed", line)
    return Phase("Failed", job_condition.get("message") or reason or "the training Job failed")


def adapter_result(
    job: LoraTrainingJob, pods: list[dict[str, Any]]
) -> tuple[AdapterResult, TrainingReport] | None:
    """The adapter block: claim + path in the claim (what serving pods can mount), or the URI in
    the object store the worker uploaded it to, with the digest its manifest records."""
    volume = job.spec.output.volume
    run_path = naming.run_subpath(volume.path, job.metadata["uid"]) if volume is not None else None
    for pod in _newest(pods):
        report = termination_report(pod)
        if isinstance(report, TrainingReport):
            result = AdapterResult(
                claim_name=volume.claim_name if volume is not None else None,
                path=run_path,
                uri=report.uri if volume is None else None,
                sha256=report.sha256,
                size_bytes=report.size_bytes,
                r=report.r,
                lora_alpha=report.lora_alpha,
                # Dropped from a message too long to fit: what the spec asked for.
                target_modules=list(report.target_modules or job.spec.lora.target_modules),
                base_model=report.base_model,
                merged_path=f"{run_path}/merged" if report.merged_dir and run_path else None,
                merged_uri=report.merged_uri if volume is None else None,
            )
            return result, report
    return None


def format_eta(seconds: float | None) -> str | None:
    if seconds is None or math.isnan(seconds) or seconds < 0:  # NaN: not known yet
        return None
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def trainable_line(trainable: int | None, total: int | None) -> str | None:
    """PEFT's print_trainable_parameters() line."""
    if not trainable or not total:
        return None
    percent = 100 * trainable / total
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {percent:.4f}"


def _timestamp(value: str | None) -> datetime | None:
    """An API timestamp (`2026-01-02T03:04:05Z`) as the datetime the status models hold."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def observe(
    job: LoraTrainingJob,
    batch_job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    progress: Progress | None,
    now: datetime,
    resumed_from_step: int | None = None,
    workload: dict[str, Any] | None = None,
) -> LoraTrainingJobStatus:
    """The whole new status. `progress` (and `resumed_from_step`) are what the worker's metrics said just
    now, when it was reachable; `workload` is Kueue's Workload for the Job, when there is one."""
    previous = job.status
    ran_before = previous.start_time is not None or previous.attempts > 0
    current = phase(batch_job, pods, workload, ran_before)
    status = previous.model_copy(deep=True)
    status.observed_generation = job.metadata.get("generation")
    status.nodes, status.world_size, distributed = topology(job)
    # A choice the worker reported stays (its pods may be gone later).
    status.distributed = (
        previous.distributed if distributed == AUTO_PENDING and previous.distributed else distributed
    )
    if batch_job is not None:
        status.job_name = batch_job["metadata"]["name"]
        counts = batch_job.get("status", {})
        started = sum(counts.get(k) or 0 for k in ("active", "failed", "succeeded"))
        status.attempts = max(previous.attempts, started)
        status.start_time = status.start_time or _timestamp(counts.get("startTime"))
        if current.succeeded or current.failed:
            status.completion_time = status.completion_time or _timestamp(counts.get("completionTime")) or now
    if progress is not None:
        status.progress = progress
    if resumed_from_step:
        status.resumed_from_step = resumed_from_step
    if current.succeeded:
        found = adapter_result(job, pods)
        if found is not None:
            status.adapter, report = found
            status.train_loss = report.train_loss
            status.eval_loss = report.eval_loss
            status.evaluation = evaluation_of(report.evaluation)
            status.trainable_parameters = trainable_line(report.trainable_parameters, report.all_parameters)
            if report.resumed_from_step is not None:
                status.resumed_from_step = report.resumed_from_step
            if report.world_size is not None:
                status.world_size = report.world_size
            if report.distributed is not None and job.spec.training.distributed == "auto":
                status.distributed = auto_choice(report.distributed, report.distributed_reason)
            if status.progress is not None:
                status.progress.step = status.progress.total_steps = report.steps or status.progress.step
                status.progress.percent, status.progress.eta = 100.0, "0s"
    status.conditions = merge(previous.conditions, run_conditions(current), status.observed_generation, now)
    return status


def topology(job: LoraTrainingJob) -> tuple[int, int, str]:
    """Nodes, processes in all (one per GPU, one per CPU-only pod) and how they share the work."""
    resources, chosen = job.spec.resources, job.spec.training.distributed
    nodes = resources.nodes
    world = nodes * max(1, resources.gpus)
    if chosen == "auto":
        # The worker decides on its GPU (the model's weights against the GPU's memory) and reports the
        # choice with its result; until then only CPU pods, always data parallel, are known.
        if resources.gpus == 0:
            return nodes, world, auto_choice("ddp", "CPU pods run data parallel")
        return nodes, world, AUTO_PENDING
    return nodes, world, chosen.upper()


AUTO_PENDING = "auto: DDP if a replica fits one GPU, else FSDP; the worker decides on its GPU"


def auto_choice(mode: str, reason: str | None) -> str:
    return f"{mode.upper()} (auto: {reason or 'chosen by the worker'})"


def run_conditions(current: Phase) -> list[Observed]:
    summary: ConditionStatus = "True" if current.succeeded else "False" if current.failed else "Unknown"
    return [
        Observed("Accepted", "True", "Accepted", "the spec is valid and the training Job exists"),
        Observed("Running", "True" if current.running else "False", current.reason, current.message),
        Observed("Succeeded", summary, current.reason, current.message),
        Observed("Failed", "True" if current.failed else "False", current.reason, current.message),
    ]


def invalid_spec_conditions(problems: list[str]) -> list[Observed]:
    message = "; ".join(problems)
    return [
        Observed("Accepted", "False", "InvalidSpec", message),
        Observed("Running", "False", "InvalidSpec", message),
        Observed("Succeeded", "False", "InvalidSpec", message),
        Observed("Failed", "True", "InvalidSpec", message),
    ]
