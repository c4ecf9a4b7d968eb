"""Crash-loop back-off and pod address allocation."""

from __future__ import annotations

import pytest

from loraplane_devcluster.nodeagent.containers import Backoff
from loraplane_devcluster.nodeagent.network import LoopbackPool, NoFreeAddressError


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
    pool = LoopbackPool(first=2, last=4)
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
    pool = LoopbackPool()
    assert pool.allocate("old-pod", preferred="127.0.1.77") == "127.0.1.77"
    assert pool.allocate("other", preferred="127.0.1.77") != "127.0.1.77"
    assert pool.allocate("x", preferred="10.0.0.1").startswith("127.0.1.")
    assert not pool.contains("127.0.1.1")  # the machine's own name maps there on Debian


def test_two_agents_claim_different_pod_networks(tmp_path) -> None:
    """A demo and a test session side by side must never hand out the same pod address."""
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from loraplane_devcluster.nodeagent.network import claim_pod_network  # noqa: PLC0415

    mine = claim_pod_network(tmp_path)
    code = (
        "from pathlib import Path\n"
        "from loraplane_devcluster.nodeagent.network import claim_pod_network as c\n"
        f"print(c(Path({str(tmp_path)!r})))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert mine == "127.0.1."
    assert other.stdout.strip() == "127.0.2."
