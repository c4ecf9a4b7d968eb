"""`training.distributed: auto`: DDP when a whole replica of the model fits one GPU, FSDP when it does
not. `choose` is the decision, pure, from the sizes `weight_bytes` and the GPU's memory; no torch here,
so the decision is tested without a GPU (and the worker's light modules stay light)."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# A DDP replica holds the whole frozen model on each GPU, and beside it the activations, the LoRA
# weights' gradients and Adam states, and CUDA's own context. Weights up to this share of the GPU's
# memory leave the rest for those at the batch sizes LoRA runs use; beyond it, `auto` shards.
FIT_SHARE = 0.6
GIB = 1024**3
SAFETENSORS_METADATA = "__metadata__"


@dataclass(frozen=True)
class Sharding:
    """How the processes share the work, and why (for `auto`, the sizes it compared)."""

    mode: Literal["ddp", "fsdp"]
    reason: str


def choose(
    distributed: Literal["auto", "ddp", "fsdp"],
    *,
    processes: int,
    gpu_memory_bytes: int | None,
    weight_bytes: int | None,
    quantized: bool = False,
) -> Sharding:
    """`ddp` and `fsdp` as asked; `auto` from the model's weights against one GPU's memory.
    `gpu_memory_bytes` None: no GPU (accelerate shards only on GPUs, so CPU pods run DDP)."""
    if distributed != "auto":
        return Sharding(distributed, "as asked")
    if gpu_memory_bytes is None:
        return Sharding("ddp", "CPU pods run data parallel")
    if quantized:
        return Sharding("ddp", "QLoRA: each GPU holds one quantized copy")
    if processes <= 1:
        return Sharding("ddp", "one process, nothing to shard across")
    if weight_bytes is None:
        return Sharding("ddp", "the model's size is not known")
    sizes = f"{weight_bytes / GIB:.1f} GiB of weights, {gpu_memory_bytes / GIB:.1f} GiB per GPU"
    if weight_bytes <= FIT_SHARE * gpu_memory_bytes:
        return Sharding("ddp", f"{sizes}: a replica fits in {FIT_SHARE:.0%} of one")
    return Sharding(
        "fsdp", f"{sizes}: more than {FIT_SHARE:.0%} of one, sharded across {processes} processes"
    )


def safetensors_parameters(path: Path) -> int:
    """Elements of every tensor in a safetensors file, from its header alone (8 bytes of header
    length, then the JSON of names, dtypes and shapes): nothing of the weights is read."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return sum(math.prod(t["shape"]) for name, t in header.items() if name != SAFETENSORS_METADATA)


def local_parameters(model_dir: Path) -> int | None:
    """Parameters of a model folder's safetensors files (tied weights are stored once); None when the
    folder has none (a hub id, or `.bin` weights)."""
    files = sorted(model_dir.glob("*.safetensors")) if model_dir.is_dir() else []
    return sum(safetensors_parameters(f) for f in files) if files else None
