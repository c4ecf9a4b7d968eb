"""Kueue on the local cluster: its CRDs, its own RBAC, and its controller manager as a process of
the run directory, with its admission webhooks served on 127.0.0.1 (docs/local-cluster.md).

``install(run_dir)`` builds Kueue once (``devcluster/build-kueue.sh``, cached by version), applies
the CRDs and the ClusterRole from the module source, starts ``kueue`` as the ServiceAccount
``kueue-system/kueue-controller-manager`` (a client certificate of that identity, as the other
components have theirs), waits for its ``/readyz``, then registers the webhooks it serves for the
frameworks enabled here (batch/v1 Job) and for Kueue's own kinds. ``down`` stops it with the rest;
``uninstall`` also removes the webhook registrations (they would refuse Jobs with Kueue gone).

The webhooks are those of Kueue's own manifests with ``clientConfig.service`` replaced by a URL on
127.0.0.1 (the API server runs on the host) and a serving certificate from the cluster CA instead
of Kueue's self-managed one (which names only the in-cluster Service). Kueue's on-demand
visibility API (an aggregated API server) is left off.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from loraplane_devcluster import binaries, controlplane, kubeconfig, pki, probes, processes

BUILD_SCRIPT = binaries.DEVCLUSTER_DIR / "build-kueue.sh"
NAMESPACE = "kueue-system"
SERVICE_ACCOUNT = "kueue-controller-manager"
CLUSTER_ROLE = "kueue-manager-role"
WEBHOOK_LABEL = controlplane.KUEUE_WEBHOOK_LABEL  # `up` removes these after a restart
FRAMEWORKS = ("batch/job",)
PROCESS_NAME = "kueue"
# Kueue reads its metrics certificate from this fixed path when it does not manage certificates
METRICS_CERT_DIR = "/etc/kueue/metrics/certs"
JsonObject = dict[str, Any]


class KueueError(RuntimeError):
    pass


@dataclass(frozen=True)
class Ports:
    health: int
    metrics: int
    webhook: int


# ---- pure builders -------------------------------------------------------------------------------


def manager_config(ports: Ports, cert_dir: Path) -> JsonObject:
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"{controlplane.LOCALHOST}:{ports.health}"},
        "metrics": {"bindAddress": f"{controlplane.LOCALHOST}:{ports.metrics}"},
        "webhook": {"host": controlplane.LOCALHOST, "port": ports.webhook, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        # the certificate comes from the cluster CA (below), not from Kueue's rotator
        "internalCertManagement": {"enable": False},
        "integrations": {"frameworks": list(FRAMEWORKS)},
        "clientConnection": {"qps": 50, "burst": 100},
    }


def _served_here(webhook: JsonObject) -> bool:
    """Webhooks of Kueue's own kinds and of the frameworks enabled here; the others (pods,
    Deployments, ...) would hold up every such object while nothing serves them."""
    for rule in webhook.get("rules") or []:
        groups, resources = set(rule.get("apiGroups") or []), set(rule.get("resources") or [])
        if "kueue.x-k8s.io" in groups or ("batch" in groups and "jobs" in resources):
            return True
    return False


def webhook_configurations(manifests: str, base_url: str, ca_bundle: str) -> list[JsonObject]:
    """Kueue's webhook configurations, pointed at ``base_url`` and trusting ``ca_bundle``."""
    configurations = []
    for document in yaml.safe_load_all(manifests):
        if not document:
            continue
        kept = []
        for webhook in document.get("webhooks") or []:
            if not _served_here(webhook):
                continue
            path = webhook["clientConfig"]["service"]["path"]
            webhook["clientConfig"] = {"url": f"{base_url}{path}", "caBundle": ca_bundle}
            kept.append(webhook)
        name = f"kueue-{document['metadata']['name']}"
        document["metadata"] = {"name": name, "labels": {WEBHOOK_LABEL: "true"}}
        document["webhooks"] = kept
        configurations.append(document)
    return configurations


def rbac_objects(role_manifest: str, secrets_role_manifest: str) -> list[JsonObject]:
    """Kueue's own ClusterRole and its Role on Secrets of its namespace (renamed and placed as its
    kustomization does), its ServiceAccount, and the bindings."""
    role = next(d for d in yaml.safe_load_all(role_manifest) if d and d.get("kind") == "ClusterRole")
    role["metadata"] = {"name": CLUSTER_ROLE}
    secrets_role = next(d for d in yaml.safe_load_all(secrets_role_manifest) if d and d.get("kind") == "Role")
    secrets_role["metadata"] = {"name": "kueue-manager-secrets-role", "namespace": NAMESPACE}
    subjects = [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}]
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": SERVICE_ACCOUNT, "namespace": NAMESPACE},
        },
        role,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "kueue-manager-rolebinding"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CLUSTER_ROLE},
            "subjects": subjects,
        },
        secrets_role,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "kueue-manager-secrets-rolebinding", "namespace": NAMESPACE},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "kueue-manager-secrets-role",
            },
            "subjects": subjects,
        },
    ]


def in_private_mounts(cert_dir: Path, argv: list[str]) -> list[str]:
    """``argv`` in a mount namespace of its own where ``cert_dir`` is at Kueue's fixed metrics
    certificate path, so nothing of the host's /etc changes but an empty mount point (unshare and
    sh exec in turn: the PID is Kueue's)."""
    script = 'mount --bind "$0" "$1" && shift && exec "$@"'
    return [
        "unshare", "--mount", "--propagation", "private", "--",
        "sh", "-c", script, str(cert_dir), METRICS_CERT_DIR, *argv,
    ]  # fmt: skip


# ---- build, install, uninstall --------------------------------------------------------------------


def build() -> Path:
    """The Kueue folder (binary and manifests), built on first use under the binaries lock."""
    lock_path = binaries.cache_dir() / "build-binaries.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0 or not result.stdout.strip():
        raise KueueError(f"{BUILD_SCRIPT} failed with exit code {result.returncode} (its log is above)")
    return Path(result.stdout.strip().splitlines()[-1])


def _kubectl(bin_dir: Path, config: Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [str(bin_dir / "kubectl"), "--kubeconfig", str(config), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise KueueError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def install(run_dir: Path, *, die_with_parent: bool = False, timeout_s: float = 90.0) -> float:
    """Install and start Kueue on the cluster of ``run_dir``; returns the seconds it took."""
    began = time.monotonic()
    layout = controlplane.Layout(Path(run_dir).resolve())
    state = controlplane._read_state(layout)
    if not state.get("server"):
        raise KueueError(f"no running cluster in {layout.root}")
    bin_dir = Path(state["bin_dir"])
    kueue_dir = build()
    admin = layout.kubeconfig
    _kubectl(bin_dir, admin, "apply", "--server-side", "-f", str(kueue_dir / "config" / "crd"))
    _kubectl(bin_dir, admin, "wait", "--for=condition=Established", "-f", str(kueue_dir / "config" / "crd"))
    objects = rbac_objects(
        (kueue_dir / "config" / "rbac-role.yaml").read_text(),
        (kueue_dir / "config" / "rbac-secrets-role.yaml").read_text(),
    )
    _kubectl(
        bin_dir,
        admin,
        "apply",
        "--server-side",
        "-f",
        "-",
        stdin=json.dumps({"kind": "List", "apiVersion": "v1", "items": objects}),
    )

    certs = pki.cluster_pki(layout.pki)
    home = layout.root / "kueue"
    cert_dir = home / "certs"
    cert_dir.mkdir(parents=True, exist_ok=True)
    identity = pki.issue_client_cert(
        layout.pki,
        "kueue",
        f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}",
        ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}"],
    )
    credentials = kubeconfig.client_cert_credentials(identity.cert, identity.key)
    config_path = kubeconfig.write(
        layout.kubeconfigs / "kueue", kubeconfig.build(state["server"], certs.ca.cert, "kueue", credentials)
    )
    serving = pki.issue_serving_cert(
        layout.pki, "kueue-webhook", "kueue-webhook", ["localhost"], [controlplane.LOCALHOST]
    )
    # controller-runtime's webhook server reads tls.crt/tls.key from certDir
    (cert_dir / "tls.crt").write_bytes(serving.cert.read_bytes())
    (cert_dir / "tls.key").write_bytes(serving.key.read_bytes())
    os.makedirs(METRICS_CERT_DIR, exist_ok=True)  # the mount point; the mount is Kueue's alone
    ports = Ports(*(controlplane._free_port() for _ in range(3)))
    settings = home / "config.yaml"
    settings.write_text(json.dumps(manager_config(ports, cert_dir), indent=2) + "\n")

    kueue_argv = [
        str(kueue_dir / "kueue"),
        f"--config={settings}",
        f"--kubeconfig={config_path}",
        "--feature-gates=VisibilityOnDemand=false",
    ]
    argv = in_private_mounts(cert_dir, kueue_argv)
    log = layout.log(PROCESS_NAME)
    popen = processes.spawn(
        argv, log, env=controlplane._component_env(), cwd=layout.root, die_with_parent=die_with_parent
    )
    record = processes.record(layout.root, PROCESS_NAME, popen.pid, argv, log)
    started = controlplane._Started(PROCESS_NAME, popen, record, log, time.monotonic())
    try:
        probes.wait_for(
            "kueue /readyz",
            lambda: probes.answers_ok(f"http://{controlplane.LOCALHOST}:{ports.health}/readyz"),
            timeout_s,
            still_possible=started.exit_reason,
        )
    except probes.WaitTimeoutError as error:
        raise started.failure(str(error)) from error

    ca_bundle = base64.b64encode(certs.ca.cert.read_bytes()).decode()
    webhooks = webhook_configurations(
        (kueue_dir / "config" / "webhooks.yaml").read_text(),
        f"https://{controlplane.LOCALHOST}:{ports.webhook}",
        ca_bundle,
    )
    _kubectl(
        bin_dir,
        admin,
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "-",
        stdin=json.dumps({"kind": "List", "apiVersion": "v1", "items": webhooks}),
    )
    return time.monotonic() - began


def uninstall(run_dir: Path) -> None:
    """Remove the webhook registrations and stop Kueue (CRDs and queues stay)."""
    layout = controlplane.Layout(Path(run_dir).resolve())
    state = controlplane._read_state(layout)
    if state.get("bin_dir"):
        for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
            _kubectl(Path(state["bin_dir"]), layout.kubeconfig, "delete", kind, "-l", f"{WEBHOOK_LABEL}=true")
    for record in processes.read_records(layout.root):
        if record.name == PROCESS_NAME:
            processes.stop(record, grace_s=5)
            processes.forget(layout.root, record)
