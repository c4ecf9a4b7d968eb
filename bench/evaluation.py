"""What the base + final evaluation costs a training run, measured in one run.

    PYTHONPATH=operator:worker:devcluster .venv/bin/python bench/evaluation.py [--steps 30] [--repeats 3]

Both variants are `loraplane_worker.train.run` on the tiny model (CPU, fp32) with the same LoRA and
SFTConfig settings, steps and batch size: `without` has no eval data; `with` holds out
`--eval-fraction` of the quotes and so runs `Trainer.evaluate()` twice (the base model with the
adapter disabled, then the adapter), plus the split and the digest of the eval examples. Periodic
evaluation during training is off in both (`eval_steps` beyond the last step), so the difference is
the base + final evaluation alone. (`with` trains on 90% of the examples, `without` on all of them;
with a fixed step count and batch that is the same work per step.) Variants alternate over
`--repeats` rounds after one warm-up run, and the best wall time of each is kept. On a host shared
with other work single runs spread widely, so the time `Trainer.evaluate()` itself reports
(`eval_runtime`, read by a callback) is printed too, as a share of its run: that figure moves less.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from transformers import TrainerCallback

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


class EvalTime(TrainerCallback):  # type: ignore[misc]
    """Adds up the `eval_runtime` transformers measures for each `evaluate()`."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **_: Any) -> None:
        self.seconds += float((metrics or {}).get("eval_runtime", 0.0))


def timed(tiny: TinyModel, steps: int, eval_fraction: float | None) -> tuple[float, float, Any]:
    """Wall seconds of the whole run, seconds inside evaluate(), the report."""
    with tempfile.TemporaryDirectory(prefix="loraplane-bench-eval-") as out:
        config = parse_config(document(tiny, Path(out), steps, eval_fraction))
        evaluating = EvalTime()
        start = time.perf_counter()
        report = run(config, callbacks=[evaluating])
        return time.perf_counter() - start, evaluating.seconds, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-fraction", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 steadies a busy host)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tiny = ensure_tiny_model()
    timed(tiny, 2, args.eval_fraction)  # warm-up: imports, first model load, dataset cache
    runs: dict[str, list[float]] = {"without": [], "with": []}
    shares: list[float] = []
    evaluation = None
    for _ in range(args.repeats):
        wall, _seconds, _report = timed(tiny, args.steps, None)
        runs["without"].append(wall)
        wall, seconds, report = timed(tiny, args.steps, args.eval_fraction)
        runs["with"].append(wall)
        shares.append(seconds / wall)
        evaluation = report.evaluation if report else None
    for name, walls in runs.items():
        listed = ", ".join(f"{w:.2f}" for w in walls)
        print(f"{name:8} evaluation  wall {min(walls):7.2f} s (runs: {listed})")
    if evaluation is not None:
        print(
            f"eval data: {evaluation.examples} examples, {args.steps} steps x batch 8; base loss "
            f"{evaluation.base_loss:.4f}, adapter loss {evaluation.loss:.4f} ({evaluation.digest})"
        )
    print(f"ratio with/without: wall {min(runs['with']) / min(runs['without']):.3f}")
    print(
        f"inside the runs with evaluation, evaluate() took {statistics.median(shares):.1%} of the wall "
        f"time (median; runs: {', '.join(f'{s:.1%}' for s in shares)})"
    )


if __name__ == "__main__":
    main()
