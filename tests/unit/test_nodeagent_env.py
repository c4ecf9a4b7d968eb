"""Container environments resolved as the kubelet resolves them, and $(VAR) expansion."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from loraplane_devcluster.nodeagent.env import (
    ContainerConfigError,
    EnvContext,
    ObjectLookup,
    PodNetwork,
    container_env,
    expand,
    field_value,
    resource_value,
    service_env,
)

NETWORK = PodNetwork(pod_ip="127.0.1.7", host_ip="127.0.0.1")
ALLOCATABLE = {"cpu": "16", "memory": "24Gi"}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


CONFIG_MAPS = {"settings": {"data": {"MODE": "fast", "LEVEL": "3"}}}
SECRETS = {"creds": {"data": {"TOKEN": b64("s3cret"), "USER": b64("ada")}}}


def lookup() -> ObjectLookup:
    return ObjectLookup(config_map=CONFIG_MAPS.get, secret=SECRETS.get)


def context(service: dict[str, str] | None = None) -> EnvContext:
    return EnvContext(lookup(), NETWORK, service if service is not None else {}, ALLOCATABLE)


def pod(container: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "trainer-0",
            "namespace": "ml",
            "uid": "u-1",
            "labels": {"app": "trainer", "tier": "gpu"},
            "annotations": {"note": "x"},
        },
        "spec": {"nodeName": "loraplane-dev", "serviceAccountName": "worker", "containers": [container]},
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "1"),
        ("x$(A)y$(B)z", "x1y2z"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$", "$"),
        ("$$$(A)", "$1"),
        ("$(A", "$(A"),
        ("cost $5", "cost $5"),
        ("trailing $", "trailing $"),
        ("$()", "$()"),
        ("no refs", "no refs"),
    ],
)
def test_expand_follows_the_kubernetes_rules(text: str, expected: str) -> None:
    assert expand(text, {"A": "1", "B": "2"}) == expected


def test_env_values_see_only_variables_defined_before_them() -> None:
    container = {
        "name": "main",
        "env": [
            {"name": "FIRST", "value": "a-$(SECOND)"},
            {"name": "SECOND", "value": "b"},
            {"name": "THIRD", "value": "$(SECOND)-c"},
        ],
    }
    env = container_env(pod(container), container, context())
    assert env["FIRST"] == "a-$(SECOND)"
    assert env["THIRD"] == "b-c"


def test_env_from_applies_prefixes_in_order_and_env_wins() -> None:
    container = {
        "name": "main",
        "envFrom": [
            {"configMapRef": {"name": "settings"}},
            {"secretRef": {"name": "creds"}, "prefix": "DB_"},
            {"configMapRef": {"name": "settings"}, "prefix": "DB_"},
        ],
        "env": [{"name": "MODE", "value": "slow"}],
    }
    env = container_env(pod(container), container, context())
    assert env["MODE"] == "slow"
    assert env["LEVEL"] == "3"
    assert env["DB_TOKEN"] == "s3cret"
    assert env["DB_MODE"] == "fast"


def test_value_from_reads_fields_secrets_config_maps_and_resources() -> None:
    container = {
        "name": "main",
        "resources": {"limits": {"memory": "2Gi"}, "requests": {"cpu": "500m"}},
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "TIER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['tier']"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "TOKEN"}}},
            {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "LEVEL"}}},
            {
                "name": "MEM_MI",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
            {
                "name": "CPU_M",
                "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}},
            },
            {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "URL", "value": "http://$(POD_IP):8000"},
        ],
    }
    env = container_env(pod(container), container, context())
    assert env["POD_IP"] == "127.0.1.7"
    assert env["HOST_IP"] == "127.0.0.1"
    assert (env["NAME"], env["NS"], env["UID"]) == ("trainer-0", "ml", "u-1")
    assert env["TIER"] == "gpu"
    assert (env["NODE"], env["SA"]) == ("loraplane-dev", "worker")
    assert env["TOKEN"] == "s3cret"
    assert env["LEVEL"] == "3"
    assert env["MEM_MI"] == "2048"
    assert env["CPU_M"] == "500"
    assert env["CPU_LIMIT"] == "16"  # no limit: the node's allocatable, as the kubelet does
    assert env["URL"] == "http://127.0.1.7:8000"


def test_optional_references_to_missing_objects_leave_the_variable_out() -> None:
    container = {
        "name": "main",
        "envFrom": [{"secretRef": {"name": "absent", "optional": True}}],
        "env": [
            {"name": "A", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": True}}},
            {
                "name": "B",
                "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "nope", "optional": True}},
            },
        ],
    }
    env = container_env(pod(container), container, context())
    assert "A" not in env
    assert "B" not in env


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        ({"secretKeyRef": {"name": "absent", "key": "k"}}, 'secret "absent" not found'),
        (
            {"configMapKeyRef": {"name": "settings", "key": "nope"}},
            "couldn't find key nope in ConfigMap ml/settings",
        ),
        ({"fieldRef": {"fieldPath": "spec.nope"}}, "unsupported fieldRef"),
    ],
)
def test_required_references_that_cannot_be_resolved_are_config_errors(
    variable: dict[str, Any], message: str
) -> None:
    container = {"name": "main", "env": [{"name": "X", "valueFrom": variable}]}
    with pytest.raises(ContainerConfigError, match=message):
        container_env(pod(container), container, context())


def test_service_variables_are_added_and_can_be_referenced_or_overridden() -> None:
    services = service_env("10.96.0.1", 443)
    container = {
        "name": "main",
        "env": [
            {"name": "API", "value": "https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)"},
            {"name": "KUBERNETES_SERVICE_PORT_HTTPS", "value": "1"},
        ],
    }
    env = container_env(pod(container), container, context(services))
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
    assert env["KUBERNETES_SERVICE_PORT"] == "443"
    assert env["API"] == "https://10.96.0.1:443"
    assert env["KUBERNETES_SERVICE_PORT_HTTPS"] == "1"


def test_whole_label_map_is_written_sorted_as_key_equals_quoted_value() -> None:
    assert field_value(pod({"name": "main"}), "metadata.labels", NETWORK) == 'app="trainer"\ntier="gpu"'


def test_resource_value_rounds_up_and_rejects_unknown_containers() -> None:
    container = {"name": "main", "resources": {"limits": {"cpu": "1500m"}}}
    assert resource_value(pod(container), "main", "limits.cpu", None, ALLOCATABLE) == "2"
    with pytest.raises(ContainerConfigError, match="unknown container"):
        resource_value(pod(container), "other", "limits.cpu", None, ALLOCATABLE)
