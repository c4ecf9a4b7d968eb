"""``python -m loraplane_devcluster.nodeagent --kubeconfig K --run-dir D``: the agent, in the foreground."""

from __future__ import annotations

import argparse
import ctypes
import logging
import signal
from dataclasses import replace
from pathlib import Path

from loraplane_devcluster.nodeagent.agent import run_agent
from loraplane_devcluster.nodeagent.config import AgentConfig

PR_SET_PDEATHSIG = 1


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loraplane_devcluster.nodeagent", description=__doc__)
    parser.add_argument("--kubeconfig", type=Path, required=True, help="admin kubeconfig of the cluster")
    parser.add_argument(
        "--run-dir", type=Path, required=True, help="folder for pod files and logs (run_dir/pods)"
    )
    parser.add_argument("--node-name", help="Node name (default: $LORAPLANE_NODE_NAME or loraplane-dev)")
    parser.add_argument(
        "--gpus", type=int, help="how many GPUs to advertise (default: $LORAPLANE_NODE_GPUS or 2)"
    )
    parser.add_argument("--backoff-seconds", type=float, help="first crash-loop back-off (default 10)")
    parser.add_argument("--image-map", type=Path, help="extra image map file (JSON or YAML)")
    parser.add_argument(
        "--die-with-parent", action="store_true", help="stop (SIGTERM) when the parent process dies"
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.die_with_parent:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    config = AgentConfig.from_env(args.kubeconfig.resolve(), args.run_dir.resolve())
    overrides = {
        "node_name": args.node_name,
        "gpus": args.gpus,
        "backoff_base_s": args.backoff_seconds,
        "image_map_file": args.image_map,
    }
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    run_agent(config)


if __name__ == "__main__":
    main()
