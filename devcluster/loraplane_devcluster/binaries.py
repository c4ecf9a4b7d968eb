"""Where the control plane's binaries are: built once by ``devcluster/build-binaries.sh`` into a
cache folder keyed by every version (see docs/local-cluster.md), found here."""

from __future__ import annotations

import fcntl
import os
import subprocess
from pathlib import Path

DEVCLUSTER_DIR = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = DEVCLUSTER_DIR / "build-binaries.sh"
VERSIONS_FILE = DEVCLUSTER_DIR / "versions.env"
REQUIRED = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "kubectl",
    "helm",
    "coredns",
)


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


def missing(bin_dir: Path) -> list[str]:
    return [name for name in REQUIRED if not os.access(bin_dir / name, os.X_OK)]


def resolve_bin_dir(explicit: Path | None = None, *, build: bool = True) -> Path:
    """The folder holding every binary: ``explicit``, else $LORAPLANE_BIN_DIR, else whatever
    build-binaries.sh prints (it returns at once when the cache is complete and builds otherwise,
    which takes about 10 minutes on 2 cores the first time)."""
    chosen = explicit or (
        Path(os.environ["LORAPLANE_BIN_DIR"]) if os.environ.get("LORAPLANE_BIN_DIR") else None
    )
    if chosen is None:
        if not build:
            raise BinariesError("no binaries folder given (--bin-dir or LORAPLANE_BIN_DIR)")
        chosen = _run_build_script()
    absent = missing(chosen)
    if absent:
        raise BinariesError(f"{chosen} lacks {', '.join(absent)}; run {BUILD_SCRIPT}")
    return chosen


def _run_build_script() -> Path:
    # The script rebuilds its module folder from scratch, so two at once would break each other
    # (two test sessions on a fresh machine): the second waits here and then finds the cache warm.
    lock_path = cache_dir() / "build-binaries.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        raise BinariesError(f"{BUILD_SCRIPT} failed with exit code {result.returncode} (its log is above)")
    lines = result.stdout.strip().splitlines()
    if not lines:
        raise BinariesError(f"{BUILD_SCRIPT} printed no folder")
    return Path(lines[-1])
