"""The bounded HTTP server, against real hostile clients on loopback.

Every hostile client would hold its connection for ``HUNG_AFTER`` (300 s); the server's
deadlines in these tests are one or two seconds, and the assertions allow 30 s: orders of
magnitude apart, so a slow machine cannot make them fail and a missing bound cannot pass.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import structlog

from hostile import HostileClients, Stall
from netns import wait_until
from waolb.httpserver import (
    JSON,
    DropReason,
    HttpServer,
    Listener,
    Request,
    Response,
    ServerLimits,
    by_path,
)

# Far below what any hostile client holds (HUNG_AFTER), far above a loaded machine's answer.
WELL_WITHIN = 30.0
OK = Response(200, b"ok")


class Served:
    """A started server with one listener on 127.0.0.1, and the drops it reported."""

    def __init__(self, limits: ServerLimits, routes: dict[str, Response] | None = None) -> None:
        self.drops: Counter[DropReason] = Counter()
        self.server = HttpServer("probe", limits, on_drop=lambda _, reason: self._drop(reason))
        self.server.start()
        fixed = routes or {"/healthz": OK}
        self.listener: Listener = self.server.listen(
            "127.0.0.1:0", by_path({path: (lambda r=r: r) for path, r in fixed.items()})
        )
        self._lock = threading.Lock()

    def _drop(self, reason: DropReason) -> None:
        with self._lock:
            self.drops[reason] += 1

    @property
    def port(self) -> int:
        return self.listener.port

    def get(self, path: str = "/healthz", timeout: float = WELL_WITHIN) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def server_threads(self) -> int:
        return sum(1 for t in threading.enumerate() if t.name.startswith("waolb-probe"))


@pytest.fixture
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    limits = getattr(request, "param", ServerLimits())
    served = Served(limits)
    try:
        yield served
    finally:
        served.server.stop()


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=WELL_WITHIN) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def test_healthz_answers_under_a_flood_of_stalled_and_hostile_connections(
    served: Served,
) -> None:
    # Before the bound: 300 half-sent requests made 302 threads, all held.
    stalls = [
        (Stall.HALF_SENT, 300),
        (Stall.SLOW_HEADERS, 20),
        (Stall.SILENT, 20),
        (Stall.HUGE_HEADERS, 5),
        (Stall.HUGE_BODY, 5),
        (Stall.GARBAGE, 5),
    ]
    with contextlib.ExitStack() as stack:
        for stall, count in stalls:
            stack.enter_context(HostileClients(served.port, stall, count, interval=0.05))
        started = time.monotonic()
        assert served.get() == (200, b"ok")
        assert time.monotonic() - started < WELL_WITHIN
        assert served.server_threads() <= 1 + served.server.limits.workers
        assert served.server.connection_count <= served.server.limits.max_connections
        # More than the cap arrived: the longest-waiting ones made room.
        wait_until(lambda: served.drops["evicted"] > 0, what="evictions")
        assert served.get() == (200, b"ok")


@pytest.mark.parametrize(
    "served", [ServerLimits(request_timeout=1.0, idle_timeout=1.0)], indirect=True
)
@pytest.mark.parametrize("stall", [Stall.SILENT, Stall.HALF_SENT, Stall.SLOW_HEADERS])
def test_a_request_head_not_complete_by_the_deadline_is_cut(served: Served, stall: Stall) -> None:
    with HostileClients(served.port, stall, count=10, interval=0.2) as clients:
        started = time.monotonic()
        wait_until(lambda: clients.closed() == 10, what="stalled connections closed")
        assert time.monotonic() - started < WELL_WITHIN
    assert served.drops["timeout"] == 10


@pytest.mark.parametrize("served", [ServerLimits(max_connections=8)], indirect=True)
def test_a_full_server_evicts_the_connection_waiting_longest(served: Served) -> None:
    with HostileClients(served.port, Stall.HALF_SENT, count=8) as oldest:
        wait_until(lambda: served.server.connection_count == 8, what="8 connections open")
        with HostileClients(served.port, Stall.HALF_SENT, count=4) as newer:
            wait_until(lambda: oldest.closed() == 4, what="the 4 oldest evicted")
            assert newer.closed() == 0
            assert served.get() == (200, b"ok")  # evicts one more stalled connection
            assert oldest.closed() == 5
    assert served.drops["evicted"] == 5


@pytest.mark.parametrize(
    ("stall", "status", "reason"),
    [
        (Stall.HUGE_HEADERS, b"431 Request Header Fields Too Large", "too_large"),
        (Stall.HUGE_BODY, b"405 Method Not Allowed", "body"),
        (Stall.GARBAGE, b"400 Bad Request", "malformed"),
    ],
)
def test_oversized_and_malformed_requests_are_refused_and_closed(
    served: Served, stall: Stall, status: bytes, reason: DropReason
) -> None:
    with HostileClients(served.port, stall, count=3, interval=0.01) as clients:
        wait_until(lambda: clients.closed() == 3, what="refused connections closed")
        assert all(answer.startswith(b"HTTP/1.1 " + status) for answer in clients.answers)
        assert all(b"Connection: close" in answer for answer in clients.answers)
    assert served.drops[reason] == 3
    assert served.get() == (200, b"ok")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", b"413"),
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n", b"413"),
        (b"DELETE /healthz HTTP/1.1\r\nHost: a\r\n\r\n", b"405"),
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: nope\r\n\r\n", b"400"),
        (b"GET /\xff\x00 HTTP/1.1\r\n\r\n", b"400"),
    ],
)
def test_requests_outside_what_is_served_get_an_error_and_the_connection_ends(
    served: Served, request_bytes: bytes, status: bytes
) -> None:
    answer = raw_exchange(served.port, request_bytes)
    assert answer.startswith(b"HTTP/1.1 " + status), answer
    assert request_bytes not in answer  # nothing the client sent is echoed back


def test_keep_alive_pipelining_head_and_http_1_0(served: Served) -> None:
    pipelined = (
        b"GET /nothing HTTP/1.1\r\nHost: a\r\n\r\n"
        b"HEAD /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /healthz?verbose=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    answer = raw_exchange(served.port, pipelined)
    assert answer.count(b"HTTP/1.1 ") == 3
    first, second, third = answer.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"404") and first.endswith(b"404 page not found\n")
    assert second.startswith(b"200") and second.endswith(b"\r\n\r\n")  # HEAD: no body
    assert third.startswith(b"200") and third.endswith(b"\r\n\r\nok")
    # HTTP/1.0 closes after one answer.
    assert raw_exchange(served.port, b"GET /healthz HTTP/1.0\r\n\r\n").endswith(b"\r\n\r\nok")
    assert sum(served.drops.values()) == 0


@pytest.mark.parametrize("served", [ServerLimits(idle_timeout=1.0)], indirect=True)
def test_an_idle_kept_alive_connection_is_closed_without_counting_a_drop(
    served: Served,
) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=WELL_WITHIN) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        started = time.monotonic()
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        assert time.monotonic() - started < WELL_WITHIN
    assert received.endswith(b"ok")
    assert sum(served.drops.values()) == 0


def test_a_client_that_does_not_read_its_answer_is_cut() -> None:
    big = Response(200, b"x" * (64 << 20))
    served = Served(ServerLimits(send_timeout=1.0), routes={"/big": big})
    try:
        with socket.create_connection(("127.0.0.1", served.port)) as sock:
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
            wait_until(lambda: served.drops["timeout"] == 1, what="the send deadline")
            assert served.server.connection_count == 0
        assert served.get("/healthz") == (404, b"404 page not found\n")  # only /big here
    finally:
        served.server.stop()


def test_a_failing_handler_answers_500_and_is_logged_once() -> None:
    def broken(request: Request) -> Response:
        raise RuntimeError("boom")

    server = HttpServer("probe")
    server.start()
    try:
        listener = server.listen("127.0.0.1:0", broken)
        with structlog.testing.capture_logs() as logged:
            for _ in range(3):
                answer = raw_exchange(
                    listener.port, b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                )
                assert answer.startswith(b"HTTP/1.1 500 Internal Server Error")
        assert [entry["event"] for entry in logged] == ["HTTP handler failed"]
    finally:
        server.stop()


def test_listeners_share_a_server_and_close_one_by_one() -> None:
    server = HttpServer("probe")
    server.start()
    try:
        count = {"/": lambda: Response(200, b'{"localEndpoints": 1}', JSON)}
        first = server.listen("127.0.0.1:0", by_path(count))
        second = server.listen("127.0.0.1:0", lambda request: Response(503, request.path.encode()))
        assert raw_exchange(first.port, b"GET / HTTP/1.0\r\n\r\n").endswith(b"1}")
        answer = raw_exchange(second.port, b"GET /any/path HTTP/1.0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503") and answer.endswith(b"/any/path")
        first.close()
        with pytest.raises(ConnectionRefusedError):
            raw_exchange(first.port, b"GET / HTTP/1.0\r\n\r\n")
        assert raw_exchange(second.port, b"GET / HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 503")
    finally:
        server.stop()


def test_a_taken_address_fails_to_listen_and_a_stopped_server_frees_it() -> None:
    first, second = HttpServer("probe"), HttpServer("probe")
    first.start()
    second.start()
    try:
        port = first.listen("127.0.0.1:0", by_path({})).port
        with pytest.raises(OSError):
            second.listen(f"127.0.0.1:{port}", by_path({}))
    finally:
        first.stop()
        second.stop()
    with socket.create_server(("127.0.0.1", port)):
        pass
    with pytest.raises(RuntimeError, match="not started"):
        first.listen("127.0.0.1:0", by_path({}))


def test_ipv6_addresses_are_served() -> None:
    server = HttpServer("probe")
    server.start()
    try:
        try:
            listener = server.listen("[::1]:0", by_path({"/healthz": lambda: OK}))
        except OSError as error:  # a host without IPv6 loopback
            pytest.skip(f"no IPv6 loopback: {error}")
        with socket.create_connection(("::1", listener.port), timeout=WELL_WITHIN) as sock:
            sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_connections", 0), ("workers", 0), ("request_timeout", 0.0), ("send_timeout", -1.0)],
)
def test_limits_must_be_positive(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        ServerLimits(**{field: value})  # type: ignore[arg-type]
