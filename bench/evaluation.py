"""What the base + final evaluation costs a training run, measured in one run.

    PYTHONPATH=operator:worker:devcluster .venv/bin/python bench/evaluation.py [--steps 30] [--repeats 3]

Both variants are `loraplane_worker.train.run` on the tiny model (CPU, fp32) with the same LoRA and
SFTConfig settings, steps and batch size: `without` has no eval data; `with` holds out
`--eval-fraction` of the quotes and so runs `Trainer.evaluate()` twice (the base model with the
adapter disabled, then the adapter), plus the split and the digest of the eval examples. Periodic
evaluation during training is off in both (`eval_steps` beyond the last step), so the difference is
the base + final evaluation alone. (`with` trains on 90% of the examples, `without` on all of them;
with a fixed step count and batch that is the same work per step.) Variants alternate over
`--repeats` rounds after one warm-up run, and the best wall time of each is kept.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from loraplane_devcluster.tinymodel import TinyModel, ensure_tiny_model
from loraplane_worker.config import parse_config
from loraplane_worker.train import run


def document(tiny: TinyModel, out_dir: Path, steps: int, eval_fraction: float | None) -> dict[str, Any]:
    dataset: dict[str, Any] = {"path": str(tiny.text_dataset)}
    if eval_fraction is not None:
        dataset["eval_fraction"] = eval_fraction
    return {
        "model": {"name_or_path": str(tiny.model_dir)},
        "dataset": dataset,
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "training": {
            "max_steps": steps,
            "per_device_train_batch_size": 8,
            "max_length": 64,
            "logging_steps": 10,
            "save_steps": 10 * steps,  # no mid-run checkpoints
            "eval_steps": 10 * steps,  # no periodic evaluation: only the base and the final one
            "precision": "fp32",
            "gradient_checkpointing": False,
        },
        "output": {"dir": str(out_dir)},
        "metrics": {"port": 0},
    }


def timed(tiny: TinyModel, steps: int, eval_fraction: float | None) -> tuple[float, Any]:
    with tempfile.TemporaryDirectory(prefix="loraplane-bench-eval-") as out:
        config = parse_config(document(tiny, Path(out), steps, eval_fraction))
        start = time.perf_counter()
        report = run(config)
        return time.perf_counter() - start, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-fraction", type=float, default=0.1)
    args = parser.parse_args()
    tiny = ensure_tiny_model()
    timed(tiny, 2, args.eval_fraction)  # warm-up: imports, first model load, dataset cache
    runs: dict[str, list[float]] = {"without": [], "with": []}
    evaluation = None
    for _ in range(args.repeats):
        wall, _report = timed(tiny, args.steps, None)
        runs["without"].append(wall)
        wall, report = timed(tiny, args.steps, args.eval_fraction)
        runs["with"].append(wall)
        evaluation = report.evaluation if report else None
    for name, walls in runs.items():
        listed = ", ".join(f"{w:.2f}" for w in walls)
        print(f"{name:8} evaluation  wall {min(walls):7.2f} s (runs: {listed})")
    if evaluation is not None:
        print(
            f"eval data: {evaluation.examples} examples; base loss {evaluation.base_loss:.4f}, "
            f"adapter loss {evaluation.loss:.4f}"
        )
    print(f"ratio with/without: wall {min(runs['with']) / min(runs['without']):.3f}")


if __name__ == "__main__":
    main()
