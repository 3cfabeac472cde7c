"""Prometheus metrics (kube-proxy's names where they apply).

Every metric lives in the registry a :class:`ProxyMetrics` owns, never the global one, so
that tests and several proxiers in one process stay apart. The server they are scraped from
is :mod:`waolb.httpserver`'s.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Final

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

from waolb.config import WEIGHT_METRICS
from waolb.httpserver import Response, Route
from waolb.state import EndpointInfo, ServicePortKey


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


class _WeightSeries(Collector):
    """The programmed weights, as series built when scraped from the ports last programmed.

    Recording a port costs one dictionary entry on the sync path whatever its endpoint count
    (100 000 labelled gauge children cost seconds after a large full sync); the series are
    produced only when someone asks for them, and only as many as ``detail`` asks for:
    "service" gives two series per service port, "endpoint" adds one per endpoint.
    """

    def __init__(self, detail: str) -> None:
        if detail not in WEIGHT_METRICS:
            raise ValueError(f"{detail!r} is not one of {', '.join(WEIGHT_METRICS)}")
        self._detail = detail
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
        if self._detail == "none":
            return
        with self._lock:
            ports = list(self._ports.items())
        port_labels = ["namespace", "service", "port", "family"]
        endpoint_count = GaugeMetricFamily(
            "waolb_service_endpoints",
            "Endpoints programmed for a service port, by IP family",
            labels=port_labels,
        )
        top_share = GaugeMetricFamily(
            "waolb_service_max_endpoint_share",
            "Largest share of a service port's traffic that one endpoint gets (0-1; "
            "1/endpoints when the weights are equal)",
            labels=port_labels,
        )
        for key, (port_label, endpoints, weights) in ports:
            labels = [key.namespace, key.name, port_label, f"IPv{key.family}"]
            endpoint_count.add_metric(labels, len(endpoints))
            total = sum(weights)
            top_share.add_metric(labels, max(weights) / total if total else 0.0)
        yield endpoint_count
        yield top_share
        if self._detail == "endpoint":
            yield self._endpoint_series(ports)

    @staticmethod
    def _endpoint_series(
        ports: list[tuple[ServicePortKey, tuple[str, Sequence[EndpointInfo], Sequence[int]]]],
    ) -> Metric:
        family = GaugeMetricFamily(
            "waolb_endpoint_weight",
            "Programmed weight of an endpoint within its service port (0: left out)",
            labels=["namespace", "service", "port", "endpoint"],
        )
        for key, (port_label, endpoints, weights) in ports:
            for endpoint, weight in zip(endpoints, weights, strict=True):
                family.add_metric(
                    [key.namespace, key.name, port_label, _endpoint_label(endpoint)], weight
                )
        return family


class ProxyMetrics:
    """Every metric of one proxy; ``weight_metrics`` is the ``weightMetrics`` setting."""

    def __init__(
        self, registry: CollectorRegistry | None = None, weight_metrics: str = "service"
    ) -> None:
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
        self._weights = _WeightSeries(weight_metrics)
        r.register(self._weights)
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
        self.http_drops = Counter(
            "waolb_http_connections_dropped_total",
            "Connections the healthz, metrics or weights server ended before their client was "
            "done: evicted, refused, timeout, malformed, too_large, method, body",
            ["server", "reason"],
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
        self._weights.record(key, port_label, endpoints, weights)

    def forget_weights(self, key: ServicePortKey) -> None:
        self._weights.forget(key)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def routes(self) -> dict[str, Route]:
        """kube-proxy's metrics server: /metrics, plus /healthz and /proxyMode that tools
        probe."""
        return {
            "/metrics": lambda: Response(200, self.exposition(), CONTENT_TYPE_LATEST),
            "/healthz": lambda: Response(200, b"ok"),
            "/proxyMode": lambda: Response(200, b"nftables"),
        }


def _endpoint_label(endpoint: EndpointInfo) -> str:
    host = f"[{endpoint.ip}]" if ":" in endpoint.ip else endpoint.ip
    return f"{host}:{endpoint.port}"
