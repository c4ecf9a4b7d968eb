"""`python -m loraplane_worker.fetch`: keep a serving pod's local adapter cache in line with a wanted list.

The serving pod's fetcher (an init container, `--once`, and/or a sidecar) shares an `emptyDir` with
vLLM. It has no Kubernetes API rights and imports neither kopf nor the Kubernetes client: it reads
a wanted list from a file (a mounted ConfigMap, which the kubelet updates in place), the store's
connection settings from the same file, and the credentials from its environment (a Secret's
values, or the pod's identity), and it writes only under the cache directory:

    CACHE/
      <served name>  -> .objects/<sha256>     (a symlink, swapped atomically)
      .objects/<sha256>/adapter_model.safetensors, adapter_config.json, loraplane-manifest.json
      .status.json                             (per name: Ready / Failed, with the store's code)

An adapter is fetched into a temporary folder, every file checked against its manifest and the
weights' digest against the wanted `sha256`, then renamed into `.objects/` and linked: vLLM never
sees a partial folder, and the `<served name>/` layout is what vLLM's filesystem resolver reads.
Names no longer wanted are unlinked and their objects removed (unless another name shares them).
Permanent errors (NoSuchKey, AccessDenied, a digest mismatch, ...) are not retried until that entry
of the wanted list changes; transient ones (an unreachable endpoint) are, with exponential backoff.

The wanted file (JSON):

    {"connection": {"endpoint": "http://10.250.1.1:9000", "region": "us-east-1", "pathStyle": true},
     "adapters": [{"name": "sql", "uri": "s3://adapters/jobs/sql/adapter", "sha256": "ab12..."}]}
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from loraplane.api.common import DNS1123_LABEL
from loraplane.api.storage import S3Connection, S3Path, S3Uri
from loraplane_worker.storage import ClientOptions, ObjectStore, PermanentStoreError, StoreError

log = logging.getLogger("loraplane.fetch")

OBJECTS = ".objects"
STATUS = ".status.json"
SHA256 = r"^[0-9a-f]{64}$"
EXIT_OK, EXIT_FAILED, EXIT_BAD_WANTED = 0, 1, 65


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class WantedAdapter(_Model):
    name: str = Field(
        pattern=DNS1123_LABEL, max_length=63, description="Served adapter name: the cache entry."
    )
    uri: S3Uri
    sha256: str | None = Field(
        default=None, pattern=SHA256, description="The weights' digest to insist on; unset: the manifest's."
    )


class Wanted(_Model):
    connection: S3Connection | None = Field(default=None, description="How to reach the store.")
    adapters: list[WantedAdapter] = Field(default_factory=list, description="What the cache must hold.")


@dataclass
class EntryState:
    state: str  # Ready, Failed, Pending
    uri: str
    pin: str | None  # the wanted entry's sha256, to notice when the entry changes
    sha256: str | None = None  # what the cache holds for it
    code: str | None = None
    message: str | None = None
    permanent: bool = False
    attempts: int = 0
    next_try: float = 0.0

    def to_wire(self) -> dict[str, Any]:
        out = {"state": self.state, "uri": self.uri, "sha256": self.sha256, "code": self.code,
               "message": self.message, "permanent": self.permanent}  # fmt: skip
        return {k: v for k, v in out.items() if v is not None}


class Cache:
    """The cache folder: what it holds, and the moves that change it (each atomic for readers)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / OBJECTS

    def held(self, name: str) -> str | None:
        """The digest `name` links to, when its folder is complete."""
        link = self.root / name
        if not link.is_symlink():
            return None
        digest = Path(os.readlink(link)).name
        return digest if (self.objects / digest / "loraplane-manifest.json").is_file() else None

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_symlink())

    def fetch(self, store: ObjectStore, wanted: WantedAdapter) -> str:
        """Download, verify, and link; returns the digest now served under `wanted.name`."""
        self.objects.mkdir(parents=True, exist_ok=True)
        if wanted.sha256 and (self.objects / wanted.sha256 / "loraplane-manifest.json").is_file():
            self._link(wanted.name, wanted.sha256)  # another name already brought the same weights
            return wanted.sha256
        staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=self.root))
        try:
            manifest = store.download_tree(S3Path.parse(wanted.uri), staging, expect_sha256=wanted.sha256)
            if manifest.sha256 is None:
                raise PermanentStoreError(
                    wanted.uri, "InvalidManifest", "the manifest names no adapter digest"
                )
            final = self.objects / manifest.sha256
            if final.exists():
                shutil.rmtree(staging)
            else:
                staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._link(wanted.name, manifest.sha256)
        return manifest.sha256

    def _link(self, name: str, digest: str) -> None:
        tmp = self.root / f".link-{name}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(Path(OBJECTS) / digest)
        tmp.replace(self.root / name)  # rename(2) over the old link: readers see old or new

    def evict(self, keep: set[str]) -> list[str]:
        """Unlink names not in `keep`, then delete objects no name links to (and stale temp folders)."""
        gone = [name for name in self.names() if name not in keep]
        for name in gone:
            (self.root / name).unlink()
        linked = {Path(os.readlink(self.root / name)).name for name in self.names()}
        if self.objects.is_dir():
            for folder in self.objects.iterdir():
                if folder.name not in linked:
                    shutil.rmtree(folder, ignore_errors=True)
        for leftover in self.root.glob(".fetch-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        return gone


def read_wanted(path: Path) -> Wanted:
    return Wanted.model_validate_json(path.read_bytes())


class Fetcher:
    """One pass (`sync`) brings the cache in line with the wanted list; `run` repeats on change."""

    def __init__(
        self, cache_dir: Path, options: ClientOptions | None = None, max_backoff_s: float = 300.0
    ) -> None:
        self.cache = Cache(cache_dir)
        self.options = options
        self.max_backoff_s = max_backoff_s
        self.states: dict[str, EntryState] = {}
        self._store: tuple[str, ObjectStore] | None = None

    def _store_for(self, connection: S3Connection | None) -> ObjectStore:
        key = connection.model_dump_json() if connection else ""
        if self._store is None or self._store[0] != key:
            self._store = (key, ObjectStore(connection, options=self.options))
        return self._store[1]

    def sync(self, wanted: Wanted, now: float | None = None) -> dict[str, EntryState]:
        now = time.monotonic() if now is None else now
        self.cache.root.mkdir(parents=True, exist_ok=True)
        store = self._store_for(wanted.connection)
        for adapter in wanted.adapters:
            previous = self.states.get(adapter.name)
            changed = previous is None or (previous.uri, previous.pin) != (adapter.uri, adapter.sha256)
            held = self.cache.held(adapter.name)
            # A pinned digest names the content, so a restarted fetcher (or the sidecar after the
            # init container) keeps what the cache holds without asking the store; an unpinned
            # entry is kept while its URI stays the same.
            if held is not None and (held == adapter.sha256 or (adapter.sha256 is None and not changed)):
                if previous is None or previous.state != "Ready":
                    self.states[adapter.name] = EntryState("Ready", adapter.uri, adapter.sha256, held)
                continue
            failed_before = previous is not None and not changed and previous.state == "Failed"
            if failed_before and previous is not None and (previous.permanent or now < previous.next_try):
                continue  # a permanent error waits for the wanted entry to change; a transient one, its turn
            attempts = previous.attempts if previous and not changed else 0
            state = EntryState("Pending", adapter.uri, adapter.sha256, adapter.sha256, attempts=attempts)
            try:
                digest = self.cache.fetch(store, adapter)
            except StoreError as error:
                state.state, state.code, state.message, state.permanent = (
                    "Failed",
                    error.code,
                    error.message,
                    error.permanent,
                )
                state.attempts += 1
                state.next_try = now + min(self.max_backoff_s, 2.0**state.attempts)
                log.error("%s: %s", adapter.name, error)
            else:
                state.state, state.sha256 = "Ready", digest
                log.info("%s: ready (%s, sha256 %s)", adapter.name, adapter.uri, digest)
            self.states[adapter.name] = state
        keep = {a.name for a in wanted.adapters}
        for name in self.cache.evict(keep):
            log.info("%s: evicted (no longer wanted)", name)
        self.states = {k: v for k, v in self.states.items() if k in keep}
        self._write_status()
        return self.states

    def _write_status(self) -> None:
        path = self.cache.root / STATUS
        tmp = path.with_name(STATUS + ".tmp")
        tmp.write_text(json.dumps({k: v.to_wire() for k, v in sorted(self.states.items())}, indent=1))
        tmp.replace(path)

    def all_ready(self) -> bool:
        return all(state.state == "Ready" for state in self.states.values())

    def next_retry(self) -> float | None:
        retries = [s.next_try for s in self.states.values() if s.state == "Failed" and not s.permanent]
        return min(retries) if retries else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loraplane_worker.fetch", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--wanted", type=Path, required=True, help="JSON wanted list (a mounted ConfigMap file)"
    )
    parser.add_argument("--cache-dir", type=Path, required=True, help="the emptyDir shared with vLLM")
    parser.add_argument("--once", action="store_true", help="one pass; exit 1 unless every adapter is Ready")
    parser.add_argument(
        "--poll-seconds",
        type=float,
        default=5.0,
        help="how often the wanted file is checked for a change (a stat, not a store request)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fetcher = Fetcher(args.cache_dir)
    seen: tuple[int, int] | None = None
    wanted: Wanted | None = None
    while True:
        changed = False
        try:
            stat = args.wanted.stat()
            if (stat.st_mtime_ns, stat.st_size) != seen:
                seen = (stat.st_mtime_ns, stat.st_size)  # a bad file is reported once, not every poll
                wanted, changed = read_wanted(args.wanted), True
        except (OSError, ValidationError) as error:
            log.error("cannot read the wanted list %s: %s", args.wanted, " ".join(str(error).split()))
            if args.once:
                return EXIT_BAD_WANTED
        retry_at = fetcher.next_retry()
        if wanted is not None and (changed or (retry_at is not None and time.monotonic() >= retry_at)):
            fetcher.sync(wanted)
        if args.once:
            return EXIT_OK if fetcher.all_ready() else EXIT_FAILED
        time.sleep(args.poll_seconds)


if __name__ == "__main__":
    sys.exit(main())
