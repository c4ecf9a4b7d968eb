"""Kubeconfig files with the certificates embedded, so a file can be copied anywhere on the machine."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

CLUSTER_NAME = "loraplane-dev"


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def build(
    server: str,
    ca_cert: Path,
    user: str,
    credentials: dict[str, str],
    namespace: str | None = None,
    tls_server_name: str | None = None,
) -> dict[str, Any]:
    """A kubeconfig dict; ``credentials`` is the kubeconfig ``user`` entry (client cert or token).
    ``tls_server_name``: the name to check the server certificate against, when the address the
    client dials is not in it."""
    context: dict[str, str] = {"cluster": CLUSTER_NAME, "user": user}
    if namespace:
        context["namespace"] = namespace
    cluster = {"server": server, "certificate-authority-data": _b64(ca_cert)}
    if tls_server_name:
        cluster["tls-server-name"] = tls_server_name
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CLUSTER_NAME, "cluster": cluster}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": f"{user}@{CLUSTER_NAME}", "context": context}],
        "current-context": f"{user}@{CLUSTER_NAME}",
        "preferences": {},
    }


def client_cert_credentials(cert: Path, key: Path) -> dict[str, str]:
    return {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)}


def token_credentials(token: str) -> dict[str, str]:
    return {"token": token}


def write(path: Path, config: dict[str, Any]) -> Path:
    """Write ``config`` readable only by its owner (it holds a private key or a token)."""
    try:
        import yaml  # noqa: PLC0415 - the venv has it; plain python falls back to JSON, also valid YAML

        text = yaml.safe_dump(config, sort_keys=False)
    except ImportError:
        text = json.dumps(config, indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)
    return path


def server_of(path: Path) -> str:
    """The API server URL of the current context of a kubeconfig this module wrote."""
    text = path.read_text()
    try:
        import yaml  # noqa: PLC0415

        config = yaml.safe_load(text)
    except ImportError:
        config = json.loads(text)
    current = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    cluster = next(c for c in config["clusters"] if c["name"] == current["context"]["cluster"])
    return str(cluster["cluster"]["server"])
