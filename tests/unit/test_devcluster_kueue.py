"""The local cluster's Kueue setup: which webhooks it registers and how, and its manager settings."""

from __future__ import annotations

from pathlib import Path

from loraplane_devcluster import kueue

MANIFESTS = """\
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: mutating-webhook-configuration
webhooks:
- admissionReviewVersions: [v1]
  clientConfig:
    service: {name: webhook-service, namespace: system, path: /mutate-batch-v1-job}
  failurePolicy: Fail
  name: mjob.kb.io
  rules:
  - {apiGroups: [batch], apiVersions: [v1], operations: [CREATE], resources: [jobs]}
  sideEffects: None
- admissionReviewVersions: [v1]
  clientConfig:
    service: {name: webhook-service, namespace: system, path: /mutate--v1-pod}
  failurePolicy: Fail
  name: mpod.kb.io
  rules:
  - {apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}
  sideEffects: None
- admissionReviewVersions: [v1]
  clientConfig:
    service: {name: webhook-service, namespace: system, path: /mutate-kueue-x-k8s-io-v1beta2-clusterqueue}
  failurePolicy: Fail
  name: mclusterqueue.kb.io
  rules:
  - {apiGroups: [kueue.x-k8s.io], apiVersions: [v1beta2], operations: [CREATE], resources: [clusterqueues]}
  sideEffects: None
"""


def test_only_the_webhooks_kueue_serves_here_are_registered_at_its_local_address() -> None:
    [config] = kueue.webhook_configurations(MANIFESTS, "https://127.0.0.1:9443", "Q0E=")
    names = [w["name"] for w in config["webhooks"]]
    # a pod webhook with nothing serving pods would hold up every pod in the cluster
    assert names == ["mjob.kb.io", "mclusterqueue.kb.io"]
    job = config["webhooks"][0]
    assert job["clientConfig"] == {"url": "https://127.0.0.1:9443/mutate-batch-v1-job", "caBundle": "Q0E="}
    assert job["failurePolicy"] == "Fail"
    assert config["metadata"] == {
        "name": "kueue-mutating-webhook-configuration",
        "labels": {"loraplane.io/devcluster-kueue": "true"},
    }


def test_the_manager_listens_on_loopback_without_leader_election_or_its_own_certificates() -> None:
    settings = kueue.manager_config(kueue.Ports(health=1, metrics=2, webhook=3), Path("/certs"))
    assert settings["webhook"] == {"host": "127.0.0.1", "port": 3, "certDir": "/certs"}
    assert settings["health"]["healthProbeBindAddress"] == "127.0.0.1:1"
    assert settings["metrics"]["bindAddress"] == "127.0.0.1:2"
    assert settings["internalCertManagement"] == {"enable": False}
    assert settings["integrations"]["frameworks"] == ["batch/job"]


def test_kueue_runs_as_its_service_account_bound_to_its_own_cluster_role() -> None:
    role = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: manager-role}\n"
    secrets = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: manager-secrets-role}\n"
    objects = kueue.rbac_objects(role, secrets)
    kinds = [o["kind"] for o in objects]
    assert kinds == [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ]
    assert objects[4]["metadata"] == {"name": "kueue-manager-secrets-role", "namespace": "kueue-system"}
    binding = objects[3]
    assert binding["roleRef"]["name"] == objects[2]["metadata"]["name"] == "kueue-manager-role"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kueue-controller-manager", "namespace": "kueue-system"}
    ]
