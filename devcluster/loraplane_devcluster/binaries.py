"""Where the control plane's binaries are: built once by ``devcluster/build-binaries.sh`` into a
cache folder keyed by every version (see docs/local-cluster.md), found here.

The binaries come in two sets, each built on its own (``build-binaries.sh SET...``, every set when
none is named) into that one folder: what a cluster needs to run pods and ``make demo`` needs
(``control-plane``), and kube-proxy and CoreDNS for Service addresses and cluster DNS
(``services``, about 5 more minutes of a cold build on 2 cores), which only tests need. This module
is the one list of both; the build script reads it (``python3 -m loraplane_devcluster.binaries``).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

DEVCLUSTER_DIR = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = DEVCLUSTER_DIR / "build-binaries.sh"
VERSIONS_FILE = DEVCLUSTER_DIR / "versions.env"
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "helm")
SERVICES = ("kube-proxy", "coredns")
SETS = {"control-plane": CONTROL_PLANE, "services": SERVICES}
REQUIRED = CONTROL_PLANE + SERVICES


class BinariesError(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("LORAPLANE_CACHE") or Path.home() / ".cache" / "loraplane")


def versions() -> dict[str, str]:
    """The pinned versions from devcluster/versions.env (KEY=value lines)."""
    pinned = {}
    for raw in VERSIONS_FILE.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            pinned[key.strip()] = value.strip()
    return pinned


def names(sets: Iterable[str]) -> tuple[str, ...]:
    """The binaries of the named sets, in the order of SETS; an unknown name is an error."""
    wanted = set(sets)
    unknown = sorted(wanted - SETS.keys())
    if unknown:
        raise BinariesError(f"no binaries set {', '.join(unknown)} (the sets: {', '.join(SETS)})")
    return tuple(name for set_name, members in SETS.items() if set_name in wanted for name in members)


def needed_sets(*, services: bool) -> tuple[str, ...]:
    """The sets a cluster needs: the control plane, and the services set if it starts them."""
    return ("control-plane", "services") if services else ("control-plane",)


def missing(bin_dir: Path, wanted: Sequence[str] = REQUIRED) -> list[str]:
    return [name for name in wanted if not os.access(bin_dir / name, os.X_OK)]


def resolve_bin_dir(explicit: Path | None = None, *, build: bool = True, services: bool = True) -> Path:
    """The folder holding the binaries (the services set too unless ``services`` is false):
    ``explicit``, else $LORAPLANE_BIN_DIR, else whatever build-binaries.sh prints (it returns at
    once when the cache holds those sets and builds them otherwise: about 8 minutes on 2 cores the
    first time for the control plane, 5 more for the services)."""
    sets = needed_sets(services=services)
    chosen = explicit or (
        Path(os.environ["LORAPLANE_BIN_DIR"]) if os.environ.get("LORAPLANE_BIN_DIR") else None
    )
    if chosen is None:
        if not build:
            raise BinariesError("no binaries folder given (--bin-dir or LORAPLANE_BIN_DIR)")
        chosen = _run_build_script(sets)
    absent = missing(chosen, names(sets))
    if absent:
        raise BinariesError(f"{chosen} lacks {', '.join(absent)}; run {BUILD_SCRIPT} {' '.join(sets)}")
    return chosen


def _run_build_script(sets: Sequence[str]) -> Path:
    # The script rebuilds its module folder from scratch, so two at once would break each other
    # (two test sessions on a fresh machine): the second waits here and then finds the cache warm.
    lock_path = cache_dir() / "build-binaries.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(
            ["bash", str(BUILD_SCRIPT), *sets], stdout=subprocess.PIPE, text=True, check=False
        )
    if result.returncode != 0:
        raise BinariesError(f"{BUILD_SCRIPT} failed with exit code {result.returncode} (its log is above)")
    lines = result.stdout.strip().splitlines()
    if not lines:
        raise BinariesError(f"{BUILD_SCRIPT} printed no folder")
    return Path(lines[-1])


if __name__ == "__main__":
    # build-binaries.sh asks here which binaries its sets hold (system python3, no venv needed).
    try:
        print("\n".join(names(sys.argv[1:] or SETS)))
    except BinariesError as error:
        sys.exit(str(error))
