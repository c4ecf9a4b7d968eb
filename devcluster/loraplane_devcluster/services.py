"""Services and DNS on the local cluster: kube-proxy and CoreDNS in the node's network namespace.

The node agent makes the pod network (docs/node-agent.md): pods on a bridge in the node namespace
``lpN-node``, which is the only namespace that forwards. ``up`` starts, inside that namespace:

* **kube-proxy** (nftables mode), as on a node: a pod's packet to a Service cluster IP (routed to
  the bridge) is DNAT-ed to a ready endpoint; the bridge passes the replies through conntrack.
  It authenticates as ``system:kube-proxy``, which the default ``system:node-proxier`` binding
  covers.
* **CoreDNS** with its ``kubernetes`` plugin, bound on the bridge address, behind the ``kube-dns``
  Service at 10.96.0.10 (the node agent's cluster DNS, written into every pod's resolv.conf).
  It authenticates as the ServiceAccount ``kube-system/coredns``, bound to a ClusterRole that lists
  and watches only what its Corefile needs.

Neither runs as a pod (the node agent has no container images, and kube-proxy must live in the node
namespace, not a pod's), so the two Services whose endpoints are node processes get their
endpoints from here, as the API server writes the ``kubernetes`` Service's on a real cluster:
``kubernetes`` → the API relay on the bridge, ``kube-dns`` → CoreDNS on the bridge.

Both reach the API server at the relay on the bridge (``https://10.250.N.254:443``, checked
against the name ``kubernetes.default.svc`` of its certificate), the node's own way to it, not
through 10.96.0.1: a connection opened to a Service address before kube-proxy's first rules is
cut once they exist (kube-proxy removes conntrack entries that are not DNAT-ed to an endpoint),
and both start before those rules. Their health and metrics endpoints listen on the bridge
address, which the host reaches over its veth.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLUSTER_DNS_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
API_SERVICE_URL = "https://10.96.0.1:443"
# a name in the API server's certificate, for clients that dial the relay on the bridge
API_SERVER_NAME = "kubernetes.default.svc"
CLUSTER_CIDR = "10.250.0.0/16"
KUBE_PROXY_HEALTHZ_PORT = 10256
KUBE_PROXY_METRICS_PORT = 10249
# a full sync done: kube-proxy's /healthz answers 200 from its start, before any rule exists
FIRST_SYNC_METRIC = 'kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family="IPv4"}'
COREDNS_READY_PORT = 8181
DNS_PORT = 53
FIELD_MANAGER = "loraplane-devcluster"
MANAGED_BY = "loraplane-devcluster"
KUBE_PROXY_USER = "system:kube-proxy"
COREDNS_SERVICE_ACCOUNT = "coredns"
COREDNS_NAMESPACE = "kube-system"
JsonObject = dict[str, Any]


class ServicesError(RuntimeError):
    pass


@dataclass(frozen=True)
class NodeNetworkInfo:
    """What the node agent wrote to RUN_DIR/node-network.json about its pod network."""

    pid: int
    namespace_path: str
    bridge_address: str
    pod_subnet: str
    api_relay_port: int
    node_name: str

    @classmethod
    def read(cls, path: Path) -> NodeNetworkInfo | None:
        try:
            data = json.loads(path.read_text())
            return cls(
                pid=int(data["pid"]),
                namespace_path=str(data["namespacePath"]),
                bridge_address=str(data["bridgeAddress"]),
                pod_subnet=str(data["podSubnet"]),
                api_relay_port=int(data["apiRelayPort"]),
                node_name=str(data["nodeName"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @property
    def kube_proxy_healthz(self) -> str:
        return f"http://{self.bridge_address}:{KUBE_PROXY_HEALTHZ_PORT}/healthz"

    @property
    def kube_proxy_metrics(self) -> str:
        return f"http://{self.bridge_address}:{KUBE_PROXY_METRICS_PORT}/metrics"

    @property
    def coredns_ready(self) -> str:
        return f"http://{self.bridge_address}:{COREDNS_READY_PORT}/ready"


# ---- pure builders -------------------------------------------------------------------------------


def in_namespace(net: NodeNetworkInfo, argv: list[str]) -> list[str]:
    """``argv`` run in the node's network namespace (nsenter execs it: the PID is the program's)."""
    return ["nsenter", f"--net={net.namespace_path}", "--", *argv]


def kube_proxy_config(net: NodeNetworkInfo, kubeconfig: Path) -> JsonObject:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": net.node_name,
        "mode": "nftables",
        # the node's address for kube-proxy (the Node object says 127.0.0.1, the host's loopback)
        "bindAddress": net.bridge_address,
        "healthzBindAddress": f"{net.bridge_address}:{KUBE_PROXY_HEALTHZ_PORT}",
        "metricsBindAddress": f"{net.bridge_address}:{KUBE_PROXY_METRICS_PORT}",
        "clusterCIDR": CLUSTER_CIDR,
        "detectLocalMode": "ClusterCIDR",
        "nodePortAddresses": [net.pod_subnet],
        # nf_conntrack_max is the whole machine's, not the namespace's: leave it and the timeouts be
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


def kube_proxy_synced(metrics: str) -> bool:
    """Whether kube-proxy's metrics say it has programmed the rules at least once."""
    for line in metrics.splitlines():
        if line.startswith(FIRST_SYNC_METRIC):
            return float(line.split()[-1]) >= 1
    return False


def kube_proxy_argv(bin_dir: Path, net: NodeNetworkInfo, config: Path) -> list[str]:
    return in_namespace(net, [str(bin_dir / "kube-proxy"), f"--config={config}", "--v=1"])


def corefile(net: NodeNetworkInfo, kubeconfig: Path) -> str:
    """Upstream's default Corefile, less ``forward`` (the machine has no upstream resolver to
    send other names to: they answer NXDOMAIN at once) and with a 5 s negative cache, so a name
    that appears (a pod's record behind a headless Service) resolves soon after."""
    bind = net.bridge_address
    return f"""\
{CLUSTER_DOMAIN}:{DNS_PORT} in-addr.arpa:{DNS_PORT} ip6.arpa:{DNS_PORT} {{
    bind {bind}
    errors
    ready {bind}:{COREDNS_READY_PORT}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        ttl 30
    }}
    cache 30 {{
        denial 9984 5
    }}
}}
.:{DNS_PORT} {{
    bind {bind}
    errors
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""


def coredns_argv(bin_dir: Path, net: NodeNetworkInfo, config: Path) -> list[str]:
    return in_namespace(net, [str(bin_dir / "coredns"), "-conf", str(config)])


def coredns_rbac() -> list[tuple[str, JsonObject]]:
    """Upstream's ServiceAccount, ClusterRole and binding for CoreDNS, narrowed to what the
    Corefile above reads (``pods insecure`` needs no pod watch; 1.15 reads EndpointSlices only)."""
    account: JsonObject = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": COREDNS_SERVICE_ACCOUNT, "namespace": COREDNS_NAMESPACE},
    }
    role: JsonObject = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "system:coredns", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
        "rules": [
            {"apiGroups": [""], "resources": ["services", "namespaces"], "verbs": ["list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
        ],
    }
    binding: JsonObject = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "system:coredns"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
        "subjects": [
            {"kind": "ServiceAccount", "name": COREDNS_SERVICE_ACCOUNT, "namespace": COREDNS_NAMESPACE}
        ],
    }
    return [
        (f"/api/v1/namespaces/{COREDNS_NAMESPACE}/serviceaccounts/{COREDNS_SERVICE_ACCOUNT}", account),
        ("/apis/rbac.authorization.k8s.io/v1/clusterroles/system:coredns", role),
        ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/system:coredns", binding),
    ]


def kube_dns_service() -> tuple[str, JsonObject]:
    ports = [
        {"name": "dns", "port": DNS_PORT, "protocol": "UDP", "targetPort": DNS_PORT},
        {"name": "dns-tcp", "port": DNS_PORT, "protocol": "TCP", "targetPort": DNS_PORT},
    ]
    body: JsonObject = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "kube-dns",
            "namespace": COREDNS_NAMESPACE,
            "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"},
        },
        # no selector: the endpoint is the CoreDNS process on the node, written below
        "spec": {"clusterIP": CLUSTER_DNS_IP, "ports": ports},
    }
    return f"/api/v1/namespaces/{COREDNS_NAMESPACE}/services/kube-dns", body


def node_endpoints(
    namespace: str, service: str, address: str, ports: list[tuple[str, int, str]]
) -> list[tuple[str, JsonObject]]:
    """An EndpointSlice and the Endpoints of a Service served by a process on the node.

    The Endpoints carry ``skip-mirror`` so the mirroring controller does not make a second slice
    (as the API server marks the ``kubernetes`` Endpoints it writes).
    """
    port_list = [{"name": name, "port": port, "protocol": protocol} for name, port, protocol in ports]
    slice_body: JsonObject = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": service,
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
        "ports": port_list,
    }
    endpoints_body: JsonObject = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {
            "name": service,
            "namespace": namespace,
            "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"},
        },
        "subsets": [{"addresses": [{"ip": address}], "ports": port_list}],
    }
    return [
        (f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices/{service}", slice_body),
        (f"/api/v1/namespaces/{namespace}/endpoints/{service}", endpoints_body),
    ]


def cluster_objects(net: NodeNetworkInfo) -> list[tuple[str, JsonObject]]:
    """Everything ``up`` applies before starting kube-proxy and CoreDNS, in order."""
    return [
        *coredns_rbac(),
        kube_dns_service(),
        *node_endpoints("default", "kubernetes", net.bridge_address, [("https", net.api_relay_port, "TCP")]),
        *node_endpoints(
            COREDNS_NAMESPACE,
            "kube-dns",
            net.bridge_address,
            [("dns", DNS_PORT, "UDP"), ("dns-tcp", DNS_PORT, "TCP")],
        ),
    ]


def apply_all(apply: Callable[[str, JsonObject], None], net: NodeNetworkInfo) -> None:
    for path, body in cluster_objects(net):
        apply(path, body)
