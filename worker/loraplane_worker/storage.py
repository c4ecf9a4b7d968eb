"""The object store, as the worker and the serving pod's fetcher use it.

* Inputs (a base model, dataset files) are copied from an `s3://bucket/prefix` to a local folder.
* A folder (a checkpoint, the final adapter) is uploaded file by file and then a manifest,
  `loraplane-manifest.json`, listing every file's size and SHA-256, is written **last**. S3 has no
  atomic multi-object write, so the manifest is the commit record: a folder without one is an upload
  that was cut short and is never taken for a finished one (the newest checkpoint a retried pod
  resumes from is the newest *with* a manifest). A reader checks every file against it.
* The adapter's manifest also carries `sha256`, the digest of `adapter_model.safetensors`: the same
  value the job's `status.adapter.sha256` reports, so a LoraAdapter can pin it.
* Every failure is a `StoreError` naming the URI and the store's error code (`NoSuchBucket`,
  `NoSuchKey`, `AccessDenied`, `InvalidAccessKeyId`, `SignatureDoesNotMatch`, `EndpointUnreachable`,
  `DigestMismatch`, ...), as `PermanentStoreError` (an input error: exit code 65, no retry helps) or
  `TransientStoreError` (retried, with backoff, by whoever runs this).

The S3 protocol (signing, multipart uploads, credential providers) is the `minio` client's; see
docs/storage.md for why that client. Credentials come from the standard environment variables
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, set by the pod from a Secret)
or, without them, from the pod's identity (IRSA's web identity token, ECS, an instance profile).
They are never logged and never part of an error message.

Imports neither torch nor the operator: only pydantic's API models (`loraplane.api.storage`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import ssl
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.credentials.providers import IamAwsProvider, Provider, StaticProvider
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError

from loraplane.api.storage import S3Connection, S3Path
from loraplane_worker.errors import InputError

log = logging.getLogger(__name__)

MANIFEST = "loraplane-manifest.json"
MANIFEST_FORMAT = "loraplane.io/manifest/v1"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
CHECKPOINT_PREFIX = "checkpoint-"
AWS_HOST = "s3.amazonaws.com"
_BLOCK = 1024 * 1024

# Codes a retry cannot cure: the location or the credentials are wrong until someone changes them.
PERMANENT_CODES = frozenset(
    {
        "NoSuchBucket",
        "NoSuchKey",
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidBucketName",
        "InvalidObjectName",
        "InvalidToken",
        "AccountProblem",
        "DigestMismatch",
        "InvalidManifest",
        "AuthorizationHeaderMalformed",
        "PermanentRedirect",
    }
)
# Codes of a store that is busy, restarting or briefly unreachable; also any 5xx without a code.
TRANSIENT_CODES = frozenset(
    {
        "EndpointUnreachable",
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "Throttling",
        "ExpiredToken",  # a rotated web identity token brings new credentials on the next try
        "InvalidResponse",
    }
)


class StoreError(Exception):
    """An object-store operation failed. `str()` names the URI and the code, never a credential."""

    permanent: bool = False

    def __init__(self, uri: str, code: str, message: str = "", status: int | None = None) -> None:
        self.uri, self.code, self.message, self.status = uri, code, message, status
        super().__init__(f"{uri}: {code}" + (f": {message}" if message else ""))


class PermanentStoreError(StoreError, InputError):
    """The location, the object or the credentials are wrong: retrying cannot help."""

    permanent = True


class TransientStoreError(StoreError):
    """The store is unreachable or busy: a later try may succeed."""


class DigestMismatchError(PermanentStoreError):
    """An object's content does not have the SHA-256 its manifest (or the caller) says it has."""

    def __init__(self, uri: str, expected: str, actual: str) -> None:
        self.expected, self.actual = expected, actual
        super().__init__(uri, "DigestMismatch", f"expected sha256 {expected}, got {actual}")


def store_error(uri: str, code: str, message: str = "", status: int | None = None) -> StoreError:
    """The right class for `code`: a known code decides; an unknown one goes by the HTTP status
    (4xx: the request is wrong, permanent; 5xx or none: the store's trouble, transient)."""
    if code in PERMANENT_CODES:
        permanent = True
    elif code in TRANSIENT_CODES:
        permanent = False
    else:
        permanent = status is not None and 400 <= status < 500
    kind = PermanentStoreError if permanent else TransientStoreError
    return kind(uri, code, message, status)


@contextlib.contextmanager
def _translated(uri: str) -> Iterator[None]:
    """Turn the client's exceptions into StoreErrors naming `uri`."""
    try:
        yield
    except StoreError:
        raise
    except S3Error as error:
        status = error.response.status if error.response is not None else None
        raise store_error(uri, error.code or f"HTTP{status}", error.message or "", status) from None
    except ServerError as error:
        raise store_error(uri, "InternalError", f"HTTP {error.status_code}", error.status_code) from None
    except InvalidResponseError as error:
        raise store_error(uri, "InvalidResponse", "the endpoint did not answer as an S3 store") from error
    except (
        urllib3.exceptions.HTTPError,
        ConnectionError,
        TimeoutError,
        socket.gaierror,
        ssl.SSLError,
    ) as error:
        # Connection refused, DNS, TLS, timeouts, after urllib3's own retries. Not OSError as a
        # whole: a full local disk while downloading is the pod's trouble, not the store's.
        reason = getattr(error, "reason", None) or error
        raise TransientStoreError(uri, "EndpointUnreachable", _one_line(reason)) from None


def _one_line(value: object) -> str:
    return " ".join(str(value).split())[:300]


# ---- connecting ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientOptions:
    """Timeouts and retries of the HTTP layer (urllib3 retries connection errors and 5xx answers
    with exponential backoff before a TransientStoreError is raised)."""

    connect_timeout_s: float = 10.0
    read_timeout_s: float = 120.0
    retries: int = 4
    backoff_s: float = 0.5
    part_size: int = 16 * 1024 * 1024  # multipart parts for large files (S3's minimum is 5 MiB)
    parallel_parts: int = 4


def credentials_from_env(environ: Mapping[str, str]) -> Provider:
    """The pod's credentials: the Secret's values in the standard variables, else its identity."""
    access_key = environ.get("AWS_ACCESS_KEY_ID", "")
    secret_key = environ.get("AWS_SECRET_ACCESS_KEY", "")
    if access_key and secret_key:
        return StaticProvider(access_key, secret_key, environ.get("AWS_SESSION_TOKEN") or None)
    # IRSA (AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN), ECS task roles, then the instance profile.
    return IamAwsProvider()


def make_client(
    connection: S3Connection | None,
    environ: Mapping[str, str] | None = None,
    options: ClientOptions | None = None,
) -> Minio:
    connection = connection or S3Connection()
    options = options or ClientOptions()
    environ = os.environ if environ is None else environ
    if connection.endpoint:
        parts = urlsplit(connection.endpoint)
        host, secure = parts.netloc, parts.scheme == "https"
    else:
        host, secure = AWS_HOST, True
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=options.connect_timeout_s, read=options.read_timeout_s),
        maxsize=max(10, options.parallel_parts * 2),
        retries=urllib3.Retry(
            total=options.retries,
            backoff_factor=options.backoff_s,
            status_forcelist=[500, 502, 503, 504],
            allowed_methods=None,  # S3 requests are idempotent per object, uploads included
            raise_on_status=False,
        ),
    )
    client = Minio(
        host,
        secure=secure,
        region=connection.region or "us-east-1",
        credentials=credentials_from_env(environ),
        http_client=http,
    )
    if connection.path_style is True:
        client.disable_virtual_style_endpoint()  # type: ignore[no-untyped-call]
    elif connection.path_style is False:
        client.enable_virtual_style_endpoint()  # type: ignore[no-untyped-call]
    return client


# ---- manifests -------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative, slash-separated
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What a complete upload holds. `sha256` is the adapter weights' digest, when it is an adapter."""

    files: tuple[FileEntry, ...]
    sha256: str | None = None
    step: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return sum(entry.size for entry in self.files)

    def to_json(self) -> bytes:
        payload: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
        }
        if self.sha256 is not None:
            payload["sha256"] = self.sha256
        if self.step is not None:
            payload["step"] = self.step
        payload.update(self.extra)
        return json.dumps(payload, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, uri: str) -> Manifest:
        try:
            payload = json.loads(raw)
            if payload.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format is {payload.get('format')!r}, not {MANIFEST_FORMAT!r}")
            files = tuple(
                FileEntry(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in payload["files"]
            )
            for entry in files:
                _safe_relative(entry.path)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise PermanentStoreError(uri, "InvalidManifest", _one_line(error)) from None
        known = {"format", "files", "sha256", "step"}
        return cls(
            files,
            payload.get("sha256"),
            payload.get("step"),
            {k: v for k, v in payload.items() if k not in known},
        )


def _safe_relative(name: str) -> PurePosixPath:
    """A key below a prefix as a relative local path that cannot climb out of its folder."""
    relative = PurePosixPath(name)
    if relative.is_absolute() or not relative.parts or any(p in ("..", ".") for p in relative.parts):
        raise ValueError(f"{name!r} is not a plain relative path")
    return relative


def manifest_of(folder: Path, *, sha256_of: str | None = None, step: int | None = None) -> Manifest:
    """A manifest for every regular file under `folder` (an old manifest in it excluded)."""
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        relative = path.relative_to(folder).as_posix()
        if relative == MANIFEST:
            continue
        entries.append(FileEntry(relative, path.stat().st_size, sha256_file(path)))
    digest = None
    if sha256_of is not None:
        digest = next((e.sha256 for e in entries if e.path == sha256_of), None)
        if digest is None:
            raise InputError(f"{folder} has no {sha256_of}")
    return Manifest(tuple(entries), digest, step)


# ---- the store ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredObject:
    uri: str
    key: str
    size: int


@dataclass(frozen=True)
class StoredCheckpoint:
    step: int
    location: S3Path
    manifest: Manifest


class ObjectStore:
    """One store's client, with the few operations loraplane needs."""

    def __init__(
        self,
        connection: S3Connection | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        options: ClientOptions | None = None,
    ) -> None:
        self.options = options or ClientOptions()
        self.client = make_client(connection, environ, self.options)

    def __repr__(self) -> str:  # no credentials, whatever the client holds
        return f"ObjectStore({self.client._base_url.host})"

    # -- listing and reading ----------------------------------------------------------------------

    def list_objects(self, location: S3Path) -> list[StoredObject]:
        """Every object under `location` taken as a folder, folder markers (keys ending in /) left out."""
        found = []
        with _translated(location.uri):
            for item in self.client.list_objects(location.bucket, prefix=location.prefix, recursive=True):
                name = item.object_name or ""
                if not name.endswith("/"):
                    found.append(StoredObject(f"s3://{location.bucket}/{name}", name, int(item.size or 0)))
        return found

    def read_bytes(self, location: S3Path, limit: int = 16 * _BLOCK) -> bytes:
        with _translated(location.uri):
            response = self.client.get_object(location.bucket, location.key)
            try:
                data = response.read(limit + 1)
            finally:
                response.close()
                response.release_conn()
        if len(data) > limit:
            raise PermanentStoreError(location.uri, "EntityTooLarge", f"larger than {limit} bytes")
        return data

    def read_manifest(self, location: S3Path) -> Manifest | None:
        """The manifest of the folder at `location`, or None when it has none (an upload not
        finished). A missing bucket or a refused request raises."""
        where = location.child(MANIFEST)
        try:
            raw = self.read_bytes(where)
        except PermanentStoreError as error:
            if error.code == "NoSuchKey":
                return None
            raise
        return Manifest.from_json(raw, where.uri)

    # -- downloads --------------------------------------------------------------------------------

    def _download(self, location: S3Path, target: Path, expected: FileEntry | None = None) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        digest = hashlib.sha256()
        with _translated(location.uri):
            response = self.client.get_object(location.bucket, location.key)
            try:
                with partial.open("wb") as out:
                    for block in response.stream(_BLOCK):
                        digest.update(block)
                        out.write(block)
            finally:
                response.close()
                response.release_conn()
        if expected is not None:
            actual, size = digest.hexdigest(), partial.stat().st_size
            if actual != expected.sha256 or size != expected.size:
                partial.unlink(missing_ok=True)
                raise DigestMismatchError(location.uri, expected.sha256, actual)
        partial.replace(target)

    def download_prefix(self, location: S3Path, dest: Path) -> list[Path]:
        """Copy every object under `location` into `dest`, keeping the key layout below the prefix
        (a base model folder, dataset files). A location that names one object copies that object.
        Raises NoSuchKey when there is nothing there."""
        objects = self.list_objects(location)
        if not objects and location.key and not location.key.endswith("/"):
            single = PurePosixPath(location.key).name
            self._download(location, dest / single)  # NoSuchKey when it is not an object either
            return [dest / single]
        if not objects:
            raise PermanentStoreError(location.uri, "NoSuchKey", "no object under this prefix")
        written = []
        for item in objects:
            try:
                relative = _safe_relative(item.key[len(location.prefix) :])
            except ValueError:
                raise PermanentStoreError(item.uri, "InvalidObjectName", "key escapes its prefix") from None
            target = dest / relative
            self._download(S3Path(location.bucket, item.key), target)
            written.append(target)
        log.info("copied %d objects (%d bytes) from %s", len(objects), sum(o.size for o in objects), location)
        return written

    def download_tree(self, location: S3Path, dest: Path, *, expect_sha256: str | None = None) -> Manifest:
        """Copy a folder uploaded with `upload_tree` into `dest`, checking every file against its
        manifest (and the manifest's `sha256` against `expect_sha256`). A folder without a
        manifest raises NoSuchKey for the manifest's URI."""
        manifest = self.read_manifest(location)
        if manifest is None:
            raise PermanentStoreError(location.child(MANIFEST).uri, "NoSuchKey", "the upload is not complete")
        if expect_sha256 is not None and manifest.sha256 != expect_sha256:
            raise DigestMismatchError(location.child(MANIFEST).uri, expect_sha256, str(manifest.sha256))
        for entry in manifest.files:
            self._download(location.child(entry.path), dest / _safe_relative(entry.path), entry)
        (dest / MANIFEST).write_bytes(manifest.to_json())
        return manifest

    # -- uploads ----------------------------------------------------------------------------------

    def upload_file(self, path: Path, location: S3Path) -> None:
        with _translated(location.uri):
            # put_object switches to a multipart upload above one part, in parallel parts
            self.client.fput_object(
                location.bucket,
                location.key,
                str(path),
                part_size=self.options.part_size,
                num_parallel_uploads=self.options.parallel_parts,
            )

    def upload_tree(
        self, folder: Path, location: S3Path, *, sha256_of: str | None = None, step: int | None = None
    ) -> Manifest:
        """Upload every file under `folder` to `location`, then the manifest, last: until it is
        there, readers treat the folder as absent."""
        manifest = manifest_of(folder, sha256_of=sha256_of, step=step)
        for entry in manifest.files:
            self.upload_file(folder / entry.path, location.child(entry.path))
        where = location.child(MANIFEST)
        body = manifest.to_json()
        with _translated(where.uri):
            self.client.put_object(
                where.bucket, where.key, io.BytesIO(body), len(body), content_type="application/json"
            )
        log.info("uploaded %d files (%d bytes) to %s", len(manifest.files), manifest.size_bytes, location)
        return manifest

    def upload_adapter(self, adapter_dir: Path, location: S3Path) -> Manifest:
        """The final adapter, with the weights' SHA-256 in its manifest (written last)."""
        return self.upload_tree(adapter_dir, location, sha256_of=ADAPTER_WEIGHTS)

    # -- checkpoints ------------------------------------------------------------------------------

    def upload_checkpoint(self, checkpoint_dir: Path, checkpoints: S3Path) -> S3Path:
        """`checkpoint-N/` to `checkpoints/checkpoint-N/`; complete once its manifest is written."""
        step = _checkpoint_step(checkpoint_dir.name)
        if step is None:
            raise ValueError(f"{checkpoint_dir} is not a checkpoint-N folder")
        target = checkpoints.child(checkpoint_dir.name)
        self.upload_tree(checkpoint_dir, target, step=step)
        return target

    def _checkpoint_names(self, checkpoints: S3Path) -> dict[int, str]:
        """`checkpoint-N/` folders under `checkpoints`, by step (complete or not)."""
        steps: dict[int, str] = {}
        with _translated(checkpoints.uri):
            for item in self.client.list_objects(
                checkpoints.bucket, prefix=checkpoints.prefix, recursive=False
            ):
                name = (item.object_name or "")[len(checkpoints.prefix) :].rstrip("/")
                step = _checkpoint_step(name)
                if item.is_dir and step is not None:
                    steps[step] = name
        return steps

    def newest_complete_checkpoint(self, checkpoints: S3Path) -> StoredCheckpoint | None:
        """The highest-step `checkpoint-N/` under `checkpoints` that has its manifest; newer ones
        without (a pod killed mid-upload) are skipped. None when there is none (or no such prefix)."""
        steps = self._checkpoint_names(checkpoints)
        for step in sorted(steps, reverse=True):
            location = checkpoints.child(steps[step])
            manifest = self.read_manifest(location)
            if manifest is not None:
                return StoredCheckpoint(step, location, manifest)
            log.warning("skipping %s: its upload did not finish (no %s)", location, MANIFEST)
        return None

    def delete_tree(self, location: S3Path) -> int:
        """Delete a folder uploaded with `upload_tree`: its manifest first, so that no reader ever
        takes a folder with files missing for a complete one. Returns the objects deleted."""
        where = location.child(MANIFEST)
        with _translated(where.uri):
            self.client.remove_object(where.bucket, where.key)
        objects = self.list_objects(location)
        with _translated(location.uri):
            failures = list(
                self.client.remove_objects(location.bucket, (DeleteObject(o.key) for o in objects))
            )
        if failures:
            first = failures[0]
            raise store_error(
                f"s3://{location.bucket}/{first.name}", first.code or "DeleteFailed", first.message or ""
            )
        return len(objects) + 1

    def prune_checkpoints(self, checkpoints: S3Path, keep: int) -> list[int]:
        """Delete every checkpoint older than the `keep` newest complete ones (what the trainer's
        `save_total_limit` does on local disk), so a long run's store use stays bounded. Returns
        the steps deleted, oldest first."""
        if keep < 1:
            return []
        steps = self._checkpoint_names(checkpoints)
        complete = [
            step
            for step in sorted(steps, reverse=True)
            if self.read_manifest(checkpoints.child(steps[step])) is not None
        ]
        if len(complete) <= keep:
            return []
        oldest_kept = complete[keep - 1]
        doomed = sorted(step for step in steps if step < oldest_kept)
        for step in doomed:
            self.delete_tree(checkpoints.child(steps[step]))
        return doomed

    def download_checkpoint(self, checkpoint: StoredCheckpoint, checkpoints_dir: Path) -> Path:
        """Into `checkpoints_dir/checkpoint-N/`, every file checked, so the trainer resumes from it."""
        name = f"{CHECKPOINT_PREFIX}{checkpoint.step}"
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=_ensure(checkpoints_dir)))
        try:
            self.download_tree(checkpoint.location, staging)
            target = checkpoints_dir / name
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target


def _ensure(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _checkpoint_step(name: str) -> int | None:
    if not name.startswith(CHECKPOINT_PREFIX):
        return None
    digits = name[len(CHECKPOINT_PREFIX) :]
    return int(digits) if digits.isdigit() else None
