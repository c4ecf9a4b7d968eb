"""Store → local cache, against a plain local copy, for a tiny adapter and a ~90 MB one.

    PYTHONPATH=operator:worker:devcluster:tests .venv/bin/python bench/storage.py [--repeat 3]

Starts versitygw (the real S3 server the tests use, on a loopback address) in a temporary run
directory and uploads two adapters with the worker's `upload_adapter`:

* tiny: the shapes of a rank-8 q/v adapter of the tiny test model (a few KB);
* large: a rank-64 all-linear adapter of a 1B-shaped config (Llama-3.2-1B: hidden 2048,
  intermediate 8192, 16 layers, 8 KV heads of 64), random fp16 weights, about 90 MB.

Then, for each, the median over `--repeat` runs of:

* fetch: the serving fetcher's path (`Cache.fetch`): download every file, check each against the
  manifest and the weights against the pinned digest, rename into the cache and link;
* copy: the baseline, `shutil.copytree` of the same folder on local disk (what a pod reading from a
  claim on local storage pays at least), plus copy+sha256 (the same copy with the digest check).

It prints seconds and MB/s and the fetch time as a ratio of each baseline. The page cache is warm
for both: this measures the store's protocol and the client's cost, not the disk.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from loraplane.api.storage import S3Connection, S3Path
from loraplane_devcluster import objectstore
from loraplane_worker.fetch import Cache, WantedAdapter
from loraplane_worker.storage import ADAPTER_WEIGHTS, ObjectStore

# (name, in_features, out_features) of each linear layer in one decoder block.
TINY_LAYERS, TINY_HIDDEN = 2, 64
LARGE_LAYERS, HIDDEN, INTERMEDIATE, KV = 16, 2048, 8192, 512
LARGE_MODULES = [
    ("q_proj", HIDDEN, HIDDEN),
    ("k_proj", HIDDEN, KV),
    ("v_proj", HIDDEN, KV),
    ("o_proj", HIDDEN, HIDDEN),
    ("gate_proj", HIDDEN, INTERMEDIATE),
    ("up_proj", HIDDEN, INTERMEDIATE),
    ("down_proj", INTERMEDIATE, HIDDEN),
]
TINY_MODULES = [("q_proj", TINY_HIDDEN, TINY_HIDDEN), ("v_proj", TINY_HIDDEN, TINY_HIDDEN)]


def write_adapter(folder: Path, layers: int, modules: list[tuple[str, int, int]], rank: int) -> int:
    rng = np.random.default_rng(0)
    tensors = {}
    for layer in range(layers):
        for name, fan_in, fan_out in modules:
            kind = "mlp" if name in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            base = f"base_model.model.model.layers.{layer}.{kind}.{name}"
            tensors[f"{base}.lora_A.weight"] = rng.standard_normal((rank, fan_in), dtype=np.float32).astype(
                np.float16
            )
            tensors[f"{base}.lora_B.weight"] = rng.standard_normal((fan_out, rank), dtype=np.float32).astype(
                np.float16
            )
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / ADAPTER_WEIGHTS))
    targets = sorted({name for name, _, _ in modules})
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": targets}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return sum(p.stat().st_size for p in folder.iterdir())


def median_s(action: Callable[[int], object], repeat: int) -> float:
    times = []
    for attempt in range(repeat):
        began = time.perf_counter()
        action(attempt)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def copy(source: Path, target: Path, *, check: bool = False) -> None:
    """The baseline: a local copy, and with ``check`` the SHA-256 of every file copied."""
    shutil.copytree(source, target)
    if not check:
        return
    for path in sorted(target.iterdir()):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    run_dir = work / "run"
    run_dir.mkdir()
    try:
        store_process = objectstore.start(run_dir, buckets=["bench"], die_with_parent=True)
        env = {
            "AWS_ACCESS_KEY_ID": store_process.access_key_id,
            "AWS_SECRET_ACCESS_KEY": store_process.secret_access_key,
        }
        os.environ.update(env)
        connection = S3Connection(
            endpoint=store_process.endpoint, region=store_process.region, path_style=True
        )
        store = ObjectStore(connection)
        adapters = {
            "tiny": write_adapter(work / "src" / "tiny", TINY_LAYERS, TINY_MODULES, 8),
            "large": write_adapter(work / "src" / "large", LARGE_LAYERS, LARGE_MODULES, 64),
        }
        print(f"versitygw {store_process.endpoint}, median of {args.repeat} runs, warm page cache\n")
        columns = ("adapter", "MB", "upload s", "fetch s", "fetch MB/s", "copy s", "copy MB/s", "copy+sha s")
        print("  ".join(f"{c:>10}" for c in (*columns, "fetch/copy", "fetch/copy+sha")))
        for name, size in adapters.items():
            source = work / "src" / name
            location = S3Path("bench", f"adapters/{name}")
            began = time.perf_counter()
            manifest = store.upload_adapter(source, location)
            upload_s = time.perf_counter() - began
            assert manifest.sha256 is not None
            wanted = WantedAdapter(name=name, uri=location.uri, sha256=manifest.sha256)
            # a fresh target each run: a cache hit would measure nothing
            fetch_s = median_s(
                lambda n, w=wanted: Cache(work / f"cache-{w.name}-{n}").fetch(store, w), args.repeat
            )
            copy_s = median_s(lambda n, src=source: copy(src, work / f"copy-{src.name}-{n}"), args.repeat)
            copy_sha_s = median_s(
                lambda n, src=source: copy(src, work / f"copysha-{src.name}-{n}", check=True), args.repeat
            )
            mb = size / 1e6
            row = (
                name,
                f"{mb:.2f}",
                f"{upload_s:.3f}",
                f"{fetch_s:.3f}",
                f"{mb / fetch_s:.1f}",
                f"{copy_s:.4f}",
            )
            row += (
                f"{mb / copy_s:.1f}",
                f"{copy_sha_s:.4f}",
                f"{fetch_s / copy_s:.1f}",
                f"{fetch_s / copy_sha_s:.1f}",
            )
            print("  ".join(f"{c:>10}" for c in row))
    finally:
        objectstore.stop(run_dir)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
