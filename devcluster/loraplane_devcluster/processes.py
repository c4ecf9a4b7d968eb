"""Start, record and stop the dev cluster's processes, by PID only.

Every process is started in a session of its own (so its whole process group can be signalled)
and recorded in ``RUN_DIR/pids/NN-NAME.json`` together with its kernel start time, so that a
recycled PID is never mistaken for ours: ``down`` only ever signals a process whose PID *and*
start time match the record. Nothing here looks processes up by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_POLL_S = 0.05


@dataclass(frozen=True)
class ProcessRecord:
    """One process the dev cluster started."""

    sequence: int
    name: str
    pid: int
    start_ticks: int
    argv: list[str]
    log: str | None

    @property
    def path_name(self) -> str:
        return f"{self.sequence:02d}-{self.name}.json"


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (the command name may hold spaces, so split after its ')')."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def _reap_if_child(pid: int) -> bool:
    """Collect the exit status if ``pid`` is our own child; True when it has exited."""
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return waited == pid


def is_alive(record: ProcessRecord) -> bool:
    """True while the recorded process (same PID, same start time) runs and is not a zombie."""
    if _reap_if_child(record.pid):
        return False
    fields = _stat_fields(record.pid)
    if fields is None or fields[0] in {"Z", "X"}:
        return False
    return int(fields[19]) == record.start_ticks


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        # fields[0] is the state, fields[2] the process group
        if fields and fields[0] not in {"Z", "X"} and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _die_with(parent_pid: int) -> None:
    """preexec_fn: have the kernel SIGKILL this child when the process that started it dies.

    SIGKILL, not SIGTERM: all components get the signal at once, and a kube-apiserver whose etcd
    vanished mid graceful shutdown was seen waiting on it for over 30 s. A dev cluster whose owner
    died has nothing worth a graceful stop. The kernel tracks the *thread* that forked, so spawn
    from a thread that lives as long as the cluster should (the fixtures spawn from the main thread).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


def spawn(
    argv: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session with stdout and stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"==== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        log.flush()
        parent = os.getpid()
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=(lambda: _die_with(parent)) if die_with_parent else None,  # noqa: PLW1509
        )


def pid_dir(run_dir: Path) -> Path:
    return run_dir / "pids"


def read_records(run_dir: Path) -> list[ProcessRecord]:
    """Recorded processes, oldest first."""
    directory = pid_dir(run_dir)
    if not directory.is_dir():
        return []
    records = [ProcessRecord(**json.loads(path.read_text())) for path in sorted(directory.glob("*.json"))]
    return sorted(records, key=lambda record: record.sequence)


def record(run_dir: Path, name: str, pid: int, argv: Sequence[str], log: Path | None) -> ProcessRecord:
    """Write the PID record right after the start, before waiting on anything, so a failed
    ``up`` still leaves everything it started for ``down`` to find."""
    ticks = start_ticks(pid)
    if ticks is None:
        ticks = -1  # already gone: the record can never match a live process
    existing = read_records(run_dir)
    sequence = max((r.sequence for r in existing), default=0) + 1
    entry = ProcessRecord(sequence, name, pid, ticks, list(argv), str(log) if log else None)
    directory = pid_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{entry.path_name}.tmp"
    tmp.write_text(json.dumps(asdict(entry), indent=2) + "\n")
    tmp.replace(directory / entry.path_name)
    return entry


def forget(run_dir: Path, entry: ProcessRecord) -> None:
    (pid_dir(run_dir) / entry.path_name).unlink(missing_ok=True)


def _signal(entry: ProcessRecord, signum: signal.Signals) -> None:
    """Signal the process's group when it leads one (we start everything in its own session),
    otherwise the process alone."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(entry.pid) == entry.pid:
            os.killpg(entry.pid, signum)
        else:
            os.kill(entry.pid, signum)


def _wait_gone(entry: ProcessRecord, deadline: float) -> bool:
    while is_alive(entry):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
    _reap_child(entry.pid)
    return True


def _reap_child(pid: int) -> None:
    """Collect our own child once it has exited, so no zombie of it outlives ``stop``.

    A multi-threaded process (Go's runtime) shows its leader as a zombie while its other threads
    are still exiting, and ``waitpid`` cannot collect it until they are all gone: ``is_alive``
    already says it stopped, but its ``/proc`` entry would stay until the parent exits."""
    deadline = time.monotonic() + 10.0
    while True:
        try:
            waited, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not ours, or collected already
            return
        if waited == pid or time.monotonic() > deadline:
            return
        time.sleep(_POLL_S)


@dataclass(frozen=True)
class StopResult:
    name: str
    pid: int
    was_running: bool
    killed: bool  # needed SIGKILL after the grace period
    seconds: float


def stop(entry: ProcessRecord, grace_s: float = 10.0) -> StopResult:
    """SIGTERM the process group, SIGKILL it after ``grace_s``, and make sure it is gone."""
    started = time.monotonic()
    try:
        leads_group = is_alive(entry) and os.getpgid(entry.pid) == entry.pid
    except ProcessLookupError:  # exited just now
        leads_group = False
    if not is_alive(entry):
        _reap_child(entry.pid)
        return StopResult(entry.name, entry.pid, False, False, 0.0)
    _signal(entry, signal.SIGTERM)
    killed = False
    if not _wait_gone(entry, time.monotonic() + grace_s):
        killed = True
        _signal(entry, signal.SIGKILL)
        if not _wait_gone(entry, time.monotonic() + 10.0):
            raise RuntimeError(f"{entry.name} (pid {entry.pid}) survived SIGKILL")
    # The leader is gone; anything it left behind in its group goes too.
    if leads_group:
        leftovers = group_members(entry.pid)
        if leftovers:
            killed = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(entry.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10.0
            while group_members(entry.pid) and time.monotonic() < deadline:
                time.sleep(_POLL_S)
    return StopResult(entry.name, entry.pid, True, killed, time.monotonic() - started)


def stop_all(run_dir: Path, grace_s: float = 10.0) -> list[StopResult]:
    """Stop every recorded process, newest first, and drop the records of those now gone."""
    results = []
    for entry in reversed(read_records(run_dir)):
        results.append(stop(entry, grace_s))
        forget(run_dir, entry)
    return results
