"""The object-store API models: s3:// URIs and connection settings, valid and invalid, with errors
that name the field; the CRD schema they produce; and the fetcher's import surface."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from pydantic import ValidationError

from loraplane import crdgen
from loraplane.api.storage import S3_URI, S3Connection, S3Location, S3Path, merged
from manifests import ROOT


@pytest.mark.parametrize(
    ("uri", "bucket", "key"),
    [
        ("s3://my-bucket", "my-bucket", ""),
        ("s3://my-bucket/", "my-bucket", ""),
        ("s3://my.bucket-2/models/opt-350m", "my.bucket-2", "models/opt-350m"),
        ("s3://abc/jobs/run-1/checkpoints/", "abc", "jobs/run-1/checkpoints/"),
        ("s3://abc/data/train..v2.jsonl", "abc", "data/train..v2.jsonl"),  # `..` inside a name is fine
    ],
)
def test_valid_uris_parse_into_bucket_and_key(uri: str, bucket: str, key: str) -> None:
    location = S3Location.model_validate({"uri": uri})
    assert location.path == S3Path(bucket, key)
    assert S3Path.parse(uri).uri == (uri if key.endswith("/") else uri.rstrip("/"))


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("https://bucket/x", "should match pattern"),
        ("s3://", "at least 8 characters"),
        ("s3://ab/x", "should match pattern"),  # a bucket has at least 3 characters
        ("s3://My-Bucket/x", "should match pattern"),  # no capitals
        ("s3://-bucket/x", "should match pattern"),
        ("s3://bucket-/x", "should match pattern"),
        ("s3://bucket/../etc", "`..` segments"),
        ("s3://bucket/a/../../b", "`..` segments"),
        ("s3://bucket/a/..", "`..` segments"),
        (f"s3://bucket/{'k' * 1100}", "at most 1093 characters"),
    ],
)
def test_invalid_uris_are_refused_naming_the_field(uri: str, says: str) -> None:
    with pytest.raises(ValidationError) as caught:
        S3Location.model_validate({"uri": uri})
    errors = caught.value.errors()
    assert [e["loc"] for e in errors] == [("uri",)]
    assert says in errors[0]["msg"]
    with pytest.raises(ValueError, match=r"s3://|`\.\.`"):
        S3Path.parse(uri)


def test_the_uri_pattern_is_re2_safe_and_anchored() -> None:
    # The API server evaluates the pattern with RE2: no look-arounds or back-references.
    assert S3_URI.startswith("^")
    assert S3_URI.endswith("$")
    assert not re.search(r"\(\?[=!<]|\\[1-9]", S3_URI)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("endpoint", "minio:9000", "should match pattern"),  # no scheme
        ("endpoint", "http://minio:9000/bucket", "should match pattern"),  # no path
        ("endpoint", "ftp://minio", "should match pattern"),
        ("region", "EU_WEST", "should match pattern"),
        ("pathStyle", "sometimes", "valid boolean"),
    ],
)
def test_bad_connection_settings_name_their_field(field: str, value: str, says: str) -> None:
    with pytest.raises(ValidationError) as caught:
        S3Connection.model_validate({field: value})
    error = caught.value.errors()[0]
    assert error["loc"] == (field,)
    assert says in error["msg"]


def test_credentials_are_named_by_reference_with_the_default_keys() -> None:
    connection = S3Connection.model_validate(
        {"endpoint": "http://10.250.1.1:9000", "region": "us-east-1", "pathStyle": True,
         "credentialsSecret": {"name": "store-creds"}}
    )  # fmt: skip
    secret = connection.credentials_secret
    assert secret is not None
    assert (secret.access_key_id_key, secret.secret_access_key_key, secret.session_token_key) == (
        "accessKeyId", "secretAccessKey", "sessionToken",
    )  # fmt: skip
    assert connection.to_wire()["credentialsSecret"] == {
        "name": "store-creds", "accessKeyIdKey": "accessKeyId",
        "secretAccessKeyKey": "secretAccessKey", "sessionTokenKey": "sessionToken",
    }  # fmt: skip
    # no Secret at all: the pod's own identity applies
    assert S3Connection.model_validate({}).credentials_secret is None
    with pytest.raises(ValidationError) as caught:
        S3Connection.model_validate({"credentialsSecret": {"name": "Not_A_Name"}})
    assert caught.value.errors()[0]["loc"] == ("credentialsSecret", "name")
    with pytest.raises(ValidationError) as caught:
        S3Connection.model_validate({"credentials": {"name": "x"}})  # unknown field: refused
    assert caught.value.errors()[0]["loc"] == ("credentials",)


def test_per_object_settings_override_the_chart_defaults_field_by_field() -> None:
    chart = S3Connection(endpoint="https://s3.internal:9000", region="eu-west-1", path_style=True)
    mine = S3Connection(region="us-east-2")
    assert merged(mine, chart) == S3Connection(
        endpoint="https://s3.internal:9000", region="us-east-2", path_style=True
    )
    assert merged(None, chart) == chart
    assert merged(mine, None) == mine


def test_the_crd_schema_keeps_the_pattern_and_the_cel_rule() -> None:
    schema = S3Location.model_json_schema(by_alias=True)
    structural = crdgen.to_structural(schema, schema.get("$defs", {}))
    uri = structural["properties"]["uri"]
    assert uri["pattern"] == S3_URI
    assert uri["x-kubernetes-validations"][0]["rule"].startswith("!self.substring(5).matches(")
    connection = structural["properties"]["connection"]["properties"]
    assert set(connection) == {"endpoint", "region", "pathStyle", "credentialsSecret"}
    assert all("description" in v for v in connection.values())


def test_the_fetcher_and_the_storage_module_import_no_torch_kopf_or_kubernetes_client() -> None:
    code = (
        "import sys, loraplane_worker.fetch, loraplane_worker.storage; "
        "print(sorted({'torch', 'kopf', 'kubernetes', 'transformers'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "[]"
