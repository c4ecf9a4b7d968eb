"""Start one container: the pod's network namespace, private mount and UTS namespaces, bind mounts,
hostname, then exec.

Run by the node agent as ``python -I -S sandbox_exec.py SPEC.json`` with the container's
environment; standard library only (it runs before anything else of the container, so it must
start fast). The spec holds ``mounts`` (``source``, ``target``, ``readOnly``), ``hostname``,
``workingDir``, ``argv``, ``parentPid``, ``startErrorFile`` and ``networkNamespace`` (a path
under /run/netns, or empty to stay in the host's network).

Every source is opened (O_PATH) before the first mount, and mounted through
``/proc/self/fd/N``: a source that lives under ``/tmp`` (the run directory often does) is then
still the host's file even after the pod's own ``/tmp`` has been mounted over ``/tmp``.

Mount points that do not exist are created on the host's filesystem (empty folders or files);
the mounts themselves are visible only inside the container's namespace. A failure to set up
writes the reason to ``startErrorFile`` and exits 128, which the agent reports as ``StartError``.
"""

import ctypes
import json
import os
import signal
import sys
from typing import Any, NoReturn

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
START_ERROR_EXIT = 128

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, flags: int) -> None:
    _check(
        _libc.mount(source.encode() if source else None, target.encode(), None, flags, None),
        f"mount {source or ''} on {target}",
    )


def _make_mount_point(target: str, source_is_dir: bool) -> None:
    if os.path.lexists(target):
        return
    if source_is_dir:
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "a"):
            pass


def _setup(spec: dict[str, Any]) -> None:
    # Die with the agent. Checked after setting: the agent may have gone before this line.
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != spec["parentPid"]:
        os._exit(1)
    if spec.get("networkNamespace"):
        with open(spec["networkNamespace"], "rb") as namespace:
            _check(_libc.setns(namespace.fileno(), CLONE_NEWNET), f"setns {spec['networkNamespace']}")
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare")
    # Nothing mounted here may propagate back to the host.
    _mount(None, "/", MS_REC | MS_PRIVATE)
    hostname = spec["hostname"].encode()
    _check(_libc.sethostname(hostname, len(hostname)), "sethostname")
    opened = []
    for mount in spec["mounts"]:
        try:
            fd = os.open(mount["source"], os.O_PATH | os.O_CLOEXEC)
        except OSError as error:
            raise OSError(error.errno, f"volume source {mount['source']}: {error.strerror}") from None
        opened.append((mount, fd, os.path.isdir(mount["source"])))
    for mount, fd, is_dir in opened:
        target = mount["target"]
        _make_mount_point(target, is_dir)
        _mount(f"/proc/self/fd/{fd}", target, MS_BIND | MS_REC)
        if mount.get("readOnly"):
            _mount(None, target, MS_BIND | MS_REMOUNT | MS_RDONLY)
        os.close(fd)
    working_dir = spec.get("workingDir") or "/"
    os.makedirs(working_dir, exist_ok=True)
    os.chdir(working_dir)


def _fail(spec: dict[str, Any], message: str) -> NoReturn:
    try:
        with open(spec["startErrorFile"], "w") as handle:
            handle.write(message)
    finally:
        sys.stderr.write(f"container start failed: {message}\n")
        os._exit(START_ERROR_EXIT)


def main() -> None:
    with open(sys.argv[1]) as handle:
        spec = json.load(handle)
    try:
        _setup(spec)
    except OSError as error:
        _fail(spec, str(error))
    argv = spec["argv"]
    if not argv:
        _fail(
            spec, "no command specified: the container has no command and its image map entry no entrypoint"
        )
    try:
        os.execvp(argv[0], argv)  # noqa: S606 - running the container's command is the point
    except OSError as error:
        if error.errno == 2:
            _fail(spec, f'exec: "{argv[0]}": executable file not found in $PATH')
        _fail(spec, f'exec: "{argv[0]}": {error.strerror}')


if __name__ == "__main__":
    main()
