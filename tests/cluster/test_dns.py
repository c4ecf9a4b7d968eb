"""Services and DNS on the local cluster, seen from inside pods: a Service name resolves to its
ClusterIP and kube-proxy carries the connection to a ready pod; a pod with a hostname and
subdomain behind a headless Service resolves by ``<hostname>.<subdomain>.<ns>.svc.cluster.local``;
a name nobody serves does not resolve. The client pods use the resolver a program in a container
would (glibc through the resolv.conf the node wrote): nothing here bypasses DNS."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client import CoreV1Api, DiscoveryV1Api
from kubernetes.client.exceptions import ApiException

from loraplane_devcluster.testing import Kube, wait_until

pytestmark = pytest.mark.cluster

JsonObject = dict[str, Any]
POD_IP_ENV = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}

# The client: resolve each name and, where a port is given, fetch / from it; a name that should
# exist is retried until a deadline, as a program waiting for its peers would (a new Service's
# rules and records follow its EndpointSlice by up to kube-proxy's 1 s sync period). It reports
# everything as JSON in its termination message.
CLIENT = r"""
import json, socket, sys, time, urllib.request

opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

def attempt(name, port):
    found = sorted({a[4][0] for a in socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)})
    if port:
        with opener.open("http://%s:%d/" % (name, port), timeout=5) as answer:
            return found, answer.status
    return found, None

report = {"hostname": socket.gethostname(), "resolv": open("/etc/resolv.conf").read()}
for key, name, port, retry in json.loads(sys.argv[1]):
    deadline = time.monotonic() + retry
    while True:
        try:
            report[key], report[key + "_http"] = attempt(name, port)
            break
        except OSError as error:  # socket.gaierror, URLError, connection errors
            report[key] = "%s: %s" % (type(error).__name__, getattr(error, "strerror", None) or error)
            if time.monotonic() >= deadline:
                break
            time.sleep(0.2)
line = json.dumps(report)
print(line)
open("/dev/termination-log", "w").write(line)
"""


def core(kube: Kube) -> Any:
    return CoreV1Api(kube.api)


def as_dict(kube: Kube, obj: Any) -> JsonObject:
    return dict(kube.api.sanitize_for_serialization(obj))  # type: ignore[no-untyped-call]


def server(name: str, labels: dict[str, str], **spec: Any) -> JsonObject:
    container = {
        "name": "main",
        "image": "python:3.11",
        "command": ["python", "-m", "http.server", "8080", "--bind", "$(POD_IP)"],
        "env": [POD_IP_ENV],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1},
    }
    return {"metadata": {"name": name, "labels": labels}, "spec": {"containers": [container], **spec}}


def ready_endpoints(kube: Kube, namespace: str, service: str) -> int:
    slices = DiscoveryV1Api(kube.api).list_namespaced_endpoint_slice(
        namespace, label_selector=f"kubernetes.io/service-name={service}"
    )
    return sum(1 for s in slices.items for e in s.endpoints or [] if e.conditions and e.conditions.ready)


def _has_ready_endpoint(kube: Kube, namespace: str, service: str) -> Any:
    return lambda: ready_endpoints(kube, namespace, service)


def finished(kube: Kube, namespace: str, name: str) -> JsonObject | None:
    try:
        pod = as_dict(kube, core(kube).read_namespaced_pod(name, namespace))
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return pod if pod.get("status", {}).get("phase") in ("Succeeded", "Failed") else None


def test_pods_resolve_and_reach_services_and_headless_pods_by_name(kube: Kube, namespace: str) -> None:
    api = core(kube)
    api.create_namespaced_pod(namespace, server("web", {"app": "web"}))
    api.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
        },
    )
    # what a torchrun worker group looks like: a stable name per pod behind a headless Service
    api.create_namespaced_pod(
        namespace, server("worker-0-x7k2p", {"app": "workers"}, hostname="trainer-0", subdomain="workers")
    )
    api.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "workers"},
            "spec": {"clusterIP": "None", "selector": {"app": "workers"}, "ports": [{"port": 8080}]},
        },
    )
    for service in ("web", "workers"):
        wait_until(f"a ready endpoint of {service}", _has_ready_endpoint(kube, namespace, service), 60)

    lookups = [
        ("short", "web", 80, 30),  # through the search path
        ("fqdn", f"web.{namespace}.svc.cluster.local", 80, 30),
        ("api", "kubernetes.default", 0, 30),
        ("peer", f"trainer-0.workers.{namespace}.svc.cluster.local", 8080, 30),
        ("missing", f"nosuch.{namespace}.svc.cluster.local", 0, 0),
        ("missing_short", "nosuch-service", 0, 0),
    ]
    command = ["python", "-c", CLIENT, json.dumps(lookups)]
    client = {
        "metadata": {"name": "client"},
        "spec": {
            "restartPolicy": "Never",
            "hostname": "client-0",
            "subdomain": "workers",
            "containers": [{"name": "main", "image": "python:3.11", "command": command}],
        },
    }
    api.create_namespaced_pod(namespace, client)
    pod = wait_until("the client pod to finish", lambda: finished(kube, namespace, "client"), 120)
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0, terminated.get("message")
    report = json.loads(terminated["message"])

    web_ip = as_dict(kube, api.read_namespaced_service("web", namespace))["spec"]["clusterIP"]
    worker_ip = as_dict(kube, api.read_namespaced_pod("worker-0-x7k2p", namespace))["status"]["podIP"]
    assert report["short"] == [web_ip], report
    assert report["fqdn"] == [web_ip], report
    # kube-proxy carried both connections from the ClusterIP to the pod
    assert (report["short_http"], report["fqdn_http"]) == (200, 200)
    assert report["api"] == ["10.96.0.1"]
    assert report["peer"] == [worker_ip], report
    assert report["peer_http"] == 200
    assert str(report["missing"]).startswith("gaierror"), report
    assert str(report["missing_short"]).startswith("gaierror"), report
    assert report["hostname"] == "client-0"
    assert report["resolv"].splitlines()[1:] == [
        "nameserver 10.96.0.10",
        f"search {namespace}.svc.cluster.local svc.cluster.local cluster.local",
        "options ndots:5",
    ]


def test_coredns_acts_as_its_own_service_account_with_read_only_rights(kube: Kube) -> None:
    """Least privilege: CoreDNS's identity may list and watch what it serves and change nothing."""
    user = "system:serviceaccount:kube-system:coredns"
    can = kube.kubectl("auth", "can-i", "--list", f"--as={user}", check=False).stdout
    assert "endpointslices.discovery.k8s.io" in can
    for verb, resource in (("create", "services"), ("get", "secrets"), ("list", "pods")):
        answer = kube.kubectl("auth", "can-i", verb, resource, f"--as={user}", "-A", check=False)
        assert answer.stdout.strip() == "no", f"coredns may {verb} {resource}"
