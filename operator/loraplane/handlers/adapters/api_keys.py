"""The API key of a Deployment's vLLM server (`--api-key`), read from the Secret that the Deployment's
annotation or a LoraAdapter names. The value goes into the `Authorization` header of the calls to the
server and nowhere else: not into logs, Events, status or errors."""

from __future__ import annotations

import asyncio
import time

from kubernetes.client.exceptions import ApiException

from loraplane import kube
from loraplane.api.adapter import LoraAdapter
from loraplane.builders import serving
from loraplane.handlers.adapters.state import Reconciler
from loraplane.status import resolution

# A key read is reused this long (a rotated key is read again at once when a pod answers 401).
REREAD_AFTER_S = 300.0


async def server_api_key(
    rec: Reconciler, deployment: serving.DeploymentView, adapters: list[LoraAdapter]
) -> tuple[str | None, str]:
    """The key to send (None: none is named, or it cannot be read), and what a 401 means here."""
    try:
        source = resolution.api_key_source(deployment, adapters)
    except ValueError as error:
        return None, resolution.unauthorized_message(rec.deployment, None, None) + f" ({error})"
    if source is None:
        rec.api_key = None
        return None, resolution.unauthorized_message(rec.deployment, None, None)
    wanted = (source.secret, source.key)
    cached = rec.api_key
    if (
        cached is not None
        and cached[0] == wanted
        and not rec.api_key_refused
        and time.monotonic() - cached[2] < REREAD_AFTER_S
    ):
        return cached[1], resolution.unauthorized_message(rec.deployment, source, None)
    rec.api_key_refused = False
    try:
        value = await asyncio.to_thread(kube.read_secret_key, rec.namespace, source.secret, source.key)
    except ApiException as error:
        rec.api_key = None
        return None, resolution.unauthorized_message(rec.deployment, source, _unreadable(rec, source, error))
    except KeyError:
        rec.api_key = None
        unreadable = f"Secret {source.secret} has no key {source.key}"
        return None, resolution.unauthorized_message(rec.deployment, source, unreadable)
    rec.api_key = (wanted, value, time.monotonic())
    return value, resolution.unauthorized_message(rec.deployment, source, None)


def _unreadable(rec: Reconciler, source: resolution.ApiKeySource, error: ApiException) -> str:
    if error.status == 404:
        return f"Secret {source.secret} does not exist in namespace {rec.namespace}"
    if error.status == 403:
        return (
            f"the operator may not read Secrets in namespace {rec.namespace}; list it in the chart value "
            "serving.apiKeySecrets.namespaces"
        )
    return f"reading Secret {source.secret} failed: HTTP {error.status} {error.reason}"
