"""The one module that talks to a serving pod's fetcher (`python -m loraplane_worker.fetch --listen`),
the container loraplane adds for adapters in the object store: send the pod's wanted list, read back
each adapter's state, and say what each state means for the adapter on that pod.

The operator asks the fetcher on the pod IP, as it asks vLLM: the fetcher needs no Kubernetes API
rights (it is never told about the cluster, only about adapters) and the operator needs no store
credentials (the fetcher has them from the Secret, in its environment). The wanted list names a
credentials Secret only by the environment prefix of its values; connection settings are not
secret, the Secret's name is left out all the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from loraplane.status.resolution import Wanted

# What a fetcher state means on the pod: a Ready=False reason, and whether a retry is up to time.
FETCHING = "Fetching"  # in progress (or the fetcher does not answer yet): the gate waits
FETCH_FAILED = "FetchFailed"  # a permanent store error: terminal until the spec changes or a resync
FETCH_RETRYING = "FetchRetrying"  # a transient one: the fetcher retries with backoff
DIGEST_MISMATCH = "DigestMismatch"


class FetcherUnreachableError(Exception):
    """The pod's fetcher did not answer (starting, or the pod predates it)."""


@dataclass(frozen=True)
class FetchState:
    """One adapter in the pod's cache, as the fetcher reports it."""

    state: str  # Ready, Pending, Failed
    uri: str
    sha256: str | None = None
    code: str | None = None
    message: str | None = None
    permanent: bool = False

    @classmethod
    def of(cls, wire: dict[str, Any]) -> FetchState:
        return cls(
            state=str(wire.get("state", "Pending")),
            uri=str(wire.get("uri", "")),
            sha256=wire.get("sha256"),
            code=wire.get("code"),
            message=wire.get("message"),
            permanent=bool(wire.get("permanent")),
        )

    def problem(self) -> tuple[str, str] | None:
        """(reason, message) when the adapter is not in the cache yet; None when it is. A digest
        mismatch is LoadFailed naming both digests (the fetcher's message says expected and got)."""
        if self.state == "Ready":
            return None
        if self.state != "Failed":
            return FETCHING, f"fetching {self.uri} into the pod's adapter cache"
        said = f"{self.uri}: {self.code}" + (f": {self.message}" if self.message else "")
        if self.code == DIGEST_MISMATCH:
            return "LoadFailed", said
        if self.permanent:
            return FETCH_FAILED, said
        return FETCH_RETRYING, f"{said} (the pod's fetcher retries with backoff)"


def wanted_list(wants: list[Wanted], epoch: str, model: str = "") -> dict[str, Any]:
    """The body of `POST /sync`: every store adapter the pod must hold. `retryEpoch` (the adapter's
    generation and the resync period) lets a permanent failure be tried again after a spec change
    or once per resync, never in a loop. `model`, the server's `--model` string, is what the fetcher
    writes into each cached adapter_config.json's `base_model_name_or_path`: vLLM's filesystem
    resolver loads an OnDemand adapter only when the two are equal."""
    adapters = []
    for want in wants:
        if want.fetch is None:
            continue
        connection = want.fetch.connection.model_copy(update={"credentials_secret": None})
        entry: dict[str, Any] = {
            "name": want.served_name,
            "uri": want.fetch.uri,
            "connection": connection.model_dump(by_alias=True, exclude_none=True),
            "retryEpoch": f"{want.generation}-{epoch}",
        }
        if want.fetch.sha256:
            entry["sha256"] = want.fetch.sha256
        if want.fetch.credentials:
            entry["credentials"] = want.fetch.credentials
        adapters.append(entry)
    return {"adapters": adapters, "baseModel": model} if model else {"adapters": adapters}


async def sync(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], timeout_s: float
) -> dict[str, FetchState]:
    """Send the wanted list; the states by served name. Raises FetcherUnreachableError."""
    try:
        async with session.post(
            f"{url}/sync", json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as response:
            text = await response.text()
            if response.status != 200:
                raise FetcherUnreachableError(f"POST {url}/sync answered {response.status}: {text[:500]}")
    except (aiohttp.ClientError, TimeoutError) as error:
        raise FetcherUnreachableError(f"POST {url}/sync: {error or type(error).__name__}") from error
    try:
        states = json.loads(text)["adapters"]
    except (ValueError, KeyError, TypeError) as error:
        raise FetcherUnreachableError(f"POST {url}/sync: not a fetcher's answer") from error
    return {str(name): FetchState.of(wire) for name, wire in states.items()}
