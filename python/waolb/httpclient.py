"""Outside HTTP requests that end by a hard wall-clock deadline: connect, headers and body.

urllib3's timeouts bound each socket operation, not the request: a server that sends one byte
every half second keeps a call with a one-second timeout waiting for as long as it likes (63 s
for a small body, 30 s for trickled headers). Here every request gets a deadline, and a single
watchdog thread shuts the request's socket down when the deadline passes. That wakes whatever
read or write is blocked on it, in any phase (TLS handshake, sending, headers, body), and the
request fails with :class:`HttpError` of kind ``timeout``. Each socket operation is also given
the time left, so connecting needs no watchdog.

The watchdog holds its own duplicate of the request's socket: shutting a socket down through a
duplicate ends the connection for every descriptor of it, and the duplicate can never be closed
and reused behind the watchdog's back, whoever closes the original.

Any method, any body: the API client's GETs and watches use it (:mod:`waolb.kube.rest`), and so
can the predictor clients' POSTs. Redirects are never followed and nothing is retried: callers
own their retry policy. Only pool managers made by :func:`pool_manager` or prepared by
:func:`install` can be used, as only their connections report their sockets.

Host names are resolved by the C library, which no deadline can interrupt; the API server and
predictors are normally addressed by IP or by the cluster's own DNS.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import itertools
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from waolb.redaction import redact_url

ErrorKind = Literal["timeout", "connection", "too_large", "interrupted"]


class HttpError(Exception):
    """A request that got no complete answer.

    ``kind``: ``timeout`` (the deadline passed, in any phase), ``connection`` (refused, reset
    or closed mid-answer, name not resolved, TLS failure, not HTTP), ``too_large`` (the body
    exceeds the caller's limit), ``interrupted`` (:meth:`OpenResponse.interrupt`). ``url`` is
    shown without credentials.
    """

    def __init__(self, kind: ErrorKind, url: str, detail: str) -> None:
        super().__init__(f"{url}: {detail}")
        self.kind: ErrorKind = kind
        self.url = url
        self.detail = detail


# ``url`` without its ``user:password@``, for messages and logs: waolb.redaction's, kept under
# this name for the callers that build request errors.
redacted = redact_url


# ---- the deadline of one request ----------------------------------------------------------


class _Exchange:
    """One request's deadline and the socket it runs on, as the watchdog sees them."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None  # our duplicate
        self._ended_by: ErrorKind | None = None
        self._released = False

    @property
    def ended_by(self) -> ErrorKind | None:
        """``timeout`` or ``interrupted`` once the socket was shut down; None before."""
        with self._lock:
            return self._ended_by

    def attach(self, sock: socket.socket) -> None:
        """The request now runs on ``sock`` (a new connection, or a pooled one)."""
        try:
            # fromfd duplicates the descriptor, and works for TLS sockets too (dup() does not).
            duplicate = socket.fromfd(sock.fileno(), sock.family, sock.type, sock.proto)
        except OSError:  # closed already: the request fails on its own
            return
        with self._lock:
            previous, self._socket = self._socket, duplicate
            if self._ended_by is not None or self._released:
                _shut_down(duplicate)
        if previous is not None:
            previous.close()

    def end(self, reason: ErrorKind) -> None:
        """Shut the request's socket down, now and whenever one is attached later."""
        with self._lock:
            if self._released or self._ended_by is not None:
                return
            self._ended_by = reason
            if self._socket is not None:
                _shut_down(self._socket)

    def release(self) -> ErrorKind | None:
        """The request is over: the watchdog leaves its socket alone from now on. Returns how
        the socket was ended, if it was."""
        with self._lock:
            self._released = True
            duplicate, self._socket = self._socket, None
            ended_by = self._ended_by
        if duplicate is not None:
            duplicate.close()
        return ended_by


def _shut_down(sock: socket.socket) -> None:
    # Errors mean the connection is gone already: nothing can be blocked on it.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """One thread that ends every exchange whose deadline passed."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._heap: list[tuple[float, int, _Exchange]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, exchange: _Exchange) -> None:
        with self._condition:
            heapq.heappush(self._heap, (exchange.deadline, next(self._order), exchange))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="http-deadlines", daemon=True
                )
                self._thread.start()
            self._condition.notify()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._condition.wait(timeout)
                _, _, exchange = heapq.heappop(self._heap)
            # Released exchanges ignore this; they leave the heap no later than their deadline.
            exchange.end("timeout")


_WATCHDOG: Final = _Watchdog()
# The exchange the current thread's request belongs to, for the connections to attach to.
_CURRENT: contextvars.ContextVar[_Exchange | None] = contextvars.ContextVar(
    "waolb_http_exchange", default=None
)


class _ReportingConnection(HTTPConnection):
    """Tells the current exchange which socket its request runs on."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        exchange = _CURRENT.get()
        if exchange is not None:
            exchange.attach(sock)  # before any TLS handshake on it
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        exchange = _CURRENT.get()
        if exchange is not None and self.sock is not None:
            exchange.attach(self.sock)  # a pooled connection
        super().request(*args, **kwargs)


class _ReportingHTTPSConnection(_ReportingConnection, HTTPSConnection):
    pass


class _DeadlineHTTPPool(HTTPConnectionPool):
    ConnectionCls = _ReportingConnection


class _DeadlineHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _ReportingHTTPSConnection


_DEADLINE_POOLS: Final = {"http": _DeadlineHTTPPool, "https": _DeadlineHTTPSPool}


def install(manager: urllib3.PoolManager) -> urllib3.PoolManager:
    """Prepare an existing pool manager (such as the Kubernetes client's) for deadlines."""
    if manager.pool_classes_by_scheme is not _DEADLINE_POOLS:
        manager.pool_classes_by_scheme = _DEADLINE_POOLS
        manager.clear()  # pools made before now have the plain connections
    return manager


def pool_manager(**options: Any) -> urllib3.PoolManager:
    """A urllib3 PoolManager (``options`` as urllib3 takes them) ready for deadlines."""
    return install(urllib3.PoolManager(**options))


# ---- requests -----------------------------------------------------------------------------


_CHUNK_SIZE: Final = 65536


class OpenResponse:
    """A response whose body is still to be read, under the request's deadline until closed.

    Use as a context manager; the connection goes back to the pool only after a complete read.
    """

    def __init__(self, response: urllib3.BaseHTTPResponse, exchange: _Exchange, url: str):
        self._response = response
        self._exchange = exchange
        self._url = url
        self._complete = False

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    def read(self, max_body: int | None = None) -> bytes:
        """The whole body; HttpError ``too_large`` beyond ``max_body`` bytes."""
        with self._failures():
            body = self._response.read(None if max_body is None else max_body + 1)
            if max_body is not None and len(body) > max_body:
                raise HttpError("too_large", self._url, f"the body exceeds {max_body} bytes")
            # A shut-down socket reads as the end of a body that has no declared length.
            if self._exchange.ended_by is not None:
                raise self._ended()
        self._complete = True
        return body

    def chunks(self) -> Iterator[bytes]:
        """The body as it arrives, for streams such as watches."""
        with self._failures():
            # read1: whatever has arrived, up to the size; b"" only at the end of the body.
            while chunk := self._response.read1(_CHUNK_SIZE):
                yield chunk
            if self._exchange.ended_by is not None:
                raise self._ended()
        self._complete = True

    def interrupt(self) -> None:
        """End the request now, from any thread: a blocked read fails as ``interrupted``."""
        self._exchange.end("interrupted")

    def close(self) -> None:
        ended_by = self._exchange.release()
        if self._complete and ended_by is None:
            self._response.release_conn()
        else:
            # Closed first: a connection mid-body must not serve another request.
            self._response.close()
            self._response.release_conn()

    def __enter__(self) -> OpenResponse:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def _failures(self) -> Iterator[None]:
        try:
            yield
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise _failure(error, self._exchange, self._url) from None

    def _ended(self) -> HttpError:
        return _failure(None, self._exchange, self._url)


def open_request(
    manager: urllib3.PoolManager,
    method: str,
    url: str,
    *,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    read_timeout: float | None = None,
) -> OpenResponse:
    """Send a request and read its status and headers; the body is read from the result.

    ``timeout`` is the deadline in seconds from now, for everything until the response is
    closed. ``read_timeout``, for streams, also ends a response silent for that long.
    """
    if manager.pool_classes_by_scheme is not _DEADLINE_POOLS:
        raise ValueError("the pool manager was not prepared with httpclient.install")
    shown = redacted(url)
    exchange = _Exchange(time.monotonic() + timeout)
    _WATCHDOG.watch(exchange)
    token = _CURRENT.set(exchange)
    try:
        response = manager.urlopen(
            method,
            url,
            body=body,
            headers=headers,
            retries=False,
            redirect=False,
            preload_content=False,
            timeout=urllib3.Timeout(
                connect=timeout, read=timeout if read_timeout is None else read_timeout
            ),
        )
    except (urllib3.exceptions.HTTPError, OSError) as error:
        exchange.release()
        raise _failure(error, exchange, shown) from None
    except BaseException:
        exchange.release()
        raise
    finally:
        _CURRENT.reset(token)
    return OpenResponse(response, exchange, shown)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


def request(
    manager: urllib3.PoolManager,
    method: str,
    url: str,
    *,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    max_body: int | None = None,
) -> Answer:
    """One request, read to the end within ``timeout`` seconds."""
    with open_request(manager, method, url, timeout=timeout, headers=headers, body=body) as answer:
        return Answer(answer.status, answer.headers, answer.read(max_body))


def _failure(error: Exception | None, exchange: _Exchange, url: str) -> HttpError:
    """What a failed request amounts to: the deadline first, whatever error it caused."""
    ended_by = exchange.ended_by
    if ended_by == "timeout":
        return HttpError("timeout", url, "no complete answer before the deadline")
    if ended_by == "interrupted":
        return HttpError("interrupted", url, "interrupted")
    cause = error.reason if isinstance(error, urllib3.exceptions.MaxRetryError) else error
    # A refused connection is a NewConnectionError, which urllib3 derives from its timeouts.
    if isinstance(cause, urllib3.exceptions.NewConnectionError | urllib3.exceptions.SSLError):
        return HttpError("connection", url, repr(cause))
    if isinstance(cause, urllib3.exceptions.TimeoutError | TimeoutError):
        return HttpError("timeout", url, f"timed out: {cause!r}")
    return HttpError("connection", url, repr(cause))
