"""Hostile HTTP peers on loopback, for deadline tests: servers that trickle or never answer,
and clients that stall, trickle or flood a server.

Each misbehaves for ``HUNG_AFTER`` seconds at most, so that a deadline of a second or two
contrasts by orders of magnitude with what the peer would hold it for::

    with TricklingServer(Trickle.BODY) as server:
        server.url           # http://127.0.0.1:PORT
        server.connections   # connections accepted so far

    with unaccepting_listener() as url:  # connecting to it never completes
        ...

    with HostileClients(port, Stall.HALF_SENT, count=300) as clients:
        clients.closed()     # how many of them the server has closed so far
        clients.answers      # what the server answered each, as far as received
"""

from __future__ import annotations

import contextlib
import enum
import os
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


class Stall(enum.Enum):
    """How a hostile client talks to a server."""

    SILENT = "silent"  # connects and sends nothing
    HALF_SENT = "half_sent"  # a request line and a header, never the blank line
    SLOW_HEADERS = "slow_headers"  # then one more header byte every ``interval``
    HUGE_HEADERS = "huge_headers"  # header bytes for as long as the server takes them
    HUGE_BODY = "huge_body"  # a POST announcing 1 GiB, then the body as fast as taken
    GARBAGE = "garbage"  # random bytes, nothing like HTTP


_OPENING: dict[Stall, bytes] = {
    Stall.SILENT: b"",
    Stall.HALF_SENT: b"GET /healthz HTTP/1.1\r\nHost: waolb\r\n",
    Stall.SLOW_HEADERS: b"GET /healthz HTTP/1.1\r\nHost: waolb\r\nX-Slow: ",
    Stall.HUGE_HEADERS: b"GET /healthz HTTP/1.1\r\nHost: waolb\r\nX-Huge: ",
    Stall.HUGE_BODY: b"POST /healthz HTTP/1.1\r\nHost: waolb\r\nContent-Length: 1073741824\r\n\r\n",
    Stall.GARBAGE: b"\x16\x03\x01\x02\x00" + os.urandom(512),
}


class HostileClients:
    """``count`` connections to 127.0.0.1:``port`` that all ``stall`` the same way, from one
    feeding thread, until the block ends or ``HUNG_AFTER`` passes."""

    def __init__(self, port: int, stall: Stall, count: int = 1, interval: float = 0.5) -> None:
        self.port = port
        self.stall = stall
        self.count = count
        self.interval = interval
        self.answers: list[bytes] = []
        self._sockets: list[socket.socket] = []
        self._open: list[bool] = []
        self._stopping = threading.Event()
        self._feeder = threading.Thread(target=self._feed, name="hostile-clients", daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        for _ in range(self.count):
            sock = socket.create_connection(("127.0.0.1", self.port))
            sock.sendall(_OPENING[self.stall])
            sock.setblocking(False)
            self._sockets.append(sock)
            self._open.append(True)
            self.answers.append(b"")
        self._feeder.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stopping.set()
        self._feeder.join(HUNG_AFTER)
        for sock in self._sockets:
            sock.close()

    def closed(self) -> int:
        """How many connections the server has closed or reset; reads what it answered."""
        with self._lock:
            for index, sock in enumerate(self._sockets):
                while self._open[index]:
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        break
                    except OSError:
                        data = b""
                    if not data:
                        self._open[index] = False
                    self.answers[index] += data[: max(0, 4096 - len(self.answers[index]))]
            return self._open.count(False)

    def _feed(self) -> None:
        chunk = {Stall.SLOW_HEADERS: b"a", Stall.HUGE_HEADERS: b"a" * 65536}.get(self.stall)
        if self.stall is Stall.HUGE_BODY:
            chunk = b"{" * 65536
        deadline = time.monotonic() + HUNG_AFTER
        while chunk and time.monotonic() < deadline and not self._stopping.wait(self.interval):
            with self._lock:
                for index, sock in enumerate(self._sockets):
                    if self._open[index]:
                        with contextlib.suppress(OSError):  # full buffers, closed sockets
                            sock.send(chunk)
