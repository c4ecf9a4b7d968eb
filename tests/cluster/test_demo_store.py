"""`make demo STORAGE=s3`'s own pieces against a real versitygw, with no cluster: the upload of the
tiny model and data, and the program its vLLM pods' init container runs to copy the base model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loraplane_devcluster import controlplane, demo, objectstore, tinymodel
from loraplane_devcluster.objectstore import ObjectStore
from manifests import ROOT
from storage_fixtures import unique_bucket

pytestmark = pytest.mark.cluster


def test_the_init_container_copies_the_uploaded_base_model_and_checks_it(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    bucket = unique_bucket("demo")
    files, size = demo.upload_tiny_model(object_store, bucket)
    tiny = tinymodel.ensure_tiny_model()
    assert files == len([p for p in tiny.model_dir.rglob("*") if p.is_file()]) + 1
    # The init container exactly as the Deployment has it, with the host's endpoint for the pods'.
    layout = demo.StoreLayout(bucket, object_store.endpoint, object_store.region)
    init = demo.base_model_init_container(layout, "ghcr.io/loraplane/worker:0", str(tmp_path / "model"), "/m")
    env = {e["name"]: e["value"] for e in init["env"] if "value" in e}
    env["AWS_ACCESS_KEY_ID"] = object_store.access_key_id
    env["AWS_SECRET_ACCESS_KEY"] = object_store.secret_access_key
    env["PYTHONPATH"] = os.pathsep.join(str(ROOT / p) for p in ("operator", "worker"))
    python, flag, program = init["command"]
    assert (python, flag) == ("python", "-c")
    done = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "verified" in done.stdout
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (tmp_path / "model" / name).read_bytes() == (tiny.model_dir / name).read_bytes()
    assert json.loads((tmp_path / "model" / "config.json").read_text())["num_hidden_layers"] == 2
    assert size > 0


def test_demo_down_stops_the_store_with_the_cluster(tmp_path: Path) -> None:
    """`make demo-down` is `controlplane.down` of the run directory: the demo's store is one of its
    recorded processes, so nothing of the demo keeps running."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    store = objectstore.start(run_dir, die_with_parent=True)
    assert objectstore.load(run_dir) is not None
    stopped = controlplane.down(run_dir, grace_s=5)
    assert [r.name for r in stopped if r.was_running] == [objectstore.PROCESS_NAME]
    assert objectstore.load(run_dir) is None
    assert not Path(f"/proc/{store.pid}").exists()
    makefile = (ROOT / "Makefile").read_text()
    assert "loraplane_devcluster down" in makefile.split("\ndemo-down:", 1)[1].split("\n\n", 1)[0]
