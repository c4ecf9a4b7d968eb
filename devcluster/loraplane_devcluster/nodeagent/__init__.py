"""The dev cluster's node agent: the kubelet of one Node, running pods as local processes.

Test and demo infrastructure (see docs/node-agent.md): the product runs on any real cluster and
never imports this. ``start`` is how ``loraplane_devcluster up`` starts it;
``python -m loraplane_devcluster.nodeagent --kubeconfig K --run-dir D`` runs it in the foreground.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from loraplane_devcluster.nodeagent.config import PROJECT_DIR, default_venv

MODULE = "loraplane_devcluster.nodeagent"
# Popen objects of agents started here, kept so that they are never collected while running.
_STARTED: list[subprocess.Popen[bytes]] = []


def log_path(run_dir: Path) -> Path:
    return run_dir / "logs" / "nodeagent.log"


def start(run_dir: Path, kubeconfig: Path, *, die_with_parent: bool = False) -> int:
    """Start the agent in the background (a session of its own) and return its PID.

    Its log is ``run_dir/logs/nodeagent.log``. It runs on the project venv's python (it needs the
    ``kubernetes`` package) whatever python calls this. Settings come from the environment
    (``LORAPLANE_NODE_*``, ``LORAPLANE_NODEAGENT_*``; see docs/node-agent.md). Stop it with
    SIGTERM: it stops every container it started, then exits.
    """
    run_dir = Path(run_dir).resolve()
    log = log_path(run_dir)
    log.parent.mkdir(parents=True, exist_ok=True)
    venv_python = default_venv() / "bin" / "python"
    python = str(venv_python) if venv_python.exists() else sys.executable
    env = dict(os.environ)
    source_dir = str(PROJECT_DIR / "devcluster")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source_dir, env.get("PYTHONPATH", "")) if p)
    argv = [python, "-m", MODULE, "--kubeconfig", str(Path(kubeconfig).resolve()), "--run-dir", str(run_dir)]
    if die_with_parent:
        argv.append("--die-with-parent")
    with log.open("ab") as handle:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    _STARTED.append(process)
    return process.pid
