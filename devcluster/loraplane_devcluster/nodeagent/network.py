"""Pod networking: a network namespace per pod, all on one bridge, as a CNI bridge plugin does.

Each running agent claims an index N (1 for the first, 2 for a second cluster started beside it,
...) through a lock file held for its lifetime, and with it the pod subnet 10.250.N.0/24:

    host (root namespace)              node namespace lp<N>-node            pod namespace lp<N>-<uid>
    lp<N>host 10.250.N.1/24  ── veth ── uplink ─┐
                                                br0  10.250.N.254/24, 10.96.0.1/32
                                     lp<N>p<host> ─┘ ── veth ── eth0 10.250.N.<host>/24

* Pods, the host and the node share one layer-2 segment, so pod-to-pod and host-to-pod traffic
  needs no forwarding (the host's own ``ip_forward`` is never touched) and pods reach nothing else:
  they have no default route.
* Service cluster IPs (10.96.0.0/16) are routed from each pod to the bridge. Only the node
  namespace forwards (``ip_forward`` and ``bridge-nf-call-iptables`` are per network namespace):
  kube-proxy runs there and DNATs a Service address to a ready endpoint, as on a node, and bridged
  replies pass through its conntrack, as with the CNI bridge plugin.
* Pod addresses are ordinary private addresses, so the controllers put them in Endpoints and
  EndpointSlices (loopback addresses are refused there) and the API server proxies to them.
* The API server keeps listening on the host's 127.0.0.1. Pods reach it as in-cluster clients do,
  at the ``kubernetes`` Service address 10.96.0.1:443 (in the server certificate), which the bridge
  holds and the agent relays to the API server (see :mod:`apirelay`).
* Host-network pods stay in the host's namespace with the node's address, 127.0.0.1.

Everything is made with ``ip`` (iproute2). Namespaces outlive processes, so a new agent deletes
whatever an earlier agent with the same index left behind before creating its own.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

HOST_IP = "127.0.0.1"
KUBERNETES_SERVICE_IP = "10.96.0.1"
KUBERNETES_SERVICE_PORT = 443
# The API server's --service-cluster-ip-range (pki.SERVICE_CLUSTER_IP_RANGE)
SERVICE_CIDR = "10.96.0.0/16"
# kube-proxy's --cluster-cidr: every node's pod subnet lies inside it
CLUSTER_CIDR = "10.250.0.0/16"
SUBNET_PREFIX_LEN = 24
FIRST_POD_HOST = 2
LAST_POD_HOST = 253
IP_TIMEOUT_S = 10
# How long a deleted node namespace's host link may linger before the next agent deletes it itself.
HOST_LINK_GONE_S = 5.0


class NoFreeAddressError(Exception):
    pass


class NetworkSetupError(Exception):
    pass


@dataclass(frozen=True)
class Subnet:
    """The addresses and names that follow from a node's index."""

    index: int

    @property
    def prefix(self) -> str:
        return f"10.250.{self.index}."

    @property
    def host_address(self) -> str:
        return f"{self.prefix}1"

    @property
    def bridge_address(self) -> str:
        return f"{self.prefix}254"

    @property
    def bridge_mac(self) -> str:
        """A fixed, locally administered MAC for br0. A bridge made without one takes the lowest MAC
        of its ports and changes it whenever a pod's veth joins or leaves. Pods keep the old one in
        their ARP cache, and when its port is gone their frames to the gateway (10.96.0.1 and the
        bridge address) go nowhere until the entry is probed again: in-cluster API calls stalled
        15-60 s after a pod was deleted."""
        return f"02:4c:50:00:{self.index >> 8:02x}:{self.index & 0xFF:02x}"

    @property
    def namespace_prefix(self) -> str:
        return f"lp{self.index}-"

    @property
    def node_namespace(self) -> str:
        return f"{self.namespace_prefix}node"

    @property
    def host_link(self) -> str:
        return f"lp{self.index}host"

    def pod_namespace(self, uid: str) -> str:
        return f"{self.namespace_prefix}{uid}"

    def pod_link(self, address: str) -> str:
        """The node-side end of a pod's veth, named after its address (unique while it is in use)."""
        return f"lp{self.index}p{address.rsplit('.', 1)[1]}"


class AddressPool:
    """Pod addresses of one subnet; handed out round-robin, so a freed one is not reused at once."""

    def __init__(self, prefix: str, first: int = FIRST_POD_HOST, last: int = LAST_POD_HOST) -> None:
        self.prefix = prefix
        self.first = first
        self.last = last
        self._owners: dict[str, str] = {}  # address → owner (pod UID)
        self._next = first

    def contains(self, address: str) -> bool:
        if not address.startswith(self.prefix):
            return False
        host = address[len(self.prefix) :]
        return host.isdigit() and self.first <= int(host) <= self.last

    def allocate(self, owner: str, preferred: str | None = None) -> str:
        """An address for ``owner`` (the same one again if it has one; ``preferred`` if it is free)."""
        for address, current in self._owners.items():
            if current == owner:
                return address
        if preferred and self.contains(preferred) and preferred not in self._owners:
            self._owners[preferred] = owner
            return preferred
        size = self.last - self.first + 1
        for step in range(size):
            host = self.first + (self._next - self.first + step) % size
            address = f"{self.prefix}{host}"
            if address not in self._owners:
                self._owners[address] = owner
                self._next = host + 1 if host < self.last else self.first
                return address
        raise NoFreeAddressError(f"all {size} pod addresses in {self.prefix}0/24 are in use")

    def release(self, owner: str) -> None:
        for address in [a for a, o in self._owners.items() if o == owner]:
            del self._owners[address]

    def in_use(self) -> dict[str, str]:
        return dict(self._owners)


# Lock files held open for the process's lifetime; the kernel releases them when it ends.
_CLAIMS: list[IO[bytes]] = []


def _lock_all(lock_dirs: Sequence[Path], index: int) -> list[IO[bytes]] | None:
    """Index ``index``'s lock in every folder, or None (nothing kept) when any is held."""
    handles: list[IO[bytes]] = []
    for lock_dir in lock_dirs:
        lock_dir.mkdir(parents=True, exist_ok=True)
        handle = (lock_dir / f"node-{index}.lock").open("ab")
        handles.append(handle)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            for held in handles:
                held.close()
            return None
    return handles


def claim_node_index(
    lock_dirs: Path | Sequence[Path],
    first: int = 1,
    last: int = 250,
    taken_elsewhere: Callable[[int], bool] | None = None,
) -> int:
    """An index (the N of 10.250.N.0/24) that no other running agent on this machine holds.

    An index is claimed by locking ``node-N.lock`` in every folder of ``lock_dirs`` (agents of
    earlier versions lock only the cache's folder, so both are held). An index some process holds a
    lock file of elsewhere is skipped, and so is one held from another mount namespace (a CI checkout
    in a container that shares the host's network), seen by its host link alone.
    """
    dirs = [lock_dirs] if isinstance(lock_dirs, Path) else list(lock_dirs)
    taken = _taken_by_a_live_agent if taken_elsewhere is None else taken_elsewhere
    for index in range(first, last + 1):
        handles = _lock_all(dirs, index)
        if handles is None:
            continue
        if taken(index):
            log.info("pod subnet %s0/24 is held by another running agent", Subnet(index).prefix)
            for handle in handles:
                handle.close()
            continue
        for handle in handles:
            os.set_inheritable(handle.fileno(), False)  # containers must not keep the claim alive
        _CLAIMS.extend(handles)
        return index
    raise NoFreeAddressError(
        f"every pod subnet 10.250.N.0/24 from N={first} to {last} is held by another agent"
    )


def remove_stale_networks(lock_dirs: Path | Sequence[Path], own_index: int) -> list[int]:
    """Delete the namespaces of agents that died without cleaning up (no process holds their index)."""
    dirs = [lock_dirs] if isinstance(lock_dirs, Path) else list(lock_dirs)
    indexes = {int(m.group(1)) for m in map(_INDEXED.match, namespaces()) if m} - {own_index}
    indexes -= indexes_held_by_processes()
    removed = []
    for index in sorted(indexes):
        handles = _lock_all(dirs, index)
        if handles is None:
            continue  # a running agent's
        try:
            NodeNetwork(Subnet(index)).destroy()
        finally:
            for handle in handles:
                handle.close()
        removed.append(index)
    return removed


_INDEXED = re.compile(r"lp(\d+)-")


def lock_index(path: str) -> int | None:
    """N, when ``path`` is an index lock (``.../node-N.lock``)."""
    name = os.path.basename(path)
    digits = name[len("node-") : -len(".lock")] if name.startswith("node-") and name.endswith(".lock") else ""
    return int(digits) if digits.isdigit() else None


def indexes_held_by_processes() -> set[int]:
    """Every index whose lock file another process on this machine holds open, whatever folder it is
    in (agents of checkouts with another LORAPLANE_CACHE lock files that ours do not see)."""
    held: set[int] = set()
    own = Path(f"/proc/{os.getpid()}/fd")
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        if fd_dir == own:
            continue
        try:
            fds = list(fd_dir.iterdir())
        except OSError:
            continue  # gone, or not ours to read
        for fd in fds:
            try:
                index = lock_index(os.readlink(fd))
            except OSError:
                continue  # closed meanwhile (the listing's own descriptor, for one)
            if index is not None:
                held.add(index)
    return held


def _taken_by_a_live_agent(index: int) -> bool:
    """A running agent holds the index though its lock in our folders is free: it keeps a lock file
    open elsewhere, or it lives in another mount namespace (its host link exists, its node namespace
    is not in this filesystem's /run/netns).

    (A node namespace that is visible here and held by nobody is an earlier agent's leftover, which
    :meth:`NodeNetwork.create` removes, taking the host link with it.)
    """
    if index in indexes_held_by_processes():
        return True
    subnet = Subnet(index)
    result = subprocess.run(
        ["ip", "-o", "link", "show", "dev", subnet.host_link],
        capture_output=True,
        text=True,
        timeout=IP_TIMEOUT_S,
        check=False,
    )
    return result.returncode == 0 and subnet.node_namespace not in namespaces()


# ---- the commands, as pure lists (unit-tested) -----------------------------------------------------


def node_setup_commands(subnet: Subnet) -> list[list[str]]:
    node = subnet.node_namespace
    bits = SUBNET_PREFIX_LEN
    return [
        ["ip", "netns", "add", node],
        ["ip", "-n", node, "link", "set", "lo", "up"],
        ["ip", "-n", node, "link", "add", "br0", "address", subnet.bridge_mac, "type", "bridge"],
        ["ip", "-n", node, "addr", "add", f"{subnet.bridge_address}/{bits}", "dev", "br0"],
        ["ip", "-n", node, "addr", "add", f"{KUBERNETES_SERVICE_IP}/32", "dev", "br0"],
        ["ip", "-n", node, "link", "set", "br0", "up"],
        ["ip", "link", "add", subnet.host_link, "type", "veth", "peer", "name", "uplink", "netns", node],
        ["ip", "-n", node, "link", "set", "uplink", "master", "br0", "up"],
        # per namespace: the node forwards Service traffic; the host's settings stay as they are
        ["ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
        ["ip", "netns", "exec", node, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"],
        ["ip", "addr", "add", f"{subnet.host_address}/{bits}", "dev", subnet.host_link],
        ["ip", "link", "set", subnet.host_link, "up"],
    ]


def pod_setup_commands(subnet: Subnet, uid: str, address: str) -> list[list[str]]:
    pod, node, link = subnet.pod_namespace(uid), subnet.node_namespace, subnet.pod_link(address)
    gateway = subnet.bridge_address
    return [
        ["ip", "netns", "add", pod],
        ["ip", "-n", node, "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", pod],
        ["ip", "-n", node, "link", "set", link, "master", "br0", "up"],
        ["ip", "-n", pod, "link", "set", "lo", "up"],
        ["ip", "-n", pod, "addr", "add", f"{address}/{SUBNET_PREFIX_LEN}", "dev", "eth0"],
        ["ip", "-n", pod, "link", "set", "eth0", "up"],
        # the only addresses outside the subnet a pod may reach: Services, through the node
        ["ip", "-n", pod, "route", "add", SERVICE_CIDR, "via", gateway, "dev", "eth0"],
    ]


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False)
    if result.returncode != 0:
        raise NetworkSetupError(f"`{' '.join(command)}` failed: {result.stderr.strip() or result.returncode}")


def namespaces() -> list[str]:
    result = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
    )
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def _delete_namespace(name: str) -> None:
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=IP_TIMEOUT_S, check=False)


class NodeNetwork:
    """The node's bridge and the pods' namespaces for one agent."""

    def __init__(self, subnet: Subnet) -> None:
        self.subnet = subnet
        self.addresses = AddressPool(subnet.prefix)

    def create(self) -> None:
        """Remove what an earlier agent with this index left, then make the node namespace."""
        self.destroy()
        self._await_host_link_gone()
        try:
            for command in node_setup_commands(self.subnet):
                _run(command)
        except (NetworkSetupError, OSError, subprocess.TimeoutExpired) as error:
            self.destroy()
            raise NetworkSetupError(
                f"the node agent needs network namespaces (root with CAP_NET_ADMIN and iproute2): {error}"
            ) from error
        log.info(
            "pod network %s0/%d on bridge %s in namespace %s",
            self.subnet.prefix,
            SUBNET_PREFIX_LEN,
            self.subnet.bridge_address,
            self.subnet.node_namespace,
        )

    def destroy(self) -> None:
        """Delete every namespace of this index (the host end of the uplink goes with the node's)."""
        for name in namespaces():
            if name.startswith(self.subnet.namespace_prefix):
                _delete_namespace(name)

    def _host_link_exists(self) -> bool:
        shown = subprocess.run(
            ["ip", "-o", "link", "show", "dev", self.subnet.host_link],
            capture_output=True,
            timeout=IP_TIMEOUT_S,
            check=False,
        )
        return shown.returncode == 0

    def _await_host_link_gone(self, timeout_s: float = HOST_LINK_GONE_S) -> None:
        """The kernel removes the host end of a deleted namespace's veth asynchronously, so an agent
        started right after another one stopped can find it still there (`ip link add ... File
        exists`). The index is ours (its locks are held) and its node namespace is gone, so the link
        is that namespace's leftover: wait for it to go, and delete it if it stays."""
        deadline = time.monotonic() + timeout_s
        while self._host_link_exists():
            if time.monotonic() >= deadline:
                log.info("deleting %s, left by a deleted node namespace", self.subnet.host_link)
                subprocess.run(
                    ["ip", "link", "delete", self.subnet.host_link],
                    capture_output=True,
                    timeout=IP_TIMEOUT_S,
                    check=False,
                )
                return
            time.sleep(0.1)

    def namespace_path(self, uid: str) -> str:
        return f"/run/netns/{self.subnet.pod_namespace(uid)}"

    def attach(self, uid: str, address: str) -> str:
        """The pod's namespace, made on first call, with ``address`` on its eth0; returns its path."""
        path = self.namespace_path(uid)
        if os.path.exists(path):
            return path
        try:
            for command in pod_setup_commands(self.subnet, uid, address):
                _run(command)
        except (NetworkSetupError, OSError, subprocess.TimeoutExpired) as error:
            self.detach(uid)
            raise NetworkSetupError(f"pod network for {address}: {error}") from error
        return path

    def detach(self, uid: str) -> None:
        """Delete the pod's namespace; its veth pair goes with it."""
        _delete_namespace(self.subnet.pod_namespace(uid))
