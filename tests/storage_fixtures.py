"""Fixtures for tests that need a real S3-compatible store: versitygw, built from the Go module
proxy (devcluster/build-s3.sh) and run on a loopback address of its own. Loaded as a pytest plugin
(`-p storage_fixtures` in pyproject), beside the cluster fixtures.

``object_store`` needs no cluster: tests of the storage code use it. ``cluster_object_store`` also
listens on the host end of the session cluster's pod network, so pods reach it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from loraplane.api.storage import S3Connection, S3Path
from loraplane_devcluster import objectstore
from loraplane_devcluster.objectstore import ObjectStore
from loraplane_devcluster.testing import Kube


def unique_bucket(hint: str) -> str:
    return f"{hint[:40]}-{secrets.token_hex(4)}"


def credentials_env(store: ObjectStore) -> dict[str, str]:
    """What a pod gets from the credentials Secret, as the standard variables."""
    return {"AWS_ACCESS_KEY_ID": store.access_key_id, "AWS_SECRET_ACCESS_KEY": store.secret_access_key}


def connection(store: ObjectStore) -> S3Connection:
    return S3Connection(endpoint=store.endpoint, region=store.region, path_style=True)


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    run_dir = tmp_path_factory.mktemp("objectstore")
    store = objectstore.start(run_dir, die_with_parent=True)
    yield store
    objectstore.stop(run_dir)


@pytest.fixture
def bucket(object_store: ObjectStore) -> S3Path:
    """A fresh bucket of the test's own, as an s3:// location."""
    name = unique_bucket("test")
    objectstore.create_bucket(object_store, name)
    return S3Path(name, "")


@pytest.fixture(scope="session")
def cluster_object_store(kube: Kube) -> Iterator[ObjectStore]:
    """A store in the session cluster's run directory that pods reach at ``pod_endpoint``."""
    if kube.run_dir is None:
        pytest.skip("the store runs beside a local cluster only")
    address = objectstore.pod_network_host_address(kube.run_dir)
    if address is None:
        pytest.skip("the local cluster has no node agent, so no pod network")
    store = objectstore.start(Path(kube.run_dir), pod_address=address, die_with_parent=True)
    yield store
    objectstore.stop(Path(kube.run_dir))
