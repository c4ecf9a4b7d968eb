"""How the dev cluster stops the processes it recorded: nothing it started outlives `down`, not even
as a zombie."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

from loraplane_devcluster import processes

# On SIGTERM the main thread leaves (pthread_exit) while a second thread lives on for a moment, the
# way a Go program's runtime threads outlast its leader: /proc shows the leader as a zombie that
# waitpid cannot collect yet.
LEADER_EXITS_FIRST = textwrap.dedent(
    """
    import ctypes, os, signal, threading, time

    def last_thread():
        time.sleep(0.5)
        os._exit(0)

    def on_term(signum, frame):
        threading.Thread(target=last_thread).start()
        ctypes.CDLL(None).pthread_exit(None)

    signal.signal(signal.SIGTERM, on_term)
    print("listening" + " for SIGTERM", flush=True)
    while True:
        time.sleep(60)
    """
)


def _wait_for_line(log: Path, line: str) -> None:
    deadline = time.monotonic() + 30
    while line not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


def test_stop_collects_a_child_whose_leader_exits_before_its_threads(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    argv = [sys.executable, "-c", LEADER_EXITS_FIRST]
    child = processes.spawn(argv, log)
    entry = processes.record(tmp_path, "child", child.pid, argv, log)
    _wait_for_line(log, "listening for SIGTERM")  # not in the echoed argv

    result = processes.stop(entry, grace_s=10)

    assert result.was_running
    assert not result.killed
    assert not Path(f"/proc/{child.pid}").exists(), Path(f"/proc/{child.pid}/stat").read_text()
