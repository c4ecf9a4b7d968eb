"""Fixtures for the end-to-end tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loraplane_devcluster.tinymodel import ensure_tiny_model
from manifests import ROOT

TINY_ADAPTER_RANK = 16


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter for the tiny Llama (rank 16, q_proj/v_proj, served name `tiny-llama` as its
    base), trained once per session by the real worker for a few steps (about 10 s). Tests copy the
    folder into their own volume."""
    tiny = ensure_tiny_model()
    out = tmp_path_factory.mktemp("tiny-adapter") / "adapter"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("operator", "worker", "devcluster")),
    }
    settings = {
        "lora.r": TINY_ADAPTER_RANK,
        "lora.lora_alpha": 2 * TINY_ADAPTER_RANK,
        "lora.lora_dropout": 0.0,
        "lora.target_modules": "[q_proj, v_proj]",
        "training.max_steps": 4,
        "training.per_device_train_batch_size": 4,
        "training.max_length": 64,
        "training.gradient_checkpointing": "false",
        "output.base_model_name": "tiny-llama",
        "metrics.port": 0,
    }
    argv = [sys.executable, "-m", "loraplane_worker", "--model", str(tiny.model_dir),
            "--dataset-path", str(tiny.text_dataset), "--output-dir", str(out)]  # fmt: skip
    for key, value in settings.items():
        argv += ["--set", f"{key}={value}"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((out / "adapter_config.json").read_text())["r"] == TINY_ADAPTER_RANK
    return out
