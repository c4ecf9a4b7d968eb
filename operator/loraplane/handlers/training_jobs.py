"""LoraTrainingJob handlers: make sure the run's ConfigMap and Job exist, and keep the status true.

Level-based: creation (and operator restarts, via `resume`) runs the same idempotent `ensure_run`;
a timer reads the run's Job and pods from in-memory indexes (no API calls) and the worker's metrics,
and writes the status only when it changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from typing import Any

import kopf

from loraplane import GROUP, VERSION, kube, naming, progress
from loraplane.api.sft_args import validate_sft_args
from loraplane.api.training_job import PLURAL, Evaluation, LoraTrainingJob, LoraTrainingJobStatus
from loraplane.api.worker import WorkerGauge as G
from loraplane.builders import training as build
from loraplane.metrics import RECONCILE_ERRORS, RECONCILES, TRAINING_JOBS, TRAINING_PROGRESS
from loraplane.settings import get_settings
from loraplane.status import evaluation
from loraplane.status import training as status_of
from loraplane.status.conditions import Observed, find, merge

RESOURCE = (GROUP, VERSION, PLURAL)
KIND = "LoraTrainingJob"
OWNED = {naming.LABEL_TRAINING_JOB_UID: kopf.PRESENT}


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


# Each job's latest phase (the Succeeded reason), for the jobs-by-state gauge.
_PHASES: dict[tuple[str, str], str] = {}


def _count_phase(namespace: str, name: str, phase: str | None) -> None:
    if phase is None:
        _PHASES.pop((namespace, name), None)
    else:
        _PHASES[(namespace, name)] = phase
    counts: dict[str, int] = {}
    for seen in _PHASES.values():
        counts[seen] = counts.get(seen, 0) + 1
    TRAINING_JOBS.clear()
    for state, count in counts.items():
        TRAINING_JOBS.labels(state).set(count)


def parse(body: kopf.Body) -> LoraTrainingJob:
    return LoraTrainingJob.model_validate(kube.to_plain(body))


# --- indexes over the children: what the timer reads instead of calling the API ----------------------


@kopf.index("batch", "v1", "jobs", labels=OWNED)
def training_batch_jobs(labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    return {labels[naming.LABEL_TRAINING_JOB_UID]: kube.to_plain(body)}


@kopf.index("", "v1", "pods", labels=OWNED)
def training_pods(labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    return {labels[naming.LABEL_TRAINING_JOB_UID]: kube.to_plain(body)}


# --- creating the run ---------------------------------------------------------------------------------


def problems_only_the_operator_sees(job: LoraTrainingJob) -> list[str]:
    problems = validate_sft_args(job.spec.training.sft_args)
    if job.spec.lora.quantization != "none" and job.spec.resources.gpus == 0:
        problems.append("spec.lora.quantization: 4bit/8bit (QLoRA) needs a GPU; set spec.resources.gpus >= 1")
    if job.spec.training.distributed == "fsdp" and job.spec.resources.gpus == 0:
        # accelerate enables FSDP only on GPUs (and the like): CPU processes would run as plain DDP.
        problems.append(
            "spec.training.distributed: fsdp shards the model across GPUs; on CPU-only pods accelerate "
            "runs the processes data parallel (DDP); set spec.resources.gpus >= 1 or distributed: ddp"
        )
    used = build.credentials_by_field(job, get_settings())
    if len({secret.model_dump_json() if secret else "" for secret in used.values()}) > 1:
        # The pod's store client reads one set of AWS_* variables.
        said = ", ".join(
            f"{field}.connection.credentialsSecret: {secret.name if secret else '(none)'}"
            for field, secret in used.items()
        )
        problems.append(
            f"the object-store locations name different credentials ({said}); one training pod uses "
            "one set, so name the same Secret and keys in each"
        )
    return problems


def ensure_run(job: LoraTrainingJob, owner: kopf.Body, namespace: str) -> bool:
    """Create the ConfigMap and Job unless they exist. True when the Job was created just now."""
    settings = get_settings()
    config_map = build.config_map(job, settings)
    batch_job = build.batch_job(job, settings)
    children = [config_map, batch_job]
    if job.spec.resources.nodes > 1:
        children.append(build.rendezvous_service(job))
    kopf.adopt(children, owner=owner)
    kube.ensure_config_map(namespace, config_map)
    if job.spec.resources.nodes > 1:  # before the pods, so their names resolve as soon as they exist
        kube.ensure_service(namespace, children[2])
    return kube.ensure_batch_job(namespace, batch_job)


def _write_status(patch: kopf.Patch, old: LoraTrainingJobStatus, new: LoraTrainingJobStatus) -> None:
    wire, before = new.to_wire(), old.to_wire()
    changed = {key: value for key, value in wire.items() if before.get(key) != value}
    if changed:
        patch.status.update(changed)


@kopf.on.create(*RESOURCE)
@kopf.on.resume(*RESOURCE)
def start_training(body: kopf.Body, namespace: str | None, patch: kopf.Patch, **_: Any) -> None:
    assert namespace is not None  # a namespaced kind
    RECONCILES.labels(KIND).inc()
    job = parse(body)
    if status_of.is_terminal(job.status):
        return
    problems = problems_only_the_operator_sees(job)
    if problems:
        status = job.status.model_copy(deep=True)
        status.conditions = merge(status.conditions, status_of.invalid_spec_conditions(problems), None, now())
        status.observed_generation = job.metadata.get("generation")
        _write_status(patch, job.status, status)
        kopf.warn(body, reason="InvalidSpec", message="; ".join(problems))
        return
    # Only a volume output has a claim to wait for: a job writing to the store mounts none.
    claim = job.spec.output.volume.claim_name if job.spec.output.volume is not None else None
    if claim is not None and not kube.claim_exists(namespace, claim):
        # Not terminal: the claim may be created next. kopf retries the handler.
        kopf.warn(
            body, reason="OutputVolumeNotFound", message=f"PersistentVolumeClaim {claim} does not exist"
        )
        raise kopf.TemporaryError(f"waiting for PersistentVolumeClaim {claim}", delay=10)
    if ensure_run(job, body, namespace):
        kopf.info(
            body, reason="JobCreated", message=f"created Job {naming.batch_job_name(job.metadata['name'])}"
        )
    status = job.status.model_copy(deep=True)
    status.conditions = merge(
        status.conditions,
        status_of.run_conditions(status_of.Phase("Pending", "waiting for the training pod to start")),
        job.metadata.get("generation"),
        now(),
    )
    status.job_name = naming.batch_job_name(job.metadata["name"])
    _write_status(patch, job.status, status)


# --- keeping the status true --------------------------------------------------------------------------


async def read_progress(pods: list[dict[str, Any]]) -> tuple[Any, int | None]:
    """Progress from the running worker's metrics, if any pod is running and answers."""
    settings = get_settings()
    for pod in pods:
        ip = pod.get("status", {}).get("podIP")
        if not ip or pod.get("status", {}).get("phase") != "Running":
            continue
        url = f"http://{ip}:{settings.worker_metrics_port}/metrics"
        text = await asyncio.to_thread(kube.scrape, url, 2.0)
        if text:
            gauges = progress.parse_gauges(text)
            resumed = int(gauges[G.RESUMED_FROM_STEP]) if gauges.get(G.RESUMED_FROM_STEP) else None
            return progress.to_progress(gauges, now()), resumed
    return None, None


def _announce(body: kopf.Body, old: LoraTrainingJobStatus, new: LoraTrainingJobStatus) -> None:
    """An Event for every transition of the run's phase: a Warning when it failed or waits on a fix."""
    before, after = find(old.conditions, "Succeeded"), find(new.conditions, "Succeeded")
    if after is None or (before is not None and before.reason == after.reason):
        return
    if after.status == "False" or status_of.Phase(after.reason, after.message).stuck:
        kopf.warn(body, reason=after.reason, message=after.message)
    else:
        kopf.info(body, reason=after.reason, message=after.message)


# Runs whose adapter this process has published (or found published): no more API calls for them.
_PUBLISHED: set[str] = set()


async def served_version(
    namespace: str, existing: dict[str, Any] | None, wanted: dict[str, Any]
) -> evaluation.ServedVersion | None:
    """What the LoraAdapter serves now when it is not this run's adapter: the other job's recorded
    evaluation (read from that job's status, so it compares like with like by digest)."""
    if not existing or existing.get("spec", {}).get("source") == wanted["spec"]["source"]:
        return None
    other = (existing.get("spec", {}).get("source") or {}).get("trainingJob", {}).get("name")
    if not other:
        return evaluation.ServedVersion(None, None)
    found = await asyncio.to_thread(kube.get_custom_object, namespace, PLURAL, other) or {}
    recorded = (found.get("status") or {}).get("evaluation")
    return evaluation.ServedVersion(other, Evaluation.model_validate(recorded) if recorded else None)


async def promote_or_publish(job: LoraTrainingJob, body: kopf.Body, namespace: str) -> Observed | None:
    """`publish_adapter`, first judged by `spec.adapter.promotion` when there is one. Returns the
    `Promoted` condition to record (None without a policy, or when it was recorded before: the
    cluster remembers the decision across operator restarts)."""
    publication = job.spec.adapter
    if publication is None or publication.promotion is None:
        await publish_adapter(job, body, namespace)
        return None
    if find(job.status.conditions, evaluation.CONDITION) is not None:
        _PUBLISHED.add(job.metadata["uid"])
        return None
    wanted = build.published_adapter(job)
    name = wanted["metadata"]["name"]
    existing = await asyncio.to_thread(kube.get_adapter, namespace, name)
    served = await served_version(namespace, existing, wanted)
    if served is not None and not publication.replace:
        _PUBLISHED.add(job.metadata["uid"])
        message = f"LoraAdapter {name} exists and spec.adapter.replace is false"
        kopf.warn(body, reason="Conflict", message=message)
        return evaluation.Decision(False, evaluation.CONFLICT, message).condition()
    decision = evaluation.decide(publication.promotion, job.status.evaluation, served)
    if not decision.promote:
        _PUBLISHED.add(job.metadata["uid"])
        kopf.warn(
            body, reason=decision.reason, message=f"LoraAdapter {name} not published: {decision.message}"
        )
        return decision.condition()
    await publish_adapter(job, body, namespace)
    kopf.info(body, reason="Promoted", message=decision.message)
    return decision.condition()


async def publish_adapter(job: LoraTrainingJob, body: kopf.Body, namespace: str) -> None:
    """Create the LoraAdapter the spec asks for; point an existing one of ours at the new version only
    when the spec allows it, else report the conflict. Never a silent overwrite."""
    publication = job.spec.adapter
    if publication is None:
        return
    wanted = build.published_adapter(job)
    name = wanted["metadata"]["name"]
    if await asyncio.to_thread(kube.create_adapter, namespace, wanted):
        kopf.info(body, reason="AdapterPublished", message=f"created LoraAdapter {name}")
        _PUBLISHED.add(job.metadata["uid"])
        return
    existing = await asyncio.to_thread(kube.get_adapter, namespace, name) or {}
    if existing.get("spec", {}).get("source") == wanted["spec"]["source"]:
        _PUBLISHED.add(job.metadata["uid"])
        return  # published earlier (an operator restart, a replayed timer)
    _PUBLISHED.add(job.metadata["uid"])  # either way below, reported once
    if not publication.replace:
        kopf.warn(
            body, reason="Conflict", message=f"LoraAdapter {name} exists and spec.adapter.replace is false"
        )
        return
    await asyncio.to_thread(
        kube.patch_adapter, namespace, name, {"spec": {"source": wanted["spec"]["source"]}}
    )
    kopf.info(body, reason="AdapterUpdated", message=f"LoraAdapter {name} now serves this run's adapter")


# kopf passes the indexes by their names; its handler Protocols cannot list them, hence the ignore.
@kopf.timer(*RESOURCE, interval=get_settings().progress_interval_seconds)  # type: ignore[arg-type]
async def follow_training(
    body: kopf.Body,
    namespace: str | None,
    patch: kopf.Patch,
    training_batch_jobs: kopf.Index[str, dict[str, Any]],
    training_pods: kopf.Index[str, dict[str, Any]],
    **_: Any,
) -> None:
    assert namespace is not None  # a namespaced kind
    job = parse(body)
    summary = find(job.status.conditions, "Succeeded")
    if summary is None or summary.reason == "InvalidSpec":
        return  # not started yet, or never will be
    RECONCILES.labels(KIND).inc()
    try:
        uid = job.metadata["uid"]
        batch_job = next(iter(training_batch_jobs.get(uid, [])), None)
        pods = list(training_pods.get(uid, []))
        was_terminal = status_of.is_terminal(job.status)
        if was_terminal and (job.status.adapter is None or job.spec.adapter is None or uid in _PUBLISHED):
            return
        if batch_job is None and not was_terminal:
            await asyncio.to_thread(ensure_run, job, body, namespace)  # someone deleted the Job: converge
        current, resumed = await read_progress(pods)
        workload = None
        if batch_job is not None and (batch_job.get("spec") or {}).get("suspend"):
            # Why Kueue holds it (quota, flavor) or took it back: the Workload's own conditions.
            job_uid = str(batch_job["metadata"].get("uid", ""))
            workload = await asyncio.to_thread(kube.workload_of_job, namespace, job_uid)
        new = status_of.observe(job, batch_job, pods, current, now(), resumed, workload)
        _announce(body, job.status, new)
        _write_status(patch, job.status, new)
        summary = find(new.conditions, "Succeeded")
        _count_phase(namespace, job.metadata["name"], summary.reason if summary else None)
        if new.progress is not None:
            TRAINING_PROGRESS.labels(namespace, job.metadata["name"]).set(new.progress.percent)
        if job.status.adapter is not None:
            # Published on the pass after the one that recorded the adapter, so the LoraAdapter never
            # sees its training job before the job's status says Succeeded.
            promoted = await promote_or_publish(job, body, namespace)
            if promoted is not None:
                new.conditions = merge(new.conditions, [promoted], new.observed_generation, now())
                _write_status(patch, job.status, new)
    except Exception:
        RECONCILE_ERRORS.labels(KIND).inc()
        raise


@kopf.on.delete(*RESOURCE, optional=True)  # optional: no finalizer, Kubernetes deletes the children
def forget_training(namespace: str | None, name: str | None, **_: Any) -> None:
    if namespace and name:
        _count_phase(namespace, name, None)
        with contextlib.suppress(KeyError):  # never reported progress
            TRAINING_PROGRESS.remove(namespace, name)
