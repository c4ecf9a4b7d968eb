"""Fixtures for tests of the local control plane itself."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from loraplane_devcluster import controlplane
from loraplane_devcluster.testing import run_root_for_tests


@pytest.fixture
def scratch_run_dir() -> Iterator[Path]:
    """An empty run directory for a second, throw-away cluster; whatever the test left running in
    it is stopped, and the directory deleted, afterwards."""
    root = run_root_for_tests()
    root.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="test-scratch-", dir=root))
    yield run_dir
    controlplane.down(run_dir, grace_s=5)
    shutil.rmtree(run_dir, ignore_errors=True)
