"""The node agent runs pods for real: env and volumes as the kubelet resolves them, Jobs, restarts,
probes, readiness gates, in-cluster credentials, a network namespace and address per pod that
Services and the API server's proxy reach, and deletion that leaves no process behind. Every wait
is on observed state, with a deadline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import AppsV1Api, BatchV1Api, CoreV1Api, DiscoveryV1Api, RbacAuthorizationV1Api
from kubernetes.client.exceptions import ApiException

from loraplane_devcluster.nodeagent import network
from loraplane_devcluster.nodeagent.config import PROJECT_DIR, default_venv
from loraplane_devcluster.testing import Kube, wait_until

pytestmark = pytest.mark.cluster

JsonObject = dict[str, Any]
# Requests to pod addresses must never go through a proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# The client's models are typed as its model classes; these tests send and read plain dicts.
def core_api(kube: Kube) -> Any:
    return CoreV1Api(kube.api)


def as_dict(kube: Kube, obj: Any) -> JsonObject:
    return dict(kube.api.sanitize_for_serialization(obj))  # type: ignore[no-untyped-call]


def get_pod(kube: Kube, namespace: str, name: str) -> JsonObject | None:
    try:
        return as_dict(kube, core_api(kube).read_namespaced_pod(name, namespace))
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def wait_pod(
    kube: Kube, namespace: str, name: str, what: str, check: Any, timeout_s: float = 60
) -> JsonObject:
    def probe() -> JsonObject | None:
        pod = get_pod(kube, namespace, name)
        return pod if pod is not None and check(pod) else None

    return wait_until(f"pod {name}: {what}", probe, timeout_s)


def phase_is(*phases: str) -> Any:
    return lambda pod: pod.get("status", {}).get("phase") in phases


def condition(pod: JsonObject, kind: str) -> JsonObject:
    return next((c for c in pod.get("status", {}).get("conditions") or [] if c["type"] == kind), {})


def container_status(pod: JsonObject, name: str = "main") -> JsonObject:
    """The container's status, or {} before the node has reported one."""
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return next((s for s in statuses if s["name"] == name), {})


def waiting_reason(pod: JsonObject) -> str:
    return str(container_status(pod).get("state", {}).get("waiting", {}).get("reason", ""))


def termination_message(pod: JsonObject) -> str:
    return str(container_status(pod)["state"]["terminated"].get("message", ""))


def main_pid(pod: JsonObject) -> int:
    return int(container_status(pod)["containerID"].removeprefix("process://"))


def group_alive(pgid: int) -> bool:
    """True while any process is still in the process group (zombies excluded)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in {"Z", "X"}:
            return True
    return False


def create_pod(
    kube: Kube, namespace: str, name: str, spec: JsonObject, labels: dict[str, str] | None = None
) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": spec,
    }
    core_api(kube).create_namespaced_pod(namespace, body)


def http_get(url: str) -> str:
    with _DIRECT.open(url, timeout=5) as response:
        return str(response.read().decode())


POD_IP_ENV = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}

REPORT_SCRIPT = r"""
import json, os, base64, pathlib, socket
sa = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")
payload = sa.joinpath("token").read_text().split(".")[1]
claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
keys = ["POD_IP", "POD_NAME", "NAMESPACE", "POD_UID", "APP_LABEL", "NODE", "SERVICE_ACCOUNT", "PASSWORD",
        "GREETING", "CFG_mode", "SEC_user", "MEM_MI", "URL", "LITERAL", "KUBERNETES_SERVICE_HOST",
        "KUBERNETES_SERVICE_PORT", "HOME"]
report = {k: os.environ.get(k) for k in keys}
report.update(
    argv=sys_argv,
    cwd=os.getcwd(),
    hostname=socket.gethostname(),
    tmp=sorted(os.listdir("/tmp")),
    config_file=pathlib.Path("/etc/app/settings.conf").read_text(),
    secret_file=pathlib.Path("/etc/creds/user").read_text(),
    secret_mode=oct(pathlib.Path("/etc/creds/user").stat().st_mode & 0o777),
    labels=pathlib.Path("/etc/podinfo/labels").read_text(),
    scratch_writable=pathlib.Path("/scratch/x").write_text("1") == 1,
    token_subject=claims["sub"],
    ca=sa.joinpath("ca.crt").read_text().startswith("-----BEGIN CERTIFICATE-----"),
    sa_namespace=sa.joinpath("namespace").read_text(),
)
pathlib.Path("/dev/termination-log").write_text(json.dumps(report))
"""


def test_a_pod_sees_env_and_volumes_as_on_a_real_node(kube: Kube, namespace: str) -> None:
    core = core_api(kube)
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "creds"}, "stringData": {"password": "hunter2", "user": "ada"}}
    )
    core.create_namespaced_config_map(
        namespace,
        {
            "metadata": {"name": "settings"},
            "data": {"greeting": "hello", "mode": "fast", "settings.conf": "x=1"},
        },
    )
    env = [
        POD_IP_ENV,
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        {"name": "APP_LABEL", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "SERVICE_ACCOUNT", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
        {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
        {
            "name": "MEM_MI",
            "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
        },
        {"name": "URL", "value": "http://$(POD_IP):8000/$(POD_NAME)"},
        {"name": "LITERAL", "value": "$$(POD_IP)"},
    ]
    create_pod(
        kube,
        namespace,
        "report",
        {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "python:3.11",
                    "command": ["python", "-c", "import sys; sys_argv = sys.argv[1:]\n" + REPORT_SCRIPT],
                    "args": ["$(POD_NAME)", "$$(NODE)"],
                    "workingDir": "/scratch/work",
                    "env": env,
                    "envFrom": [
                        {"configMapRef": {"name": "settings"}, "prefix": "CFG_"},
                        {"secretRef": {"name": "creds"}, "prefix": "SEC_"},
                    ],
                    "resources": {"limits": {"memory": "256Mi"}},
                    "volumeMounts": [
                        {"name": "config", "mountPath": "/etc/app"},
                        {"name": "creds", "mountPath": "/etc/creds"},
                        {"name": "podinfo", "mountPath": "/etc/podinfo"},
                        {"name": "scratch", "mountPath": "/scratch"},
                    ],
                }
            ],
            "volumes": [
                {
                    "name": "config",
                    "configMap": {
                        "name": "settings",
                        "items": [{"key": "settings.conf", "path": "settings.conf"}],
                    },
                },
                {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
                {
                    "name": "podinfo",
                    "downwardAPI": {
                        "items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]
                    },
                },
                {"name": "scratch", "emptyDir": {}},
            ],
        },
        labels={"app": "reporter"},
    )
    pod = wait_pod(kube, namespace, "report", "Succeeded", phase_is("Succeeded", "Failed"))
    assert pod["status"]["phase"] == "Succeeded", termination_message(pod)
    report = json.loads(termination_message(pod))
    pod_ip = pod["status"]["podIP"]
    assert pod_ip.startswith("10.250.")  # each agent holds a 10.250.N.0/24 of its own
    assert pod["status"]["podIPs"] == [{"ip": pod_ip}]
    assert pod["status"]["hostIP"] == "127.0.0.1"
    assert report["POD_IP"] == pod_ip
    assert report["POD_NAME"] == "report"
    assert report["NAMESPACE"] == namespace
    assert report["POD_UID"] == pod["metadata"]["uid"]
    assert report["APP_LABEL"] == "reporter"
    assert report["NODE"] == pod["spec"]["nodeName"]
    assert report["SERVICE_ACCOUNT"] == "default"
    assert report["PASSWORD"] == "hunter2"
    assert report["GREETING"] == "hello"
    assert report["CFG_mode"] == "fast"
    assert report["SEC_user"] == "ada"
    assert report["MEM_MI"] == "256"
    assert report["URL"] == f"http://{pod_ip}:8000/report"
    assert report["LITERAL"] == "$(POD_IP)"
    assert report["argv"] == ["report", "$(NODE)"]
    assert report["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"  # the Service address, as on any node
    assert report["KUBERNETES_SERVICE_PORT"] == "443"
    assert report["HOME"]
    assert report["cwd"] == "/scratch/work"
    assert report["hostname"] == "report"
    # A private /tmp, not the host's: empty but for the checkout and venv kept visible when they
    # live under /tmp themselves (a CI clone there).
    kept = {Path(p).parts[2] for p in (PROJECT_DIR, default_venv()) if str(p).startswith("/tmp/")}
    assert set(report["tmp"]) == kept
    assert report["config_file"] == "x=1"
    assert report["secret_file"] == "ada"
    assert report["secret_mode"] == "0o400"
    assert report["labels"] == 'app="reporter"'
    assert report["scratch_writable"]
    assert report["token_subject"] == f"system:serviceaccount:{namespace}:default"
    assert report["ca"]
    assert report["sa_namespace"] == namespace


WRITE_ADAPTER = "echo trained > /out/adapter.txt && echo '{\"ok\": true}' > /dev/termination-log"


def test_a_job_writes_into_a_pvc_and_its_message_reaches_status(kube: Kube, namespace: str) -> None:
    core = core_api(kube)
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "writer"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": "busybox",
                            "command": ["sh", "-c", WRITE_ADAPTER],
                            "volumeMounts": [{"name": "data", "mountPath": "/out", "subPath": "run-1"}],
                        }
                    ],
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
                }
            },
        },
    }
    batch: Any = BatchV1Api(kube.api)
    batch.create_namespaced_job(namespace, job)

    def complete() -> bool:
        status = as_dict(kube, batch.read_namespaced_job("writer", namespace)).get("status", {})
        return any(c["type"] == "Complete" and c["status"] == "True" for c in status.get("conditions") or [])

    wait_until("job writer Complete", complete, 60)
    pods = core.list_namespaced_pod(namespace, label_selector="job-name=writer").items
    assert len(pods) == 1
    assert termination_message(as_dict(kube, pods[0])) == '{"ok": true}\n'
    claim = as_dict(kube, core.read_namespaced_persistent_volume_claim("data", namespace))
    volume = as_dict(kube, core.read_persistent_volume(claim["spec"]["volumeName"]))
    host_path = Path(volume["spec"]["hostPath"]["path"])
    assert (host_path / "run-1" / "adapter.txt").read_text() == "trained\n"


def test_a_failing_container_fails_a_never_pod_with_its_exit_code(kube: Kube, namespace: str) -> None:
    create_pod(
        kube,
        namespace,
        "fails",
        {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", "exit 3"]}],
        },
    )
    pod = wait_pod(kube, namespace, "fails", "Failed", phase_is("Failed", "Succeeded"))
    terminated = container_status(pod)["state"]["terminated"]
    assert pod["status"]["phase"] == "Failed"
    assert (terminated["exitCode"], terminated["reason"]) == (3, "Error")
    assert container_status(pod)["restartCount"] == 0


def test_an_on_failure_pod_restarts_its_container_with_back_off(kube: Kube, namespace: str) -> None:
    create_pod(
        kube,
        namespace,
        "crashes",
        {
            "restartPolicy": "OnFailure",
            "containers": [
                {
                    "name": "main",
                    "image": "busybox",
                    "command": ["sh", "-c", "echo oops >&2; exit 3"],
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                }
            ],
        },
    )
    # The first restart is immediate, the second waits the first back-off (10 s by default).
    pod = wait_pod(
        kube,
        namespace,
        "crashes",
        "two restarts",
        lambda p: container_status(p).get("restartCount", 0) >= 2,
        90,
    )
    status = container_status(pod)
    assert pod["status"]["phase"] in {"Running", "Pending"}
    last = status["lastState"]["terminated"]
    assert (last["exitCode"], last["message"]) == (3, "oops")
    pod = wait_pod(
        kube,
        namespace,
        "crashes",
        "CrashLoopBackOff",
        lambda p: waiting_reason(p) == "CrashLoopBackOff",
        60,
    )
    assert "back-off" in container_status(pod)["state"]["waiting"]["message"]


def network_namespaces() -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in listing.stdout.splitlines() if line.strip()}


def endpoint_addresses(kube: Kube, namespace: str, service: str) -> dict[str, bool]:
    """Address → ready, over the Service's EndpointSlices (as the controller-manager wrote them)."""
    discovery: Any = DiscoveryV1Api(kube.api)
    slices = discovery.list_namespaced_endpoint_slice(
        namespace, label_selector=f"kubernetes.io/service-name={service}"
    ).items
    return {
        address: bool(endpoint.conditions.ready)
        for piece in slices
        for endpoint in piece.endpoints or []
        for address in endpoint.addresses
    }


def test_two_replicas_bind_their_own_addresses_and_leave_nothing_when_deleted(
    kube: Kube, namespace: str
) -> None:
    apps: Any = AppsV1Api(kube.api)
    container = {
        "name": "main",
        "image": "python:3.11",
        # Both listen on port 8000: only their addresses differ, as vLLM replicas' would.
        "command": ["python", "-m", "http.server", "8000", "--bind", "$(POD_IP)"],
        "env": [POD_IP_ENV],
        "ports": [{"name": "http", "containerPort": 8000}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [container]}},
        },
    }
    apps.create_namespaced_deployment(namespace, deployment)

    def available() -> bool:
        status = as_dict(kube, apps.read_namespaced_deployment("web", namespace)).get("status", {})
        return bool(status.get("availableReplicas") == 2)

    wait_until("deployment web available", available, 90)
    core = core_api(kube)
    pods = [as_dict(kube, p) for p in core.list_namespaced_pod(namespace, label_selector="app=web").items]
    addresses = {p["status"]["podIP"] for p in pods}
    assert len(addresses) == 2
    for address in addresses:
        assert "Directory listing" in http_get(f"http://{address}:8000/")
    assert all(condition(p, "Ready").get("status") == "True" for p in pods)
    pids = [main_pid(p) for p in pods]
    assert all(group_alive(pid) for pid in pids)

    # Pod addresses are real endpoints: a Service gets them in its EndpointSlices, ready...
    core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
        },
    )
    wait_until(
        "both pods ready in the Service's EndpointSlices",
        lambda: endpoint_addresses(kube, namespace, "web") == dict.fromkeys(addresses, True),
        30,
    )
    # ...the API server proxies to them, and one pod reaches the other from its own namespace.
    first, second = sorted(pods, key=lambda p: p["metadata"]["name"])
    proxied = kube.kubectl(
        "get", "--raw", f"/api/v1/namespaces/{namespace}/pods/{first['metadata']['name']}:8000/proxy/"
    )
    assert "Directory listing" in proxied.stdout, proxied.stderr
    fetch = f"import urllib.request; print(urllib.request.urlopen('http://{second['status']['podIP']}:8000/').status)"
    from_first = ["nsenter", "--target", str(main_pid(first)), "--net", sys.executable, "-c", fetch]
    assert subprocess.run(from_first, capture_output=True, text=True, check=False).stdout.strip() == "200"
    own = {f"lp{p['status']['podIP'].split('.')[2]}-{p['metadata']['uid']}" for p in pods}
    assert own <= network_namespaces()
    subnet = network.Subnet(int(first["status"]["podIP"].split(".")[2]))
    assert bridge_mac(subnet) == subnet.bridge_mac

    apps.delete_namespaced_deployment("web", namespace)
    wait_until(
        "ReplicaSets and pods of web gone",
        lambda: (
            not apps.list_namespaced_replica_set(namespace).items
            and not core.list_namespaced_pod(namespace, label_selector="app=web").items
        ),
        60,
    )
    wait_until("no process of web left", lambda: not any(group_alive(pid) for pid in pids), 10)
    wait_until("the pods' network namespaces deleted", lambda: not own & network_namespaces(), 10)
    # The gateway's MAC did not move with the veths that went: pods' ARP caches stay right.
    assert bridge_mac(subnet) == subnet.bridge_mac


def bridge_mac(subnet: network.Subnet) -> str:
    read = ["ip", "netns", "exec", subnet.node_namespace, "cat", "/sys/class/net/br0/address"]
    return subprocess.run(read, capture_output=True, text=True, check=True).stdout.strip()


def test_a_readiness_gate_holds_ready_and_survives_a_container_restart(kube: Kube, namespace: str) -> None:
    gate = "loraplane.io/adapters-loaded"
    create_pod(
        kube,
        namespace,
        "gated",
        {
            "readinessGates": [{"conditionType": gate}],
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}],
        },
    )
    pod = wait_pod(
        kube,
        namespace,
        "gated",
        "containers ready",
        lambda p: condition(p, "ContainersReady").get("status") == "True",
    )
    assert condition(pod, "Ready")["status"] == "False"
    assert condition(pod, "Ready")["reason"] == "ReadinessGatesNotReady"

    patch = {"status": {"conditions": [{"type": gate, "status": "True", "reason": "AdaptersLoaded"}]}}
    core_api(kube).patch_namespaced_pod_status("gated", namespace, patch)
    pod = wait_pod(
        kube, namespace, "gated", "Ready", lambda p: condition(p, "Ready").get("status") == "True", 30
    )

    # Kill the process (not the pod): the node restarts it in the same pod and keeps the gate.
    os.kill(main_pid(pod), signal.SIGKILL)
    pod = wait_pod(
        kube,
        namespace,
        "gated",
        "restarted",
        lambda p: container_status(p).get("restartCount") == 1 and "running" in container_status(p)["state"],
        30,
    )
    assert container_status(pod)["lastState"]["terminated"]["exitCode"] == 137
    assert condition(pod, gate)["status"] == "True"
    assert condition(pod, gate)["reason"] == "AdaptersLoaded"


def test_in_cluster_credentials_work_and_rbac_applies(kube: Kube, namespace: str) -> None:
    core = core_api(kube)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "lister"}})
    rbac: Any = RbacAuthorizationV1Api(kube.api)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "list-pods"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "lister"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "list-pods"},
            "subjects": [{"kind": "ServiceAccount", "name": "lister", "namespace": namespace}],
        },
    )
    script = (
        "import json, pathlib\n"
        "from kubernetes import client, config\n"
        "config.load_incluster_config()\n"
        "api = client.CoreV1Api()\n"
        "ns = pathlib.Path('/var/run/secrets/kubernetes.io/serviceaccount/namespace').read_text()\n"
        "names = [p.metadata.name for p in api.list_namespaced_pod(ns).items]\n"
        "try:\n"
        "    api.list_namespaced_secret(ns)\n"
        "    secrets = 'allowed'\n"
        "except client.exceptions.ApiException as error:\n"
        "    secrets = error.status\n"
        "pathlib.Path('/dev/termination-log').write_text(json.dumps({'pods': names, 'secrets': secrets}))\n"
    )
    create_pod(
        kube,
        namespace,
        "incluster",
        {
            "restartPolicy": "Never",
            "serviceAccountName": "lister",
            "containers": [{"name": "main", "image": "python:3.11", "command": ["python", "-c", script]}],
        },
    )
    pod = wait_pod(kube, namespace, "incluster", "finished", phase_is("Succeeded", "Failed"), 90)
    assert pod["status"]["phase"] == "Succeeded", kube.kubectl("logs", "-n", namespace, "incluster").stdout
    assert json.loads(termination_message(pod)) == {"pods": ["incluster"], "secrets": 403}


def test_deleting_a_pod_stops_its_whole_process_group(kube: Kube, namespace: str) -> None:
    # The shell ignores SIGTERM and its children are in its group: only SIGKILL after the grace
    # period, sent to the group, ends them all.
    create_pod(
        kube,
        namespace,
        "stubborn",
        {
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "main",
                    "image": "busybox",
                    "command": ["sh", "-c", "trap '' TERM; sleep 1000 & sleep 1000 & wait"],
                }
            ],
        },
    )
    pod = wait_pod(kube, namespace, "stubborn", "running", phase_is("Running"))
    pid = main_pid(pod)
    assert group_alive(pid)
    core_api(kube).delete_namespaced_pod("stubborn", namespace)
    wait_until("pod stubborn gone from the API", lambda: get_pod(kube, namespace, "stubborn") is None, 30)
    assert not group_alive(pid)


def test_init_containers_run_in_order_before_the_main_container(kube: Kube, namespace: str) -> None:
    def step(name: str, text: str) -> JsonObject:
        return {
            "name": name,
            "image": "busybox",
            "command": ["sh", "-c", f"echo {text} >> /work/order"],
            "volumeMounts": [{"name": "work", "mountPath": "/work"}],
        }

    create_pod(
        kube,
        namespace,
        "ordered",
        {
            "restartPolicy": "Never",
            "initContainers": [step("first", "one"), step("second", "two")],
            "containers": [
                {
                    "name": "main",
                    "image": "busybox",
                    "command": ["sh", "-c", "cat /work/order > /dev/termination-log"],
                    "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                }
            ],
            "volumes": [{"name": "work", "emptyDir": {}}],
        },
    )
    pod = wait_pod(kube, namespace, "ordered", "Succeeded", phase_is("Succeeded", "Failed"))
    assert termination_message(pod) == "one\ntwo\n"
    assert [s["state"]["terminated"]["reason"] for s in pod["status"]["initContainerStatuses"]] == [
        "Completed"
    ] * 2
    assert condition(pod, "Initialized")["status"] == "True"


def test_an_unmapped_image_waits_in_err_image_pull_until_the_map_has_it(kube: Kube, namespace: str) -> None:
    create_pod(kube, namespace, "nginx", {"containers": [{"name": "main", "image": "nginx:1.27"}]})
    pod = wait_pod(kube, namespace, "nginx", "ErrImagePull", lambda p: waiting_reason(p) == "ErrImagePull")
    message = container_status(pod)["state"]["waiting"]["message"]
    assert "nginx:1.27" in message
    assert "image map" in message
    assert pod["status"]["phase"] == "Pending"
    if kube.run_dir is None:
        return  # a cluster started elsewhere: its node's map file is not ours to change
    map_file = kube.run_dir / "image-map.yaml"
    map_file.write_text("images:\n  - repository: nginx\n    entrypoint: [sleep, '1000']\n")
    try:
        wait_pod(kube, namespace, "nginx", "running once mapped", phase_is("Running"), 30)
    finally:
        map_file.unlink()


def test_kubectl_logs_reads_the_container_log(kube: Kube, namespace: str) -> None:
    create_pod(
        kube,
        namespace,
        "talker",
        {
            "restartPolicy": "Never",
            "containers": [
                {"name": "main", "image": "busybox", "command": ["sh", "-c", "echo one; echo two"]}
            ],
        },
    )
    wait_pod(kube, namespace, "talker", "Succeeded", phase_is("Succeeded"))
    assert kube.kubectl("logs", "-n", namespace, "talker").stdout == "one\ntwo\n"
    assert kube.kubectl("logs", "-n", namespace, "talker", "--tail=1").stdout == "two\n"


def test_the_node_advertises_gpus_and_stays_ready(kube: Kube) -> None:
    nodes = [as_dict(kube, n) for n in core_api(kube).list_node().items]
    node = next(n for n in nodes if n["metadata"].get("labels", {}).get("loraplane.io/dev-node") == "true")
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "2"
    assert node["status"]["addresses"] == [{"type": "InternalIP", "address": "127.0.0.1"}]
    assert condition(node, "Ready")["status"] == "True"
    lease = kube.kubectl(
        "get", "lease", "-n", "kube-node-lease", node["metadata"]["name"], "-o", "json"
    ).stdout
    assert json.loads(lease)["spec"]["holderIdentity"] == node["metadata"]["name"]


def test_a_host_link_left_by_a_deleted_node_namespace_does_not_stop_the_next_agent() -> None:
    """The kernel removes a deleted namespace's veth end asynchronously; an agent taking the same
    index right after must not fail with `ip link add ... File exists`. A veth pair on the host stands
    in for the lingering end (the real one goes too fast to catch), on an index no cluster here uses."""
    subnet = network.Subnet(249)
    subprocess.run(
        ["ip", "link", "add", subnet.host_link, "type", "veth", "peer", "name", "lp249stale"], check=True
    )
    try:
        node = network.NodeNetwork(subnet)
        node.create()  # the stale end goes; the node namespace and its uplink take the same name
        assert node._host_link_exists()
        stale = subprocess.run(["ip", "link", "show", "dev", "lp249stale"], capture_output=True, check=False)
        assert stale.returncode != 0
        assert subnet.node_namespace in network.namespaces()
    finally:
        network.NodeNetwork(subnet).destroy()
        subprocess.run(["ip", "link", "delete", subnet.host_link], capture_output=True, check=False)
