"""Container probes: running one (HTTP, TCP, exec) and turning results into a probe's verdict.

:class:`ProbeTracker` is the kubelet's prober worker in miniature, pure: a verdict changes only
after ``successThreshold`` successes or ``failureThreshold`` failures in a row; before the first
verdict readiness counts as failed, liveness as passed, startup as not yet started.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

JsonObject = dict[str, Any]
ProbeKind = Literal["startup", "liveness", "readiness"]
PROBE_FIELDS: dict[ProbeKind, str] = {
    "startup": "startupProbe",
    "liveness": "livenessProbe",
    "readiness": "readinessProbe",
}


@dataclass(frozen=True)
class ProbeSettings:
    initial_delay_s: float
    period_s: float
    timeout_s: float
    success_threshold: int
    failure_threshold: int

    @classmethod
    def of(cls, probe: JsonObject) -> ProbeSettings:
        """The probe's timing with the API's defaults."""
        return cls(
            initial_delay_s=float(probe.get("initialDelaySeconds", 0)),
            period_s=float(probe.get("periodSeconds", 10)),
            timeout_s=float(probe.get("timeoutSeconds", 1)),
            success_threshold=int(probe.get("successThreshold", 1)),
            failure_threshold=int(probe.get("failureThreshold", 3)),
        )


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    message: str = ""


class ProbeTracker:
    """Consecutive results of one probe of one container run, and the verdict they add up to."""

    def __init__(self, kind: ProbeKind, settings: ProbeSettings) -> None:
        self.kind = kind
        self.settings = settings
        self.verdict: bool = kind == "liveness"  # readiness and startup start out failed
        self.decided = False
        self._last: bool | None = None
        self._run = 0
        self.last_message = ""

    def record(self, result: ProbeResult) -> bool:
        """Add a result; True when the verdict changed."""
        self._run = self._run + 1 if result.ok == self._last else 1
        self._last = result.ok
        if not result.ok:
            self.last_message = result.message
        threshold = self.settings.success_threshold if result.ok else self.settings.failure_threshold
        if self._run < threshold or (self.decided and result.ok == self.verdict):
            return False
        changed = result.ok != self.verdict or not self.decided
        self.verdict = result.ok
        self.decided = True
        return changed


# --- running a probe --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeTarget:
    """Where a probe goes: the pod's address, the container's named ports and its process (for exec)."""

    pod_ip: str
    ports: Mapping[str, int]
    pid: int
    env: Mapping[str, str]


def resolve_port(port: Any, ports: Mapping[str, int]) -> int:
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    if port in ports:
        return ports[port]
    raise ValueError(f"the container has no port named {port!r}")


def http_probe(spec: JsonObject, target: ProbeTarget, timeout_s: float) -> ProbeResult:
    host = spec.get("host") or target.pod_ip
    port = resolve_port(spec["port"], target.ports)
    path = spec.get("path") or "/"
    if not path.startswith("/"):
        path = "/" + path
    connection: http.client.HTTPConnection
    if (spec.get("scheme") or "HTTP").upper() == "HTTPS":
        # The kubelet does not verify a probed server's certificate either.
        connection = http.client.HTTPSConnection(
            host,
            port,
            timeout=timeout_s,
            context=ssl._create_unverified_context(),  # noqa: S323
        )
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    headers = {"User-Agent": "kube-probe/1.36", "Accept": "*/*"}
    headers.update({h["name"]: h["value"] for h in spec.get("httpHeaders") or []})
    try:
        connection.request("GET", path, headers=headers)
        status = connection.getresponse().status
    finally:
        connection.close()
    if 200 <= status < 400:
        return ProbeResult(True)
    return ProbeResult(False, f"HTTP probe failed with statuscode: {status}")


def tcp_probe(spec: JsonObject, target: ProbeTarget, timeout_s: float) -> ProbeResult:
    host = spec.get("host") or target.pod_ip
    port = resolve_port(spec["port"], target.ports)
    with socket.create_connection((host, port), timeout=timeout_s):
        return ProbeResult(True)


def exec_probe(spec: JsonObject, target: ProbeTarget, timeout_s: float) -> ProbeResult:
    """Run the command inside the container's mount and UTS namespaces, with its environment."""
    command = list(spec.get("command") or [])
    argv = ["nsenter", "--target", str(target.pid), "--mount", "--uts", "--net", "--wd", "--", *command]
    try:
        done = subprocess.run(argv, env=dict(target.env), capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return ProbeResult(False, f"command {command} timed out after {timeout_s:g}s")
    if done.returncode == 0:
        return ProbeResult(True)
    output = (done.stdout + done.stderr).decode(errors="replace").strip()
    return ProbeResult(False, f"command {command} exited with {done.returncode}: {output[-512:]}")


def run_probe(probe: JsonObject, target: ProbeTarget) -> ProbeResult:
    """Run ``probe`` once; any error is a failed result with the error as its message."""
    timeout_s = ProbeSettings.of(probe).timeout_s
    try:
        if "httpGet" in probe:
            return http_probe(probe["httpGet"], target, timeout_s)
        if "tcpSocket" in probe:
            return tcp_probe(probe["tcpSocket"], target, timeout_s)
        if "exec" in probe:
            return exec_probe(probe["exec"], target, timeout_s)
        if "grpc" in probe:
            return ProbeResult(False, "gRPC probes are not supported by the dev node")
        return ProbeResult(False, "probe has no handler")
    except (OSError, ValueError, http.client.HTTPException) as error:
        return ProbeResult(False, f"{type(error).__name__}: {error}")
