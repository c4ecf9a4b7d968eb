"""`python -m loraplane_worker --config FILE`: the training pod's entry point.

Local runs can give or override any config key with `--set section.key=value` (the value is read
as YAML: `8`, `true`, `[q_proj, v_proj]`), and three shorthands: `--model`, `--dataset-path`,
`--output-dir`. Exit codes: 0 success, 65 input error (no retry helps), 1 anything else.

With several GPUs visible the worker starts itself once per GPU under torchrun (data parallel, the
same config); the launching process collects the main process's result and exit code.

Why not TRL's `TrlParser`: it fills flat dataclasses (`SFTConfig`, `ModelConfig`, script arguments)
from flags and a flat YAML file. The worker's input is the nested `WorkerInput` model the operator
renders from the LoraTrainingJob spec; parsing it with the same pydantic models is what keeps one
contract, and their errors name the key as the spec spells it (`lora.r: Input should be less than or
equal to 512`, `training.learnigRate: unknown key; did you mean 'learning_rate'?`), where TrlParser
would stop at argparse's "unrecognized arguments" or pass a wrong type on to TRL. TRL's own names
still reach `SFTConfig` and `LoraConfig` unchanged, and `sftArgs` is checked against the real
`SFTConfig` in `train`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from loraplane.api.worker import TERMINATION_MESSAGE_PATH_ENV, FailureReport
from loraplane_worker.config import load_config
from loraplane_worker.errors import EXIT_FAILURE, EXIT_INPUT_ERROR, EXIT_SUCCESS, exit_code_for
from loraplane_worker.progress import emit
from loraplane_worker.result import failure_message, success_message, write_termination_message

# Processes per pod; default: one per visible CUDA GPU. Set it to run data parallel on CPUs (tests).
NPROC_ENV = "LORAPLANE_NPROC"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loraplane_worker",
        description="Train a LoRA adapter with TRL's SFTTrainer from a loraplane worker config.",
    )
    parser.add_argument("--config", metavar="FILE", help="YAML config (mounted from a ConfigMap)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set or override one key, e.g. --set lora.r=8 --set training.max_steps=5 (value read as YAML)",
    )
    parser.add_argument("--model", help="shorthand for --set model.nameOrPath=MODEL")
    parser.add_argument("--dataset-path", help="shorthand for --set dataset.path=PATH")
    parser.add_argument("--output-dir", help="shorthand for --set output.dir=DIR")
    return parser.parse_args(argv)


def overrides_of(args: argparse.Namespace) -> list[str]:
    """Shorthands first, then `--set` in order; shorthand values stay strings (JSON-quoted YAML)."""
    shorthands = {
        "model.nameOrPath": args.model,
        "dataset.path": args.dataset_path,
        "output.dir": args.output_dir,
    }
    quoted = [f"{key}={json.dumps(value)}" for key, value in shorthands.items() if value is not None]
    return [*quoted, *args.overrides]


def is_main_process() -> bool:
    """accelerate's notion (`train.is_main_process`) once training code is loaded; before that (a
    config error, a launcher about to start torchrun) there is only this one process."""
    train = sys.modules.get("loraplane_worker.train")
    return True if train is None else bool(train.is_main_process())


def process_count() -> int:
    if "LOCAL_RANK" in os.environ:  # already one of torchrun's processes
        return 1
    configured = os.environ.get(NPROC_ENV)
    if configured:
        return max(1, int(configured))
    import torch  # noqa: PLC0415 - only here: a config error is reported without loading torch

    return int(torch.cuda.device_count())


def report_failure(error: BaseException) -> int:
    traceback.print_exception(error, file=sys.stderr)
    message = failure_message(error)
    if is_main_process():
        write_termination_message(message)
        emit({"event": "error", **json.loads(message)})
    return exit_code_for(error)


def launch_data_parallel(argv: Sequence[str], processes: int) -> int:
    """Run this entry point under torchrun, one process per GPU, and pass on the main process's result."""
    with tempfile.TemporaryDirectory(prefix="loraplane-") as scratch:
        child_message = Path(scratch) / "termination-log"
        env = {**os.environ, TERMINATION_MESSAGE_PATH_ENV: str(child_message)}
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={processes}",
            "-m",
            "loraplane_worker",
            *argv,
        ]
        emit({"event": "launch", "processes": processes})
        returncode = subprocess.run(command, env=env, check=False).returncode
        message = child_message.read_text(encoding="utf-8") if child_message.is_file() else ""
    if returncode == EXIT_SUCCESS and message:
        write_termination_message(message)
        return EXIT_SUCCESS
    try:
        input_error = FailureReport.model_validate_json(message).input_error
    except ValidationError:
        message = failure_message(RuntimeError(f"torchrun exited with {returncode} and no result"))
        input_error = False
    write_termination_message(message)
    return EXIT_INPUT_ERROR if input_error else EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        config = load_config(args.config, overrides_of(args))
        processes = process_count()
        if processes > 1:
            return launch_data_parallel(argv, processes)
        from loraplane_worker.train import run  # noqa: PLC0415 - torch, TRL: after the config is known good

        result = run(config)
    except Exception as error:  # every failure becomes a termination message and an exit code
        return report_failure(error)
    if result is not None:  # None: a non-main process of a data-parallel run
        message = success_message(result)
        write_termination_message(message)
        emit({"event": "result", **json.loads(message)})
    return EXIT_SUCCESS


if __name__ == "__main__":
    sys.exit(main())
