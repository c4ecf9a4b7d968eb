"""``python -m loraplane_devcluster up|down|status|env``."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from loraplane_devcluster import binaries, controlplane, processes


def _report(message: str) -> None:
    print(f"[devcluster] {message}", file=sys.stderr, flush=True)


def _env_lines(run_dir: Path) -> list[str]:
    layout = controlplane.Layout(run_dir.resolve())
    lines = [f"export KUBECONFIG={shlex.quote(str(layout.kubeconfig))}"]
    bin_dir = controlplane._read_state(layout).get("bin_dir")
    if bin_dir:
        lines.append(f'export PATH={shlex.quote(bin_dir)}:"$PATH"')
    return lines


def cmd_up(args: argparse.Namespace) -> int:
    try:
        cluster = controlplane.up(
            args.run_dir,
            bin_dir=args.bin_dir,
            node=not args.no_node,
            cluster_services=not args.no_services,
            timeout_s=args.timeout,
            report=_report,
        )
    except (controlplane.ControlPlaneError, binaries.BinariesError) as error:
        _report(f"up failed: {error}")
        return 1
    if not cluster.reused:
        breakdown = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in cluster.timings.items())
        _report(f"timings: {breakdown}")
    _report("to use it:")
    for line in _env_lines(cluster.run_dir):
        print(line)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    try:
        results = controlplane.down(args.run_dir, grace_s=args.grace, purge=args.purge)
    except controlplane.ControlPlaneError as error:
        _report(f"down failed: {error}")
        return 1
    for result in results:
        if result.was_running:
            how = "SIGKILL" if result.killed else "SIGTERM"
            _report(f"stopped {result.name} (pid {result.pid}) with {how} in {result.seconds:.1f} s")
    if not any(r.was_running for r in results):
        _report("nothing was running")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = controlplane.status(args.run_dir)
    print(f"run dir:  {state.run_dir}")
    print(f"server:   {state.server or '-'}  ({'ready' if state.ready else 'not ready'})")
    print(f"nodes:    {', '.join(state.ready_nodes) or '-'}")
    for component in state.components:
        alive = "running" if component.alive else "GONE"
        print(f"  {component.name:<24} pid {component.pid:<8} {alive:<8} {component.log or ''}")
    return 0 if state.ready and all(c.alive for c in state.components) else 1


def cmd_env(args: argparse.Namespace) -> int:
    run_dir = args.run_dir or controlplane.default_run_dir()
    records = processes.read_records(run_dir)
    if not records or not all(processes.is_alive(r) for r in records):
        _report(f"no running cluster in {run_dir} (start one with: python -m loraplane_devcluster up)")
    for line in _env_lines(run_dir):
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loraplane_devcluster",
        description="The local Kubernetes control plane for loraplane's tests and demo (127.0.0.1 only).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def with_run_dir(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument(
            "--run-dir",
            type=Path,
            default=None,
            help="run directory (default: $LORAPLANE_RUN_DIR or ~/.cache/loraplane/run/cluster)",
        )
        return sub

    up = with_run_dir(commands.add_parser("up", help="start (or reuse) the control plane"))
    up.add_argument("--no-node", action="store_true", help="do not start the node agent")
    up.add_argument(
        "--no-services", action="store_true", help="do not start kube-proxy and CoreDNS (Services, DNS)"
    )
    up.add_argument("--bin-dir", type=Path, default=None, help="binaries folder (default: build-binaries.sh)")
    up.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for each component")
    up.set_defaults(func=cmd_up)

    down = with_run_dir(commands.add_parser("down", help="stop every process of the run directory"))
    down.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    down.add_argument("--purge", action="store_true", help="also delete the run directory (data, PKI, logs)")
    down.set_defaults(func=cmd_down)

    with_run_dir(commands.add_parser("status", help="show the processes and readiness")).set_defaults(
        func=cmd_status
    )
    with_run_dir(commands.add_parser("env", help="print `export KUBECONFIG=...` for eval")).set_defaults(
        func=cmd_env
    )
    demo = with_run_dir(commands.add_parser("demo", help="install, train and serve an adapter end to end"))
    demo.add_argument("--namespace", default="demo", help="namespace for the demo's objects")
    demo.add_argument(
        "--existing-cluster",
        action="store_true",
        help="run the same steps on the cluster of the current KUBECONFIG context, with the real images",
    )
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a chart value for --existing-cluster (e.g. the images you built)")  # fmt: skip
    demo.add_argument("--storage", choices=("volume", "s3"), default="volume",
                      help="s3: keep the model, data and adapters in an object store, no claim")  # fmt: skip
    demo.set_defaults(func=cmd_demo)
    return parser


def cmd_demo(args: argparse.Namespace) -> int:
    from loraplane_devcluster import demo  # noqa: PLC0415 - needs the kubernetes client; the rest does not

    argv = ["--namespace", args.namespace] + (["--run-dir", str(args.run_dir)] if args.run_dir else [])
    argv += ["--existing-cluster"] if args.existing_cluster else []
    argv += [word for value in args.set for word in ("--set", value)]
    argv += ["--storage", args.storage]
    return demo.main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
