"""Container processes: start one through the sandbox, watch it, signal its whole process group.

Each container runs in a session of its own, so its process id is also its process-group id and
one ``killpg`` reaches everything it started (vLLM's engine runs as a child process). When the
main process ends, whatever it left in its group is killed too, as a container runtime tears
down everything in a container when its first process exits.

Processes must be started from one long-lived thread: the sandbox sets PR_SET_PDEATHSIG, which
fires when the *thread* that forked the process ends, not only the agent process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from loraplane_devcluster.nodeagent.volumes import Mount

SANDBOX = Path(__file__).with_name("sandbox_exec.py")
START_ERROR_EXIT = 128
TERMINATION_MESSAGE_LIMIT = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048


@dataclass(frozen=True)
class LaunchSpec:
    argv: list[str]
    env: dict[str, str]
    mounts: list[Mount]
    working_dir: str
    hostname: str
    network_namespace: str = ""  # a path under /run/netns; "" keeps the host's network


@dataclass(frozen=True)
class ContainerFiles:
    """Where one container's files live in the pod folder."""

    directory: Path
    log: Path

    @property
    def spec(self) -> Path:
        return self.directory / "sandbox.json"

    @property
    def termination_log(self) -> Path:
        return self.directory / "termination-log"

    @property
    def start_error(self) -> Path:
        return self.directory / "start-error"

    @property
    def process_record(self) -> Path:
        return self.directory / "process.json"


def process_start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: tells a recycled PID from ours."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(raw[raw.rindex(")") + 2 :].split()[19])


def kill_group(pgid: int, signum: int) -> bool:
    """Signal a process group; False when nothing was left in it."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    return True


class ContainerProcess:
    """One run of one container."""

    def __init__(self, spec: LaunchSpec, files: ContainerFiles) -> None:
        files.directory.mkdir(parents=True, exist_ok=True)
        files.termination_log.write_bytes(b"")  # a fresh message file for every run
        files.start_error.unlink(missing_ok=True)
        sandbox_spec = {
            "argv": spec.argv,
            "mounts": [
                {"source": m.source, "target": m.target, "readOnly": m.read_only} for m in spec.mounts
            ],
            "workingDir": spec.working_dir,
            "hostname": spec.hostname,
            "networkNamespace": spec.network_namespace,
            "parentPid": os.getpid(),
            "startErrorFile": str(files.start_error),
        }
        files.spec.write_text(json.dumps(sandbox_spec, indent=2) + "\n")
        self.files = files
        with files.log.open("ab") as log:
            self.log_offset = log.tell()
            with (files.directory / "log-offsets").open("a") as offsets:
                offsets.write(f"{self.log_offset}\n")
            self._popen = subprocess.Popen(
                [sys.executable, "-I", "-S", str(SANDBOX), str(files.spec)],
                env=spec.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd="/",
                start_new_session=True,
            )
        self.pid = self._popen.pid
        self.started_wall = time.time()
        ticks = process_start_ticks(self.pid)
        files.process_record.write_text(json.dumps({"pid": self.pid, "startTicks": ticks}) + "\n")
        self.exit_code: int | None = None
        self.finished_wall: float | None = None

    def poll(self) -> int | None:
        """The exit code once the main process has ended (128+N for signal N), else None."""
        if self.exit_code is not None:
            return self.exit_code
        code = self._popen.poll()
        if code is None:
            return None
        self.exit_code = 128 - code if code < 0 else code
        self.finished_wall = time.time()
        # Whatever the main process left behind in its group goes with it.
        kill_group(self.pid, signal.SIGKILL)
        self.files.process_record.unlink(missing_ok=True)
        return self.exit_code

    @property
    def running(self) -> bool:
        return self.poll() is None

    def signal_group(self, signum: int) -> None:
        if self.running:
            kill_group(self.pid, signum)

    def start_error(self) -> str | None:
        """Why the sandbox could not start the program, if that is how it ended."""
        if self.exit_code != START_ERROR_EXIT:
            return None
        try:
            return self.files.start_error.read_text() or None
        except FileNotFoundError:
            return None

    def termination_message(self, fallback_to_logs: bool) -> str:
        """The message the program left at terminationMessagePath (or the log's tail on error)."""
        try:
            with self.files.termination_log.open("rb") as handle:
                message = handle.read(TERMINATION_MESSAGE_LIMIT)
        except FileNotFoundError:
            message = b""
        if not message and fallback_to_logs and self.exit_code not in (None, 0):
            message = self.log_tail()
        return message.decode(errors="replace")

    def log_tail(self) -> bytes:
        try:
            with self.files.log.open("rb") as handle:
                handle.seek(self.log_offset)
                data = handle.read()
        except FileNotFoundError:
            return b""
        tail = b"\n".join(data.splitlines()[-FALLBACK_LOG_LINES:])
        return tail[-FALLBACK_LOG_BYTES:]


def kill_leftovers(pods_dir: Path) -> list[int]:
    """Kill container groups recorded by an earlier agent that died without cleaning up.

    A record is trusted only when the PID's start time still matches, so a recycled PID is spared.
    """
    killed = []
    for record in pods_dir.glob("*/containers/*/process.json"):
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        pid = int(data.get("pid", 0))
        ours = (
            pid > 0 and data.get("startTicks") is not None and process_start_ticks(pid) == data["startTicks"]
        )
        if ours and kill_group(pid, signal.SIGKILL):
            killed.append(pid)
        record.unlink(missing_ok=True)
    return killed
