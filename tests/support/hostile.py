"""Hostile HTTP peers on loopback, for deadline tests: servers that trickle or never answer.

Each listens on 127.0.0.1 (a free port) and misbehaves for ``HUNG_AFTER`` seconds at most, so
that a client deadline of a second or two contrasts by orders of magnitude with what the peer
would hold it for::

    with TricklingServer(Trickle.BODY) as server:
        server.url           # http://127.0.0.1:PORT
        server.connections   # connections accepted so far

    with unaccepting_listener() as url:  # connecting to it never completes
        ...
"""

from __future__ import annotations

import contextlib
import enum
import socket
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Self

from netns import HUNG_AFTER


class Trickle(enum.Enum):
    """What the server sends one byte at a time, every ``interval`` seconds."""

    HEADERS = "headers"  # a status line, then an endless header
    BODY = "body"  # complete headers announcing a large body, then the body
    TLS_HANDSHAKE = "tls_handshake"  # a TLS record header, then its contents
    NOTHING = "nothing"  # reads the request and never answers


class TricklingServer:
    """An HTTP server on 127.0.0.1 that answers every request with ``trickle``."""

    def __init__(self, trickle: Trickle, interval: float = 0.5) -> None:
        self.trickle = trickle
        self.interval = interval
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.connections = 0

    @property
    def url(self) -> str:
        port = self._listener.getsockname()[1]
        scheme = "https" if self.trickle is Trickle.TLS_HANDSHAKE else "http"
        return f"{scheme}://127.0.0.1:{port}"

    def __enter__(self) -> Self:
        thread = threading.Thread(target=self._accept, name="trickling-server", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stopping.set()
        # Shut down first: closing alone does not wake a thread blocked in accept().
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for thread in list(self._threads):
            thread.join(HUNG_AFTER)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # closed by __exit__
            with self._lock:
                self.connections += 1
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            if self.trickle is not Trickle.TLS_HANDSHAKE:
                _read_request(connection)
            prefix, byte = {
                Trickle.HEADERS: (b"HTTP/1.1 200 OK\r\nX-Slow: ", b"a"),
                Trickle.BODY: (b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", b"{"),
                # A handshake record of 16 KiB, delivered a byte at a time.
                Trickle.TLS_HANDSHAKE: (b"\x16\x03\x03\x40\x00\x02", b"\x00"),
                Trickle.NOTHING: (b"", b""),
            }[self.trickle]
            connection.sendall(prefix)
            deadline = time.monotonic() + HUNG_AFTER
            while time.monotonic() < deadline and not self._stopping.wait(self.interval):
                if byte:
                    connection.sendall(byte)


def _read_request(connection: socket.socket) -> None:
    """Read up to the end of the request's headers (the tests send no bodies)."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = connection.recv(4096)
        if not chunk:
            return
        received += chunk


@contextlib.contextmanager
def unaccepting_listener() -> Iterator[str]:
    """The URL of a listening socket whose accept queue is full: the kernel drops further
    connection attempts (SYNs), so connecting to it never completes."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # room for one connection that nobody accepts
        address = listener.getsockname()
        for _ in range(2):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            fillers.append(filler)
            with contextlib.suppress(BlockingIOError):
                filler.connect(address)
        yield f"http://127.0.0.1:{address[1]}"
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
