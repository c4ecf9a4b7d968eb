"""The local control plane is a real Kubernetes: stamped version, RBAC, the controllers the operator
relies on (Job, Deployment, garbage collection, volumes), loopback only, and a clean stop."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import AppsV1Api, BatchV1Api, CoreV1Api, RbacAuthorizationV1Api
from kubernetes.client.exceptions import ApiException

from loraplane_devcluster import binaries, processes
from loraplane_devcluster.testing import Kube, wait_until

pytestmark = pytest.mark.cluster

# The client's models are typed with Optional everywhere; the tests send plain dicts and read
# fields they just asserted on, so they hold the API objects as Any.

# Keeps test pods Pending whether or not the session has a node agent: no node carries this label.
UNSCHEDULABLE = {"loraplane.io/test-no-such-node": "true"}
DEVCLUSTER_DIR = Path(binaries.__file__).resolve().parent.parent


def pod_template(restart_policy: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"labels": labels or {}},
        "spec": {
            "restartPolicy": restart_policy,
            "nodeSelector": UNSCHEDULABLE,
            "containers": [{"name": "main", "image": "busybox", "command": ["true"]}],
        },
    }


def owned_by(obj: Any, owner: Any) -> bool:
    return any(ref.uid == owner.metadata.uid for ref in obj.metadata.owner_references or [])


def test_server_reports_the_stamped_version(kube: Kube) -> None:
    versions = json.loads(kube.kubectl("version", "-o", "json").stdout)
    expected = binaries.versions()["KUBERNETES_VERSION"]
    assert versions["serverVersion"]["gitVersion"] == expected
    assert versions["clientVersion"]["gitVersion"] == expected


def test_rbac_forbids_a_service_account_without_bindings(
    kube: Kube, namespace: str, service_account_kubeconfig: Any
) -> None:
    core: Any = CoreV1Api(kube.api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    as_nobody = service_account_kubeconfig(namespace, "nobody")

    # the token authenticates: a Forbidden below is RBAC's answer, not a bad credential
    whoami = json.loads(kube.kubectl("auth", "whoami", "-o", "json", kubeconfig_path=as_nobody).stdout)
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:nobody"

    denied = kube.kubectl("get", "secrets", "-n", namespace, check=False, kubeconfig_path=as_nobody)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr
    assert 'cannot list resource "secrets"' in denied.stderr

    rbac: Any = RbacAuthorizationV1Api(kube.api)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "read-secrets"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "nobody-reads-secrets"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-secrets"},
            "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": namespace}],
        },
    )
    wait_until(
        "the RoleBinding to take effect",
        lambda: (
            kube.kubectl("get", "secrets", "-n", namespace, check=False, kubeconfig_path=as_nobody).returncode
            == 0
        ),
        timeout_s=30,
    )


def test_job_controller_creates_pods_and_the_scheduler_sees_them(kube: Kube, namespace: str) -> None:
    batch: Any = BatchV1Api(kube.api)
    job = batch.create_namespaced_job(
        namespace,
        {"metadata": {"name": "hello"}, "spec": {"backoffLimit": 0, "template": pod_template("Never")}},
    )
    core: Any = CoreV1Api(kube.api)
    pods = wait_until(
        "the Job's pod",
        lambda: (
            core.list_namespaced_pod(namespace, label_selector="batch.kubernetes.io/job-name=hello").items
        ),
        timeout_s=60,
    )
    assert all(owned_by(pod, job) for pod in pods)

    def unschedulable() -> bool:
        pod = core.read_namespaced_pod(pods[0].metadata.name, namespace)
        return any(
            c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
            for c in pod.status.conditions or []
        )

    wait_until("the scheduler to mark the pod Unschedulable", unschedulable, timeout_s=60)


def test_deployment_creates_a_replicaset_and_its_pods(kube: Kube, namespace: str) -> None:
    labels = {"app": "web"}
    apps: Any = AppsV1Api(kube.api)
    core: Any = CoreV1Api(kube.api)
    deployment = apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": pod_template("Always", labels),
            },
        },
    )
    replica_sets = wait_until(
        "a ReplicaSet owned by the Deployment",
        lambda: [rs for rs in apps.list_namespaced_replica_set(namespace).items if owned_by(rs, deployment)],
        timeout_s=60,
    )
    assert len(replica_sets) == 1
    assert replica_sets[0].spec.replicas == 2

    def pods_of_the_replica_set() -> list[Any]:
        return [pod for pod in core.list_namespaced_pod(namespace).items if owned_by(pod, replica_sets[0])]

    wait_until("two pods owned by the ReplicaSet", lambda: len(pods_of_the_replica_set()) == 2, timeout_s=60)
    assert len(pods_of_the_replica_set()) == 2  # and no more


def test_garbage_collector_deletes_dependents_of_a_deleted_owner(kube: Kube, namespace: str) -> None:
    core: Any = CoreV1Api(kube.api)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "dependent", "ownerReferences": [reference]}, "data": {"k": "v"}}
    )
    core.delete_namespaced_config_map("owner", namespace)

    def dependent_gone() -> bool:
        try:
            core.read_namespaced_config_map("dependent", namespace)
        except ApiException as error:
            return bool(error.status == 404)
        return False

    wait_until("the garbage collector to delete the dependent ConfigMap", dependent_gone, timeout_s=60)


def test_default_storage_class_binds_a_claim_to_a_host_path(kube: Kube, namespace: str) -> None:
    core: Any = CoreV1Api(kube.api)
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}},
        },
    )

    def bound_claim() -> Any:
        claim = core.read_namespaced_persistent_volume_claim("data", namespace)
        return claim if claim.status.phase == "Bound" else None

    claim = wait_until("the claim to bind", bound_claim, timeout_s=60)
    assert claim.spec.storage_class_name == "standard"
    volume = core.read_persistent_volume(claim.spec.volume_name)
    assert Path(volume.spec.host_path.path).is_dir()

    # reclaimPolicy Delete: deleting the claim removes the volume (no host paths pile up)
    core.delete_namespaced_persistent_volume_claim("data", namespace)

    def volume_gone() -> bool:
        try:
            core.read_persistent_volume(claim.spec.volume_name)
        except ApiException as error:
            return bool(error.status == 404)
        return False

    wait_until("the volume to be deleted with its claim", volume_gone, timeout_s=60)


# ---- process-level checks of the local control plane -------------------------------------------


def _decode_address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net/{tcp,udp}[6] addresses: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    swapped = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(swapped)


def _is_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _inet_sockets(pid: int) -> list[tuple[str, str, Any, Any]]:
    """(protocol, state, local address, remote address) of every inet socket ``pid`` holds."""
    inodes = _socket_inodes(pid)
    found = []
    for protocol in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{protocol}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                local, remote = fields[1].split(":")[0], fields[2].split(":")[0]
                found.append((protocol, fields[3], _decode_address(local), _decode_address(remote)))
    return found


NODE_NAMESPACE_COMPONENTS = {"kube-proxy", "coredns"}
POD_NETWORK = ipaddress.ip_network("10.250.0.0/16")
SERVICE_NETWORK = ipaddress.ip_network("10.96.0.0/16")


def test_components_listen_and_talk_on_loopback_only(kube: Kube) -> None:
    if kube.run_dir is None:
        pytest.skip("the cluster comes from a kubeconfig: its processes are not ours to inspect")
    records = processes.read_records(kube.run_dir)
    assert {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} <= {
        r.name for r in records
    }
    listening = 0
    host_network = os.readlink("/proc/self/ns/net")
    for record in records:
        if record.name in NODE_NAMESPACE_COMPONENTS:
            # kube-proxy and CoreDNS: in the node agent's network namespace, on its pod network
            assert os.readlink(f"/proc/{record.pid}/ns/net") != host_network, record.name
            for protocol, state, local, remote in _inet_sockets(record.pid):
                where = f"{record.name} {protocol} {local} -> {remote} (state {state})"
                assert _is_loopback(local) or local in POD_NETWORK or local in SERVICE_NETWORK, where
                node_address = remote in POD_NETWORK or remote in SERVICE_NETWORK
                assert remote.is_unspecified or _is_loopback(remote) or node_address, where
            continue
        for protocol, state, local, remote in _inet_sockets(record.pid):
            where = f"{record.name} {protocol} {local} -> {remote} (state {state})"
            if state == "0A":  # LISTEN
                listening += 1
                if record.name != "nodeagent":  # the node agent's servers live on 127.0.0.N
                    assert str(local) in {"127.0.0.1", "::ffff:127.0.0.1"}, where
                assert _is_loopback(local), where
            elif not remote.is_unspecified:
                assert _is_loopback(remote), where
    assert listening >= 5  # etcd client + peer, API server, controller-manager, scheduler


def _devcluster_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(DEVCLUSTER_DIR), os.environ.get("PYTHONPATH", "")])
    )
    result = subprocess.run(
        [sys.executable, "-m", "loraplane_devcluster", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )
    if check:
        assert result.returncode == 0, f"{args} failed:\n{result.stderr}"
    return result


def test_cli_up_is_idempotent_restarts_a_broken_cluster_and_down_leaves_no_process(
    scratch_run_dir: Path,
) -> None:
    bin_dir = str(binaries.resolve_bin_dir())
    common = ["--run-dir", str(scratch_run_dir)]

    started = _devcluster_cli("up", *common, "--no-node", "--bin-dir", bin_dir)
    assert f"export KUBECONFIG={scratch_run_dir.resolve() / 'kubeconfig'}" in started.stdout
    first = processes.read_records(scratch_run_dir)
    assert [r.name for r in first] == ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
    assert _devcluster_cli("status", *common).returncode == 0

    again = _devcluster_cli("up", *common, "--no-node", "--bin-dir", bin_dir)
    assert "reusing" in again.stderr
    assert processes.read_records(scratch_run_dir) == first

    scheduler = next(r for r in first if r.name == "kube-scheduler")
    os.kill(scheduler.pid, signal.SIGKILL)
    wait_until("the killed scheduler to be gone", lambda: not processes.is_alive(scheduler), timeout_s=10)
    assert _devcluster_cli("status", *common, check=False).returncode == 1
    _devcluster_cli("up", *common, "--no-node", "--bin-dir", bin_dir)
    second = processes.read_records(scratch_run_dir)
    assert all(processes.is_alive(r) for r in second)
    assert not any(processes.is_alive(r) for r in first)  # the unhealthy cluster was stopped whole

    stopped = _devcluster_cli("down", *common)
    assert "stopped etcd" in stopped.stderr
    assert not any(processes.is_alive(r) for r in second)
    for record in second:  # nothing left in their process groups either
        assert processes.group_members(record.pid) == []
    assert _devcluster_cli("status", *common, check=False).returncode == 1
