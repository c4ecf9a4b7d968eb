"""Crash-loop back-off and pod address allocation."""

from __future__ import annotations

import pytest

from loraplane_devcluster.nodeagent.containers import Backoff
from loraplane_devcluster.nodeagent.network import (
    AddressPool,
    NoFreeAddressError,
    Subnet,
    node_setup_commands,
    pod_setup_commands,
)


def test_backoff_restarts_at_once_then_doubles_to_the_cap() -> None:
    backoff = Backoff(base_s=10, cap_s=300)
    delays = [backoff.next_delay(ran_for_s=1) for _ in range(8)]
    assert delays == [0, 10, 20, 40, 80, 160, 300, 300]


def test_backoff_starts_over_after_a_long_healthy_run() -> None:
    backoff = Backoff(base_s=10, cap_s=300)
    for _ in range(4):
        backoff.next_delay(ran_for_s=1)
    assert backoff.next_delay(ran_for_s=601) == 0
    assert backoff.next_delay(ran_for_s=1) == 10


def test_each_pod_gets_its_own_address_and_freed_ones_are_not_reused_at_once() -> None:
    pool = AddressPool("10.250.1.", first=2, last=4)
    a = pool.allocate("pod-a")
    b = pool.allocate("pod-b")
    assert a != b
    assert pool.allocate("pod-a") == a  # asking again gives the same address
    pool.release("pod-a")
    c = pool.allocate("pod-c")
    assert c not in {a, b}
    assert pool.allocate("pod-d") == a  # wrapped around to the freed one
    with pytest.raises(NoFreeAddressError):
        pool.allocate("pod-e")


def test_a_pod_keeps_its_address_across_an_agent_restart_when_free() -> None:
    pool = AddressPool(Subnet(1).prefix)
    assert pool.allocate("old-pod", preferred="10.250.1.77") == "10.250.1.77"
    assert pool.allocate("other", preferred="10.250.1.77") != "10.250.1.77"
    # an address from another node's subnet (the agent came back with another index) is not reused
    assert pool.allocate("x", preferred="10.250.2.9").startswith("10.250.1.")
    assert not pool.contains(Subnet(1).host_address)
    assert not pool.contains(Subnet(1).bridge_address)


def test_two_agents_claim_different_pod_networks(tmp_path) -> None:
    """A demo and a test session side by side must never hand out the same pod address."""
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from loraplane_devcluster.nodeagent.network import claim_node_index  # noqa: PLC0415

    # (what other clusters on this machine hold is left out: only the two claims here count)
    mine = claim_node_index(tmp_path, taken_elsewhere=lambda _: False)
    code = (
        "from pathlib import Path\n"
        "from loraplane_devcluster.nodeagent.network import claim_node_index as c\n"
        f"print(c(Path({str(tmp_path)!r}), taken_elsewhere=lambda _: False))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert mine == 1
    assert other.stdout.strip() == "2"


def test_an_index_held_outside_this_file_system_is_skipped(tmp_path) -> None:
    """Another checkout's agent (its own /run/netns and lock files, the same network) keeps its index."""
    from loraplane_devcluster.nodeagent.network import claim_node_index  # noqa: PLC0415

    seen: list[int] = []

    def held_elsewhere(index: int) -> bool:
        seen.append(index)
        return index == 1

    assert claim_node_index(tmp_path, taken_elsewhere=held_elsewhere) == 2
    assert seen == [1, 2]


def test_an_index_locked_in_any_of_the_folders_is_taken(tmp_path) -> None:
    """An agent of an earlier version locks only the cache's folder; a new one locks both."""
    import fcntl  # noqa: PLC0415

    from loraplane_devcluster.nodeagent.network import claim_node_index  # noqa: PLC0415

    legacy, shared = tmp_path / "cache", tmp_path / "run"
    legacy.mkdir()
    with (legacy / "node-1.lock").open("ab") as old_agent:
        fcntl.flock(old_agent, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert claim_node_index([shared, legacy], taken_elsewhere=lambda _: False) == 2
    assert (shared / "node-2.lock").exists()


def test_pods_share_one_bridge_and_reach_only_their_subnet_and_services() -> None:
    subnet = Subnet(3)
    node = node_setup_commands(subnet)
    pod = pod_setup_commands(subnet, "0f1e2d3c-aaaa-bbbb-cccc-000000000001", "10.250.3.17")
    flat = [" ".join(command) for command in node + pod]
    assert "ip -n lp3-node addr add 10.96.0.1/32 dev br0" in flat  # the kubernetes Service address
    # the bridge's own MAC, fixed: one taken from its ports changes as pods come and go
    assert "ip -n lp3-node link add br0 address 02:4c:50:00:00:03 type bridge" in flat
    assert len({Subnet(i).bridge_mac for i in range(1, 300)}) == 299
    assert "ip addr add 10.250.3.1/24 dev lp3host" in flat  # the host's end, on the same segment
    assert "ip -n lp3-0f1e2d3c-aaaa-bbbb-cccc-000000000001 addr add 10.250.3.17/24 dev eth0" in flat
    assert "ip -n lp3-node link set lp3p17 master br0 up" in flat
    routes = [c for c in flat if " route " in c]
    # Service addresses go to the node namespace, which forwards (kube-proxy DNATs them there)
    assert routes == [
        "ip -n lp3-0f1e2d3c-aaaa-bbbb-cccc-000000000001 route add 10.96.0.0/16 via 10.250.3.254 dev eth0"
    ]
    assert "ip netns exec lp3-node sysctl -qw net.ipv4.ip_forward=1" in flat
    assert not any("ip_forward" in c and "lp3-node" not in c for c in flat)  # the host's stays
    # interface names must fit the kernel's 15 characters even for the largest index and address
    widest = Subnet(250)
    assert max(len(widest.host_link), len(widest.pod_link("10.250.250.253"))) <= 15


def test_an_index_whose_lock_file_a_process_holds_anywhere_is_seen(tmp_path) -> None:
    """A checkout with another LORAPLANE_CACHE locks files ours never open: its open file shows it."""
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from loraplane_devcluster.nodeagent.network import indexes_held_by_processes, lock_index  # noqa: PLC0415

    assert lock_index("/elsewhere/node-77.lock") == 77
    assert lock_index("/elsewhere/node-.lock") is None
    assert lock_index("/elsewhere/other.lock") is None
    assert 177 not in indexes_held_by_processes()
    with (tmp_path / "node-177.lock").open("ab"):
        assert 177 not in indexes_held_by_processes()  # this process's own claims are not another's
        code = (
            "from loraplane_devcluster.nodeagent.network import indexes_held_by_processes as h\n"
            "print(177 in h())"
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        command = [sys.executable, "-c", code]
        seen = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
        assert seen.stdout.strip() == "True"


def test_pod_network_claims_are_the_machines_whatever_the_cache(tmp_path, monkeypatch) -> None:
    """Agents started with another LORAPLANE_CACHE (a cold-start measurement, a second checkout)
    share the machine's network, so they must see the same claims."""
    from loraplane_devcluster.nodeagent.agent import pod_network_locks  # noqa: PLC0415

    monkeypatch.delenv("LORAPLANE_CACHE", raising=False)
    default = pod_network_locks()
    monkeypatch.setenv("LORAPLANE_CACHE", str(tmp_path / "elsewhere"))
    assert pod_network_locks() == default
