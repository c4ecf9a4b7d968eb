"""Pod addresses: one loopback address per pod, as ``status.podIP``.

All pods share the host's network, so each gets its own address in a /24 of the loopback range and
binds its servers there (``$(POD_IP)`` from the downward API, the usual Kubernetes pattern); two pods
can then both listen on port 8000. Each running agent claims a /24 of its own (127.0.1.0/24 for the
first, 127.0.2.0/24 for a second cluster started beside it, ...), held by a lock file for the
agent's lifetime, so a demo and a test session never hand out the same address. Host .1 is left out
(Debian maps the machine's own name to 127.0.1.1). Addresses are handed out round-robin, so one
freed by a deleted pod is not reused at once.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

HOST_IP = "127.0.0.1"
POD_NETWORK = "127.0.1."
FIRST_HOST = 2
LAST_HOST = 254


class NoFreeAddressError(Exception):
    pass


class LoopbackPool:
    def __init__(self, prefix: str = POD_NETWORK, first: int = FIRST_HOST, last: int = LAST_HOST) -> None:
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


def claim_pod_network(lock_dir: Path, first: int = 1, last: int = 254) -> str:
    """The prefix (e.g. ``127.0.2.``) of a /24 that no other running agent on this machine holds."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    for third in range(first, last + 1):
        prefix = f"127.0.{third}."
        handle = (lock_dir / f"{prefix}lock").open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        os.set_inheritable(handle.fileno(), False)  # containers must not keep the claim alive
        _CLAIMS.append(handle)
        return prefix
    raise NoFreeAddressError(f"every 127.0.N.0/24 from N={first} to {last} is held by another agent")
