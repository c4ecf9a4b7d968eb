"""LoraTrainingJob handlers: make sure the run's ConfigMap and Job exist, and keep the status true.

Level-based: creation (and operator restarts, via `resume`) runs the same idempotent `ensure_run`.
The status follows the run's Job and pods: their events (read from in-memory indexes, no API calls)
refresh the job that owns them, and only while the worker runs does a task of this process read its
metrics every `progress_interval_seconds`. Each refresh writes the status only when it changed.

Cost at rest: a waiting job (Pending, Unschedulable) has no task and wakes only on its Job's and
pods' events; a finished job is left out of the index of live jobs, and its children's events are
ignored at a dictionary lookup. kopf's own per-job cost: `start_training` (a changing handler)
writes kopf's `last-handled-configuration` annotation once. The progress reader is not a kopf timer:
kopf keeps the last body of every object of a kind that has a timer or daemon (the timer's kwargs),
whether the timer runs or not, which at a thousand finished jobs was most of the operator's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from typing import Any, cast

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
LOGGER = logging.getLogger(__name__)


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


# --- indexes over the children: what a refresh reads instead of calling the API ----------------------


# Of a Job's spec, what the status reads: Kueue's suspend (Queued, Preempted) and the group size.
_JOB_SPEC_READ = ("suspend", "completions", "parallelism")


# The three indexes keep packed entries (`kube.pack`): a thousand waiting jobs are three thousand
# entries that nothing reads until one of them changes.
Packed = kopf.Index[str, bytes]


def first(index: Packed, key: str) -> dict[str, Any] | None:
    """The index's first entry under `key`, unpacked; None when there is none."""
    return next((kube.unpack(entry) for entry in index.get(key, [])), None)


def _slim(body: kopf.Body | dict[str, Any]) -> dict[str, Any]:
    """What a refresh reads of a Job or pod (metadata names and times, the status, the few Job spec
    fields above), for the index to pack; the pod template is not kept in memory."""
    metadata = body.get("metadata", {})
    spec = body.get("spec") or {}
    annotations = metadata.get("annotations") or {}
    return {
        "metadata": {
            **{
                key: metadata.get(key)
                for key in ("name", "namespace", "uid", "labels", "creationTimestamp", "deletionTimestamp")
            },
            # Which index of a many-node run a pod is: named in the Unschedulable message.
            "annotations": {
                k: v for k, v in annotations.items() if k == status_of.JOB_COMPLETION_INDEX_ANNOTATION
            },
        },
        "spec": {key: spec[key] for key in _JOB_SPEC_READ if key in spec},
        "status": body.get("status", {}),
    }


@kopf.index("batch", "v1", "jobs", labels=OWNED)
def training_batch_jobs(labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[str, bytes]:
    return {labels[naming.LABEL_TRAINING_JOB_UID]: kube.pack(_slim(body))}


@kopf.index("batch", "v1", "jobs", labels=OWNED)
def training_runs_by_job(labels: kopf.Labels, uid: str | None, **_: Any) -> dict[str, str]:
    """A Job's uid -> its run's: a Kueue Workload names the Job it belongs to, and the packed entries
    above are not unpacked a thousand at a time to find that Job."""
    return {str(uid): labels[naming.LABEL_TRAINING_JOB_UID]}


@kopf.index("", "v1", "pods", labels=OWNED)
def training_pods(labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[str, bytes]:
    return {labels[naming.LABEL_TRAINING_JOB_UID]: kube.pack(_slim(body))}


def _is_live(status: dict[str, Any]) -> bool:
    """Started (it has a Succeeded condition), not refused, not finished: its children's events count."""
    summary = next((c for c in status.get("conditions") or [] if c.get("type") == "Succeeded"), None)
    if summary is None or summary.get("reason") == "InvalidSpec":
        return False
    return summary.get("reason") not in status_of.TERMINAL_REASONS


def _live(body: kopf.Body, **_: Any) -> bool:
    return _is_live(dict(body.get("status") or {}))


# A filter, not a None result: kopf keeps an object's last value when its indexer returns None, and
# drops it only when the object stops matching the filter.
@kopf.index(*RESOURCE, when=_live)
def live_training_jobs(body: kopf.Body, uid: str | None, **_: Any) -> dict[str, bytes]:
    """Jobs whose run is under way, by uid (finished jobs are not kept: nothing is done for them)."""
    return {str(uid): kube.pack(kube.slim(body))}


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


# One refresh of a job at a time (its children's events and its progress reader may coincide).
_REFRESHING: dict[str, asyncio.Lock] = {}
# uid -> (the resourceVersion it was judged against, the status written): until the watch brings the
# write back, the next refresh starts from what was written (no second write, no repeated Event).
_WRITTEN: dict[str, tuple[Any, LoraTrainingJobStatus]] = {}
_SEEN_LIVE: set[str] = set()  # live jobs refreshed once since this process started


def _worker_running(body: dict[str, Any] | kopf.Body) -> bool:
    """The run's phase is Running: its worker answers on its metrics port."""
    conditions = (body.get("status") or {}).get("conditions") or []
    summary = next((c for c in conditions if c.get("type") == "Succeeded"), None)
    return summary is not None and summary.get("reason") == "Running"


async def refresh(
    body: dict[str, Any],
    batch_jobs: Packed,
    pods_index: Packed,
    read_metrics: bool,
) -> None:
    """The job's status from its Job and pods (and, while the worker runs, its metrics), written
    straight away when it changed; then the adapter published, once the status says Succeeded."""
    job = LoraTrainingJob.model_validate(body)
    namespace, uid = str(job.metadata["namespace"]), str(job.metadata["uid"])
    written = _WRITTEN.get(uid)
    if written is not None and written[0] == job.metadata.get("resourceVersion"):
        # The index has not seen the status written last yet: judge against what was written.
        job = job.model_copy(update={"status": written[1]})
    elif written is not None:
        _WRITTEN.pop(uid, None)  # the watch brought the write back: the body says it now
    summary = find(job.status.conditions, "Succeeded")
    if summary is None or summary.reason == "InvalidSpec":
        return  # not started yet, or never will be
    async with _REFRESHING.setdefault(uid, asyncio.Lock()):
        RECONCILES.labels(KIND).inc()
        try:
            finished = await _refresh(job, body, namespace, batch_jobs, pods_index, read_metrics)
        except Exception:
            RECONCILE_ERRORS.labels(KIND).inc()
            raise
    if finished:
        # No more refreshes: its children's events are ignored from now on.
        _REFRESHING.pop(uid, None)
        _WRITTEN.pop(uid, None)
        _SEEN_LIVE.discard(uid)


async def _refresh(
    job: LoraTrainingJob,
    body: dict[str, Any],
    namespace: str,
    batch_jobs: Packed,
    pods_index: Packed,
    read_metrics: bool,
) -> bool:
    """One refresh; True when the run has finished (and its adapter, if any, is published)."""
    uid = job.metadata["uid"]
    batch_job = first(batch_jobs, uid)
    pods = [kube.unpack(pod) for pod in pods_index.get(uid, [])]
    was_terminal = status_of.is_terminal(job.status)
    if was_terminal and (job.status.adapter is None or job.spec.adapter is None or uid in _PUBLISHED):
        return True
    if batch_job is None and not was_terminal:
        await asyncio.to_thread(ensure_run, job, cast(kopf.Body, body), namespace)  # the Job was deleted
    current, resumed = await read_progress(pods) if read_metrics else (None, None)
    workload = None
    if batch_job is not None and (batch_job.get("spec") or {}).get("suspend"):
        # Why Kueue holds it (quota, flavor) or took it back: the Workload's own conditions.
        job_uid = str(batch_job["metadata"].get("uid", ""))
        workload = await asyncio.to_thread(kube.workload_of_job, namespace, job_uid)
    new = status_of.observe(job, batch_job, pods, current, now(), resumed, workload)
    await _write_refreshed(job, new)
    _announce(cast(kopf.Body, body), job.status, new)
    summary = find(new.conditions, "Succeeded")
    _count_phase(namespace, job.metadata["name"], summary.reason if summary else None)
    if new.progress is not None:
        TRAINING_PROGRESS.labels(namespace, job.metadata["name"]).set(new.progress.percent)
    if new.adapter is not None and status_of.is_terminal(new):
        # The status saying Succeeded is written above, before the LoraAdapter exists: it never sees
        # its training job unfinished.
        finished = job.model_copy(update={"status": new})
        promoted = await promote_or_publish(finished, cast(kopf.Body, body), namespace)
        if promoted is not None:
            decided = new.model_copy(deep=True)
            decided.conditions = merge(decided.conditions, [promoted], decided.observed_generation, now())
            await _write_refreshed(finished, decided)
    return status_of.is_terminal(new)


async def _write_refreshed(job: LoraTrainingJob, new: LoraTrainingJobStatus) -> None:
    """Patch what changed in the status, and remember it until the index brings it back."""
    wire, before = new.to_wire(), job.status.to_wire()
    changed = {key: value for key, value in wire.items() if before.get(key) != value}
    if changed:
        await asyncio.to_thread(
            kube.patch_training_job_status, job.metadata["namespace"], job.metadata["name"], changed
        )
        _WRITTEN[job.metadata["uid"]] = (job.metadata.get("resourceVersion"), new)


@kopf.on.resume(*RESOURCE)
async def publish_after_restart(body: kopf.Body, namespace: str | None, **_: Any) -> None:
    """A run that finished while the operator was down, or just before it stopped, may not have
    published its adapter yet (publishing is idempotent: an existing LoraAdapter of ours is kept)."""
    job = parse(body)
    if namespace and status_of.is_terminal(job.status) and job.status.adapter and job.spec.adapter:
        promoted = await promote_or_publish(job, body, namespace)
        if promoted is not None:
            decided = job.status.model_copy(deep=True)
            decided.conditions = merge(decided.conditions, [promoted], decided.observed_generation, now())
            await _write_refreshed(job, decided)


# uid -> the task reading a running worker's progress (one per running job, none for the others).
_FOLLOWING: dict[str, asyncio.Task[None]] = {}


def follow_if_running(
    uid: str,
    live_jobs: Packed,
    batch_jobs: Packed,
    pods_index: Packed,
) -> None:
    """Start reading the job's progress if its worker runs and nothing reads it yet. The indexes are
    kopf's live views, so the task always sees the job's, Job's and pods' latest state."""
    body = first(live_jobs, uid)
    if body is None or not _worker_running(body) or uid in _FOLLOWING:
        return
    _FOLLOWING[uid] = asyncio.create_task(_follow(uid, live_jobs, batch_jobs, pods_index))


async def _follow(
    uid: str,
    live_jobs: Packed,
    batch_jobs: Packed,
    pods_index: Packed,
) -> None:
    """While the worker runs: its progress at once, then every `progress_interval_seconds`; ends
    when the job is no longer Running (finished, failed, preempted) or gone."""
    try:
        while True:
            body = first(live_jobs, uid)
            if body is None or not _worker_running(body):
                return
            try:
                await refresh(body, batch_jobs, pods_index, read_metrics=True)
            except Exception:  # counted by refresh; the next tick tries again, as a timer would
                LOGGER.exception("reading the progress of training job %s failed", uid)
            await asyncio.sleep(get_settings().progress_interval_seconds)
    finally:
        _FOLLOWING.pop(uid, None)


@kopf.on.event(*RESOURCE)  # type: ignore[arg-type]
async def training_job_seen(
    body: kopf.Body,
    uid: str | None,
    type: str | None,
    live_training_jobs: Packed,
    training_batch_jobs: Packed,
    training_pods: Packed,
    **_: Any,
) -> None:
    """A run under way is refreshed once when this process first sees it live: after an operator
    restart, and after `start_training` marked it started (its children's first events may have come
    before that and were not for a live job yet). Later changes come from its children; a worker
    that runs gets its progress reader (a restarted operator starts it here)."""
    if uid is None or type == "DELETED":
        _SEEN_LIVE.discard(uid or "")
        return
    if not _is_live(dict(body.get("status") or {})):
        return
    follow_if_running(uid, live_training_jobs, training_batch_jobs, training_pods)
    if uid in _SEEN_LIVE:
        return
    _SEEN_LIVE.add(uid)
    await refresh(kube.to_plain(body), training_batch_jobs, training_pods, read_metrics=False)


# One handler for both kinds of child: kopf registers it once per decorator.
@kopf.on.event("batch", "v1", "jobs", labels=OWNED)
@kopf.on.event("", "v1", "pods", labels=OWNED)  # type: ignore[arg-type]
async def training_child_changed(
    labels: kopf.Labels,
    live_training_jobs: Packed,
    training_batch_jobs: Packed,
    training_pods: Packed,
    **_: Any,
) -> None:
    """A run's Job or pod changed: refresh its job, unless the job has finished (not in the index)."""
    body = first(live_training_jobs, labels.get(naming.LABEL_TRAINING_JOB_UID, ""))
    if body is not None:
        await refresh(body, training_batch_jobs, training_pods, read_metrics=False)


@kopf.on.delete(*RESOURCE, optional=True)  # optional: no finalizer, Kubernetes deletes the children
def forget_training(namespace: str | None, name: str | None, uid: str | None, **_: Any) -> None:
    _REFRESHING.pop(uid or "", None)
    _WRITTEN.pop(uid or "", None)
    _SEEN_LIVE.discard(uid or "")
    follower = _FOLLOWING.pop(uid or "", None)
    if follower is not None:
        follower.cancel()
    if namespace and name:
        _count_phase(namespace, name, None)
        with contextlib.suppress(KeyError):  # never reported progress
            TRAINING_PROGRESS.remove(namespace, name)


def _owned_by_a_job(body: kopf.Body, **_: Any) -> bool:
    return any(owner.get("kind") == "Job" for owner in body.get("metadata", {}).get("ownerReferences") or [])


# Kueue's Workload of a queued run changes (quota reserved, admitted, evicted): refresh that run, so
# `Queued`/`Preempted` carry the Workload's current words. An event handler, not an index: kopf makes
# every handler wait for the listings of indexed kinds, and Kueue's CRDs may come and go at runtime.
@kopf.on.event(kube.KUEUE_GROUP, kube.KUEUE_VERSION, "workloads", when=_owned_by_a_job)  # type: ignore[arg-type]
async def training_workload_changed(
    body: kopf.Body,
    live_training_jobs: Packed,
    training_batch_jobs: Packed,
    training_pods: Packed,
    training_runs_by_job: kopf.Index[str, str],
    **_: Any,
) -> None:
    for owner in body.get("metadata", {}).get("ownerReferences") or []:
        if owner.get("kind") != "Job":
            continue
        for run_uid in training_runs_by_job.get(str(owner.get("uid")), []):
            run = first(live_training_jobs, run_uid)
            if run is not None:
                await refresh(run, training_batch_jobs, training_pods, read_metrics=False)
            return
