"""`python -m loraplane_worker --config FILE`: the training pod's entry point.

Local runs can give or override any config key with `--set section.key=value` (the value is read
as YAML: `8`, `true`, `[q_proj, v_proj]`), and three shorthands: `--model`, `--dataset-path`,
`--output-dir`. Exit codes: 0 success, 65 input error (no retry helps), 1 anything else.

With several GPUs visible the worker starts itself once per GPU under torchrun (data parallel, the
same config); the launching process collects the main process's result and exit code. In a
multi-node run (LORAPLANE_NNODES > 1, one pod per node of an Indexed Job) torchrun meets the other
pods through c10d rendezvous at index 0's DNS name, within LORAPLANE_RDZV_TIMEOUT_SECONDS; when they
do not all come, the pod exits 69 with a `RendezvousTimeout` report.

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
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from loraplane.api.worker import (
    NNODES_ENV,
    NODE_INDEX_ENV,
    POD_FQDN_ENV,
    RDZV_ENDPOINT_ENV,
    RDZV_ID_ENV,
    RDZV_TIMEOUT_ENV,
    RENDEZVOUS_TIMEOUT_ERROR,
    RENDEZVOUS_TIMEOUT_EXIT_CODE,
    TERMINATION_MESSAGE_PATH_ENV,
    FailureReport,
)
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


def node_count() -> int:
    if "LOCAL_RANK" in os.environ:
        return 1
    return max(1, int(os.environ.get(NNODES_ENV) or 1))


class RendezvousTimeoutError(Exception):
    """The nodes of a multi-node run did not all meet in time."""


def torchrun_options(processes: int, nodes: int, env: Mapping[str, str], local_host: str) -> list[str]:
    """torchrun's own options: standalone in one pod; across pods, c10d rendezvous at index 0, which
    hosts the store (`is_host`) and, named first (`--local-addr` sorts ranks by address), holds rank 0."""
    if nodes <= 1:
        return ["--standalone", f"--nproc-per-node={processes}"]
    index = int(env.get(NODE_INDEX_ENV, "0"))
    timeout = int(env.get(RDZV_TIMEOUT_ENV, "600"))
    return [
        f"--nnodes={nodes}",
        f"--nproc-per-node={processes}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={env[RDZV_ENDPOINT_ENV]}",
        f"--rdzv-id={env.get(RDZV_ID_ENV, 'loraplane')}",
        f"--rdzv-conf=join_timeout={timeout},read_timeout={timeout},is_host={str(index == 0).lower()}",
        f"--local-addr={local_host}",
        "--max-restarts=0",  # a failed process fails the pod; the Job restarts the group
    ]


def wait_for_name(endpoint: str, deadline: float) -> None:
    """Index 0's DNS record exists only once its pod does: resolve until it does, or time out."""
    host = endpoint.rsplit(":", 1)[0]
    while True:
        try:
            socket.getaddrinfo(host, None)
            return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise RendezvousTimeoutError(f"{host} did not resolve ({error})") from error
            time.sleep(1)


def _tee(stream: Any, sink: Any, seen: list[str]) -> None:
    for line in iter(stream.readline, ""):
        sink.write(line)
        sink.flush()
        if "RendezvousTimeoutError" in line:
            seen.append(line.strip())


def run_watching_rendezvous(command: list[str], env: dict[str, str], seen: list[str]) -> int:
    """Run torchrun with its stderr passed through; a rendezvous timeout is recognised there by its
    exception's name (torchrun exits 1 for every failure of its own)."""
    child = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    tee = threading.Thread(target=_tee, args=(child.stderr, sys.stderr, seen), daemon=True)
    tee.start()
    returncode = child.wait()
    tee.join()
    return returncode


def report_failure(error: BaseException) -> int:
    traceback.print_exception(error, file=sys.stderr)
    message = failure_message(error)
    if is_main_process():
        write_termination_message(message)
        emit({"event": "error", **json.loads(message)})
    return exit_code_for(error)


def rendezvous_failure(nodes: int, env: Mapping[str, str], why: str) -> int:
    timeout = env.get(RDZV_TIMEOUT_ENV, "600")
    message = (
        f"the {nodes} nodes did not all join the rendezvous at {env.get(RDZV_ENDPOINT_ENV)} within "
        f"{timeout}s ({why}); check that every pod of the Job can be scheduled"
    )
    report = FailureReport(error=RENDEZVOUS_TIMEOUT_ERROR, message=message)
    write_termination_message(report.model_dump_json(by_alias=True))
    emit({"event": "error", "error": RENDEZVOUS_TIMEOUT_ERROR, "message": message})
    return RENDEZVOUS_TIMEOUT_EXIT_CODE


def launch_data_parallel(argv: Sequence[str], processes: int, nodes: int = 1) -> int:
    """Run this entry point under torchrun, one process per GPU (on each node), and pass on the main
    process's result. On a node without the main process a clean exit with no result is success."""
    env_now = dict(os.environ)
    index = int(env_now.get(NODE_INDEX_ENV, "0"))
    if nodes > 1 and index > 0:
        deadline = time.monotonic() + int(env_now.get(RDZV_TIMEOUT_ENV, "600"))
        try:
            wait_for_name(env_now[RDZV_ENDPOINT_ENV], deadline)
        except RendezvousTimeoutError as error:
            return rendezvous_failure(nodes, env_now, str(error))
    local_host = socket.gethostname() + env_now.get(POD_FQDN_ENV, "")
    with tempfile.TemporaryDirectory(prefix="loraplane-") as scratch:
        child_message = Path(scratch) / "termination-log"
        env = {**env_now, TERMINATION_MESSAGE_PATH_ENV: str(child_message)}
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            *torchrun_options(processes, nodes, env_now, local_host),
            "-m",
            "loraplane_worker",
            *argv,
        ]
        emit({"event": "launch", "processes": processes, "nodes": nodes, "node": index})
        seen: list[str] = []
        if nodes == 1:
            returncode = subprocess.run(command, env=env, check=False).returncode
        else:
            returncode = run_watching_rendezvous(command, env, seen)
        message = child_message.read_text(encoding="utf-8") if child_message.is_file() else ""
    if returncode == EXIT_SUCCESS and message:
        write_termination_message(message)
        return EXIT_SUCCESS
    if returncode == EXIT_SUCCESS and nodes > 1:
        return EXIT_SUCCESS  # rank 0 (and the result) is on another node
    if seen and not message:
        return rendezvous_failure(nodes, env_now, seen[-1][:300])
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
        processes, nodes = process_count(), node_count()
        if processes > 1 or nodes > 1:
            return launch_data_parallel(argv, max(1, processes), nodes)
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
