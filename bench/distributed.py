"""Tokens/s and scaling efficiency of the worker over processes and nodes, on the tiny model (CPU, gloo).

    PYTHONPATH=operator:worker:devcluster .venv/bin/python bench/distributed.py [--steps 30] [--repeats 1]

Three layouts of the real entry point (`python -m loraplane_worker`), in one run, the same config:
1. `1 process`: one worker process, no torchrun (the baseline);
2. `1 pod x 2 processes`: torchrun standalone with two processes (LORAPLANE_NPROC=2 does this in a pod);
3. `2 pods x 1 process`: two torchrun agents with c10d rendezvous, each with the options the worker
   gives torchrun in a many-node pod (`torchrun_options`), here both on this machine over loopback
   (127.0.0.1 instead of index 0's DNS name; the local cluster would add pod start-up, not training).

The per-process batch is fixed (each step of N processes covers N batches), so perfect scaling is
N times the baseline's tokens/s: efficiency = tokens/s / (N x baseline tokens/s). Tokens/s is the
worker's own progress figure (TRL's `num_tokens`, gathered over all processes), the median over the
progress lines after the first (which carries start-up). Every process gets one CPU thread
(OMP_NUM_THREADS=1, which torchrun sets anyway), so layouts differ only in how many processes share
the work. On a shared 2-core machine the figures are noisy: this reports, it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loraplane.api.worker import NNODES_ENV, NODE_INDEX_ENV, RDZV_ENDPOINT_ENV, RDZV_ID_ENV, RDZV_TIMEOUT_ENV
from loraplane_devcluster.tinymodel import ensure_tiny_model
from loraplane_worker.__main__ import torchrun_options

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def worker_args(args: argparse.Namespace, out: Path) -> list[str]:
    tiny = ensure_tiny_model()
    sets = {
        "training.max_steps": args.steps,
        "training.per_device_train_batch_size": args.batch,
        "training.max_length": args.max_length,
        "training.logging_steps": args.logging_steps,
        "training.save_steps": 10_000,  # no mid-run checkpoints: the loop is what is compared
        "training.gradient_checkpointing": "false",
        "lora.target_modules": "[q_proj, v_proj]",
        "metrics.port": 0,
    }
    argv = ["--model", str(tiny.model_dir), "--dataset-path", str(tiny.text_dataset)]
    argv += ["--output-dir", str(out)]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    return argv


def environment(scratch: Path, name: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(REPO / part) for part in ("operator", "worker", "devcluster")),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "TERMINATION_MESSAGE_PATH": str(scratch / f"{name}.termination-log"),
    }
    env.pop("LORAPLANE_NPROC", None)
    return env


def commands(layout: str, argv: list[str], scratch: Path) -> list[tuple[list[str], dict[str, str]]]:
    worker = ["-m", "loraplane_worker", *argv]
    if layout == "1 process":
        return [([sys.executable, *worker], environment(scratch, "single"))]
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    if layout == "1 pod x 2 processes":
        return [([*torchrun, *torchrun_options(2, 1, {}, "127.0.0.1"), *worker], environment(scratch, "pod"))]
    endpoint = f"127.0.0.1:{free_port()}"
    runs = []
    for index in range(2):
        env = environment(scratch, f"node{index}")
        env.update({
            NNODES_ENV: "2",
            NODE_INDEX_ENV: str(index),
            RDZV_ENDPOINT_ENV: endpoint,
            RDZV_ID_ENV: f"bench-{os.getpid()}",
            RDZV_TIMEOUT_ENV: "120",
        })  # fmt: skip
        runs.append(([*torchrun, *torchrun_options(1, 2, env, "127.0.0.1"), *worker], env))
    return runs


def run_layout(layout: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    # A fresh output folder each run: the worker would resume from the last run's final checkpoint.
    out = Path(tempfile.mkdtemp(prefix=layout.replace(" ", "-"), dir=scratch))
    started = time.perf_counter()
    children = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for command, env in commands(layout, worker_args(args, out), scratch)
    ]
    outputs = [child.communicate(timeout=900) for child in children]
    wall = time.perf_counter() - started
    for child, (_, stderr) in zip(children, outputs, strict=True):
        if child.returncode != 0:
            sys.exit(f"{layout}: a process exited {child.returncode}:\n{stderr[-3000:]}")
    events = [
        json.loads(line)
        for stdout, _ in outputs
        for line in stdout.splitlines()
        if line.startswith('{"event":"progress"')
    ]
    rates = [e["tokensPerSecond"] for e in events[1:] if e.get("tokensPerSecond")]
    if not rates:
        sys.exit(f"{layout}: no tokens/s in the worker's progress lines")
    return {"tokens_per_second": statistics.median(rates), "wall": wall}


LAYOUTS = {"1 process": 1, "1 pod x 2 processes": 2, "2 pods x 1 process": 2}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8, help="per process")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--logging-steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1, help="rounds over the layouts; the best of each")
    args = parser.parse_args()
    print(
        f"tiny model on CPU: {args.steps} steps x batch {args.batch} per process x max_length "
        f"{args.max_length}, "
        f"one thread per process, {os.cpu_count()} cores, {args.repeats} round(s)",
        flush=True,
    )
    best: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="loraplane-bench-dist-") as scratch:
        for _ in range(args.repeats):
            for layout in LAYOUTS:
                measured = run_layout(layout, args, Path(scratch))
                if layout not in best or measured["tokens_per_second"] > best[layout]["tokens_per_second"]:
                    best[layout] = measured
    baseline = best["1 process"]["tokens_per_second"]
    header = ("layout", "processes", "tokens/s", "x 1 process", "efficiency", "wall s")
    print("{:<22} {:>9} {:>10} {:>12} {:>11} {:>8}".format(*header))
    for layout, processes in LAYOUTS.items():
        rate = best[layout]["tokens_per_second"]
        print(
            f"{layout:<22} {processes:>9} {rate:>10.0f} {rate / baseline:>11.2f}x "
            f"{rate / (processes * baseline):>10.0%} {best[layout]['wall']:>8.1f}"
        )


if __name__ == "__main__":
    main()
