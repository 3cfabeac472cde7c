"""The HTTP servers: /healthz under a flood of stalled connections, and the cost of a scrape.

healthz: the time of one GET /healthz on an idle server, on the same kind of server while
300 half-sent requests, 20 trickled headers and 20 silent connections hold on (more than its
256-connection cap: evictions run too), with the server's thread count, and while the process
renders per-endpoint /metrics scrapes back to back.

/metrics: one scrape over loopback HTTP at 10 000 services x 10 endpoints, for each
weightMetrics setting, in the same run: the per-endpoint series ("endpoint", what main served
before) against the default per-service-port summary ("service") and none ("none").
"""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
from collections.abc import Iterator

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from builders import key
from hostile import HostileClients, Stall
from waolb.httpserver import HttpServer, Response, by_path
from waolb.metrics import ProxyMetrics
from waolb.state import EndpointInfo

SERVICES = 10_000
ENDPOINTS_PER_SERVICE = 10
STALLED = ((Stall.HALF_SENT, 300), (Stall.SLOW_HEADERS, 20), (Stall.SILENT, 20))
FLAGS = (True, True, False, False)  # ready, serving, not terminating, not local


@contextlib.contextmanager
def serving(routes: dict[str, Response]) -> Iterator[tuple[HttpServer, int]]:
    server = HttpServer("bench")
    server.start()
    try:
        fixed = {path: (lambda r=r: r) for path, r in routes.items()}
        yield server, server.listen("127.0.0.1:0", by_path(fixed)).port
    finally:
        server.stop()


def get(port: int, path: str) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200
        return body
    finally:
        connection.close()


def timed_healthz(benchmark: BenchmarkFixture, port: int, rounds: int = 50) -> None:
    latencies: list[float] = []

    def probe() -> None:
        started = time.perf_counter()
        assert get(port, "/healthz") == b"ok"
        latencies.append(time.perf_counter() - started)

    benchmark.pedantic(probe, rounds=rounds, iterations=1)
    benchmark.extra_info["max_seconds"] = max(latencies)


@pytest.mark.benchmark(group="GET /healthz: idle vs 340 stalled connections")
def test_healthz_idle(benchmark: BenchmarkFixture) -> None:
    with serving({"/healthz": Response(200, b"ok")}) as (_, port):
        timed_healthz(benchmark, port)


@pytest.mark.benchmark(group="GET /healthz: idle vs 340 stalled connections")
def test_healthz_under_stalled_connections(benchmark: BenchmarkFixture) -> None:
    with (
        serving({"/healthz": Response(200, b"ok")}) as (server, port),
        contextlib.ExitStack() as stack,
    ):
        for stall, count in STALLED:
            stack.enter_context(HostileClients(port, stall, count, interval=0.5))
        timed_healthz(benchmark, port)
        benchmark.extra_info["server_threads"] = sum(
            1 for t in threading.enumerate() if t.name.startswith("waolb-bench")
        )
        benchmark.extra_info["open_connections"] = server.connection_count


@pytest.mark.benchmark(group="GET /healthz: idle vs 340 stalled connections")
def test_healthz_during_endpoint_scrapes(benchmark: BenchmarkFixture) -> None:
    """/healthz while another server of the process renders per-endpoint /metrics without
    pause: both want the interpreter, as in the proxy."""
    metrics = programmed_metrics("endpoint")
    stop = threading.Event()
    scrapes = 0
    with serving({"/healthz": Response(200, b"ok")}) as (_, port):
        scraper = HttpServer("bench-metrics")
        scraper.start()
        try:
            metrics_port = scraper.listen("127.0.0.1:0", by_path(metrics.routes())).port

            def scrape() -> None:
                nonlocal scrapes
                while not stop.is_set():
                    get(metrics_port, "/metrics")
                    scrapes += 1

            thread = threading.Thread(target=scrape, daemon=True)
            thread.start()
            # Long enough to overlap several scrapes of about a second each.
            timed_healthz(benchmark, port, rounds=300)
            stop.set()
            thread.join()
        finally:
            scraper.stop()
    benchmark.extra_info["scrapes_meanwhile"] = scrapes


def programmed_metrics(detail: str) -> ProxyMetrics:
    metrics = ProxyMetrics(weight_metrics=detail)
    for service in range(SERVICES):
        endpoints = [
            EndpointInfo(f"10.{service >> 8}.{service & 255}.{e}", 8080, None, None, *FLAGS)
            for e in range(ENDPOINTS_PER_SERVICE)
        ]
        weights = list(range(1, ENDPOINTS_PER_SERVICE + 1))
        metrics.record_weights(key(name=f"svc-{service}"), "http", endpoints, weights)
    return metrics


@pytest.mark.benchmark(group="GET /metrics at 10 000 services x 10 endpoints")
@pytest.mark.parametrize("detail", ["endpoint", "service", "none"])
def test_scrape_10000_services(benchmark: BenchmarkFixture, detail: str) -> None:
    metrics = programmed_metrics(detail)
    server = HttpServer("bench")
    server.start()
    try:
        port = server.listen("127.0.0.1:0", by_path(metrics.routes())).port
        body = benchmark.pedantic(get, args=(port, "/metrics"), rounds=5, iterations=1)
    finally:
        server.stop()
    benchmark.extra_info["bytes"] = len(body)
    benchmark.extra_info["series"] = sum(
        1 for line in body.splitlines() if line and not line.startswith(b"#")
    )
