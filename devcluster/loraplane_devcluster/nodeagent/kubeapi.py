"""A thin JSON client over the ``kubernetes`` package's ApiClient: plain dicts in and out.

The agent reads and writes objects the way manifests spell them (camelCase dicts), so it uses
the generated client only for what it is good at here: kubeconfig loading, TLS and auth. One
instance per thread (urllib3 pools are shared state).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import yaml
from kubernetes import config as kube_config
from kubernetes.client import ApiClient

JsonObject = dict[str, Any]

SMP = "application/strategic-merge-patch+json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class ApiError(Exception):
    """A non-2xx answer; ``status`` is the HTTP status, ``body`` the server's Status object."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        message = body.get("message", "") if isinstance(body, dict) else str(body)
        super().__init__(f"{method} {path}: {status} {message}")
        self.status = status
        self.body = body

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


def apiserver_address(kubeconfig: Path) -> tuple[str, int]:
    """Host and port of the kubeconfig's current context: where the agent relays pods' API traffic."""
    config = yaml.safe_load(kubeconfig.read_text())
    context_name = config.get("current-context")
    context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    parsed = urlparse(cluster["server"])
    return parsed.hostname or "127.0.0.1", parsed.port or (443 if parsed.scheme == "https" else 80)


def path_of(api_version: str, plural: str, namespace: str | None = None, name: str | None = None) -> str:
    """REST path of a collection or object: ``v1`` → /api/v1, ``group/version`` → /apis/group/version."""
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    parts = [prefix]
    if namespace is not None:
        parts.append(f"namespaces/{quote(namespace, safe='')}")
    parts.append(plural)
    if name is not None:
        parts.append(quote(name, safe=""))
    return "/".join(parts)


class KubeApi:
    def __init__(self, kubeconfig: Path) -> None:
        self.client: ApiClient = kube_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig)
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout_s: float | tuple[float, float] = 30.0,
        stream: bool = False,
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        query_params = [(k, str(v).lower() if isinstance(v, bool) else v) for k, v in (query or {}).items()]
        serialized = self.client.param_serialize(
            method,
            path,
            query_params=query_params,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.client.call_api(*serialized, _request_timeout=timeout_s)
        raw = response.response
        if not 200 <= raw.status <= 299:
            data = raw.data
            try:
                parsed = json.loads(data)
            except ValueError:
                parsed = data.decode(errors="replace")
            raise ApiError(method, path, raw.status, parsed)
        if stream:
            return raw
        data = raw.data
        return json.loads(data) if data else None

    def get(self, path: str, **query: Any) -> JsonObject:
        return dict(self.request("GET", path, query=query))

    def get_or_none(self, path: str) -> JsonObject | None:
        try:
            return self.get(path)
        except ApiError as error:
            if error.not_found:
                return None
            raise

    def create(self, path: str, body: JsonObject) -> JsonObject:
        return dict(self.request("POST", path, body=body))

    def patch(self, path: str, body: Any, content_type: str = SMP) -> JsonObject:
        return dict(self.request("PATCH", path, body=body, content_type=content_type))

    def delete(self, path: str, body: JsonObject | None = None) -> None:
        self.request("DELETE", path, body=body)

    def watch(
        self, path: str, resource_version: str, timeout_s: int = 300, **query: Any
    ) -> Iterator[JsonObject]:
        """Watch events (dicts with ``type`` and ``object``) until the server ends the watch."""
        params = {
            "watch": True,
            "resourceVersion": resource_version,
            "allowWatchBookmarks": True,
            "timeoutSeconds": timeout_s,
            **query,
        }
        # The read timeout bounds a silent connection; bookmarks arrive about once a minute.
        raw = self.request("GET", path, query=params, timeout_s=(10.0, timeout_s + 30.0), stream=True)
        try:
            buffer = b""
            for chunk in raw.stream(amt=None, decode_content=False):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            raw.release_conn()
