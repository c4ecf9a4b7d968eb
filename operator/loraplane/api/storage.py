"""Object-store locations: an `s3://bucket/prefix` URI and how to connect to the store behind it.

These models are the building blocks the training job's inputs and outputs and a LoraAdapter's
`source` take as their object-store variant (see docs/storage.md). Credentials are only ever named
here (a Secret and its keys), never held: the pod reads them from the Secret through its
environment, so they stay out of the object, its status, Events and ConfigMaps. With no Secret the
pod's own identity applies (IRSA's web identity token, GKE workload identity through the S3
interface, an instance profile), as it does for the AWS SDKs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, ClassVar

from pydantic import AfterValidator, Field

from loraplane.api.common import PARENT_SEGMENT, ApiModel, Dns1123Label, cel_rules, validation

# S3 bucket naming rules (3-63 characters: lowercase letters, digits, dots and hyphens, starting and
# ending with a letter or digit), then an optional key prefix after one slash. RE2-compatible: the
# API server checks the same pattern before loraplane sees the object.
BUCKET = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
S3_URI = rf"^s3://{BUCKET}(/.*)?$"
# A key is at most 1024 bytes; `s3://` plus a bucket of 63 plus a slash leaves this for the prefix.
MAX_S3_URI_LENGTH = 5 + 63 + 1 + 1024
# An endpoint is a scheme, a host (name, IPv4 or bracketed IPv6) and an optional port: S3 clients
# put the bucket in the path or the host themselves, so a path here would be silently misused.
ENDPOINT_URL = r"^https?://([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?/?$"
# AWS region names (`us-east-1`, `eu-central-2`, `us-gov-west-1`) and what S3-compatible stores
# accept (`auto` for R2, any lowercase name for MinIO).
REGION = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"

DEFAULT_ACCESS_KEY_ID_KEY = "accessKeyId"
DEFAULT_SECRET_ACCESS_KEY_KEY = "secretAccessKey"  # noqa: S105 - a key name, not a secret
DEFAULT_SESSION_TOKEN_KEY = "sessionToken"  # noqa: S105 - a key name, not a secret


def _no_parent_segment(uri: str) -> str:
    # A prefix is copied into local folders (the pod's cache, the training input dir), where a `..`
    # segment would climb out of the folder it is copied to.
    if re.search(PARENT_SEGMENT, uri.removeprefix("s3://")):
        raise ValueError("the key prefix must not contain `..` segments")
    return uri


S3Uri = Annotated[
    str,
    Field(
        pattern=S3_URI,
        min_length=8,
        max_length=MAX_S3_URI_LENGTH,
        description=(
            "An object-store location, `s3://BUCKET` or `s3://BUCKET/PREFIX`: the bucket is named by "
            "S3's rules (3-63 lowercase letters, digits, dots, hyphens), the prefix is a key prefix "
            "without `..` segments."
        ),
        json_schema_extra=cel_rules(
            validation(
                f"!self.substring(5).matches('{PARENT_SEGMENT}')",
                "the key prefix must not contain `..` segments",
            )
        ),
    ),
    AfterValidator(_no_parent_segment),
]


@dataclass(frozen=True)
class S3Path:
    """A parsed `s3://bucket/key` location. `key` has no leading slash; empty for the bucket root."""

    bucket: str
    key: str

    SCHEME: ClassVar[str] = "s3://"

    @classmethod
    def parse(cls, uri: str) -> S3Path:
        """Split a URI that passed `S3Uri`'s checks (or raise ValueError for one that would not)."""
        if not re.match(S3_URI, uri) or len(uri) > MAX_S3_URI_LENGTH:
            raise ValueError(f"{uri!r} is not an s3://BUCKET[/PREFIX] URI")
        _no_parent_segment(uri)
        bucket, _, key = uri.removeprefix(cls.SCHEME).partition("/")
        return cls(bucket, key)

    @property
    def uri(self) -> str:
        return f"{self.SCHEME}{self.bucket}/{self.key}" if self.key else f"{self.SCHEME}{self.bucket}"

    @property
    def prefix(self) -> str:
        """The key as a folder: empty for the bucket root, else ending in exactly one slash."""
        return self.key.rstrip("/") + "/" if self.key.strip("/") else ""

    def child(self, name: str) -> S3Path:
        """The object `name` (relative, slash-separated) under this location taken as a folder."""
        return S3Path(self.bucket, self.prefix + name.lstrip("/"))

    def __str__(self) -> str:
        return self.uri


class S3CredentialsSecret(ApiModel):
    """A Secret in the object's namespace holding S3 credentials. loraplane never copies the values:
    the pods that talk to the store get them as environment variables from the Secret."""

    name: Dns1123Label = Field(description="Name of the Secret.")
    access_key_id_key: str = Field(
        default=DEFAULT_ACCESS_KEY_ID_KEY,
        min_length=1,
        max_length=253,
        description="Key of the Secret holding the access key id.",
    )
    secret_access_key_key: str = Field(
        default=DEFAULT_SECRET_ACCESS_KEY_KEY,
        min_length=1,
        max_length=253,
        description="Key of the Secret holding the secret access key.",
    )
    session_token_key: str = Field(
        default=DEFAULT_SESSION_TOKEN_KEY,
        min_length=1,
        max_length=253,
        description=(
            "Key of the Secret holding a session token, for temporary credentials; used when the "
            "Secret has it, ignored when it does not."
        ),
    )


class S3Connection(ApiModel):
    """How to reach an S3 or S3-compatible store (MinIO, Ceph RGW, Cloudflare R2, GCS's S3 interface).

    Every field is optional: an unset one takes the chart's cluster-wide default, and with no
    default the AWS behaviour applies (AWS's endpoint for the region, virtual-hosted addressing,
    the pod's own identity)."""

    endpoint: str | None = Field(
        default=None,
        max_length=512,
        pattern=ENDPOINT_URL,
        description=(
            "Endpoint URL, `http(s)://HOST[:PORT]` with no path, e.g. `https://minio.storage:9000`; "
            "unset for AWS S3."
        ),
    )
    region: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=REGION,
        description="Region the bucket lives in, e.g. `eu-central-1`; `us-east-1` when unset.",
    )
    path_style: bool | None = Field(
        default=None,
        description=(
            "Address buckets in the path (`https://HOST/BUCKET/KEY`) rather than the host name "
            "(`https://BUCKET.HOST/KEY`). Unset: path-style for a custom endpoint (what most "
            "S3-compatible stores need), virtual-hosted for AWS."
        ),
    )
    credentials_secret: S3CredentialsSecret | None = Field(
        default=None,
        description=(
            "Secret with the access key id and secret access key (and optionally a session token). "
            "Unset: the pod's own identity applies (IRSA, workload identity, an instance profile)."
        ),
    )


class S3Location(ApiModel):
    """An object-store location and, optionally, how to connect to its store."""

    uri: S3Uri
    connection: S3Connection | None = Field(
        default=None,
        description="Connection settings; unset fields take the chart's cluster-wide object-store defaults.",
    )

    @property
    def path(self) -> S3Path:
        return S3Path.parse(self.uri)


def merged(override: S3Connection | None, default: S3Connection | None) -> S3Connection:
    """Per-object settings over the chart's defaults, field by field (an unset field inherits)."""
    base = default.model_dump() if default else {}
    mine = override.model_dump(exclude_none=True) if override else {}
    return S3Connection.model_validate({**base, **mine})
