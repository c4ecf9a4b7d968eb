"""Kueue on the local cluster: installed from its module source, run against the API server with its
webhooks, it suspends queued Jobs and admits them within a ClusterQueue's quota, one at a time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import BatchV1Api, CustomObjectsApi

from loraplane_devcluster import kueue
from loraplane_devcluster.testing import Kube, wait_until

pytestmark = pytest.mark.cluster

GROUP, VERSION = "kueue.x-k8s.io", "v1beta2"


@pytest.fixture
def with_kueue(kube: Kube) -> Iterator[None]:
    if kube.run_dir is None:
        pytest.skip("Kueue is installed into a local cluster's run directory")
    kueue.install(kube.run_dir, die_with_parent=True)
    yield
    kueue.uninstall(kube.run_dir)


def gated_job(name: str, gate: Path) -> dict[str, Any]:
    """A Job on the queue that runs until ``gate`` exists (the test decides when it finishes)."""
    container = {
        "name": "main",
        "image": "busybox",
        "command": ["sh", "-c", "while [ ! -e /gate/open ]; do sleep 0.1; done"],
        "resources": {"requests": {"cpu": "1"}},
        "volumeMounts": [{"name": "gate", "mountPath": "/gate"}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"kueue.x-k8s.io/queue-name": "queue"}},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [container],
                    "volumes": [{"name": "gate", "hostPath": {"path": str(gate), "type": "Directory"}}],
                }
            }
        },
    }


def test_a_cluster_queue_admits_one_job_at_a_time(
    kube: Kube, namespace: str, with_kueue: None, tmp_path: Path
) -> None:
    custom: Any = CustomObjectsApi(kube.api)
    batch: Any = BatchV1Api(kube.api)
    flavor = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ResourceFlavor", "metadata": {"name": "default"}}
    queue_name = f"one-job-{namespace}"[:63]
    cluster_queue: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ClusterQueue",
        "metadata": {"name": queue_name},
        "spec": {
            "namespaceSelector": {},
            "resourceGroups": [
                {
                    "coveredResources": ["cpu"],
                    "flavors": [{"name": "default", "resources": [{"name": "cpu", "nominalQuota": "1"}]}],
                }
            ],
        },
    }
    local_queue = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LocalQueue",
        "metadata": {"name": "queue"},
        "spec": {"clusterQueue": queue_name},
    }
    kube.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(flavor))
    kube.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(cluster_queue))
    kube.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=json.dumps(local_queue))

    gate = tmp_path / "gate"
    gate.mkdir()
    # created unsuspended: Kueue's mutating webhook suspends them until they are admitted
    batch.create_namespaced_job(namespace, gated_job("first", gate))

    def job(name: str) -> dict[str, Any]:
        return dict(kube.api.sanitize_for_serialization(batch.read_namespaced_job(name, namespace)))  # type: ignore[no-untyped-call]

    wait_until("first admitted (unsuspended)", lambda: job("first")["spec"].get("suspend") is False, 60)
    batch.create_namespaced_job(namespace, gated_job("second", gate))
    assert job("second")["spec"]["suspend"] is True, "the webhook suspended it at creation"

    def pending_workload() -> str:
        workloads = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "workloads")["items"]
        for workload in workloads:
            owners = {o["name"] for o in workload["metadata"].get("ownerReferences") or []}
            conditions = {c["type"]: c for c in workload.get("status", {}).get("conditions") or []}
            reserved = conditions.get("QuotaReserved", {})
            if "second" in owners and reserved.get("status") == "False":
                return str(reserved.get("message", ""))
        return ""

    message = wait_until("the second Job's Workload pending for quota", pending_workload, 60)
    assert "cpu" in message, message
    assert job("second")["spec"]["suspend"] is True

    (gate / "open").touch()
    wait_until("first finished", lambda: job("first").get("status", {}).get("succeeded") == 1, 60)
    wait_until(
        "second admitted once the quota is free", lambda: job("second")["spec"].get("suspend") is False, 60
    )
    wait_until("second finished", lambda: job("second").get("status", {}).get("succeeded") == 1, 60)
