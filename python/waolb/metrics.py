"""Prometheus metrics (kube-proxy's names where they apply) and the small HTTP servers.

Every metric lives in the registry a :class:`ProxyMetrics` owns, never the global one, so
that tests and several proxiers in one process stay apart.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final
from urllib.parse import urlsplit

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from waolb import logs
from waolb.config import split_host_port
from waolb.state import EndpointInfo, ServicePortKey

log = logs.get_logger(__name__)


def _exponential_buckets(start: float, factor: float, count: int) -> list[float]:
    return [start * factor**index for index in range(count)]


def _network_programming_buckets() -> list[float]:
    # kube-proxy's: 0.25 s steps to 0.5 s, then 1 s steps to 59 s, 5 s to 115 s, 30 s to 5 min.
    return [
        0.25,
        0.5,
        *range(1, 60),
        *range(60, 120, 5),
        *range(120, 301, 30),
    ]


SYNC_BUCKETS: Final = _exponential_buckets(0.001, 2, 15)


class _EndpointWeights(Collector):
    """``waolb_endpoint_weight``, built when scraped from the ports last programmed.

    Recording a port costs one dictionary entry on the sync path whatever its endpoint count
    (100 000 labelled gauge children cost seconds after a large full sync); the series are
    produced only when someone asks for them.
    """

    def __init__(self) -> None:
        self._ports: dict[ServicePortKey, tuple[str, Sequence[EndpointInfo], Sequence[int]]] = {}
        self._lock = threading.Lock()

    def record(
        self,
        key: ServicePortKey,
        port_label: str,
        endpoints: Sequence[EndpointInfo],
        weights: Sequence[int],
    ) -> None:
        if len(endpoints) != len(weights):
            raise ValueError(f"{len(endpoints)} endpoints but {len(weights)} weights")
        with self._lock:
            self._ports[key] = (port_label, endpoints, weights)

    def forget(self, key: ServicePortKey) -> None:
        with self._lock:
            self._ports.pop(key, None)

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "waolb_endpoint_weight",
            "Programmed weight of an endpoint within its service port (0: left out)",
            labels=["namespace", "service", "port", "endpoint"],
        )
        with self._lock:
            ports = list(self._ports.items())
        for key, (port_label, endpoints, weights) in ports:
            for endpoint, weight in zip(endpoints, weights, strict=True):
                family.add_metric(
                    [key.namespace, key.name, port_label, _endpoint_label(endpoint)], weight
                )
        yield family


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # kube-proxy exports no *_created series; dashboards built for it expect none.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.sync_duration = Histogram(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            buckets=SYNC_BUCKETS,
            registry=r,
        )
        self.full_sync_duration = Histogram(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            buckets=SYNC_BUCKETS,
            registry=r,
        )
        self.partial_sync_duration = Histogram(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            buckets=SYNC_BUCKETS,
            registry=r,
        )
        self.last_sync_timestamp = Gauge(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            registry=r,
        )
        self.last_queued_timestamp = Gauge(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            registry=r,
        )
        self.network_programming_duration = Histogram(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            buckets=_network_programming_buckets(),
            registry=r,
        )
        self.endpoint_changes = Counter(
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
            "Cumulative proxy rules Endpoint changes",
            registry=r,
        )
        self.service_changes = Counter(
            "kubeproxy_sync_proxy_rules_service_changes_total",
            "Cumulative proxy rules Service changes",
            registry=r,
        )
        self.nftables_sync_failures = Counter(
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
            "Cumulative proxy nftables sync failures",
            registry=r,
        )
        self.healthz_responses = Counter(
            "kubeproxy_healthz_total", "Cumulative proxy healthz HTTP status", ["code"], registry=r
        )
        self.livez_responses = Counter(
            "kubeproxy_livez_total", "Cumulative proxy livez HTTP status", ["code"], registry=r
        )
        self._endpoint_weights = _EndpointWeights()
        r.register(self._endpoint_weights)
        self.scoring_duration = Histogram(
            "waolb_scoring_duration_seconds",
            "Time a weight provider took to score the services it scores",
            registry=r,
        )
        self.scoring_errors = Counter(
            "waolb_scoring_errors_total",
            "Weight scoring failures, by kind of failure",
            ["kind"],
            registry=r,
        )
        self.wao_fallbacks = Counter(
            "waolb_wao_fallbacks_total",
            "WAO scoring fallbacks: a node left out or a Service given equal weights, by reason",
            ["reason"],
            registry=r,
        )
        self.watch_restarts = Counter(
            "waolb_watch_restarts_total",
            "Restarts of an API watch, by resource kind and reason",
            ["kind", "reason"],
            registry=r,
        )
        self.sync_port_errors = Gauge(
            "waolb_sync_port_errors",
            "Service ports whose new state is refused and that keep their previous rules, by "
            "reason (invalid, clash, kernel)",
            ["reason"],
            registry=r,
        )
        self.sync_batch_messages = Histogram(
            "waolb_sync_batch_messages",
            "Netlink messages in one kernel batch",
            buckets=_exponential_buckets(1, 4, 12),
            registry=r,
        )

    def record_weights(
        self,
        key: ServicePortKey,
        port_label: str,
        endpoints: Sequence[EndpointInfo],
        weights: Sequence[int],
    ) -> None:
        """Publish a programmed port's weights, replacing what it had before."""
        self._endpoint_weights.record(key, port_label, endpoints, weights)

    def forget_weights(self, key: ServicePortKey) -> None:
        self._endpoint_weights.forget(key)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _endpoint_label(endpoint: EndpointInfo) -> str:
    host = f"[{endpoint.ip}]" if ":" in endpoint.ip else endpoint.ip
    return f"{host}:{endpoint.port}"


# ---- HTTP --------------------------------------------------------------------------------

# The scorer's last inputs and results as JSON, for `waolb weights`.
WEIGHTS_PATH: Final = "/waolb/weights"

# A route answers (status, content type, body).
Route = Callable[[], tuple[int, str, bytes]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class HttpEndpoint:
    """A threaded HTTP server on one "ip:port" serving a few fixed GET routes."""

    def __init__(self, address: str, routes: Mapping[str, Route], name: str) -> None:
        self._address = address
        self._routes = dict(routes)
        self._name = name
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when the configured port is 0)."""
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind (OSError if the address is taken) and serve in a daemon thread."""
        host, port = split_host_port(self._address)
        server_class = _Server6 if ":" in host else _Server
        self._server = server_class((host, port), _handler_for(self._routes, self._name))
        server = self._server
        self._thread = threading.Thread(
            # A short poll so that stop() returns promptly.
            target=lambda: server.serve_forever(poll_interval=0.05),
            name=f"waolb-{self._name}",
            daemon=True,
        )
        self._thread.start()
        log.info("serving HTTP", server=self._name, address=self._address, port=self.port)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = None


def _handler_for(routes: Mapping[str, Route], name: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "waolb"

        def do_GET(self) -> None:
            route = routes.get(urlsplit(self.path).path)
            if route is None:
                status, content_type, body = (
                    404,
                    "text/plain; charset=utf-8",
                    b"404 page not found\n",
                )
            else:
                status, content_type, body = route()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("HTTP request", server=name, request=format % args)

    return Handler


def metrics_routes(metrics: ProxyMetrics) -> dict[str, Route]:
    """kube-proxy's metrics server: /metrics, plus /healthz and /proxyMode that tools probe."""
    return {
        "/metrics": lambda: (200, CONTENT_TYPE_LATEST, metrics.exposition()),
        "/healthz": lambda: (200, "text/plain; charset=utf-8", b"ok"),
        "/proxyMode": lambda: (200, "text/plain; charset=utf-8", b"nftables"),
    }
