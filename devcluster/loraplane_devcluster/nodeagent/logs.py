"""``kubectl logs`` for the dev node: the kubelet's ``/containerLogs`` endpoint over HTTPS.

The API server proxies ``pods/log`` to ``https://<node InternalIP>:<kubeletEndpoint port>``
``/containerLogs/NAMESPACE/POD/CONTAINER`` with its kubelet client certificate; this server
accepts only clients whose certificate the cluster CA signed. Supported query parameters:
``follow``, ``tailLines``, ``limitBytes``, ``previous``.

Every run of a container appends to ``<container>.log`` in the pod's folder; the byte offset at
which each run began is kept in ``containers/<container>/log-offsets`` (one per line), which is
what ``previous`` needs.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

log = logging.getLogger(__name__)
FOLLOW_POLL_S = 0.2


def run_offsets(container_dir: Path) -> list[int]:
    try:
        return [int(line) for line in (container_dir / "log-offsets").read_text().split()]
    except (OSError, ValueError):
        return [0]


def log_slice(log_file: Path, offsets: list[int], previous: bool) -> tuple[int, int | None]:
    """(start, end) byte range of the current run's log, or of the run before it."""
    if previous:
        if len(offsets) < 2:
            raise FileNotFoundError("previous terminated container not found")
        return offsets[-2], offsets[-1]
    return (offsets[-1] if offsets else 0), None


def tail_lines(data: bytes, lines: int) -> bytes:
    if lines <= 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


def find_pod_dir(pods_dir: Path, namespace: str, pod: str) -> Path | None:
    """The newest folder of that pod (a re-created pod has a new UID, hence a new folder)."""
    candidates = [p for p in pods_dir.glob(f"{namespace}_{pod}_*") if p.name.count("_") >= 2]
    candidates = [p for p in candidates if p.name.rsplit("_", 1)[0] == f"{namespace}_{pod}"]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


class _Handler(BaseHTTPRequestHandler):
    server_version = "loraplane-nodeagent"
    pods_dir: Path

    def log_message(self, format: str, *args: object) -> None:
        log.debug("log endpoint: " + format, *args)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        parts = [p for p in url.path.split("/") if p]
        if url.path == "/healthz":
            self._reply(200, b"ok")
            return
        if len(parts) != 4 or parts[0] != "containerLogs":
            self._reply(404, b"only /containerLogs/NAMESPACE/POD/CONTAINER is served by the dev node\n")
            return
        _, namespace, pod, container = parts
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        pod_dir = find_pod_dir(self.pods_dir, namespace, pod)
        log_file = pod_dir / f"{container}.log" if pod_dir else None
        if log_file is None or not log_file.exists():
            self._reply(
                404, f"no logs of container {container} in pod {namespace}/{pod} on this node\n".encode()
            )
            return
        container_dir = log_file.parent / "containers" / container
        try:
            start, end = log_slice(log_file, run_offsets(container_dir), query.get("previous") == "true")
        except FileNotFoundError as error:
            self._reply(400, f"{error}\n".encode())
            return
        with log_file.open("rb") as handle:
            handle.seek(start)
            raw = handle.read() if end is None else handle.read(end - start)
        data = raw
        if "tailLines" in query:
            data = tail_lines(data, int(query["tailLines"]))
        limit = int(query["limitBytes"]) if "limitBytes" in query else None
        if limit is not None:
            data = data[:limit]
        follow = query.get("follow") == "true" and end is None
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        if not follow:
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        # HTTP/1.0 (the handler's protocol): without a length, the body ends when the connection closes.
        self.end_headers()
        self._send(data)
        self._follow(log_file, start + len(raw), container_dir)

    def _follow(self, log_file: Path, position: int, container_dir: Path) -> None:
        """Stream what the container writes until its process is gone and nothing more comes."""
        try:
            while True:
                with log_file.open("rb") as handle:
                    handle.seek(position)
                    data = handle.read()
                if data:
                    position += len(data)
                    self._send(data)
                elif not (container_dir / "process.json").exists():
                    break
                else:
                    time.sleep(FOLLOW_POLL_S)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send(self, data: bytes) -> None:
        if data:
            self.wfile.write(data)
            self.wfile.flush()

    def _reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class LogServer:
    def __init__(self, pods_dir: Path, cert: Path, key: Path, client_ca: Path | None) -> None:
        handler = type("LogHandler", (_Handler,), {"pods_dir": pods_dir})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        if client_ca is not None:
            context.load_verify_locations(client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port: int = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="log-endpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
