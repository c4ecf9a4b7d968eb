"""The training worker against a plain TRL script doing the same training, measured in one run.

Both variants train the same model on the same data with the same LoRA and SFTConfig settings and
seed: `baseline` is the ~20 lines of TRL's own recipe (SFTTrainer + LoraConfig, save_model);
`worker` is `loraplane_worker.train.run` with everything the worker adds (config validation,
metrics endpoint, progress callback and JSON lines, checkpoint scan, staged adapter publish,
sha256). Each variant runs in a child process of its own, so peak memory is that variant's alone
(CPU: ru_maxrss; CUDA: torch.cuda.max_memory_allocated). Variants alternate over `--repeats`
rounds and the best wall time of each is kept, which is what survives a busy machine; the process
CPU time is printed too, as it moves less than wall time when other work shares the cores
(`--threads 1` steadies it further).

    PYTHONPATH=operator:worker python bench/worker_throughput.py  # tiny model, CPU
    PYTHONPATH=operator:worker python bench/worker_throughput.py --model llama-1b  # ~1.1B Llama, bf16, CUDA

Imports only the standard library, torch, transformers, peft, trl, datasets, tokenizers and the
worker package (which needs pydantic, pyyaml and prometheus_client), and makes its model and data
in-process: no downloads, no project venv. Mid-run checkpoints are off in both variants
(save_strategy "no"), so what is compared is the training loop and the final save.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Before transformers and huggingface_hub are imported: they read these once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from datasets import load_dataset
from peft import LoraConfig
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    TrainerCallback,
)
from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]

from loraplane_worker.config import parse_config
from loraplane_worker.train import run

# fmt: off
WORDS = ["the", "a", "quiet", "bright", "patient", "small", "brave", "honest", "river", "mountain", "garden",
         "teacher", "lamp", "road", "friend", "morning", "ocean", "city", "book", "bridge", "forest", "song",
         "window", "letter", "harbor", "finds", "keeps", "builds", "carries", "remembers", "follows", "opens",
         "teaches", "changes", "and", "with", "under", "over", "before", "after", "because", "while", "every"]
# fmt: on

MODELS: dict[str, dict[str, Any]] = {
    # Shaped like loraplane's tiny test model: trains in seconds on a CPU.
    "tiny": {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "vocab_size": 4096,
    },
    # A Llama of about 1.1B parameters (TinyLlama-like widths), random weights, for a GPU.
    "llama-1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
    },
}
DEFAULTS = {
    "tiny": {"steps": 30, "batch": 8, "max_length": 128},
    "llama-1b": {"steps": 40, "batch": 8, "max_length": 1024},
}


def make_inputs(model_name: str, workdir: Path, rows: int, max_length: int, seed: int) -> tuple[Path, Path]:
    """A random-weight Llama with a locally trained tokenizer, and a jsonl of English-like text."""
    rng = random.Random(seed)

    def sentence() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 16))).capitalize() + "."

    # About max_length tokens per example, so the batches are as long as configured.
    per_example = max(1, max_length // 14)
    texts = [" ".join(sentence() for _ in range(per_example)) for _ in range(rows)]
    data = workdir / "data.jsonl"
    data.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts), encoding="utf-8")

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts[:2000], trainer)
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|pad|>", model_max_length=max_length
    )
    model_dir = workdir / "model"
    tokenizer.save_pretrained(str(model_dir))

    shape = dict(MODELS[model_name])
    # The embedding may be larger than the tokenizer's vocabulary (as in real checkpoints); never smaller.
    shape["vocab_size"] = max(shape["vocab_size"], len(tokenizer))
    config = LlamaConfig(
        **shape,
        max_position_embeddings=max(512, max_length),
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    dtype = torch.bfloat16 if model_name == "llama-1b" else torch.float32
    model = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    model.to(dtype=dtype).save_pretrained(str(model_dir))  # type: ignore[call-arg]
    return model_dir, data


def training_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The SFTConfig fields both variants share."""
    return {
        "max_steps": args.steps,
        "per_device_train_batch_size": args.batch,
        "max_length": args.max_length,
        "learning_rate": 2e-4,
        "logging_steps": 5,
        "save_strategy": "no",
        "gradient_checkpointing": False,
        "seed": 42,
        "disable_tqdm": True,
        "dataloader_pin_memory": False,
    }


LORA: dict[str, Any] = {
    "r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "target_modules": ["q_proj", "v_proj"],
}


def timing_callback() -> Any:
    class Timing(TrainerCallback):
        """Training-loop time and TRL's count of non-padding tokens, the same way in both variants."""

        def __init__(self) -> None:
            self.begin = self.end = 0.0
            self.tokens = 0.0

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.begin = time.perf_counter()

        def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.end = time.perf_counter()

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            if logs and "num_tokens" in logs:
                self.tokens = float(logs["num_tokens"])

    return Timing()


def run_baseline(args: argparse.Namespace, model_dir: Path, data: Path, out: Path, timing: Any) -> None:
    """TRL's recipe as its docs write it."""
    bf16 = args.device == "cuda" and torch.cuda.is_bf16_supported()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if bf16 else torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = load_dataset("json", data_files=str(data), split="train")
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=str(out / "checkpoints"), report_to="none", bf16=bf16, **training_settings(args)
        ),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
        callbacks=[timing],
    )
    trainer.train()
    trainer.save_model(str(out))


def run_worker(args: argparse.Namespace, model_dir: Path, data: Path, out: Path, timing: Any) -> None:
    # The worker's input is the API's TrainingSettings: its own fields, the rest under sftArgs.
    from loraplane.api.training_job import TrainingSettings  # noqa: PLC0415

    shared = training_settings(args)
    training = {k: v for k, v in shared.items() if k in TrainingSettings.model_fields}
    training["sft_args"] = {k: v for k, v in shared.items() if k not in TrainingSettings.model_fields}
    training["precision"] = "auto" if args.device == "cuda" else "fp32"
    config = parse_config(
        {
            "model": {"name_or_path": str(model_dir)},
            "dataset": {"path": str(data)},
            "lora": LORA,
            "training": training,
            "output": {"dir": str(out)},
            "metrics": {"port": 0},
        }
    )
    run(config, callbacks=[timing])


def child(args: argparse.Namespace) -> None:
    """One variant, in this process; prints one JSON line with its figures."""
    timing = timing_callback()
    out = Path(tempfile.mkdtemp(prefix=f"{args.variant}-", dir=args.workdir))
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if args.threads:
        torch.set_num_threads(args.threads)
    started, cpu_started = time.perf_counter(), time.process_time()
    variant = run_baseline if args.variant == "baseline" else run_worker
    variant(args, Path(args.model_dir), Path(args.data), out, timing)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    if args.device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    train_s = timing.end - timing.begin
    figures = {
        "variant": args.variant,
        "wall_s": wall,
        "cpu_s": cpu,
        "train_s": train_s,
        "tokens": timing.tokens,
        "tokens_per_s": timing.tokens / train_s if train_s > 0 else 0.0,
        "peak_bytes": peak,
    }
    print("BENCH " + json.dumps(figures), flush=True)


def measure(args: argparse.Namespace, variant: str, model_dir: Path, data: Path) -> dict[str, Any]:
    command = [
        sys.executable, __file__, "--child", variant, "--model", args.model, "--device", args.device,
        "--steps", str(args.steps), "--batch", str(args.batch), "--max-length", str(args.max_length),
        "--model-dir", str(model_dir), "--data", str(data), "--workdir", str(args.workdir),
        "--threads", str(args.threads),
    ]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in finished.stdout.splitlines() if line.startswith("BENCH ")]
    if finished.returncode != 0 or not lines:
        sys.stderr.write(finished.stdout[-4000:] + finished.stderr[-4000:])
        raise SystemExit(f"{variant} run failed with exit code {finished.returncode}")
    figures: dict[str, Any] = json.loads(lines[-1].removeprefix("BENCH "))
    return figures


def summary(variant: str, runs: list[dict[str, Any]]) -> dict[str, float]:
    best = min(runs, key=lambda r: r["wall_s"])
    figures = {
        "wall_s": best["wall_s"],
        "cpu_s": min(r["cpu_s"] for r in runs),
        "train_s": min(r["train_s"] for r in runs),
        "tokens_per_s": max(r["tokens_per_s"] for r in runs),
        "peak_bytes": statistics.median(r["peak_bytes"] for r in runs),
    }
    walls = ", ".join(f"{r['wall_s']:.2f}" for r in runs)
    print(
        f"{variant:<8}  wall {figures['wall_s']:7.2f} s (runs: {walls})  cpu {figures['cpu_s']:7.2f} s  "
        f"train loop {figures['train_s']:7.2f} s  tokens/s {figures['tokens_per_s']:10.1f}  "
        f"peak memory {figures['peak_bytes'] / 2**30:6.3f} GiB",
        flush=True,
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda for llama-1b, else cpu")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--max-length", type=int)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of (baseline, worker), alternating")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads per run (0: torch's default); 1 steadies shared hosts",
    )
    parser.add_argument("--child", choices=["baseline", "worker"], dest="variant", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.device = args.device or ("cuda" if args.model == "llama-1b" else "cpu")
    for key, value in DEFAULTS[args.model].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # children inherit: both variants stay on the CPU
    if args.variant:
        child(args)
        return

    with tempfile.TemporaryDirectory(prefix="loraplane-bench-") as scratch:
        args.workdir = Path(scratch)
        model_dir, data = make_inputs(
            args.model, args.workdir, args.steps * args.batch, args.max_length, seed=7
        )
        print(
            f"model {args.model} on {args.device}: {args.steps} steps x batch {args.batch} x max_length "
            f"{args.max_length}, LoRA r={LORA['r']} on {'/'.join(LORA['target_modules'])}, "
            f"{args.repeats} rounds",
            flush=True,
        )
        runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "worker": []}
        for round_index in range(args.repeats):
            # Alternate which goes first, so drift on a shared machine hits both alike.
            order = ["baseline", "worker"] if round_index % 2 == 0 else ["worker", "baseline"]
            for variant in order:
                runs[variant].append(measure(args, variant, model_dir, data))
        base = summary("baseline", runs["baseline"])
        worker = summary("worker", runs["worker"])
    print(
        f"ratio worker/baseline: wall {worker['wall_s'] / base['wall_s']:.3f}  "
        f"cpu {worker['cpu_s'] / base['cpu_s']:.3f}  "
        f"train loop {worker['train_s'] / base['train_s']:.3f}  "
        f"tokens/s {worker['tokens_per_s'] / base['tokens_per_s']:.3f}  "
        f"peak memory {worker['peak_bytes'] / base['peak_bytes']:.3f}  (target: wall and memory <= 1.05)",
        flush=True,
    )


if __name__ == "__main__":
    main()
