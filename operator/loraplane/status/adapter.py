"""Pure decisions of the serving reconciler: which adapters a Deployment must serve and from which path,
whether a pod's readiness gate may open, and each LoraAdapter's status from what the pods hold."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from loraplane.api.adapter import LoraAdapter, LoraAdapterStatus, PodAdapterState
from loraplane.builders import serving
from loraplane.builders.serving import DeploymentView
from loraplane.status.conditions import Observed, merge

# Reasons that end an adapter's attempts on a pod until its spec or the Deployment changes: such an
# adapter does not hold a pod's readiness gate hostage.
TERMINAL_REASONS = frozenset(
    {"LoadFailed", "RankTooHigh", "BaseModelMismatch", "RuntimeLoadingDisabled", "VolumeNotMounted"}
)
CLAIM_MOUNT_PREFIX = "/mnt/claims/"  # where training pods mount claims (naming.CLAIMS_MOUNT)


@dataclass(frozen=True)
class Problem:
    """Why an adapter cannot be served right now (a Ready=False reason and its message)."""

    reason: str
    message: str

    @property
    def terminal(self) -> bool:
        return self.reason in TERMINAL_REASONS


@dataclass(frozen=True)
class Wanted:
    """An adapter the Deployment's pods must hold, resolved: served name, path in the pod, rank."""

    adapter: str  # the LoraAdapter's name
    served_name: str
    path: str
    mode: str
    base_model: str
    rank: int | None = None
    sha256: str | None = None
    created: str = ""
    # Its status said Ready before this pass: in a tie of creation times (one-second resolution) the
    # adapter already serving keeps its served name, so a newcomer never takes it over.
    serving: bool = False

    def as_base_model_path(self, deployment: DeploymentView) -> str | None:
        """spec.baseModel as a path in the serving pod, when it names a claim the loraplane way."""
        if not self.base_model.startswith(CLAIM_MOUNT_PREFIX):
            return None
        claim, _, sub_path = self.base_model[len(CLAIM_MOUNT_PREFIX) :].partition("/")
        return deployment.path_of(claim, sub_path)


def served_name(adapter: LoraAdapter) -> str:
    return adapter.spec.served_model_name or str(adapter.metadata["name"])


def resolve(
    adapter: LoraAdapter, deployment: DeploymentView | None, training_job: dict[str, Any] | None
) -> Wanted | Problem:
    """The path (as the serving pods see it) and rank of an adapter, or why there is none yet."""
    name = adapter.metadata["name"]
    target = adapter.spec.serving.deployment
    if deployment is None:
        return Problem("DeploymentNotFound", f"Deployment {target} does not exist in this namespace")
    source = adapter.spec.source
    rank, sha256 = adapter.spec.rank, None
    if source.hugging_face is not None:
        path = source.hugging_face.name
    else:
        if source.training_job is not None:
            job_name = source.training_job.name
            result = ((training_job or {}).get("status") or {}).get("adapter")
            if not result:
                state = _job_state(training_job)
                return Problem("WaitingForTrainingJob", f"LoraTrainingJob {job_name} {state}")
            if not result.get("claimName"):
                # A run that wrote to the object store: serving from there is not wired yet.
                return Problem(
                    "SourceInObjectStore",
                    f"LoraTrainingJob {job_name} wrote its adapter to {result.get('uri')}; serving "
                    "adapters from the object store is not supported yet",
                )
            claim, sub_path = result["claimName"], result["path"]
            rank, sha256 = rank or result.get("r"), result.get("sha256")
        else:
            assert source.volume is not None  # the CRD's CEL rule: exactly one source
            claim, sub_path = source.volume.claim_name, source.volume.path
        found = deployment.path_of(claim, sub_path)
        if found is None:
            return Problem(
                "VolumeNotMounted",
                f"Deployment {target} does not mount PersistentVolumeClaim {claim} (path {sub_path or '/'}) "
                "in its vLLM container; add the claim to its volumes and volumeMounts",
            )
        path = found
    return Wanted(
        adapter=name,
        served_name=served_name(adapter),
        path=path,
        mode=adapter.spec.serving.mode,
        base_model=adapter.spec.base_model,
        rank=rank,
        sha256=sha256,
        created=str(adapter.metadata.get("creationTimestamp", "")),
        serving=any(c.type == "Ready" and c.status == "True" for c in adapter.status.conditions),
    )


@dataclass(frozen=True)
class ApiKeySource:
    """Where the API key of a Deployment's server is: a Secret key, and who named it (for messages)."""

    secret: str
    key: str
    named_by: str


def api_key_source(deployment: DeploymentView, adapters: list[LoraAdapter]) -> ApiKeySource | None:
    """The server's API key (one per server): the Deployment's annotation, else the oldest LoraAdapter
    that names one in `spec.serving.apiKeySecretRef`; None when nobody names one. Raises ValueError for
    a malformed annotation."""
    name = deployment.name
    if deployment.api_key_error is not None:
        raise ValueError(deployment.api_key_error)
    annotated = deployment.api_key
    if annotated is not None:
        return ApiKeySource(*annotated, f"annotation {serving.API_KEY_ANNOTATION} of Deployment {name}")
    by_age = sorted(
        adapters, key=lambda a: (str(a.metadata.get("creationTimestamp", "")), a.metadata["name"])
    )
    for adapter in by_age:
        ref = adapter.spec.serving.api_key_secret_ref
        if ref is not None:
            named_by = f"spec.serving.apiKeySecretRef of LoraAdapter {adapter.metadata['name']}"
            return ApiKeySource(ref.name, ref.key, named_by)
    return None


def unauthorized_message(deployment: str, source: ApiKeySource | None, unreadable: str | None) -> str:
    """What to do when the server answers 401: name the field to set, or why the named key failed."""
    if source is None:
        return (
            f"the vLLM server of Deployment {deployment} wants an API key (401 Unauthorized): set "
            "spec.serving.apiKeySecretRef (name and key of a Secret in this namespace holding the key the "
            f"server was started with), or annotate the Deployment {serving.API_KEY_ANNOTATION}: "
            "<secret>/<key>"
        )
    where = f"Secret {source.secret} key {source.key} (named by {source.named_by})"
    if unreadable is not None:
        return f"the vLLM server wants an API key (401 Unauthorized) and {where} cannot be read: {unreadable}"
    return (
        f"the vLLM server refused the API key from {where} (401 Unauthorized): it must be the key the "
        "server was started with (--api-key or VLLM_API_KEY)"
    )


def _job_state(job: dict[str, Any] | None) -> str:
    if job is None:
        return "does not exist (yet)"
    conditions = (job.get("status") or {}).get("conditions") or []
    summary = next((c for c in conditions if c.get("type") == "Succeeded"), None)
    if summary and summary.get("status") == "False":
        return f"failed ({summary.get('reason')}): {summary.get('message', '')}"
    return "has not succeeded yet"


def conflicts(wanted: list[Wanted]) -> dict[str, str]:
    """Adapters whose served name an older LoraAdapter on the same Deployment already uses (created in
    the same second: the one already serving, then by name): adapter name -> the one that keeps it."""
    owner: dict[str, str] = {}
    lost: dict[str, str] = {}
    for candidate in sorted(wanted, key=lambda w: (w.created, not w.serving, w.adapter)):
        if candidate.served_name in owner:
            lost[candidate.adapter] = owner[candidate.served_name]
        else:
            owner[candidate.served_name] = candidate.adapter
    return lost


def base_model_matches(
    wanted: Wanted, base_id: str | None, base_root: str | None, deployment: DeploymentView
) -> bool:
    """spec.baseModel names what the pod serves: its card id, its path, or the same claim path as seen
    through the serving Deployment's mounts (training and serving pods may mount it differently)."""
    if base_id is None:
        return True  # nothing to compare against yet
    if wanted.base_model in {base_id, base_root}:
        return True
    translated = wanted.as_base_model_path(deployment)
    return translated is not None and translated in {base_id, base_root}


# --- pods and their gate ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodView:
    """A serving pod as the reconciler needs it."""

    name: str
    ip: str | None
    phase: str
    containers_ready: bool
    ready: bool
    deleting: bool
    started_at: str | None  # the vLLM container's current run
    restart_count: int
    gated: bool  # its spec has loraplane's readiness gate
    gate_status: str | None  # None: the condition is not there yet
    gate_reason: str | None
    gate_since: str | None  # lastTransitionTime of the gate condition
    template_hash: str = ""
    # What the vLLM container was started with; None when the pod's spec was not seen.
    lora: serving.LoraState | None = None

    @classmethod
    def of(cls, pod: dict[str, Any], container_name: str | None) -> PodView:
        status = pod.get("status") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        gate = conditions.get(serving.GATE) or {}
        statuses = status.get("containerStatuses") or []
        mine = next((c for c in statuses if c.get("name") == container_name), statuses[0] if statuses else {})
        running = (mine.get("state") or {}).get("running") or {}
        containers = (pod.get("spec") or {}).get("containers") or []
        spec = next((c for c in containers if c.get("name") == container_name), None)
        if spec is None and len(containers) == 1:
            spec = containers[0]
        return cls(
            name=pod["metadata"]["name"],
            ip=status.get("podIP"),
            phase=status.get("phase", "Pending"),
            containers_ready=(conditions.get("ContainersReady") or {}).get("status") == "True",
            ready=(conditions.get("Ready") or {}).get("status") == "True",
            deleting=bool(pod["metadata"].get("deletionTimestamp")),
            started_at=running.get("startedAt"),
            restart_count=int(mine.get("restartCount", 0)),
            gated=any(
                g.get("conditionType") == serving.GATE
                for g in pod.get("spec", {}).get("readinessGates") or []
            ),
            gate_status=gate.get("status"),
            gate_reason=gate.get("reason"),
            gate_since=gate.get("lastTransitionTime"),
            template_hash=(pod["metadata"].get("labels") or {}).get("pod-template-hash", ""),
            lora=None if spec is None else serving.container_lora_state(spec),
        )

    def predates(self, template: serving.LoraState) -> bool:
        """The pod was started before its Deployment's template turned the runtime LoRA API on (the
        rollout of that change replaces it): nothing can be loaded into it, and it does not count."""
        return template.hot_loadable and self.lora is not None and not self.lora.hot_loadable

    def predates_rank(self, template: serving.LoraState) -> bool:
        """The pod was started with a lower `--max-lora-rank` than its Deployment's template has now."""
        return self.lora is not None and self.lora.max_lora_rank < template.max_lora_rank

    @property
    def serving_api_up(self) -> bool:
        """The server answers (its readiness probe passed): loads may start."""
        return self.phase == "Running" and self.containers_ready and bool(self.ip) and not self.deleting

    @property
    def restarted_since_gate_opened(self) -> bool:
        """The container started again after the gate turned True: the kubelet keeps custom conditions,
        but vLLM came back empty, so the gate must close until the adapters are back."""
        if self.gate_status != "True" or not self.started_at or not self.gate_since:
            return False
        return _time(self.started_at) > _time(self.gate_since)


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class Holding:
    """One adapter on one pod after a pass."""

    loaded: bool = False
    loaded_at: dt.datetime | None = None
    reason: str | None = None  # why not, when it is not loaded
    error: str | None = None


@dataclass
class PodResult:
    """What a pass saw and did on one pod."""

    view: PodView
    holdings: dict[str, Holding] = field(default_factory=dict)  # adapter name -> state
    reachable: bool = False
    paths: dict[str, str] = field(default_factory=dict)  # what /v1/models listed: served name -> path
    waiting: bool = False  # waiting for something no event announces (leaving the Service for a swap)

    def settled(self, wanted: list[Wanted]) -> bool:
        """Every wanted adapter is on the pod or has failed for good: the gate may open."""
        for want in wanted:
            holding = self.holdings.get(want.adapter)
            if holding is None:
                return False
            if not holding.loaded and holding.reason not in TERMINAL_REASONS:
                return False
        return self.reachable


def gate_open_expired(view: PodView, now: dt.datetime, limit_s: float) -> bool:
    """The gate has been closed longer than the bounded wait since the container started."""
    started = view.started_at or view.gate_since
    return started is not None and (now - _time(started)).total_seconds() > limit_s


# --- a LoraAdapter's status ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pass:
    """One reconcile pass of the adapter's Deployment, as far as this adapter is concerned."""

    problem: Problem | None
    wanted: Wanted | None
    pods: list[PodResult]
    note: str = ""  # extra words for the Ready message (a restart in progress, a single replica)
    predating_pods: int = 0  # pods started before LoRA was enabled, left to the rollout (not in `pods`)


def observe(adapter: LoraAdapter, seen: Pass, now: dt.datetime) -> LoraAdapterStatus:
    """The adapter's status: Ready when every Ready pod holds it (and at least one does), else the
    most specific reason the pods reported."""
    name = adapter.metadata["name"]
    status = adapter.status.model_copy(deep=True)
    live = [p for p in seen.pods if not p.view.deleting]
    status.replicas = len(live)
    entries = []
    holders = 0
    errors: list[tuple[str, str, str]] = []
    for result in live:
        holding = result.holdings.get(name) or Holding()
        if holding.loaded:
            holders += 1
        elif holding.reason:
            errors.append((holding.reason, result.view.name, holding.error or ""))
        if holding.loaded:
            continue  # counted in readyReplicas; only pods that lack it are listed (status stays small)
        entries.append(
            PodAdapterState(pod=result.view.name, ip=result.view.ip, loaded=False, last_error=holding.error)
        )
    status.pods = sorted(entries, key=lambda e: e.pod)
    status.ready_replicas = holders
    if seen.wanted is not None:
        status.path, status.rank, status.sha256 = seen.wanted.path, seen.wanted.rank, seen.wanted.sha256
    condition = _ready(seen, live, name, holders, errors)
    status.conditions = merge(status.conditions, [condition], adapter.metadata.get("generation"), now)
    status.observed_generation = adapter.metadata.get("generation")
    return status


def _ready(
    seen: Pass, live: list[PodResult], name: str, holders: int, errors: list[tuple[str, str, str]]
) -> Observed:
    if seen.problem is not None:
        return Observed("Ready", "False", seen.problem.reason, seen.problem.message)
    ready_pods = [p for p in live if p.view.ready]
    missing = [p.view.name for p in ready_pods if not (p.holdings.get(name) or Holding()).loaded]
    if ready_pods and not missing and holders:
        message = f"served by {holders}/{len(live)} pods"
        return Observed("Ready", "True", "Loaded", f"{message}; {seen.note}" if seen.note else message)
    if errors:
        # The most telling reason first: a terminal one over a pod that merely did not answer.
        errors.sort(key=lambda e: (e[0] not in TERMINAL_REASONS, e[1]))
        reason, pod, message = errors[0]
        return Observed("Ready", "False", reason, f"pod {pod}: {message}")
    if not live and seen.predating_pods:
        message = (
            f"{seen.predating_pods} pod(s) started before LoRA was enabled on the Deployment; "
            "waiting for the rollout to replace them"
        )
        return Observed("Ready", "False", "WaitingForRollout", message)
    if not live:
        return Observed("Ready", "False", "NoReplicas", "the Deployment has no pods")
    waiting = f"{holders}/{len(live)} pods hold it"
    lacking = sorted(p.view.name for p in live if not (p.holdings.get(name) or Holding()).loaded)
    if lacking:
        more = f" and {len(lacking) - 3} more" if len(lacking) > 3 else ""
        waiting = f"{waiting}; not yet on {', '.join(lacking[:3])}{more}"
    if seen.note:
        waiting = f"{waiting}; {seen.note}"
    return Observed("Ready", "False", "Loading", waiting)
