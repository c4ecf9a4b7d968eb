"""The operator's few direct API calls (kopf does the watching and status patches), and the cleanup
hook's: the one module besides the handlers that talks to the API server (a ruff rule enforces it).

Everything here is create-if-absent, a read, or a write guarded by a resourceVersion: a replayed event
or a restarted operator converges on the same objects instead of making second copies. Objects come
back as plain dicts (camelCase, as the API server writes them).
"""

from __future__ import annotations

import base64
import json
import urllib.request
from functools import cache
from typing import Any, cast

import kubernetes
import urllib3
from kubernetes.client import ApiClient, AppsV1Api, BatchV1Api, CoreV1Api, CustomObjectsApi, DiscoveryV1Api
from kubernetes.client.exceptions import ApiException as ApiException  # noqa: PLC0414 - re-exported (mypy strict)

from loraplane import GROUP, VERSION
from loraplane.api.adapter import PLURAL as ADAPTER_PLURAL

# (connect, read) seconds for each direct API call. The client's default is to wait for ever: a
# request on a pooled connection that never reached the server held a handler, and the pod's
# creation, for 90 s on a cluster that had just started, until the server closed the "idle"
# connection (kube-apiserver's keep-alive timeout is 90 s). Generous, so that a slow server is waited
# for rather than given a second connection to be slow on: a 5 s connect timeout turned a local
# cluster's slow Service relay into a storm of retries that held a pod's gate for 48 s.
API_TIMEOUT_S = (30.0, 60.0)
# Every call is tried again on a fresh connection after a timeout or a dropped connection, writes
# too: they are merge patches, create-if-absent (409 counts as done) or guarded by a resourceVersion
# (409 makes the caller read again), so a second try never does anything twice. urllib3 would retry
# only GET-like methods, and a status PATCH that met the keep-alive race failed a whole pass.
API_RETRIES = urllib3.Retry(total=3, connect=3, read=2, allowed_methods=None, backoff_factor=0.2)


class _TimedApiClient(ApiClient):
    """The kubernetes client with `API_TIMEOUT_S` on every call that names no timeout of its own."""

    def call_api(
        self,
        method: Any,
        url: Any,
        header_params: Any = None,
        body: Any = None,
        post_params: Any = None,
        _request_timeout: Any = None,
    ) -> Any:
        timeout = _request_timeout or API_TIMEOUT_S
        return super().call_api(method, url, header_params, body, post_params, _request_timeout=timeout)


@cache
def api_client() -> ApiClient:
    """In a pod: the ServiceAccount's token; elsewhere (tests, local runs): $KUBECONFIG."""
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    configuration = kubernetes.client.Configuration.get_default_copy()
    configuration.retries = API_RETRIES
    return _TimedApiClient(configuration)


def _created(create: Any, *args: Any) -> bool:
    """Call a create function; False when the object already exists (the desired state holds)."""
    try:
        create(*args)
    except ApiException as error:
        if error.status == 409:
            return False
        raise
    return True


def ensure_config_map(namespace: str, body: dict[str, Any]) -> bool:
    return _created(CoreV1Api(api_client()).create_namespaced_config_map, namespace, body)


def ensure_batch_job(namespace: str, body: dict[str, Any]) -> bool:
    return _created(BatchV1Api(api_client()).create_namespaced_job, namespace, body)


def ensure_service(namespace: str, body: dict[str, Any]) -> bool:
    return _created(CoreV1Api(api_client()).create_namespaced_service, namespace, body)


def claim_exists(namespace: str, name: str) -> bool:
    try:
        CoreV1Api(api_client()).read_namespaced_persistent_volume_claim(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def get_adapter(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        found = CustomObjectsApi(api_client()).get_namespaced_custom_object(
            GROUP, VERSION, namespace, ADAPTER_PLURAL, name
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return cast(dict[str, Any], found)


def create_adapter(namespace: str, body: dict[str, Any]) -> bool:
    return _created(
        CustomObjectsApi(api_client()).create_namespaced_custom_object,
        GROUP,
        VERSION,
        namespace,
        ADAPTER_PLURAL,
        body,
    )


def patch_adapter(namespace: str, name: str, patch: dict[str, Any]) -> None:
    CustomObjectsApi(api_client()).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, ADAPTER_PLURAL, name, patch
    )


def patch_adapter_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    """Merge `status` into a LoraAdapter's status subresource (the keys given, whole)."""
    CustomObjectsApi(api_client()).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, ADAPTER_PLURAL, name, {"status": status}
    )


def patch_training_job_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    """Merge `status` into a LoraTrainingJob's status subresource (the keys given, whole)."""
    CustomObjectsApi(api_client()).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "loratrainingjobs", name, {"status": status}
    )


def scrape(url: str, timeout_s: float) -> str | None:
    """GET a metrics endpoint; None when it does not answer (the pod is starting or gone)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - http to a pod IP
            text: str = response.read().decode()
            return text
    except OSError:
        return None


def to_plain(body: Any) -> dict[str, Any]:
    """A kopf body (a live view) as a plain dict, safe to keep in an index."""
    plain: dict[str, Any] = json.loads(json.dumps(dict(body)))
    return plain


# Copies of an object's spec that clients keep on it: kubectl's, and kopf's own diff base (main.py).
SPEC_COPIES = ("kubectl.kubernetes.io/last-applied-configuration", f"{GROUP}/last-handled-configuration")


def slim(body: Any) -> dict[str, Any]:
    """`to_plain` without managedFields and the annotations that copy the spec: with a thousand objects
    in an index they would be most of it, and no handler reads them."""
    plain = to_plain(body)
    metadata = plain.setdefault("metadata", {})
    metadata.pop("managedFields", None)
    annotations = metadata.get("annotations") or {}
    for key in SPEC_COPIES:
        annotations.pop(key, None)
    return plain


def pack(body: Any) -> bytes:
    """A plain copy of an object (kept parts of it) as compact JSON: what an index over many objects
    keeps. One bytes object per entry instead of hundreds of small dicts and strings: with a thousand
    objects those pin Python's small-object arenas, which a process never returns (docs/serving.md,
    "Where the operator's memory goes"). Readers `unpack` the entries they use, when they use them."""
    return json.dumps(body, separators=(",", ":")).encode()


def unpack(packed: bytes) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(packed)
    return body


# --- serving: Deployments, pod readiness gates, EndpointSlices --------------------------------------------


def replace_deployment(namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    """PUT a whole Deployment read earlier: its `resourceVersion` makes this a read-modify-write, so a
    concurrent change (a user's apply) answers 409 and the caller reads again instead of overwriting."""
    api: Any = AppsV1Api(api_client())
    written = api.replace_namespaced_deployment(body["metadata"]["name"], namespace, body)
    return cast(dict[str, Any], api_client().sanitize_for_serialization(written))  # type: ignore[no-untyped-call]


def read_config_map(namespace: str, name: str) -> dict[str, Any] | None:
    api: Any = CoreV1Api(api_client())
    try:
        found = api.read_namespaced_config_map(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return cast(dict[str, Any], api_client().sanitize_for_serialization(found))  # type: ignore[no-untyped-call]


def write_config_map(namespace: str, body: dict[str, Any]) -> None:
    """Create the ConfigMap, or merge `data` into the one that exists."""
    api = CoreV1Api(api_client())
    if not _created(api.create_namespaced_config_map, namespace, body):
        api.patch_namespaced_config_map(body["metadata"]["name"], namespace, {"data": body["data"]})


def read_deployment(namespace: str, name: str) -> dict[str, Any] | None:
    """A Deployment read directly (one the operator's filtered index does not hold yet); None if absent."""
    api: Any = AppsV1Api(api_client())
    try:
        found = api.read_namespaced_deployment(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return cast(dict[str, Any], api_client().sanitize_for_serialization(found))  # type: ignore[no-untyped-call]


def _plain(obj: Any) -> dict[str, Any]:
    return cast(dict[str, Any], api_client().sanitize_for_serialization(obj))  # type: ignore[no-untyped-call]


def list_pods(namespace: str, label_selector: str | None = None) -> list[dict[str, Any]]:
    """Pods matching a label selector, read directly (pods the operator's filtered index lacks)."""
    api: Any = CoreV1Api(api_client())
    found = api.list_namespaced_pod(namespace, label_selector=label_selector)
    return [dict(item) for item in _plain(found).get("items") or []]


def list_deployments(namespace: str) -> list[dict[str, Any]]:
    api: Any = AppsV1Api(api_client())
    return [dict(item) for item in _plain(api.list_namespaced_deployment(namespace)).get("items") or []]


def scale_deployment(namespace: str, name: str, replicas: int) -> dict[str, Any] | None:
    """Set a Deployment's replicas; the Deployment as it is then, or None when there is none."""
    api: Any = AppsV1Api(api_client())
    try:
        api.patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": replicas}})
        return _plain(api.read_namespaced_deployment(name, namespace))
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def namespace_names() -> list[str]:
    namespaces = _plain(CoreV1Api(api_client()).list_namespace()).get("items") or []
    return [str(namespace["metadata"]["name"]) for namespace in namespaces]


def list_custom_objects(namespace: str, plural: str) -> list[dict[str, Any]] | None:
    """loraplane objects of one kind in a namespace; None when the CRD is gone."""
    try:
        found = CustomObjectsApi(api_client()).list_namespaced_custom_object(
            GROUP, VERSION, namespace, plural
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return list(cast(dict[str, Any], found)["items"])


KUEUE_GROUP, KUEUE_VERSION = "kueue.x-k8s.io", "v1beta2"


def workload_of_job(namespace: str, job_uid: str) -> dict[str, Any] | None:
    """Kueue's Workload for a Job (Kueue labels it with the Job's UID); None without one or without
    Kueue. Read on demand, only for a suspended Job: an operator-wide watch on an optional CRD would
    make every handler wait on that CRD's listings whenever Kueue is installed or removed."""
    try:
        found = CustomObjectsApi(api_client()).list_namespaced_custom_object(
            KUEUE_GROUP,
            KUEUE_VERSION,
            namespace,
            "workloads",
            label_selector=f"kueue.x-k8s.io/job-uid={job_uid}",
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    items = list(cast(dict[str, Any], found)["items"])
    return _plain(items[0]) if items else None


def get_custom_object(namespace: str, plural: str, name: str) -> dict[str, Any] | None:
    try:
        found = CustomObjectsApi(api_client()).get_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return cast(dict[str, Any], found)


def patch_custom_object(namespace: str, plural: str, name: str, patch: dict[str, Any]) -> bool:
    """A merge patch; False when the object is gone. A patch carrying a stale resourceVersion raises
    ApiException 409."""
    try:
        CustomObjectsApi(api_client()).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name, patch
        )
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def read_secret_key(namespace: str, name: str, key: str) -> str:
    """One key of a Secret, decoded. Raises ApiException (404, 403) or KeyError (no such key). The
    value is returned to the caller only: never logged, never written anywhere."""
    secret = CoreV1Api(api_client()).read_namespaced_secret(name, namespace)
    data = secret.data or {}
    return base64.b64decode(data[key]).decode()


def set_pod_condition(namespace: str, pod: str, condition: dict[str, Any]) -> None:
    """Write one condition of a pod through `pods/status`; conditions merge by type, so the kubelet's
    own conditions stay as they are."""
    CoreV1Api(api_client()).patch_namespaced_pod_status(
        pod, namespace, {"status": {"conditions": [condition]}}
    )


def endpoint_ready(namespace: str, pod: str) -> bool | None:
    """Whether the pod's entries in the namespace's EndpointSlices say ready; None when no Service
    selects it (nothing routes to it, so nothing to wait for)."""
    slices = DiscoveryV1Api(api_client()).list_namespaced_endpoint_slice(namespace)
    seen: bool | None = None
    for endpoint_slice in slices.items:
        for endpoint in endpoint_slice.endpoints or []:
            if endpoint.target_ref is not None and endpoint.target_ref.name == pod:
                ready = bool(endpoint.conditions and endpoint.conditions.ready)
                seen = ready if seen is None else (seen or ready)
    return seen
