"""The static-deployment option: the base model with the adapter merged in, as a full model folder.

The base model is loaded afresh, unquantized, in the training dtype, and the saved adapter applied
to it with PEFT before `merge_and_unload()`: merging into 4-bit weights would round the update
away, and loading the adapter from disk also proves the saved files load. The folder is written
under a temporary name and renamed into place, so `<dir>/merged` is either complete or absent.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from loraplane.api.worker import WorkerInput
from loraplane_worker.config import merged_dir

STAGING_MERGED = ".merged.partial"


def write_merged_model(
    config: WorkerInput, adapter_dir: Path, dtype: torch.dtype, tokenizer: PreTrainedTokenizerBase
) -> Path:
    base = AutoModelForCausalLM.from_pretrained(
        config.model.name_or_path,
        revision=config.model.revision,
        dtype=dtype,
        trust_remote_code=bool(config.training.sft_args.get("trust_remote_code", False)),
    )
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    staging = adapter_dir / STAGING_MERGED
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(str(staging))
    tokenizer.save_pretrained(str(staging))
    target = merged_dir(config)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target
