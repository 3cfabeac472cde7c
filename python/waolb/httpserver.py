"""The bounded HTTP server that healthz, metrics and the weights endpoint run on.

Anyone who can reach a port can talk to it, so what a client can hold is bounded:

* One asyncio event loop, in one thread, serves every listener of a server and every
  connection; handlers run on ``workers`` threads (a large ``/metrics`` takes a second), so the
  thread count never follows the connection count.
* At most ``max_connections`` connections are open. A new one beyond that evicts the
  connection that has waited on its peer the longest (a half-sent request, an idle keep-alive,
  a client not reading its answer): an honest probe sends its request at once and is answered
  within milliseconds, so under a flood of stalled connections it is never the oldest waiter.
* A request head must arrive complete within ``request_timeout`` of the connection (or, on a
  kept-alive connection, of its first byte), and within ``max_head_bytes``; a kept-alive
  connection idle for ``idle_timeout`` is closed; an answer must be taken by the client within
  ``send_timeout``. Request bodies are never read: GET and HEAD are the only methods served.

HTTP/1.1 itself (request line and header syntax, keep-alive, framing, pipelining) is h11's: a
small, strict, well-kept parser whose bounded buffers this module relies on, rather than a
hand-written one. The server knows nothing about routes: a listener is given one
:data:`Handler`, a function of the :class:`Request`, for example :func:`by_path`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Final, Literal

import h11

from waolb import logs
from waolb.config import split_host_port

log = logs.get_logger(__name__)

TEXT: Final = "text/plain; charset=utf-8"
JSON: Final = "application/json"
_READ_CHUNK: Final = 16 * 1024
_METHODS: Final = frozenset({b"GET", b"HEAD"})
_STATUSES: Final = frozenset(status.value for status in HTTPStatus)

# Why a connection was closed by the server before its client was done with it.
DropReason = Literal["evicted", "refused", "timeout", "malformed", "too_large", "method", "body"]


@dataclass(frozen=True)
class ServerLimits:
    """What one client may hold; the defaults suit probes and scrapes on a node."""

    max_connections: int = 256
    # The whole request head, from the connection (or a kept-alive request's first byte).
    request_timeout: float = 10.0
    # A kept-alive connection waiting for its next request; above the usual 1 m scrape period.
    idle_timeout: float = 90.0
    # The client must have taken the whole answer by then.
    send_timeout: float = 30.0
    # Request line and headers (Go's servers allow 1 MiB; probes and scrapes send < 1 KiB).
    max_head_bytes: int = 32 * 1024
    # Threads running handlers at once, per server.
    workers: int = 2

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_head_bytes", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("request_timeout", "idle_timeout", "send_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")


@dataclass(frozen=True)
class Request:
    method: str  # GET or HEAD
    path: str  # without the query
    query: str


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = TEXT
    # Extra headers, e.g. the health-check node port's X-Load-Balancing-Endpoint-Weight.
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Request], Response]
# A fixed route: the answer does not depend on the request.
Route = Callable[[], Response]

NOT_FOUND: Final = Response(404, b"404 page not found\n")


def by_path(routes: Mapping[str, Route]) -> Handler:
    """A handler answering each of ``routes`` by exact path, and 404 to anything else."""
    table = dict(routes)

    def handle(request: Request) -> Response:
        route = table.get(request.path)
        return NOT_FOUND if route is None else route()

    return handle


@dataclass(eq=False)
class _Connection:
    writer: asyncio.StreamWriter
    listener: Listener
    # time.monotonic() since when it waits on its peer; None while a handler runs for it.
    waiting_since: float | None = field(default_factory=time.monotonic)


class _Drop(Exception):
    """End a connection now, answering ``response`` first if there is one."""

    def __init__(self, reason: DropReason, response: Response | None = None) -> None:
        super().__init__(reason)
        self.reason: DropReason = reason
        self.response = response


class Listener:
    """One bound address of an :class:`HttpServer`."""

    def __init__(self, server: HttpServer, address: str, port: int) -> None:
        self._server = server
        self.address = address
        self.port = port
        self._asyncio_server: asyncio.Server | None = None

    def close(self) -> None:
        """Stop accepting and end this listener's open connections."""
        self._server._close_listener(self)


class HttpServer:
    """An event loop thread serving any number of listeners, each with its own handler::

        server = HttpServer("healthz")
        server.start()
        listener = server.listen("0.0.0.0:10256", by_path(routes))  # OSError if taken
        listener.port                     # the bound port (the address may say 0)
        listener.close()                  # e.g. a health-check node port no longer needed
        server.stop()

    ``on_drop(server_name, reason)`` is called on the loop thread whenever the server ends a
    connection its client was not done with (see :data:`DropReason`).
    """

    def __init__(
        self,
        name: str,
        limits: ServerLimits | None = None,
        on_drop: Callable[[str, DropReason], None] | None = None,
    ) -> None:
        self.name = name
        self.limits = limits or ServerLimits()
        self._on_drop = on_drop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._workers: ThreadPoolExecutor | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._listeners: list[Listener] = []
        self._failures = logs.OncePerState()

    # ---- lifecycle, from any thread ----

    def start(self) -> None:
        if self._loop is not None:
            return
        self._loop = asyncio.new_event_loop()
        self._workers = ThreadPoolExecutor(
            self.limits.workers, thread_name_prefix=f"waolb-{self.name}-handler"
        )
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"waolb-{self.name}", daemon=True
        )
        self._thread.start()

    def listen(self, address: str, handler: Handler) -> Listener:
        """Bind ``address`` ("ip:port", "[ip6]:port") and serve ``handler`` there."""
        loop = self._loop
        if loop is None:
            raise RuntimeError(f"the {self.name} server is not started")
        host, port = split_host_port(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # "[::]" listens on both families, as Go's servers (kube-proxy's) do.
        sock = socket.create_server(
            (host, port),
            family=family,
            backlog=self.limits.max_connections,
            dualstack_ipv6=family == socket.AF_INET6 and host == "::",
        )
        listener = Listener(self, address, int(sock.getsockname()[1]))
        try:
            asyncio.run_coroutine_threadsafe(self._serve(listener, sock, handler), loop).result()
        except BaseException:
            sock.close()
            raise
        log.info("serving HTTP", server=self.name, address=address, port=listener.port)
        return listener

    def stop(self) -> None:
        """Close every listener and connection; a handler already running finishes first."""
        loop, thread, workers = self._loop, self._thread, self._workers
        if loop is None or thread is None or workers is None:
            return
        asyncio.run_coroutine_threadsafe(self._shut_down(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
        workers.shutdown(wait=True, cancel_futures=True)
        self._loop = self._thread = self._workers = None

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def _close_listener(self, listener: Listener) -> None:
        if self._loop is not None and listener in self._listeners:
            asyncio.run_coroutine_threadsafe(self._close(listener), self._loop).result()

    # ---- on the loop ----

    async def _serve(self, listener: Listener, sock: socket.socket, handler: Handler) -> None:
        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._connected(listener, handler, reader, writer)

        # The stream buffers at most one read chunk ahead of the parser.
        listener._asyncio_server = await asyncio.start_server(
            connected, sock=sock, limit=_READ_CHUNK
        )
        self._listeners.append(listener)

    async def _close(self, listener: Listener) -> None:
        self._listeners.remove(listener)
        if listener._asyncio_server is not None:
            listener._asyncio_server.close()
        for connection in [c for c in self._connections if c.listener is listener]:
            self._abort(connection, None)

    async def _shut_down(self) -> None:
        for listener in list(self._listeners):
            await self._close(listener)
        for connection in list(self._connections):
            self._abort(connection, None)
        # Connections evicted earlier may still wait for their handler: they end too.
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _abort(self, connection: _Connection, reason: DropReason | None) -> None:
        """Reset the connection; counted once, however many paths notice its end.

        Its task is not cancelled: it sees the end of the stream, or a reset, and returns.
        """
        if connection in self._connections:
            self._connections.remove(connection)
            if reason is not None:
                self._dropped(reason)
        connection.writer.transport.abort()

    def _dropped(self, reason: DropReason) -> None:
        if self._on_drop is not None:
            self._on_drop(self.name, reason)

    def _make_room(self) -> bool:
        """Evict the connection waiting on its peer the longest; False if none waits."""
        waiting = [c for c in self._connections if c.waiting_since is not None]
        if not waiting:
            return False
        self._abort(min(waiting, key=lambda c: c.waiting_since or 0.0), "evicted")
        return True

    async def _connected(
        self,
        listener: Listener,
        handler: Handler,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        if len(self._connections) >= self.limits.max_connections and not self._make_room():
            writer.transport.abort()
            self._dropped("refused")
            return
        connection = _Connection(writer, listener)
        self._connections.add(connection)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        # Nothing is buffered above the kernel's socket buffer: drain() returns only once the
        # answer is handed over, so a client that does not read is caught by send_timeout.
        writer.transport.set_write_buffer_limits(high=0)
        protocol = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head_bytes)
        try:
            await self._converse(connection, protocol, handler, reader)
        except _Drop as drop:
            if drop.response is not None:
                # The answer goes out if the client reads it in time; the drop happens anyway.
                with contextlib.suppress(OSError, _Drop, h11.LocalProtocolError):
                    await self._send(connection, protocol, "GET", drop.response, close=True)
            self._abort(connection, drop.reason)
        except OSError:
            pass  # the client went away
        finally:
            self._connections.discard(connection)
            self._tasks.discard(task)
            writer.transport.abort()

    async def _converse(
        self,
        connection: _Connection,
        protocol: h11.Connection,
        handler: Handler,
        reader: asyncio.StreamReader,
    ) -> None:
        """Answer requests on one connection until either side closes it."""
        first = True
        while True:
            request = await self._read_head(connection, protocol, reader, first)
            if request is None:
                return
            first = False
            response = await self._answer(connection, handler, request)
            await self._send(connection, protocol, request.method, response)
            if protocol.our_state is not h11.DONE or protocol.their_state is not h11.DONE:
                return  # Connection: close, HTTP/1.0, or a closed stream
            protocol.start_next_cycle()

    async def _read_head(
        self,
        connection: _Connection,
        protocol: h11.Connection,
        reader: asyncio.StreamReader,
        first: bool,
    ) -> Request | None:
        """The next request, None when the client closed the connection between requests."""
        loop = asyncio.get_running_loop()
        limits = self.limits
        connection.waiting_since = time.monotonic()
        deadline = loop.time() + (limits.request_timeout if first else limits.idle_timeout)
        started = first
        try:
            while (event := protocol.next_event()) is h11.NEED_DATA:
                try:
                    async with asyncio.timeout_at(deadline):
                        data = await reader.read(_READ_CHUNK)
                except TimeoutError:
                    if started:
                        raise _Drop("timeout") from None
                    return None  # a kept-alive connection idle for long: closed, as usual
                if not data and connection not in self._connections:
                    return None  # aborted by the server: already counted
                if not started and data:
                    started = True
                    deadline = loop.time() + limits.request_timeout
                protocol.receive_data(data)
        except h11.RemoteProtocolError as error:
            if reader.at_eof():
                return None  # the client gave up half-way
            status = error.error_status_hint
            reason: DropReason = "too_large" if status == 431 else "malformed"
            # The client's bytes are not echoed back: a fixed text per status.
            raise _Drop(reason, _error_response(status)) from None
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise _Drop("malformed")
        return self._check(event, protocol)

    def _check(self, head: h11.Request, protocol: h11.Connection) -> Request:
        has_body = not isinstance(protocol.next_event(), h11.EndOfMessage)
        if head.method not in _METHODS:
            answer = Response(405, _error_response(405).body, headers=(("Allow", "GET, HEAD"),))
            raise _Drop("body" if has_body else "method", answer)
        if has_body:
            raise _Drop("body", _error_response(413))
        path, _, query = head.target.decode("ascii", "replace").partition("?")
        return Request(head.method.decode(), path, query)

    async def _answer(
        self, connection: _Connection, handler: Handler, request: Request
    ) -> Response:
        connection.waiting_since = None
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._workers, handler, request)
        except Exception as error:
            if self._failures.first((request.path, type(error).__name__)):
                log.exception("HTTP handler failed", server=self.name, path=request.path)
            return _error_response(500)
        finally:
            connection.waiting_since = time.monotonic()

    async def _send(
        self,
        connection: _Connection,
        protocol: h11.Connection,
        method: str,
        response: Response,
        close: bool = False,
    ) -> None:
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            ("X-Content-Type-Options", "nosniff"),
            *response.headers,
            *((("Connection", "close"),) if close else ()),
        ]
        reason = _reason(response.status)
        head = h11.Response(status_code=response.status, headers=headers, reason=reason)
        data = protocol.send(head) or b""
        if method != "HEAD" and response.body:
            data += protocol.send(h11.Data(data=response.body)) or b""
        data += protocol.send(h11.EndOfMessage()) or b""
        await self._write(connection, data)

    async def _write(self, connection: _Connection, data: bytes) -> None:
        connection.writer.write(data)
        try:
            async with asyncio.timeout(self.limits.send_timeout):
                await connection.writer.drain()
        except TimeoutError:
            raise _Drop("timeout") from None


def _reason(status: int) -> str:
    return HTTPStatus(status).phrase if status in _STATUSES else ""


def _error_response(status: int) -> Response:
    return Response(status, f"{status} {_reason(status)}\n".encode())
