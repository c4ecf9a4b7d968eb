"""`training.distributed: auto` decided by the worker: the model's weights against one GPU's memory
(sharding.choose, pure), the parameter count read from safetensors headers or built from the config
on the meta device, and the decision carried into SFTConfig. No GPU here: the GPU side of
decide_sharding (torch.cuda.get_device_properties) is not exercised by these tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from loraplane.api.worker import WorkerInput
from loraplane_worker import sharding
from loraplane_worker.sharding import FIT_SHARE, GIB, choose

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_asked_for_modes_are_kept_whatever_the_sizes() -> None:
    for mode in ("ddp", "fsdp"):
        chosen = choose(mode, processes=8, gpu_memory_bytes=80 * GIB, weight_bytes=200 * GIB)
        assert (chosen.mode, chosen.reason) == (mode, "as asked")


def test_auto_on_cpus_is_data_parallel() -> None:
    chosen = choose("auto", processes=4, gpu_memory_bytes=None, weight_bytes=200 * GIB)
    assert (chosen.mode, chosen.reason) == ("ddp", "CPU pods run data parallel")


def test_auto_shards_only_a_model_whose_replica_does_not_fit_one_gpu() -> None:
    gpu = 80 * GIB
    fits = choose("auto", processes=8, gpu_memory_bytes=gpu, weight_bytes=int(FIT_SHARE * gpu))
    assert fits.mode == "ddp"
    assert fits.reason == "48.0 GiB of weights, 80.0 GiB per GPU: a replica fits in 60% of one"
    too_big = choose("auto", processes=8, gpu_memory_bytes=gpu, weight_bytes=int(FIT_SHARE * gpu) + 1)
    assert too_big.mode == "fsdp"
    assert too_big.reason == (
        "48.0 GiB of weights, 80.0 GiB per GPU: more than 60% of one, sharded across 8 processes"
    )
    # An 8B model in bf16 (16 GB) replicates on a 24 GiB card? No: 60% of it is 14.4 GiB.
    assert choose("auto", processes=2, gpu_memory_bytes=24 * GIB, weight_bytes=16 * 10**9).mode == "fsdp"
    assert choose("auto", processes=2, gpu_memory_bytes=80 * GIB, weight_bytes=16 * 10**9).mode == "ddp"


def test_auto_keeps_ddp_where_sharding_cannot_help_or_the_size_is_unknown() -> None:
    big, gpu = 200 * GIB, 80 * GIB
    assert choose("auto", processes=1, gpu_memory_bytes=gpu, weight_bytes=big).reason == (
        "one process, nothing to shard across"
    )
    quantized = choose("auto", processes=4, gpu_memory_bytes=gpu, weight_bytes=big, quantized=True)
    assert quantized == sharding.Sharding("ddp", "QLoRA: each GPU holds one quantized copy")
    assert choose("auto", processes=4, gpu_memory_bytes=gpu, weight_bytes=None).reason == (
        "the model's size is not known"
    )


@pytest.fixture(scope="module")
def tiny_parameters() -> tuple[Path, int]:
    """The tiny Llama's folder and its parameter count as transformers loads it."""
    from transformers import AutoModelForCausalLM  # noqa: PLC0415 - torch

    from loraplane_devcluster.tinymodel import ensure_tiny_model  # noqa: PLC0415

    model_dir = ensure_tiny_model().model_dir
    loaded = AutoModelForCausalLM.from_pretrained(model_dir)
    return model_dir, sum(p.numel() for p in loaded.parameters())


def test_safetensors_headers_count_the_parameters_transformers_loads(
    tiny_parameters: tuple[Path, int],
) -> None:
    model_dir, loaded = tiny_parameters
    assert sharding.local_parameters(model_dir) == loaded


def test_without_safetensors_the_config_on_the_meta_device_counts_them(
    tiny_parameters: tuple[Path, int], tmp_path: Path
) -> None:
    from loraplane_worker.train import model_parameters  # noqa: PLC0415 - torch

    model_dir, loaded = tiny_parameters
    shutil.copy(model_dir / "config.json", tmp_path / "config.json")
    assert sharding.local_parameters(tmp_path) is None
    config = WorkerInput.model_validate(
        {"model": {"nameOrPath": str(tmp_path)}, "dataset": {"path": "/d.jsonl"}, "output": {"dir": "/o"}}
    )
    assert model_parameters(config) == loaded


def test_the_decision_reaches_sftconfig_and_cpu_pods_decide_ddp() -> None:
    from loraplane_worker.train import build_sft_config, decide_sharding  # noqa: PLC0415 - torch

    document = {"model": {"nameOrPath": "m"}, "dataset": {"path": "/d.jsonl"}, "output": {"dir": "/o"}}
    config = WorkerInput.model_validate(document)
    assert config.training.distributed == "auto"
    assert decide_sharding(config, "fp32", cuda=False) == sharding.Sharding(
        "ddp", "CPU pods run data parallel"
    )
    assert not build_sft_config(config, "fp32", has_eval=False, cuda=False, distributed="ddp").fsdp
    decided = build_sft_config(config, "fp32", has_eval=False, cuda=False, distributed="fsdp")
    assert decided.fsdp_plugin_args is not None
    assert decided.fsdp_plugin_args["fsdp_version"] == 2
