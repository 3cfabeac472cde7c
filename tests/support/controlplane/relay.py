"""A TCP relay from the test process's namespace into another namespace.

The control plane listens inside a namespace of its own, which nodes reach over veth pairs. The
test process (its clients, kubectl) reaches it through this relay: a listening socket on the
test process's loopback whose connections are carried to an address as seen from inside the
namespace (a socket created there stays there).
"""

from __future__ import annotations

import contextlib
import socket
import threading

from netns import Netns, entered

_CHUNK = 1 << 16


class Relay:
    """Listens on 127.0.0.1 (port ``port``) and relays every connection to ``target``."""

    def __init__(self, ns: Netns, target: tuple[str, int]) -> None:
        self._ns = ns
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                with entered(self._ns):
                    upstream = socket.create_connection(self._target, timeout=30)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(source, sink), name="relay-pump", daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(_CHUNK):
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
        with self._lock:
            # The second pump of a pair to finish closes both sockets.
            done = source in self._sockets and sink not in self._sockets
            self._sockets.discard(source)
        if done:
            source.close()
            sink.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets = list(self._sockets)
            self._sockets.clear()
        self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
