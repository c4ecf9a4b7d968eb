"""Waiting on the control plane: HTTP(S) probes on 127.0.0.1 and a deadline-bound poll loop.

Only the standard library, so ``up`` works before the project's venv exists. Proxies from the
environment are ignored on purpose: every request here goes to 127.0.0.1.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_POLL_S = 0.1
_NO_PROXY = urllib.request.ProxyHandler({})


class WaitTimeoutError(TimeoutError):
    pass


def wait_for(
    what: str,
    condition: Callable[[], bool],
    timeout_s: float,
    *,
    still_possible: Callable[[], str | None] = lambda: None,
) -> float:
    """Poll ``condition`` until it is true; return the seconds it took.

    ``still_possible`` returns a reason when waiting longer is pointless (the process exited),
    which ends the wait at once instead of at the deadline.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        if condition():
            return time.monotonic() - started
        reason = still_possible()
        if reason:
            raise WaitTimeoutError(f"gave up waiting for {what}: {reason}")
        if time.monotonic() >= deadline:
            raise WaitTimeoutError(f"{what} not reached within {timeout_s:.0f} s")
        time.sleep(_POLL_S)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    url: str,
    *,
    method: str = "GET",
    body: Any = None,
    context: ssl.SSLContext | None = None,
    timeout_s: float = 5.0,
    content_type: str = "application/json",
) -> Response | None:
    """One HTTP request; None when nothing answered (refused, reset, timed out)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": content_type, "Accept": "application/json"} if data else {}
    opener = urllib.request.build_opener(_NO_PROXY, urllib.request.HTTPSHandler(context=context))
    req = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
    try:
        with opener.open(req, timeout=timeout_s) as response:
            return Response(response.status, response.read())
    except urllib.error.HTTPError as error:
        return Response(error.code, error.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError, OSError):
        return None


def client_tls(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """TLS that verifies the API server against the cluster CA and presents a client cert."""
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    return context


def self_signed_tls() -> ssl.SSLContext:
    """For the health endpoints of controller-manager and scheduler, which serve a self-signed
    certificate of their own; the address is 127.0.0.1 and the request carries no secret."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def answers_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    response = request(url, context=context, timeout_s=2.0)
    return response is not None and response.status == 200
