"""Pure functions over a vLLM Deployment: `DeploymentView`, what a serving pass reads of it (parsed
once per pass), and the patches: what loraplane adds to enable LoRA, the merged
`--lora-modules` of Static mode, adapter paths through the Deployment's own volume mounts, and what
cleanup takes away again.

`args`, `command` and `readinessGates` are atomic lists for server-side apply and strategic merge:
these functions return whole new lists, keeping every argument the user set, and the handler writes
them with the Deployment's `resourceVersion` (read-modify-write, a conflict means read again).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from loraplane import GROUP
from loraplane.api.storage import S3CredentialsSecret

GATE = f"{GROUP}/adapters-loaded"
OPT_IN_ANNOTATION = f"{GROUP}/manage-lora"
# What loraplane added to the pod template, and what was there before, so that cleanup can restore it
# and a later apply that dropped the additions is noticed.
SETTINGS_ANNOTATION = f"{GROUP}/lora-settings"
# Names of the adapters loraplane put into `--lora-modules` (Static mode); other entries are the user's.
STATIC_ANNOTATION = f"{GROUP}/static-adapters"
CONTAINER_ANNOTATION = f"{GROUP}/container"
# The record of what loraplane loaded into a Deployment's pods: a ConfigMap the Deployment owns (goes
# with it), labelled with the Deployment's name, its key `loaded` a JSON list of served names. The
# cluster remembers what loraplane is responsible for, so a name no LoraAdapter claims any more is
# unloaded after an operator restart or a finalizer removed by hand, and names users loaded
# themselves (never listed there) are left alone. Not an annotation of the Deployment: a Deployment's
# generation counts its annotation changes too.
RECORD_LABEL = f"{GROUP}/loaded-adapters-of"
RECORD_KEY = "loaded"
# Its second key: per pod run ("pod/startedAt"), the sha256 of the cache entry vLLM had loaded of each
# OnDemand served name (compact JSON, `{"pod/startedAt": {"name": "digest"}}`). vLLM keeps the weights
# it loaded in memory under the same path when the cache entry changes, and only the digest it loaded
# tells that it must be unloaded: after an operator restart too. A record without it (written by an
# earlier loraplane) reads as no digest known.
ON_DEMAND_KEY = "onDemand"
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
# `<secret>/<key>` (or `<secret>`, key `token`): the Secret holding the API key the server was started
# with; loraplane sends it on its calls to the server.
API_KEY_ANNOTATION = f"{GROUP}/api-key-secret"
DEFAULT_SECRET_KEY = "token"  # noqa: S105 - a key name (as in every SecretKeyRef), not a secret
_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")

RUNTIME_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"
ENABLE_LORA = "--enable-lora"
MAX_LORA_RANK = "--max-lora-rank"
MAX_LORAS = "--max-loras"
MAX_CPU_LORAS = "--max-cpu-loras"
LORA_MODULES = "--lora-modules"
# The only values vLLM's `--max-lora-rank` accepts (0.32); it is a ceiling, any rank up to it loads.
ALLOWED_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_MAX_LORA_RANK = 16
VLLM_DEFAULT_PORT = 8000

# The fetcher loraplane adds to a serving pod for adapters in the object store: a container of the
# worker image (`python -m loraplane_worker.fetch --listen`) sharing an emptyDir cache with vLLM.
FETCHER_CONTAINER = "loraplane-fetcher"
CACHE_VOLUME = "loraplane-adapter-cache"
# An empty folder over the ServiceAccount token's path in the fetcher only: the ServiceAccount
# admission plugin mounts the token into every container that has no mount there, so this keeps
# the fetcher without Kubernetes API credentials while vLLM keeps whatever the pod had.
NO_TOKEN_VOLUME = "loraplane-no-api-token"  # noqa: S105 - a volume name, not a secret
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"  # noqa: S105 - a path, not a secret
CACHE_MOUNT = "/var/lib/loraplane/adapters"
OBJECTS_DIR = ".objects"  # loraplane_worker.fetch.OBJECTS: one folder per digest
# vLLM's filesystem resolver (OnDemand adapters): a request for a name vLLM does not hold loads
# `<dir>/<name>/` when its adapter_config.json names the server's `--model`. With VLLM_PLUGINS unset
# vLLM loads every installed plugin, this one included; a user's VLLM_PLUGINS list gets it added.
RESOLVER_ENV = "VLLM_LORA_RESOLVER_CACHE_DIR"
PLUGINS_ENV = "VLLM_PLUGINS"
RESOLVER_PLUGIN = "lora_filesystem_resolver"
CACHE_HEADROOM = (
    0.9  # the fetcher keeps below this share of the emptyDir's limit (the kubelet evicts above it)
)


def record_name(deployment: str) -> str:
    return f"{deployment}-loraplane-loaded"


def loaded_record(config_map: dict[str, Any] | None) -> frozenset[str]:
    """The served names a record ConfigMap lists (empty when there is none, or it is unreadable)."""
    raw = ((config_map or {}).get("data") or {}).get(RECORD_KEY)
    try:
        names = json.loads(raw) if raw else []
    except ValueError:
        names = []
    return frozenset(str(n) for n in names) if isinstance(names, list) else frozenset()


def on_demand_record(config_map: dict[str, Any] | None) -> dict[tuple[str, str], str]:
    """("pod/startedAt", served name) -> the digest vLLM loaded, as a record ConfigMap lists them; what
    is not a digest is left out (empty when there is none, or it is unreadable)."""
    raw = ((config_map or {}).get("data") or {}).get(ON_DEMAND_KEY)
    try:
        pods = json.loads(raw) if raw else {}
    except ValueError:
        pods = {}
    if not isinstance(pods, dict):
        return {}
    return {
        (str(run), str(name)): digest
        for run, loaded in pods.items()
        if isinstance(loaded, dict)
        for name, digest in loaded.items()
        if isinstance(digest, str) and _DIGEST.match(digest)
    }


def on_demand_data(on_demand: Mapping[tuple[str, str], str]) -> str:
    """The record's OnDemand key: digests grouped by pod run, compact and in a stable order (the same
    entries give the same text)."""
    pods: dict[str, dict[str, str]] = {}
    for (run, name), digest in on_demand.items():
        pods.setdefault(run, {})[name] = digest
    return json.dumps(pods, sort_keys=True, separators=(",", ":"))


def record_config_map(
    deployment: dict[str, Any],
    names: frozenset[str],
    on_demand: Mapping[tuple[str, str], str] | None = None,
) -> dict[str, Any]:
    """The record ConfigMap listing `names` and the digests vLLM loaded of OnDemand ones, owned by the
    Deployment (deleted with it)."""
    metadata = deployment["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": record_name(metadata["name"]),
            "namespace": metadata.get("namespace"),
            "labels": {RECORD_LABEL: metadata["name"]},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": metadata["name"],
                    "uid": metadata["uid"],
                }
            ],
        },
        "data": {
            RECORD_KEY: json.dumps(sorted(names), separators=(",", ":")),
            ON_DEMAND_KEY: on_demand_data(on_demand or {}),
        },
    }


def is_opted_in(deployment: dict[str, Any]) -> bool:
    annotations = deployment.get("metadata", {}).get("annotations") or {}
    return str(annotations.get(OPT_IN_ANNOTATION, "")).lower() == "true"


def api_key_annotation(deployment: dict[str, Any]) -> tuple[str, str] | None:
    """The (secret, key) the Deployment's API-key annotation names; None without one. Raises
    ValueError, with the form it wants, when the value is not `<secret>/<key>` or `<secret>`."""
    raw = (deployment.get("metadata", {}).get("annotations") or {}).get(API_KEY_ANNOTATION)
    if raw is None:
        return None
    secret, _, key = str(raw).strip().partition("/")
    key = key or DEFAULT_SECRET_KEY
    if not _SECRET_NAME.match(secret) or len(secret) > 253 or not _SECRET_KEY.match(key):
        raise ValueError(
            f"annotation {API_KEY_ANNOTATION} is {raw!r}; it must be <secret>/<key> (or <secret> for key "
            f"{DEFAULT_SECRET_KEY}), naming a Secret in the Deployment's namespace"
        )
    return secret, key


def max_lora_rank_for(rank: int) -> int:
    """The smallest `--max-lora-rank` vLLM accepts that lets an adapter of `rank` load."""
    for allowed in ALLOWED_MAX_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest --max-lora-rank {ALLOWED_MAX_LORA_RANKS[-1]}")


def cache_path(served_name: str, sha256: str | None) -> str:
    """Where vLLM loads an adapter of the pod's cache: the digest's folder when it is pinned (a new
    digest is a new path, so a new version is swapped like any other), else the served name's link."""
    if sha256:
        return f"{CACHE_MOUNT}/{OBJECTS_DIR}/{sha256}"
    return f"{CACHE_MOUNT}/{served_name}"


def credentials_env_prefix(secret: S3CredentialsSecret) -> str:
    """The fetcher's variables for one credentials Secret reference: `<prefix>_ACCESS_KEY_ID` and so
    on. A hash of the reference (the name and its keys), not the name itself: Secret names have dots
    and hyphens, and two references must never map to the same variables."""
    reference = json.dumps([secret.name, secret.access_key_id_key, secret.secret_access_key_key,
                            secret.session_token_key])  # fmt: skip
    return "LORAPLANE_S3_" + hashlib.sha256(reference.encode()).hexdigest()[:10].upper()


# --- containers and arguments -------------------------------------------------------------------------


def container_index(pod_spec: dict[str, Any], annotations: dict[str, str] | None = None) -> int | None:
    """The vLLM container: the one the Deployment's annotation names, else the first whose image or
    command says vllm, else the only container."""
    containers = pod_spec.get("containers") or []
    wanted = (annotations or {}).get(CONTAINER_ANNOTATION)
    for index, container in enumerate(containers):
        if wanted and container.get("name") == wanted:
            return index
    if wanted:
        return None
    for index, container in enumerate(containers):
        words = " ".join([container.get("image", ""), *container.get("command", [])])
        if "vllm" in words.lower():
            return index
    return 0 if len(containers) == 1 else None


def serving_container(deployment: dict[str, Any]) -> dict[str, Any] | None:
    spec = deployment.get("spec", {}).get("template", {}).get("spec", {})
    index = container_index(spec, deployment.get("metadata", {}).get("annotations"))
    return None if index is None else dict(spec["containers"][index])


def _span(args: list[str], flag: str, multi: bool) -> tuple[int, int] | None:
    """Index range [start, end) of the first occurrence of `flag` and its value(s)."""
    for start, arg in enumerate(args):
        if arg == flag:
            end = start + 1
            if multi:
                while end < len(args) and not args[end].startswith("--"):
                    end += 1
            elif end < len(args) and not args[end].startswith("--") and flag != ENABLE_LORA:
                end += 1
            return start, end
        if arg.startswith(flag + "="):
            return start, start + 1
    return None


def flag_values(args: list[str], flag: str, multi: bool = False) -> list[str] | None:
    """The values after `flag` (`--f v`, `--f=v`, or several for a multi-value flag); None if absent."""
    span = _span(args, flag, multi)
    if span is None:
        return None
    start, end = span
    if "=" in args[start]:
        return [args[start].split("=", 1)[1]]
    return args[start + 1 : end]


def flag_value(args: list[str], flag: str) -> str | None:
    values = flag_values(args, flag)
    return values[0] if values else None


def has_flag(args: list[str], flag: str) -> bool:
    return _span(args, flag, multi=False) is not None


def without_flag(args: list[str], flag: str, multi: bool = False) -> list[str]:
    """`args` with every occurrence of `flag` (and its values) removed."""
    result = list(args)
    while (span := _span(result, flag, multi)) is not None:
        del result[span[0] : span[1]]
    return result


def with_flag(args: list[str], flag: str, values: list[str], multi: bool = False) -> list[str]:
    """`flag` set to `values`, in place of the first occurrence (later ones removed: vLLM keeps only
    the last, so two would silently drop one), else appended."""
    span = _span(args, flag, multi)
    if span is None:
        return [*args, flag, *values]
    start, _ = span
    head, tail = list(args[:start]), without_flag(list(args[start:]), flag, multi)
    return [*head, flag, *values, *tail]


def max_lora_rank_of(args: list[str]) -> int:
    value = flag_value(args, MAX_LORA_RANK)
    return int(value) if value and value.isdigit() else VLLM_DEFAULT_MAX_LORA_RANK


def api_port(container: dict[str, Any]) -> int:
    """Where the server listens: `--port`, else a container port named http, else vLLM's 8000."""
    port = flag_value(container.get("args") or [], "--port")
    if port and port.isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == "http":
            return int(declared["containerPort"])
    return VLLM_DEFAULT_PORT


def env_value(container: dict[str, Any], name: str) -> str | None:
    for entry in container.get("env") or []:
        if entry.get("name") == name:
            return str(entry.get("value", ""))
    return None


# --- the Deployment as one pass reads it ---------------------------------------------------------------


@dataclass(frozen=True)
class ClaimMount:
    """A mount of (part of) a PersistentVolumeClaim in the vLLM container."""

    claim: str
    sub_path: str
    mount_path: str


@dataclass(frozen=True)
class DeploymentView:
    """A served Deployment as a pass reads it, parsed once (as `PodView` does for a pod): the vLLM
    container's arguments and environment, what they say about LoRA, loraplane's annotations, the
    claims the container mounts. Patches are still built from the body itself (`enable_lora_patch`,
    `static_patch`, `cleanup_patch`): they return whole lists of it."""

    name: str
    namespace: str | None
    uid: str | None
    resource_version: str | None
    replicas: int | None
    container_name: str | None  # None: no container is recognisably vLLM's
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # (name, value) of plain-value entries
    lora: LoraState
    port: int
    base_model_name: str  # `--served-model-name`, else `--model`
    served_model_names: tuple[str, ...]
    lora_modules: tuple[tuple[str, str], ...]  # (name, path) of every `--lora-modules` entry
    opted_in: bool
    # The API-key annotation: (secret, key), None without one, or why it is malformed.
    api_key: tuple[str, str] | None
    api_key_error: str | None
    managed_static: tuple[str, ...]
    additions_removed: tuple[str, ...]
    claim_mounts: tuple[ClaimMount, ...]
    # The template has loraplane's fetcher, and vLLM mounts its cache.
    has_fetcher: bool = False
    # The `--model` string as given: what vLLM's filesystem resolver compares an adapter's
    # base_model_name_or_path with.
    model: str = ""
    # vLLM's filesystem resolver reads the fetcher's cache (OnDemand adapters can be catalogued).
    resolver_on: bool = False

    @classmethod
    def of(cls, deployment: dict[str, Any]) -> DeploymentView:
        metadata = deployment.get("metadata") or {}
        container = serving_container(deployment) or {}
        lora = container_lora_state(container, gated=_gated(deployment))
        args = [str(a) for a in container.get("args") or []]
        served = flag_values(args, "--served-model-name", multi=True) or []
        try:
            api_key, api_key_error = api_key_annotation(deployment), None
        except ValueError as error:
            api_key, api_key_error = None, str(error)
        replicas = (deployment.get("spec") or {}).get("replicas")
        return cls(
            name=str(metadata.get("name", "")),
            namespace=metadata.get("namespace"),
            uid=metadata.get("uid"),
            resource_version=metadata.get("resourceVersion"),
            replicas=None if replicas is None else int(replicas),
            container_name=container.get("name"),
            args=tuple(args),
            env=tuple(
                (str(e.get("name")), str(e.get("value", "")))
                for e in container.get("env") or []
                if "valueFrom" not in e
            ),
            lora=lora,
            port=api_port(container),
            base_model_name=served[0] if served else model_argument(container),
            served_model_names=tuple(served),
            lora_modules=tuple(module_paths(args).items()),
            opted_in=is_opted_in(deployment),
            api_key=api_key,
            api_key_error=api_key_error,
            managed_static=tuple(managed_static_names(deployment)),
            additions_removed=tuple(_removed(recorded_settings(deployment), lora)),
            claim_mounts=_claim_mounts(deployment, container),
            has_fetcher=_has_fetcher(deployment, container),
            model=model_argument(container),
            resolver_on=resolver_on(container),
        )

    def path_of(self, claim: str, sub_path: str) -> str | None:
        """Where `sub_path` inside claim `claim` appears in the serving container; None when the
        container does not mount that part of the claim."""
        wanted = sub_path.strip("/")
        for mount in self.claim_mounts:
            if mount.claim != claim:
                continue
            mounted = mount.sub_path
            if mounted and wanted != mounted and not wanted.startswith(mounted + "/"):
                continue
            rest = wanted[len(mounted) :].strip("/") if mounted else wanted
            base = mount.mount_path.rstrip("/") or "/"
            return f"{base.rstrip('/')}/{rest}" if rest else base
        return None


def model_argument(container: dict[str, Any]) -> str:
    """The model the server was told to load: `--model`, else the word after `serve` (`vllm serve M`)."""
    args = [str(a) for a in container.get("args") or []]
    flagged = flag_value(args, "--model")
    if flagged:
        return flagged
    words = [str(w) for w in container.get("command") or []] + args
    after = words.index("serve") + 1 if "serve" in words else len(words)
    return words[after] if after < len(words) and not words[after].startswith("--") else ""


def resolver_on(container: dict[str, Any]) -> bool:
    """vLLM's filesystem resolver reads loraplane's cache in this container."""
    if env_value(container, RESOLVER_ENV) != CACHE_MOUNT:
        return False
    plugins = next((e for e in container.get("env") or [] if e.get("name") == PLUGINS_ENV), None)
    if plugins is None or "valueFrom" in plugins:
        return True  # unset: every plugin loads; from a ConfigMap or Secret: the user's to keep right
    return RESOLVER_PLUGIN in [p.strip() for p in str(plugins.get("value", "")).split(",")]


def _has_fetcher(deployment: dict[str, Any], container: dict[str, Any]) -> bool:
    spec = deployment.get("spec", {}).get("template", {}).get("spec", {})
    present = any(c.get("name") == FETCHER_CONTAINER for c in spec.get("containers") or [])
    mounted = any(m.get("name") == CACHE_VOLUME for m in container.get("volumeMounts") or [])
    return present and mounted


def _claim_mounts(deployment: dict[str, Any], container: dict[str, Any]) -> tuple[ClaimMount, ...]:
    """The container's mounts of claim volumes, in the container's order."""
    spec = deployment.get("spec", {}).get("template", {}).get("spec", {})
    claims = {
        v["name"]: str((v.get("persistentVolumeClaim") or {})["claimName"])
        for v in spec.get("volumes") or []
        if (v.get("persistentVolumeClaim") or {}).get("claimName")
    }
    return tuple(
        ClaimMount(claims[m["name"]], str(m.get("subPath", "")).strip("/"), str(m["mountPath"]))
        for m in container.get("volumeMounts") or []
        if m.get("name") in claims
    )


# --- enabling LoRA (HotLoad) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraSettings:
    """What loraplane writes when it enables LoRA (the chart's serving values)."""

    max_loras: int
    max_cpu_loras: int


@dataclass(frozen=True)
class LoraState:
    """What the Deployment's pod template says about LoRA."""

    lora_enabled: bool
    runtime_api: bool
    gated: bool
    max_lora_rank: int

    @property
    def hot_loadable(self) -> bool:
        """LoRA and the runtime load/unload API are on: adapters can be loaded without a restart."""
        return self.lora_enabled and self.runtime_api

    def missing(self, needed_rank: int | None) -> list[str]:
        """The additions HotLoad needs that the template lacks, in words for messages."""
        gaps = []
        if not self.lora_enabled:
            gaps.append(ENABLE_LORA)
        if not self.runtime_api:
            gaps.append(f"{RUNTIME_ENV}=True")
        if not self.gated:
            gaps.append(f"readiness gate {GATE}")
        if needed_rank is not None and needed_rank > self.max_lora_rank:
            gaps.append(f"{MAX_LORA_RANK} >= {needed_rank} (now {self.max_lora_rank})")
        return gaps


def lora_state(deployment: dict[str, Any]) -> LoraState:
    container = serving_container(deployment) or {}
    return container_lora_state(container, gated=_gated(deployment))


def _gated(deployment: dict[str, Any]) -> bool:
    gates = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("readinessGates") or []
    return any(g.get("conditionType") == GATE for g in gates)


def container_lora_state(container: dict[str, Any], gated: bool = False) -> LoraState:
    """What one container's arguments and environment say about LoRA (a template's or a pod's)."""
    args = container.get("args") or []
    return LoraState(
        lora_enabled=has_flag(args, ENABLE_LORA),
        runtime_api=str(env_value(container, RUNTIME_ENV)).lower() in {"true", "1"},
        gated=gated,
        max_lora_rank=max_lora_rank_of(args),
    )


def recorded_settings(deployment: dict[str, Any]) -> dict[str, Any] | None:
    """What loraplane recorded when it enabled LoRA (None: it never did)."""
    raw = (deployment.get("metadata", {}).get("annotations") or {}).get(SETTINGS_ANNOTATION)
    if not raw:
        return None
    try:
        parsed = json.loads(raw)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def additions_removed(deployment: dict[str, Any]) -> list[str]:
    """loraplane's additions that someone else's apply took away since loraplane wrote them."""
    record = recorded_settings(deployment)
    return [] if record is None else _removed(record, lora_state(deployment))


def _removed(record: dict[str, Any] | None, state: LoraState) -> list[str]:
    if record is None:
        return []
    removed = []
    if ENABLE_LORA in record.get("flags", {}) and not state.lora_enabled:
        removed.append(ENABLE_LORA)
    if record.get("env") and not state.runtime_api:
        removed.append(RUNTIME_ENV)
    if record.get("gate") and not state.gated:
        removed.append(f"readiness gate {GATE}")
    return removed


def enable_lora_patch(
    deployment: dict[str, Any], settings: LoraSettings, needed_rank: int | None
) -> dict[str, Any] | None:
    """The whole-list patch (args, env, readinessGates, record annotation) that enables HotLoad, or None
    when nothing is missing. Keeps every user argument; raises `--max-lora-rank` only when needed."""
    spec = deployment["spec"]["template"]["spec"]
    index = container_index(spec, deployment.get("metadata", {}).get("annotations"))
    if index is None:
        return None
    container = copy.deepcopy(spec["containers"][index])
    args: list[str] = list(container.get("args") or [])
    before = recorded_settings(deployment) or {"flags": {}, "env": False, "gate": False}
    flags: dict[str, str | None] = dict(before.get("flags", {}))

    def set_flag(flag: str, values: list[str]) -> None:
        nonlocal args
        if flag not in flags:
            original = flag_values(args, flag)
            flags[flag] = None if original is None else " ".join(original)
        args = with_flag(args, flag, values)

    if not has_flag(args, ENABLE_LORA):
        set_flag(ENABLE_LORA, [])
    wanted_rank = max(max_lora_rank_of(args), max_lora_rank_for(needed_rank or 1))
    if needed_rank is not None and needed_rank > max_lora_rank_of(args):
        set_flag(MAX_LORA_RANK, [str(wanted_rank)])
    if not has_flag(args, MAX_LORAS):
        set_flag(MAX_LORAS, [str(settings.max_loras)])
    if not has_flag(args, MAX_CPU_LORAS):
        set_flag(MAX_CPU_LORAS, [str(max(settings.max_cpu_loras, _max_loras(args, settings)))])
    env, env_added, env_was = _runtime_env_on(container, before)
    gates = [g for g in spec.get("readinessGates") or [] if g.get("conditionType") != GATE]
    gate_added = bool(before.get("gate")) or len(gates) == len(spec.get("readinessGates") or [])
    gates.append({"conditionType": GATE})
    containers = copy.deepcopy(spec["containers"])
    container["args"], container["env"] = args, env
    containers[index] = container
    if containers == spec["containers"] and gates == (spec.get("readinessGates") or []):
        return None
    # Other keys of the record (the fetcher's) stay as they are.
    record: dict[str, Any] = {**before, "flags": flags, "env": env_added, "gate": gate_added}
    if env_was is not None:
        record["envWas"] = env_was
    return {
        "metadata": {
            "annotations": {SETTINGS_ANNOTATION: json.dumps(record, sort_keys=True)},
            "resourceVersion": deployment["metadata"].get("resourceVersion"),
        },
        "spec": {"template": {"spec": {"containers": containers, "readinessGates": gates}}},
    }


def _runtime_env_on(
    container: dict[str, Any], before: dict[str, Any]
) -> tuple[list[dict[str, Any]], bool, dict[str, Any] | None]:
    """The container's env with the runtime variable True (in place of the user's entry, if any),
    whether loraplane adds it, and the user's own entry to put back on cleanup when it differed."""
    env = copy.deepcopy(container.get("env") or [])
    on = {"name": RUNTIME_ENV, "value": "True"}
    index = next((i for i, e in enumerate(env) if e.get("name") == RUNTIME_ENV), None)
    if before.get("env"):
        added, was = True, None  # recorded when loraplane first enabled LoRA
    elif isinstance(before.get("envWas"), dict):
        added, was = False, before["envWas"]
    else:
        added, was = index is None, None if index is None or env[index] == on else env[index]
    if index is None:
        env.append(on)
    else:
        env[index] = on
    return env, added, was


def _max_loras(args: list[str], settings: LoraSettings) -> int:
    value = flag_value(args, MAX_LORAS)
    return int(value) if value and value.isdigit() else settings.max_loras


# --- the fetcher: adapters from the object store through a pod-local cache ----------------------------


@dataclass(frozen=True)
class FetcherSettings:
    """What the fetcher container is made of (the chart's values)."""

    image: str
    port: int
    cache_mib: int


def credentials_env(secret: S3CredentialsSecret) -> list[dict[str, Any]]:
    """One credentials Secret as the fetcher's variables, by reference (the values stay in the
    Secret). Optional: a Secret that is missing or lacks a key leaves the variables unset, and the
    fetcher reports `CredentialsMissing` for the adapters that need them; the pod starts and serves
    the rest rather than failing as a whole."""
    prefix = credentials_env_prefix(secret)
    pairs = (
        ("ACCESS_KEY_ID", secret.access_key_id_key),
        ("SECRET_ACCESS_KEY", secret.secret_access_key_key),
        ("SESSION_TOKEN", secret.session_token_key),
    )
    return [
        {
            "name": f"{prefix}_{suffix}",
            "valueFrom": {"secretKeyRef": {"name": secret.name, "key": key, "optional": True}},
        }
        for suffix, key in pairs
    ]


def fetcher_container(settings: FetcherSettings, secrets: Iterable[S3CredentialsSecret]) -> dict[str, Any]:
    """The fetcher: it listens on the pod IP for the operator's wanted list, copies each adapter into
    the cache and verifies it. It gets the store credentials it needs and nothing else: no API token
    (see NO_TOKEN_VOLUME), no privileges."""
    max_mib = int(settings.cache_mib * CACHE_HEADROOM)
    env: list[dict[str, Any]] = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    distinct = {credentials_env_prefix(secret): secret for secret in secrets}
    for _, secret in sorted(distinct.items()):
        env.extend(credentials_env(secret))
    return {
        "name": FETCHER_CONTAINER,
        "image": settings.image,
        "command": ["python", "-m", "loraplane_worker.fetch"],
        "args": [
            "--listen",
            f"$(POD_IP):{settings.port}",
            "--cache-dir",
            CACHE_MOUNT,
            "--max-mib",
            str(max_mib),
        ],
        "env": env,
        "ports": [{"name": "lp-fetcher", "containerPort": settings.port}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": settings.port}, "periodSeconds": 2},
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [
            {"name": CACHE_VOLUME, "mountPath": CACHE_MOUNT},
            {"name": NO_TOKEN_VOLUME, "mountPath": TOKEN_PATH, "readOnly": True},
        ],
    }


def _resolver_env(
    env: list[dict[str, Any]], before: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """vLLM's env with its filesystem resolver reading the cache, and the record of the user's own
    entries to put back on cleanup (kept from when loraplane first turned the resolver on)."""
    env = copy.deepcopy(env)
    record = before.get("resolver")
    if not isinstance(record, dict):
        record = {
            "dirWas": next((e for e in env if e.get("name") == RESOLVER_ENV), None),
            "pluginsWas": next((e for e in env if e.get("name") == PLUGINS_ENV), None),
        }
    env = [e for e in env if e.get("name") != RESOLVER_ENV] + [{"name": RESOLVER_ENV, "value": CACHE_MOUNT}]
    for index, entry in enumerate(env):
        if entry.get("name") == PLUGINS_ENV and "valueFrom" not in entry:
            listed = [p.strip() for p in str(entry.get("value", "")).split(",") if p.strip()]
            if RESOLVER_PLUGIN not in listed:
                env[index] = {"name": PLUGINS_ENV, "value": ",".join([*listed, RESOLVER_PLUGIN])}
    return env, record


def _resolver_env_removed(env: list[dict[str, Any]], record: dict[str, Any]) -> list[dict[str, Any]]:
    """vLLM's env without loraplane's resolver settings: the user's entries as they were."""
    kept: list[dict[str, Any]] = []
    for entry in env:
        name = entry.get("name")
        if name not in {RESOLVER_ENV, PLUGINS_ENV}:
            kept.append(entry)
            continue
        was = record.get("dirWas" if name == RESOLVER_ENV else "pluginsWas")
        if isinstance(was, dict):
            kept.append(was)
    return kept


def fetcher_patch(
    deployment: dict[str, Any],
    settings: FetcherSettings,
    secrets: Iterable[S3CredentialsSecret],
    catalogue: bool = False,
) -> dict[str, Any] | None:
    """The whole-list patch that gives the pod template loraplane's fetcher (container, cache volume,
    vLLM's read-only mount of it) with the variables of `secrets`, and with `catalogue` vLLM's
    filesystem resolver on that cache (OnDemand adapters); None when it has exactly that. The
    record annotation keeps a digest of what was written: the API server's defaulting changes the
    container as stored, so the comparison is with what loraplane asked for, not the stored form."""
    spec = deployment["spec"]["template"]["spec"]
    index = container_index(spec, deployment.get("metadata", {}).get("annotations"))
    if index is None:
        return None
    wanted = fetcher_container(settings, secrets)
    cache = {"name": CACHE_VOLUME, "emptyDir": {"sizeLimit": f"{settings.cache_mib}Mi"}}
    no_token = {"name": NO_TOKEN_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}
    digest = hashlib.sha256(json.dumps([wanted, cache, no_token], sort_keys=True).encode()).hexdigest()[:16]
    before = recorded_settings(deployment) or {"flags": {}, "env": False, "gate": False}
    present = {v.get("name") for v in spec.get("volumes") or []} >= {CACHE_VOLUME, NO_TOKEN_VOLUME}
    server_container = spec["containers"][index]
    resolving = not catalogue or resolver_on(server_container)
    if (
        before.get("fetcher") == digest
        and present
        and _has_fetcher(deployment, server_container)
        and resolving
    ):
        return None
    containers = [c for c in copy.deepcopy(spec["containers"]) if c.get("name") != FETCHER_CONTAINER]
    server = next(
        i for i, c in enumerate(containers) if c.get("name") == spec["containers"][index].get("name")
    )
    mounts = [m for m in containers[server].get("volumeMounts") or [] if m.get("name") != CACHE_VOLUME]
    containers[server]["volumeMounts"] = [
        *mounts,
        {"name": CACHE_VOLUME, "mountPath": CACHE_MOUNT, "readOnly": True},
    ]
    record = {**before, "fetcher": digest}
    if catalogue:
        containers[server]["env"], record["resolver"] = _resolver_env(
            containers[server].get("env") or [], before
        )
    containers.append(wanted)
    ours = {CACHE_VOLUME, NO_TOKEN_VOLUME}
    volumes = [v for v in spec.get("volumes") or [] if v.get("name") not in ours] + [cache, no_token]
    return {
        "metadata": {
            "annotations": {SETTINGS_ANNOTATION: json.dumps(record, sort_keys=True)},
            "resourceVersion": deployment["metadata"].get("resourceVersion"),
        },
        "spec": {"template": {"spec": {"containers": containers, "volumes": volumes}}},
    }


def _without_fetcher(
    spec: dict[str, Any], containers: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Containers and volumes with loraplane's fetcher, its volumes and vLLM's cache mount taken out."""
    kept = [c for c in containers if c.get("name") != FETCHER_CONTAINER]
    for container in kept:
        if container.get("volumeMounts"):
            container["volumeMounts"] = [
                m for m in container["volumeMounts"] if m.get("name") != CACHE_VOLUME
            ]
    volumes = [v for v in spec.get("volumes") or [] if v.get("name") not in {CACHE_VOLUME, NO_TOKEN_VOLUME}]
    return kept, volumes


# --- Static mode: one merged --lora-modules ------------------------------------------------------------


@dataclass(frozen=True)
class StaticModule:
    name: str
    path: str
    base_model_name: str

    def to_arg(self) -> str:
        return json.dumps({"name": self.name, "path": self.path, "base_model_name": self.base_model_name})


def module_name(entry: str) -> str:
    """Name of one `--lora-modules` entry: JSON form or `name=path`."""
    if entry.lstrip().startswith("{"):
        try:
            return str(json.loads(entry).get("name", ""))
        except ValueError:
            return ""
    return entry.split("=", 1)[0]


def module_paths(args: list[str]) -> dict[str, str]:
    """Name -> path of every `--lora-modules` entry."""
    found: dict[str, str] = {}
    for entry in flag_values(args, LORA_MODULES, multi=True) or []:
        if entry.lstrip().startswith("{"):
            try:
                parsed = json.loads(entry)
            except ValueError:
                continue
            found[str(parsed.get("name"))] = str(parsed.get("path"))
        elif "=" in entry:
            name, path = entry.split("=", 1)
            found[name] = path
    return found


def managed_static_names(deployment: dict[str, Any]) -> list[str]:
    raw = (deployment.get("metadata", {}).get("annotations") or {}).get(STATIC_ANNOTATION)
    try:
        names = json.loads(raw) if raw else []
    except ValueError:
        names = []
    return [str(n) for n in names] if isinstance(names, list) else []


def static_args(args: list[str], modules: list[StaticModule], previously_managed: list[str]) -> list[str]:
    """`args` with one merged `--lora-modules`: the user's own entries (every occurrence, merged, since
    vLLM keeps only the last flag), then loraplane's, sorted by name. No entries: no flag."""
    ours = {m.name for m in modules} | set(previously_managed)
    users: list[str] = []
    remaining = list(args)
    while (values := flag_values(remaining, LORA_MODULES, multi=True)) is not None:
        users.extend(v for v in values if module_name(v) not in ours)
        span = _span(remaining, LORA_MODULES, multi=True)
        assert span is not None
        del remaining[span[0] : span[1]]
    entries = users + [m.to_arg() for m in sorted(modules, key=lambda m: m.name)]
    if not entries:
        return remaining if flag_values(args, LORA_MODULES, multi=True) is not None else list(args)
    return with_flag(args, LORA_MODULES, entries, multi=True)


def static_patch(deployment: dict[str, Any], modules: list[StaticModule]) -> dict[str, Any] | None:
    """The patch that makes the Deployment's `--lora-modules` hold exactly loraplane's Static adapters
    (plus the user's own), enabling LoRA if needed; None when it already does."""
    spec = deployment["spec"]["template"]["spec"]
    index = container_index(spec, deployment.get("metadata", {}).get("annotations"))
    if index is None:
        return None
    previous = managed_static_names(deployment)
    args = list(spec["containers"][index].get("args") or [])
    new_args = static_args(args, modules, previous)
    annotations: dict[str, str | None] = {}
    if modules and not has_flag(new_args, ENABLE_LORA):
        new_args = with_flag(new_args, ENABLE_LORA, [])
        # Recorded like HotLoad's additions, so that cleanup takes it out again.
        record = recorded_settings(deployment) or {"flags": {}, "env": False, "gate": False}
        flags = {**record.get("flags", {})}
        flags.setdefault(ENABLE_LORA, None)
        annotations[SETTINGS_ANNOTATION] = json.dumps({**record, "flags": flags}, sort_keys=True)
    names = sorted(m.name for m in modules)
    if new_args == args and names == sorted(previous):
        return None
    containers = copy.deepcopy(spec["containers"])
    containers[index]["args"] = new_args
    annotations[STATIC_ANNOTATION] = json.dumps(names) if names else None
    return {
        "metadata": {
            "annotations": annotations,
            "resourceVersion": deployment["metadata"].get("resourceVersion"),
        },
        "spec": {"template": {"spec": {"containers": containers}}},
    }


# --- paths: through the Deployment's own mounts ----------------------------------------------------------


def path_in_deployment(deployment: dict[str, Any], claim: str, sub_path: str) -> str | None:
    """Where `sub_path` inside claim `claim` appears in the serving container, from the Deployment's
    own volumes and volumeMounts; None when it does not mount that part of the claim."""
    return DeploymentView.of(deployment).path_of(claim, sub_path)


# --- uninstall: what cleanup takes away ------------------------------------------------------------------


def cleanup_patch(deployment: dict[str, Any]) -> dict[str, Any] | None:
    """The patch that restores what loraplane changed in the pod template: its flags back to what the
    user had, the runtime variable and the gate removed if it added them (the user's own runtime
    variable back as it was), its Static entries out of `--lora-modules`. None when loraplane never
    touched the Deployment."""
    record = recorded_settings(deployment)
    static = managed_static_names(deployment)
    if record is None and not static:
        return None
    spec = deployment["spec"]["template"]["spec"]
    index = container_index(spec, deployment.get("metadata", {}).get("annotations"))
    containers = copy.deepcopy(spec["containers"])
    gates = list(spec.get("readinessGates") or [])
    if index is not None:
        container = containers[index]
        args: list[str] = list(container.get("args") or [])
        for flag, original in (record or {}).get("flags", {}).items():
            args = (
                without_flag(args, flag) if original is None else with_flag(args, flag, original.split(" "))
            )
        if static:
            args = static_args(args, [], static)
        container["args"] = args
        if (record or {}).get("env"):
            container["env"] = [e for e in container.get("env") or [] if e.get("name") != RUNTIME_ENV]
        elif isinstance((record or {}).get("envWas"), dict):
            was = (record or {})["envWas"]
            container["env"] = [
                was if e.get("name") == RUNTIME_ENV else e for e in container.get("env") or []
            ]
    if (record or {}).get("gate"):
        gates = [g for g in gates if g.get("conditionType") != GATE]
    template: dict[str, Any] = {"containers": containers, "readinessGates": gates}
    if index is not None and isinstance((record or {}).get("resolver"), dict):
        server = containers[index]
        server["env"] = _resolver_env_removed(server.get("env") or [], (record or {})["resolver"])
    if (record or {}).get("fetcher"):
        template["containers"], template["volumes"] = _without_fetcher(spec, containers)
    return {
        "metadata": {
            "annotations": {SETTINGS_ANNOTATION: None, STATIC_ANNOTATION: None},
            "resourceVersion": deployment["metadata"].get("resourceVersion"),
        },
        "spec": {"template": {"spec": template}},
    }


def merged(body: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 merge of `patch` into `body` (lists replaced whole; None deletes)."""
    result = dict(body)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result
