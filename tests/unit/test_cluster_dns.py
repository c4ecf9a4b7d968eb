"""The dev node's DNS settings for a pod (as the kubelet makes them) and the builders for the local
cluster's kube-proxy and CoreDNS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loraplane_devcluster import services
from loraplane_devcluster.nodeagent.dns import hostname_and_domain, resolv_conf, uts_hostname
from loraplane_devcluster.nodeagent.volumes import hosts_file_content

DNS = "10.96.0.10"
DOMAIN = "cluster.local"


def pod(name: str = "trainer-0", namespace: str = "ml", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace}, "spec": {"containers": [], **spec}}


def test_cluster_first_pods_get_the_cluster_dns_search_path_and_ndots() -> None:
    content = resolv_conf(pod(), DNS, DOMAIN)
    assert content is not None
    lines = content.splitlines()[1:]
    assert lines == [
        "nameserver 10.96.0.10",
        "search ml.svc.cluster.local svc.cluster.local cluster.local",
        "options ndots:5",
    ]


def test_dns_config_is_merged_and_options_override_by_name() -> None:
    spec = {
        "dnsConfig": {
            "nameservers": ["10.96.0.53"],
            "searches": ["corp.example", "svc.cluster.local"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}],
        }
    }
    content = resolv_conf(pod(**spec), DNS, DOMAIN) or ""
    assert "nameserver 10.96.0.10\nnameserver 10.96.0.53\n" in content
    assert "search ml.svc.cluster.local svc.cluster.local cluster.local corp.example\n" in content
    assert "options ndots:2 edns0\n" in content


def test_policies_that_keep_the_hosts_resolver() -> None:
    assert resolv_conf(pod(dnsPolicy="Default"), DNS, DOMAIN) is None
    # host-network pods live in the host's namespace, where Service addresses do not route
    assert resolv_conf(pod(hostNetwork=True), DNS, DOMAIN) is None
    assert resolv_conf(pod(hostNetwork=True, dnsPolicy="ClusterFirstWithHostNet"), DNS, DOMAIN) is None
    # a node without cluster DNS: ClusterFirst falls back to the host's, as the kubelet does
    assert resolv_conf(pod(), "", DOMAIN) is None


def test_dns_policy_none_takes_only_the_pods_dns_config() -> None:
    spec = {"dnsPolicy": "None", "dnsConfig": {"nameservers": ["10.250.1.9"], "searches": ["x.test"]}}
    content = resolv_conf(pod(**spec), DNS, DOMAIN) or ""
    assert content.splitlines()[1:] == ["nameserver 10.250.1.9", "search x.test"]


def test_hostname_and_subdomain_make_the_pods_fqdn() -> None:
    spec = {"hostname": "trainer-0", "subdomain": "job-workers"}
    assert hostname_and_domain(pod(name="job-0-abcde", **spec), DOMAIN) == (
        "trainer-0",
        "job-workers.ml.svc.cluster.local",
    )
    assert uts_hostname(pod(**spec), DOMAIN) == "trainer-0"
    assert (
        uts_hostname(pod(setHostnameAsFQDN=True, **spec), DOMAIN)
        == "trainer-0.job-workers.ml.svc.cluster.local"
    )
    hosts = hosts_file_content("10.250.1.7", "trainer-0", "job-workers.ml.svc.cluster.local")
    assert "10.250.1.7\ttrainer-0.job-workers.ml.svc.cluster.local\ttrainer-0\n" in hosts
    assert hosts.count("\n") == 4, "only the pod's own names: every other name is the DNS's"


def test_a_long_pod_name_is_cut_to_a_valid_hostname() -> None:
    name = "a" * 62 + "-bcd"
    hostname, domain = hostname_and_domain(pod(name=name), DOMAIN)
    assert hostname == "a" * 62  # 63 characters would end in '-', which the kubelet strips
    assert domain == ""


NET = services.NodeNetworkInfo(
    pid=1,
    namespace_path="/run/netns/lp2-node",
    bridge_address="10.250.2.254",
    pod_subnet="10.250.2.0/24",
    api_relay_port=443,
    node_name="loraplane-dev",
)


def test_kube_proxy_runs_in_the_node_namespace_in_nftables_mode() -> None:
    argv = services.kube_proxy_argv(Path("/bin-dir"), NET, Path("/run/kube-proxy.yaml"))
    assert argv[:3] == ["nsenter", "--net=/run/netns/lp2-node", "--"]
    assert argv[3] == "/bin-dir/kube-proxy"
    config = services.kube_proxy_config(NET, Path("/run/kubeconfigs/kube-proxy"))
    assert config["mode"] == "nftables"
    assert config["hostnameOverride"] == "loraplane-dev"
    assert config["healthzBindAddress"] == "10.250.2.254:10256"
    assert config["conntrack"]["maxPerCore"] == 0, "the machine-wide conntrack table is not ours to size"


def test_corefile_serves_the_cluster_zone_on_the_bridge_and_nothing_upstream() -> None:
    text = services.corefile(NET, Path("/run/kubeconfigs/coredns"))
    assert "bind 10.250.2.254" in text
    assert "kubernetes cluster.local in-addr.arpa ip6.arpa {" in text
    assert "kubeconfig /run/kubeconfigs/coredns" in text
    assert "forward" not in text
    assert "rcode NXDOMAIN" in text


def test_coredns_may_only_list_and_watch_what_it_serves() -> None:
    objects = dict(services.coredns_rbac())
    role = objects["/apis/rbac.authorization.k8s.io/v1/clusterroles/system:coredns"]
    verbs = {verb for rule in role["rules"] for verb in rule["verbs"]}
    resources = {resource for rule in role["rules"] for resource in rule["resources"]}
    assert verbs == {"list", "watch"}
    assert resources == {"services", "namespaces", "endpointslices"}
    binding = objects["/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/system:coredns"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}]


def test_node_services_get_the_bridge_address_as_their_endpoint() -> None:
    objects = dict(services.cluster_objects(NET))
    dns_slice = objects["/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices/kube-dns"]
    assert dns_slice["endpoints"] == [{"addresses": ["10.250.2.254"], "conditions": {"ready": True}}]
    assert {(p["port"], p["protocol"]) for p in dns_slice["ports"]} == {(53, "UDP"), (53, "TCP")}
    api_slice = objects["/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes"]
    assert api_slice["ports"] == [{"name": "https", "port": 443, "protocol": "TCP"}]
    endpoints = objects["/api/v1/namespaces/default/endpoints/kubernetes"]
    assert endpoints["metadata"]["labels"] == {"endpointslice.kubernetes.io/skip-mirror": "true"}
    service = objects["/api/v1/namespaces/kube-system/services/kube-dns"]
    assert service["spec"]["clusterIP"] == "10.96.0.10"
    assert "selector" not in service["spec"]


def test_kube_proxy_counts_as_synced_after_its_first_full_sync() -> None:
    metric = 'kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family="IPv4"}'
    assert not services.kube_proxy_synced("# HELP nothing yet\n")
    assert not services.kube_proxy_synced(f"{metric} 0\n")
    assert services.kube_proxy_synced(f"{metric.replace('IPv4', 'IPv6')} 0\n{metric} 1\n")
