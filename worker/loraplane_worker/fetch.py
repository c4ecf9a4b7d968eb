"""`python -m loraplane_worker.fetch`: keep a serving pod's local adapter cache in line with a wanted list.

The serving pod's fetcher shares an `emptyDir` with vLLM. It has no Kubernetes API rights and
imports neither kopf nor the Kubernetes client. It gets its wanted list one of two ways:

* `--listen HOST:PORT` (what loraplane adds to serving pods): the operator POSTs the list to
  `/sync` on the pod IP, as it calls vLLM, and reads each entry's state from the answer
  (Ready, Pending, or Failed with the store's code); fetches run in a background thread, so a
  large adapter answers Pending and the operator asks again;
* `--wanted FILE`: from a file (a mounted ConfigMap, which the kubelet updates in place), with
  `--once` as an init container.

The store's connection settings come with the list, the credentials from its environment (a
Secret's values, or the pod's identity), and it writes only under the cache directory:

    CACHE/
      <served name>  -> .objects/<sha256>     (a symlink, swapped atomically)
      .objects/<sha256>/adapter_model.safetensors, adapter_config.json, loraplane-manifest.json
                                               (adapter_config.json's base_model_name_or_path: the
                                               list's `baseModel`, the server's --model, when given)
      .status.json                             (per name: Ready / Failed, with the store's code)

An adapter is fetched into a temporary folder, every file checked against its manifest and the
weights' digest against the wanted `sha256`, then renamed into `.objects/` and linked: vLLM never
sees a partial folder, and the `<served name>/` layout is what vLLM's filesystem resolver reads.
Names no longer wanted are unlinked at once (vLLM's filesystem resolver must not find them); their
objects are removed at once too, or, with a size budget (`--max-mib`), kept while they fit and
evicted oldest first when a new adapter needs the room. Permanent errors (NoSuchKey, AccessDenied,
a digest mismatch, ...) are not retried until that entry of the wanted list changes (its URI, its
digest or its `retryEpoch`); transient ones (an unreachable endpoint) are, with exponential backoff.

An entry's `credentials` names the environment prefix of its Secret's values
(`<prefix>_ACCESS_KEY_ID`, `<prefix>_SECRET_ACCESS_KEY`, `<prefix>_SESSION_TOKEN`), so adapters of
one Deployment may use different Secrets; unset, the standard `AWS_*` variables or the pod's
identity apply.

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
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
MIB = 1024 * 1024
MAX_REQUEST_BYTES = 4 * MIB
CREDENTIAL_SUFFIXES = (
    ("ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
    ("SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
    ("SESSION_TOKEN", "AWS_SESSION_TOKEN"),
)


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
    connection: S3Connection | None = Field(
        default=None, description="How to reach this adapter's store; unset: the list's connection."
    )
    credentials: str | None = Field(
        default=None,
        pattern=r"^[A-Z][A-Z0-9_]{0,100}$",
        description="Environment prefix of this adapter's credentials; unset: AWS_* or the pod's identity.",
    )
    retry_epoch: str | None = Field(
        default=None,
        max_length=64,
        description="A new value retries an entry that failed for good (a resync, a spec change).",
    )


class Wanted(_Model):
    connection: S3Connection | None = Field(default=None, description="How to reach the store.")
    adapters: list[WantedAdapter] = Field(default_factory=list, description="What the cache must hold.")
    base_model: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description=(
            "The serving vLLM's `--model` string, written into each cached adapter_config.json's "
            "base_model_name_or_path (vLLM's filesystem resolver loads a name only when they are equal)."
        ),
    )


@dataclass
class EntryState:
    state: str  # Ready, Failed, Pending
    uri: str
    pin: str | None  # the wanted entry's sha256, to notice when the entry changes
    sha256: str | None = None  # what the cache holds for it
    epoch: str | None = None  # the entry's retryEpoch when it was last tried
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

    def __init__(self, root: Path, max_bytes: int | None = None) -> None:
        self.root = root
        self.objects = root / OBJECTS
        self.max_bytes = max_bytes  # None: objects no name links to are removed at once

    def held(self, name: str) -> str | None:
        """The digest `name` links to, when its folder is complete."""
        link = self.root / name
        if not link.is_symlink():
            return None
        digest = Path(os.readlink(link)).name
        return digest if (self.objects / digest / "loraplane-manifest.json").is_file() else None

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_symlink())

    def fetch(self, store: ObjectStore, wanted: WantedAdapter, base_model: str | None = None) -> str:
        """Download, verify, and link; returns the digest now served under `wanted.name`. With
        `base_model`, the cached adapter_config.json names it as its base model (the digests are of
        the weights, so what was verified stays verified)."""
        self.objects.mkdir(parents=True, exist_ok=True)
        if wanted.sha256 and (self.objects / wanted.sha256 / "loraplane-manifest.json").is_file():
            name_base_model(self.objects / wanted.sha256, base_model)
            self._link(wanted.name, wanted.sha256)  # another name (or an earlier version) brought it
            return wanted.sha256
        if self.max_bytes is not None:
            location = S3Path.parse(wanted.uri)
            manifest = store.read_manifest(location)
            if manifest is None:
                raise PermanentStoreError(
                    location.child("loraplane-manifest.json").uri, "NoSuchKey", "the upload is not complete"
                )
            self.make_room(manifest.size_bytes, wanted.uri)
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
                name_base_model(final, base_model)
            else:
                name_base_model(staging, base_model)  # before the rename: vLLM sees only the final form
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
        os.utime(self.objects / digest)  # last wanted now: the last to be evicted

    def _linked(self) -> set[str]:
        return {Path(os.readlink(self.root / name)).name for name in self.names()}

    def _sizes(self) -> dict[Path, tuple[float, int]]:
        """Each object folder: (last wanted, bytes)."""
        found: dict[Path, tuple[float, int]] = {}
        if self.objects.is_dir():
            for folder in self.objects.iterdir():
                size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
                found[folder] = (folder.stat().st_mtime, size)
        return found

    def used_bytes(self) -> int:
        return sum(size for _, size in self._sizes().values())

    def make_room(self, need: int, uri: str) -> None:
        """Evict objects no name links to, oldest first, until `need` more bytes fit in the budget;
        CacheFull (permanent until the wanted list changes) when the wanted adapters alone do not fit."""
        assert self.max_bytes is not None
        sizes, linked = self._sizes(), self._linked()
        used = sum(size for _, size in sizes.values())
        for folder, _ in sorted(
            ((f, t) for f, (t, _) in sizes.items() if f.name not in linked), key=lambda x: x[1]
        ):
            if used + need <= self.max_bytes:
                break
            shutil.rmtree(folder, ignore_errors=True)
            used -= sizes[folder][1]
            log.info("evicted %s (no longer wanted, oldest first) to make room", folder.name)
        if used + need > self.max_bytes:
            raise PermanentStoreError(
                uri,
                "CacheFull",
                f"needs {need} bytes; the pod's adapter cache holds {used} of {self.max_bytes} for wanted "
                "adapters (raise the chart's serving.fetcher.cacheMiB)",
            )

    def evict(self, keep: set[str]) -> list[str]:
        """Unlink names not in `keep`, then delete objects no name links to (and stale temp folders)."""
        gone = [name for name in self.names() if name not in keep]
        for name in gone:
            (self.root / name).unlink()
        linked = self._linked()
        if self.objects.is_dir() and self.max_bytes is None:
            for folder in self.objects.iterdir():
                if folder.name not in linked:
                    shutil.rmtree(folder, ignore_errors=True)
        for leftover in self.root.glob(".fetch-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        return gone


def name_base_model(folder: Path, base_model: str | None) -> None:
    """Make `folder/adapter_config.json` say `base_model_name_or_path: base_model`; the file is
    replaced by a rename, so a reader sees the old or the new config, never half of one."""
    config_path = folder / "adapter_config.json"
    if base_model is None or not config_path.is_file():
        return
    config = json.loads(config_path.read_text())
    if not isinstance(config, dict) or config.get("base_model_name_or_path") == base_model:
        return
    config["base_model_name_or_path"] = base_model
    tmp = folder / ".adapter_config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2))
    tmp.replace(config_path)


def read_wanted(path: Path) -> Wanted:
    return Wanted.model_validate_json(path.read_bytes())


class Fetcher:
    """One pass (`sync`) brings the cache in line with the wanted list; `run` repeats on change."""

    def __init__(
        self,
        cache_dir: Path,
        options: ClientOptions | None = None,
        max_backoff_s: float = 300.0,
        max_bytes: int | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.cache = Cache(cache_dir, max_bytes)
        self.options = options
        self.max_backoff_s = max_backoff_s
        self.environ = os.environ if environ is None else environ
        self.states: dict[str, EntryState] = {}
        self._stores: dict[tuple[str, str | None], ObjectStore] = {}

    def _store_for(self, connection: S3Connection | None, adapter: WantedAdapter) -> ObjectStore:
        """One client per (connection, credentials); credentials from the entry's own variables."""
        key = (connection.model_dump_json() if connection else "", adapter.credentials)
        if key not in self._stores:
            environ: Mapping[str, str] = self.environ
            if adapter.credentials is not None:
                prefix = adapter.credentials
                environ = {
                    standard: self.environ[f"{prefix}_{suffix}"]
                    for suffix, standard in CREDENTIAL_SUFFIXES
                    if self.environ.get(f"{prefix}_{suffix}")
                }
                if not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(environ):
                    raise PermanentStoreError(
                        adapter.uri,
                        "CredentialsMissing",
                        "the fetcher has no access key id and secret access key from the credentials "
                        "Secret (does it exist, with those keys? a Secret created or changed later "
                        "reaches the fetcher when its pod restarts)",
                    )
            self._stores[key] = ObjectStore(connection, environ=environ, options=self.options)
        return self._stores[key]

    def sync(self, wanted: Wanted, now: float | None = None) -> dict[str, EntryState]:
        now = time.monotonic() if now is None else now
        self.cache.root.mkdir(parents=True, exist_ok=True)
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
            if failed_before and previous is not None:
                if previous.permanent and previous.epoch == adapter.retry_epoch:
                    continue  # a permanent error waits for the wanted entry (or its epoch) to change
                if not previous.permanent and now < previous.next_try:
                    continue  # a transient one waits for its turn
            attempts = previous.attempts if previous and not changed else 0
            state = EntryState(
                "Pending",
                adapter.uri,
                adapter.sha256,
                adapter.sha256,
                epoch=adapter.retry_epoch,
                attempts=attempts,
            )
            try:
                store = self._store_for(adapter.connection or wanted.connection, adapter)
                digest = self.cache.fetch(store, adapter, wanted.base_model)
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


class Service:
    """The `--listen` mode: the latest wanted list from the operator, synced by one background thread
    (fetches never overlap; a list that arrives meanwhile is synced next), transient failures retried
    when due. A request waits a little for its sync, then answers with the states so far."""

    def __init__(self, fetcher: Fetcher) -> None:
        self.fetcher = fetcher
        self.changed = threading.Condition()
        self.wanted: Wanted | None = None
        self.asked = 0  # bumped for every new wanted list
        self.synced = 0  # the last list a finished sync was for
        self.thread = threading.Thread(target=self._loop, name="fetch", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _loop(self) -> None:
        while True:
            with self.changed:
                while self.wanted is None or self.synced == self.asked:
                    retry_at = self.fetcher.next_retry()
                    if retry_at is not None and self.wanted is not None and time.monotonic() >= retry_at:
                        break
                    self.changed.wait(None if retry_at is None else max(0.05, retry_at - time.monotonic()))
                wanted, asked = self.wanted, self.asked
            assert wanted is not None
            try:
                self.fetcher.sync(wanted)
            except Exception:
                log.exception("sync failed")
            with self.changed:
                self.synced = max(self.synced, asked)
                self.changed.notify_all()

    def request(self, wanted: Wanted, wait_s: float) -> dict[str, dict[str, Any]]:
        with self.changed:
            if wanted != self.wanted:
                self.wanted, self.asked = wanted, self.asked + 1
                self.changed.notify_all()
            target = self.asked
            self.changed.wait_for(lambda: self.synced >= target, timeout=wait_s)
            states = dict(self.fetcher.states)
        answer: dict[str, dict[str, Any]] = {}
        for adapter in wanted.adapters:
            state = states.get(adapter.name)
            if state is None or (state.uri, state.pin) != (adapter.uri, adapter.sha256):
                answer[adapter.name] = {"state": "Pending", "uri": adapter.uri}
            else:
                answer[adapter.name] = state.to_wire()
        return answer


def serve(service: Service, host: str, port: int, wait_s: float = 20.0) -> ThreadingHTTPServer:
    """`POST /sync` (a wanted list, JSON) -> `{"adapters": {name: state}}`; `GET /healthz`."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: dict[str, Any]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._answer(200, {"ok": True})
            else:
                self._answer(404, {"error": "not found"})

        def do_POST(self) -> None:
            if self.path.split("?")[0] != "/sync":
                self._answer(404, {"error": "not found"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_REQUEST_BYTES:
                self._answer(413, {"error": "wanted list too large"})
                return
            try:
                wanted = Wanted.model_validate_json(self.rfile.read(length))
            except ValidationError as error:
                self._answer(400, {"error": " ".join(str(error).split())[:2000]})
                return
            self._answer(200, {"adapters": service.request(wanted, wait_s)})

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loraplane_worker.fetch", description=__doc__.split("\n")[0]
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--wanted", type=Path, help="JSON wanted list (a mounted ConfigMap file)")
    source.add_argument("--listen", metavar="HOST:PORT", help="take wanted lists on POST /sync here")
    parser.add_argument("--cache-dir", type=Path, required=True, help="the emptyDir shared with vLLM")
    parser.add_argument(
        "--max-mib", type=int, default=None, help="cache budget; unwanted adapters are kept while they fit"
    )
    parser.add_argument("--once", action="store_true", help="one pass; exit 1 unless every adapter is Ready")
    parser.add_argument(
        "--poll-seconds",
        type=float,
        default=5.0,
        help="how often the wanted file is checked for a change (a stat, not a store request)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fetcher = Fetcher(args.cache_dir, max_bytes=None if args.max_mib is None else args.max_mib * MIB)
    if args.listen:
        host, _, port = args.listen.rpartition(":")
        service = Service(fetcher)
        service.start()
        server = serve(service, host.strip("[]"), int(port))
        log.info("listening on %s (cache %s)", args.listen, args.cache_dir)
        server.serve_forever()
        return EXIT_OK
    assert args.wanted is not None
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
