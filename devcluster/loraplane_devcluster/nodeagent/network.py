"""Pod addresses: one loopback address per pod, as ``status.podIP``.

All pods share the host's network, so each gets its own address in 127.0.1.0/24 and binds its
servers there (``$(POD_IP)`` from the downward API, the usual Kubernetes pattern); two pods can then
both listen on port 8000. 127.0.1.1 is left out: Debian maps the machine's own name to it.
Addresses are handed out round-robin, so one freed by a deleted pod is not reused at once.
"""

from __future__ import annotations

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
