"""The one base of the tests' own HTTP servers (the API server double, the WAO servers).

A threaded HTTP server that knows its open connections, so that a test can cut them all as a
crashed peer would (:meth:`TrackedHTTPServer.close_connections`), optionally serving TLS and
optionally on a socket bound beforehand (e.g. inside a network namespace). Clients that give
up or are cut are routine in these tests: such errors are not reported as server bugs.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class TrackedHTTPServer(ThreadingHTTPServer):
    """Listens on ``address`` ("::"-style hosts mean IPv6) or on ``sock``; ``tls`` wraps each
    connection in the connection's own thread."""

    daemon_threads = True
    allow_reuse_address = True  # restart on the same port while old sockets sit in TIME_WAIT

    def __init__(
        self,
        address: tuple[str, int] | None,
        handler: type[BaseHTTPRequestHandler],
        *,
        sock: socket.socket | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.tls = tls
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if sock is not None:
            super().__init__(sock.getsockname()[:2], handler, bind_and_activate=False)
            self.socket.close()
            self.socket = sock
            self.server_address = sock.getsockname()
            self.server_activate()
            return
        if address is None:
            raise ValueError("give an address or a bound socket")
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def _track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def _untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Tracked before its thread starts, so that a stop right after accept() still cuts it.
        self._track(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self._untrack(request)
        super().shutdown_request(request)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(getattr(self.RequestHandlerClass, "timeout", None))
        try:
            tls_socket = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # the client gave up on the handshake (e.g. an untrusted certificate)
        self._track(tls_socket)
        try:
            super().finish_request(tls_socket, client_address)
        finally:
            self._untrack(tls_socket)
            tls_socket.close()

    def close_connections(self) -> None:
        """Cut every accepted connection, idle keep-alive ones included."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timeout test) or a stop() cutting connections is expected;
        # anything else is a bug in the test server and must show.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)
