"""A LoraTrainingJob's status, from what its batch Job, its pods and its worker report.

Condition types: `Accepted`, `Running`, `Succeeded` and `Failed`. `Succeeded` is always present and
its reason says where the run is (Pending, Unschedulable, ImagePullFailed, Running, Retrying,
Succeeded, Failed, InputError, DeadlineExceeded, InvalidSpec): the printer column reads it, and
`kubectl wait --for=condition=Succeeded` / `--for=condition=Failed` work.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from loraplane import naming
from loraplane.api.common import ConditionStatus
from loraplane.api.training_job import AdapterResult, LoraTrainingJob, LoraTrainingJobStatus, Progress
from loraplane.status.conditions import Observed, find, merge

IMAGE_PULL_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
TERMINAL_REASONS = {"Succeeded", "Failed", "InputError", "DeadlineExceeded", "InvalidSpec"}


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


def termination_report(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The worker's JSON result (or error) from its termination message, if it wrote one."""
    terminated = _worker_state(pod).get("terminated") or {}
    message = terminated.get("message")
    if not message:
        return None
    try:
        report = json.loads(message)
    except ValueError:
        return {"error": terminated.get("reason", "Error"), "message": message.strip().splitlines()[-1]}
    return report if isinstance(report, dict) else None


def _newest(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True)


def _waiting_phase(pods: list[dict[str, Any]]) -> Phase | None:
    """Why the newest pod is not running yet, as a real scheduler or kubelet reported it."""
    for pod in _newest(pods)[:1]:
        for condition in pod.get("status", {}).get("conditions", []) or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                return Phase("Unschedulable", condition.get("message") or "the scheduler found no node")
        waiting = _worker_state(pod).get("waiting") or {}
        if waiting.get("reason") in IMAGE_PULL_REASONS:
            return Phase("ImagePullFailed", f"{waiting['reason']}: {waiting.get('message', '')}".strip(": "))
    return None


def phase(job: dict[str, Any] | None, pods: list[dict[str, Any]]) -> Phase:
    """The run's phase from the batch Job and its pods."""
    if job is None:
        return Phase("Pending", "creating the training Job")
    if _job_condition(job, "Complete") or _job_condition(job, "SuccessCriteriaMet"):
        return Phase("Succeeded", "training finished and the adapter was saved")
    failed = _job_condition(job, "Failed") or _job_condition(job, "FailureTarget")
    if failed:
        return _failure_phase(failed, pods)
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
        if report and "error" in report:
            line = f"{report['error']}: {report.get('message', '')}"
            return Phase("InputError" if report.get("inputError") else "Failed", line)
    return Phase("Failed", job_condition.get("message") or reason or "the training Job failed")


def adapter_result(
    job: LoraTrainingJob, pods: list[dict[str, Any]]
) -> tuple[AdapterResult, dict[str, Any]] | None:
    """The adapter block, recorded as claim + path in the claim (what serving pods can mount)."""
    volume = job.spec.output.volume
    run_path = naming.run_subpath(volume.path, job.metadata["uid"])
    for pod in _newest(pods):
        report = termination_report(pod)
        if report and "sha256" in report:
            merged = f"{run_path}/merged" if report.get("mergedDir") else None
            result = AdapterResult(
                claim_name=volume.claim_name,
                path=run_path,
                sha256=report["sha256"],
                size_bytes=report.get("sizeBytes", 0),
                r=report.get("r", job.spec.lora.r),
                lora_alpha=report.get("loraAlpha", job.spec.lora.lora_alpha),
                target_modules=list(report.get("targetModules") or job.spec.lora.target_modules),
                base_model=report.get("baseModel", ""),
                merged_path=merged,
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


def observe(
    job: LoraTrainingJob,
    batch_job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    progress: Progress | None,
    now: datetime,
    resumed_from_step: int | None = None,
) -> LoraTrainingJobStatus:
    """The whole new status. `progress` (and `resumed_from_step`) are what the worker's metrics said just
    now, when it was reachable."""
    previous = job.status
    current = phase(batch_job, pods)
    status = previous.model_copy(deep=True)
    status.observed_generation = job.metadata.get("generation")
    if batch_job is not None:
        status.job_name = batch_job["metadata"]["name"]
        counts = batch_job.get("status", {})
        started = sum(counts.get(k) or 0 for k in ("active", "failed", "succeeded"))
        status.attempts = max(previous.attempts, started)
        status.start_time = status.start_time or counts.get("startTime")
        if current.succeeded or current.failed:
            status.completion_time = status.completion_time or counts.get("completionTime") or now
    if progress is not None:
        status.progress = progress
    if resumed_from_step:
        status.resumed_from_step = resumed_from_step
    if current.succeeded:
        found = adapter_result(job, pods)
        if found is not None:
            status.adapter, report = found
            status.train_loss = report.get("trainLoss")
            status.eval_loss = report.get("evalLoss")
            status.trainable_parameters = trainable_line(
                report.get("trainableParameters"), report.get("allParameters")
            )
            if report.get("resumedFromStep") is not None:
                status.resumed_from_step = report["resumedFromStep"]
            if status.progress is not None:
                status.progress.step = status.progress.total_steps = report.get("steps", status.progress.step)
                status.progress.percent, status.progress.eta = 100.0, "0s"
    status.conditions = merge(previous.conditions, run_conditions(current), status.observed_generation, now)
    return status


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
