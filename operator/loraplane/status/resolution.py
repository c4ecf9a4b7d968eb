"""Pure resolution of the serving reconciler: which adapters a Deployment must serve and from which
path (`resolve`, `conflicts`), whether a pod serves an adapter's base model, and the API key a server
wants (`api_key_source`) with what a 401 means. Everything reads the Deployment through its
`DeploymentView`, parsed once per pass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from loraplane.api.adapter import LoraAdapter
from loraplane.api.storage import S3Connection, merged
from loraplane.builders import serving
from loraplane.builders.serving import DeploymentView

# Reasons that end an adapter's attempts on a pod until its spec or the Deployment changes: such an
# adapter does not hold a pod's readiness gate hostage.
TERMINAL_REASONS = frozenset(
    {
        "LoadFailed",
        "RankTooHigh",
        "BaseModelMismatch",
        "RuntimeLoadingDisabled",
        "VolumeNotMounted",
        "FetchFailed",
        "FetcherMissing",
    }
)
ON_DEMAND = "OnDemand"
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
class Fetch:
    """An adapter in the object store: what each serving pod's fetcher copies into its cache. The
    connection is merged with the chart's defaults; its Secret is only named (the fetcher container
    has the values in its environment)."""

    uri: str
    connection: S3Connection
    sha256: str | None  # pinned: the cache path names the digest, and a new digest is a new version

    @property
    def credentials(self) -> str | None:
        """The environment prefix of the fetcher's variables from the credentials Secret, if any."""
        secret = self.connection.credentials_secret
        return None if secret is None else serving.credentials_env_prefix(secret)


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
    # The LoraTrainingJob it comes from, and the evaluation that job recorded (for status.history).
    training_job: str | None = None
    evaluation: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    fetch: Fetch | None = None  # from the object store, through the pod's cache
    generation: int = 0  # the LoraAdapter's: a spec change retries a fetch that failed for good

    def as_base_model_path(self, deployment: DeploymentView) -> str | None:
        """spec.baseModel as a path in the serving pod, when it names a claim the loraplane way."""
        if not self.base_model.startswith(CLAIM_MOUNT_PREFIX):
            return None
        claim, _, sub_path = self.base_model[len(CLAIM_MOUNT_PREFIX) :].partition("/")
        return deployment.path_of(claim, sub_path)


def served_name(adapter: LoraAdapter) -> str:
    return adapter.spec.served_model_name or str(adapter.metadata["name"])


def resolve(
    adapter: LoraAdapter,
    deployment: DeploymentView | None,
    training_job: dict[str, Any] | None,
    object_store: S3Connection | None = None,
) -> Wanted | Problem:
    """The path (as the serving pods see it) and rank of an adapter, or why there is none yet. An
    adapter in the object store (`source.s3`, or a job's S3 result) is loaded from the pod's cache:
    `<cache>/.objects/<sha256>` when the digest is known, else `<cache>/<served name>`; an OnDemand
    one always from `<cache>/<served name>`, where vLLM's filesystem resolver looks."""
    found = _resolve(adapter, deployment, training_job, object_store)
    if isinstance(found, Problem) or found.mode != ON_DEMAND or deployment is None:
        return found
    refused = on_demand_problem(adapter, deployment, found.fetch)
    return refused or dataclasses.replace(found, path=serving.cache_path(found.served_name, None))


def _resolve(
    adapter: LoraAdapter,
    deployment: DeploymentView | None,
    training_job: dict[str, Any] | None,
    object_store: S3Connection | None,
) -> Wanted | Problem:
    name = adapter.metadata["name"]
    target = adapter.spec.serving.deployment
    if deployment is None:
        return Problem("DeploymentNotFound", f"Deployment {target} does not exist in this namespace")
    source = adapter.spec.source
    rank, sha256 = adapter.spec.rank, None
    job_name, evaluation = None, None
    fetch = None
    if source.hugging_face is not None:
        path = source.hugging_face.name
    elif source.s3 is not None:
        sha256 = source.s3.sha256
        fetch = Fetch(source.s3.uri, merged(source.s3.connection, object_store), sha256)
        path = serving.cache_path(served_name(adapter), sha256)
    else:
        if source.training_job is not None:
            job_name = source.training_job.name
            result = ((training_job or {}).get("status") or {}).get("adapter")
            if not result:
                state = _job_state(training_job)
                return Problem("WaitingForTrainingJob", f"LoraTrainingJob {job_name} {state}")
            rank, sha256 = rank or result.get("r"), result.get("sha256")
            evaluation = ((training_job or {}).get("status") or {}).get("evaluation")
            if not result.get("claimName"):
                # The run wrote to the object store, through the connection of its spec.output.s3.
                output = (((training_job or {}).get("spec") or {}).get("output") or {}).get("s3") or {}
                connection = S3Connection.model_validate(output.get("connection") or {})
                fetch = Fetch(str(result.get("uri")), merged(connection, object_store), sha256)
                path = serving.cache_path(served_name(adapter), sha256)
            else:
                claim, sub_path = result["claimName"], result["path"]
        else:
            assert source.volume is not None  # the CRD's CEL rule: exactly one source
            claim, sub_path = source.volume.claim_name, source.volume.path
        if fetch is None:
            found = deployment.path_of(claim, sub_path)
            if found is None:
                return Problem(
                    "VolumeNotMounted",
                    f"Deployment {target} does not mount PersistentVolumeClaim {claim} (path "
                    f"{sub_path or '/'}) in its vLLM container; add the claim to its volumes and "
                    "volumeMounts",
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
        training_job=job_name,
        evaluation=evaluation,
        fetch=fetch,
        generation=int(adapter.metadata.get("generation") or 0),
    )


def on_demand_problem(
    adapter: LoraAdapter, deployment: DeploymentView, fetch: Fetch | None
) -> Problem | None:
    """Why an OnDemand adapter cannot be catalogued, or None. Only adapters from the object store can
    (the pod's fetcher places them where vLLM's filesystem resolver looks); the cached copy is made to
    name the server's `--model`, so the resolver would take an adapter of another base model: such an
    adapter is refused here, before it reaches any cache."""
    if fetch is None:
        return Problem(
            "InvalidSpec",
            "spec.serving.mode OnDemand needs an adapter in the object store (spec.source.s3, or "
            "spec.source.trainingJob of a job with spec.output.s3); this one is read from a volume or the "
            "Hub: serve it with mode HotLoad or Static",
        )
    base = adapter.spec.base_model
    names = {*deployment.served_model_names, deployment.base_model_name, deployment.model}
    translated = Wanted(adapter.metadata["name"], "", "", ON_DEMAND, base).as_base_model_path(deployment)
    if base in names or (translated is not None and translated in names):
        return None
    return Problem(
        "BaseModelMismatch",
        f"spec.baseModel is {base} but Deployment {deployment.name} serves "
        f"{deployment.base_model_name or '(no --model)'}",
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
