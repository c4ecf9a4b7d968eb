"""The ``kubernetes`` Service for pods: 10.96.0.1:443 in the node's namespace, relayed to the API server.

On a real node kube-proxy turns the Service address into the API server's. Here the agent listens
on that address inside the node's network namespace and copies bytes both ways to the API server
on the host's 127.0.0.1. TLS passes through untouched: pods check the API server's own
certificate, which names 10.96.0.1, with the CA from their ServiceAccount volume.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import socket
import threading

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
CHUNK = 64 * 1024
# Connections waiting to be accepted. A burst of a few hundred at once (an operator posting an Event
# for each of 1,000 adapters) overflowed 128, and asyncio's default of 100: the kernel drops the SYNs
# it has no room for, and each client waits for its SYN's retransmission (1, 3, 7, 15, 31 s), which
# looked like a relay that was slow to accept and ran into 30 s connect timeouts. The kernel caps it
# at net.core.somaxconn (4096 here).
BACKLOG = 4096
_libc = ctypes.CDLL(None, use_errno=True)


def listen_in_namespace(namespace_path: str, address: str, port: int) -> socket.socket:
    """A listening socket bound in another network namespace.

    ``setns`` moves only the calling thread, so it runs in a thread of its own that ends right
    after: the socket stays in the namespace it was made in, every agent thread stays in the host's.
    """
    made: list[socket.socket] = []
    failure: list[BaseException] = []

    def make() -> None:
        try:
            with open(namespace_path, "rb") as handle:
                if _libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns {namespace_path}: {os.strerror(errno)}")
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((address, port))
            listener.listen(BACKLOG)
            listener.setblocking(False)
            made.append(listener)
        except BaseException as error:  # handed to the caller's thread
            failure.append(error)

    thread = threading.Thread(target=make, name="netns-listen")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return made[0]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # a half close, as TCP allows: the other direction may go on
    except (ConnectionError, OSError):
        writer.close()


class ApiRelay:
    """Accepts in the node's namespace, connects to ``upstream`` in the host's; one thread, asyncio."""

    def __init__(self, listener: socket.socket, upstream_host: str, upstream_port: int) -> None:
        self.listener = listener
        self.upstream = (upstream_host, upstream_port)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="api-relay", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._relay, sock=self.listener, backlog=BACKLOG)
        )
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            server.close()
            # Connections still open (kube-proxy's and CoreDNS's watches, in-cluster clients) end
            # here, while the loop runs, not in the garbage collector after it has closed.
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError as error:
            log.warning("API relay: cannot reach the API server at %s:%s: %s", *self.upstream, error)
            client_writer.close()
            return
        try:
            await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))
        finally:
            for writer in (upstream_writer, client_writer):
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()
