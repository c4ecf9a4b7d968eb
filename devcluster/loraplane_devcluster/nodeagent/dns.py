"""A pod's DNS settings as the kubelet makes them: resolv.conf, hostname and domain.

Pure functions of the pod spec and the node's cluster DNS settings (pkg/kubelet/network/dns and
GeneratePodHostNameAndDomain in the kubelet). The records themselves are CoreDNS's: a pod with
``hostname`` and ``subdomain`` behind a headless Service of that name is
``<hostname>.<subdomain>.<ns>.svc.<domain>`` because the EndpointSlice controller puts its hostname
in the slice, not because of anything written here.
"""

from __future__ import annotations

from typing import Any

JsonObject = dict[str, Any]
HOSTNAME_MAX = 63
CLUSTER_NDOTS = "ndots:5"


def hostname_and_domain(pod: JsonObject, cluster_domain: str) -> tuple[str, str]:
    """The pod's hostname (``spec.hostname`` or its name, at most 63 characters) and its domain
    (``<subdomain>.<ns>.svc.<cluster domain>`` when ``spec.subdomain`` is set, else "")."""
    spec = pod.get("spec") or {}
    metadata = pod.get("metadata") or {}
    hostname = spec.get("hostname") or metadata.get("name", "")
    # the kubelet cuts a long pod name and then strips a trailing '-' or '.' (not a valid label end)
    hostname = hostname[:HOSTNAME_MAX].rstrip("-.")
    subdomain = spec.get("subdomain") or ""
    domain = f"{subdomain}.{metadata.get('namespace', 'default')}.svc.{cluster_domain}" if subdomain else ""
    return hostname, domain


def uts_hostname(pod: JsonObject, cluster_domain: str) -> str:
    """What ``hostname`` prints in the pod: the FQDN with ``setHostnameAsFQDN``, else the short name."""
    hostname, domain = hostname_and_domain(pod, cluster_domain)
    if (pod.get("spec") or {}).get("setHostnameAsFQDN") and domain:
        return f"{hostname}.{domain}"[:HOSTNAME_MAX]
    return hostname


def uses_cluster_dns(pod: JsonObject, cluster_dns: str) -> bool:
    """Whether the pod resolves through the cluster DNS (the kubelet's ClusterFirst rules).

    Host-network pods stay in the host's network namespace here, where Service addresses do not
    route, so they keep the host's resolver even under ClusterFirstWithHostNet.
    """
    spec = pod.get("spec") or {}
    policy = spec.get("dnsPolicy") or "ClusterFirst"
    if not cluster_dns or spec.get("hostNetwork"):
        return False
    return policy in ("ClusterFirst", "ClusterFirstWithHostNet")


def resolv_conf(pod: JsonObject, cluster_dns: str, cluster_domain: str) -> str | None:
    """The pod's /etc/resolv.conf, or None to leave the host's (dnsPolicy Default, host network).

    ClusterFirst: the cluster DNS, the search path ``<ns>.svc.<d> svc.<d> <d>`` and ``ndots:5``;
    None: only ``dnsConfig``; either way ``dnsConfig`` nameservers and searches are appended and its
    options override by name, as the kubelet merges them.
    """
    spec = pod.get("spec") or {}
    policy = spec.get("dnsPolicy") or "ClusterFirst"
    namespace = (pod.get("metadata") or {}).get("namespace", "default")
    if uses_cluster_dns(pod, cluster_dns):
        servers = [cluster_dns]
        searches = [f"{namespace}.svc.{cluster_domain}", f"svc.{cluster_domain}", cluster_domain]
        options = [CLUSTER_NDOTS]
    elif policy == "None":
        servers, searches, options = [], [], []
    else:
        return None
    config = spec.get("dnsConfig") or {}
    servers += [s for s in config.get("nameservers") or [] if s not in servers]
    searches += [s for s in config.get("searches") or [] if s not in searches]
    options = _merge_options(options, config.get("options") or [])
    lines = ["# Kubernetes-managed resolv.conf (loraplane dev node)."]
    lines += [f"nameserver {server}" for server in servers]
    if searches:
        lines.append("search " + " ".join(searches))
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"


def _merge_options(base: list[str], extra: list[JsonObject]) -> list[str]:
    merged: dict[str, str] = {}
    for option in base:
        merged[option.partition(":")[0]] = option
    for entry in extra:
        name = entry.get("name") or ""
        if name:
            merged[name] = f"{name}:{entry['value']}" if entry.get("value") else name
    return list(merged.values())
