"""The healthz and metrics routes, served over real HTTP on loopback."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from builders import key
from waolb.health import TO_BE_DELETED_TAINT, ProxierHealth, go_time
from waolb.httpserver import HttpServer, Route, by_path
from waolb.metrics import ProxyMetrics
from waolb.state import EndpointInfo

KUBE_PROXY_METRICS = [
    "kubeproxy_sync_proxy_rules_duration_seconds",
    "kubeproxy_sync_full_proxy_rules_duration_seconds",
    "kubeproxy_sync_partial_proxy_rules_duration_seconds",
    "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
    "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
    "kubeproxy_network_programming_duration_seconds",
    "kubeproxy_sync_proxy_rules_endpoint_changes_total",
    "kubeproxy_sync_proxy_rules_service_changes_total",
    "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


@pytest.fixture
def metrics() -> ProxyMetrics:
    return ProxyMetrics()


@pytest.fixture
def clock() -> Clock:
    return Clock(1_700_000_000.0)


@pytest.fixture
def health(metrics: ProxyMetrics, clock: Clock) -> ProxierHealth:
    return ProxierHealth(60.0, metrics, clock=clock)


@contextlib.contextmanager
def serving(routes: dict[str, Route], host: str = "127.0.0.1") -> Iterator[str]:
    """The URL of a server on ``host`` serving ``routes``."""
    server = HttpServer("test")
    server.start()
    try:
        listener = server.listen(f"{host}:0", by_path(routes))
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{listener.port}"
    finally:
        server.stop()


@pytest.fixture
def health_url(health: ProxierHealth) -> Iterator[str]:
    with serving(health.routes()) as url:
        yield url


def test_healthz_answers_like_kube_proxy(health_url: str, clock: Clock) -> None:
    status, content_type, body = get(f"{health_url}/healthz")
    assert status == 200
    assert content_type == "application/json"
    assert json.loads(body) == {
        "lastUpdated": "2023-11-14 22:13:20 +0000 UTC",  # a healthy proxy reports "now"
        "currentTime": "2023-11-14 22:13:20 +0000 UTC",
        "nodeEligible": True,
    }
    status, _, body = get(f"{health_url}/livez")
    assert status == 200
    assert set(json.loads(body)) == {"lastUpdated", "currentTime"}


def test_no_sync_within_the_timeout_of_start_is_unhealthy(
    health: ProxierHealth, health_url: str, clock: Clock, metrics: ProxyMetrics
) -> None:
    clock.now += 59.9
    assert get(f"{health_url}/healthz")[0] == 200
    clock.now += 0.1
    status, _, body = get(f"{health_url}/healthz")
    assert status == 503
    assert json.loads(body)["lastUpdated"] == "0001-01-01 00:00:00 +0000 UTC"
    assert get(f"{health_url}/livez")[0] == 503
    health.updated()
    assert get(f"{health_url}/healthz")[0] == 200
    sample = metrics.registry.get_sample_value
    assert sample("kubeproxy_healthz_total", {"code": "200"}) == 2
    assert sample("kubeproxy_healthz_total", {"code": "503"}) == 1
    assert sample("kubeproxy_livez_total", {"code": "503"}) == 1


def test_queued_changes_older_than_the_timeout_are_unhealthy(
    health: ProxierHealth, health_url: str, clock: Clock
) -> None:
    health.updated()
    synced_at = clock.now
    clock.now += 100  # idle for long: still healthy
    assert get(f"{health_url}/healthz")[0] == 200
    health.queued_update()
    clock.now += 30
    health.queued_update()  # a later change does not reset the oldest one
    clock.now += 30
    status, _, body = get(f"{health_url}/healthz")
    assert status == 503
    assert json.loads(body)["lastUpdated"] == go_time(synced_at)
    health.updated()
    assert get(f"{health_url}/healthz")[0] == 200


def test_a_node_being_deleted_fails_healthz_but_not_livez(
    health: ProxierHealth, health_url: str
) -> None:
    node = {"metadata": {"name": "node-a"}, "spec": {"taints": [{"key": TO_BE_DELETED_TAINT}]}}
    health.sync_node(node)
    status, _, body = get(f"{health_url}/healthz")
    assert (status, json.loads(body)["nodeEligible"]) == (503, False)
    assert get(f"{health_url}/livez")[0] == 200
    health.sync_node({"metadata": {"name": "node-a"}, "spec": {}})
    assert get(f"{health_url}/healthz")[0] == 200
    health.sync_node({"metadata": {"name": "node-a", "deletionTimestamp": "2024-01-01T00:00:00Z"}})
    assert get(f"{health_url}/healthz")[0] == 503
    health.sync_node(None)
    assert get(f"{health_url}/healthz")[0] == 503


def test_go_time_formats_like_time_time() -> None:
    assert go_time(0.0) == "1970-01-01 00:00:00 +0000 UTC"
    assert go_time(1.5) == "1970-01-01 00:00:01.5 +0000 UTC"
    assert go_time(None) == "0001-01-01 00:00:00 +0000 UTC"


@pytest.fixture
def metrics_url(metrics: ProxyMetrics) -> Iterator[str]:
    with serving(metrics.routes()) as url:
        yield url


def test_metrics_are_served_with_kube_proxys_names(metrics: ProxyMetrics, metrics_url: str) -> None:
    metrics.sync_duration.observe(0.01)
    metrics.watch_restarts.labels("Service", "expired").inc()
    metrics.scoring_errors.labels("provider").inc()
    metrics.scoring_duration.observe(0.2)
    metrics.sync_batch_messages.observe(12)
    status, content_type, body = get(f"{metrics_url}/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    text = body.decode()
    for name in KUBE_PROXY_METRICS:
        assert f"# TYPE {name} " in text, name
    assert "kubeproxy_sync_proxy_rules_duration_seconds_count 1.0" in text
    assert 'waolb_watch_restarts_total{kind="Service",reason="expired"} 1.0' in text
    assert 'waolb_scoring_errors_total{kind="provider"} 1.0' in text
    assert "waolb_scoring_duration_seconds_count 1.0" in text
    assert "waolb_sync_batch_messages_count 1.0" in text


def test_the_metrics_server_answers_kube_proxys_other_paths(metrics_url: str) -> None:
    assert get(f"{metrics_url}/proxyMode")[::2] == (200, b"nftables")
    assert get(f"{metrics_url}/healthz")[::2] == (200, b"ok")
    assert get(f"{metrics_url}/nothing")[0] == 404


def test_registries_are_per_instance() -> None:
    first, second = ProxyMetrics(), ProxyMetrics()
    first.service_changes.inc()
    assert first.registry.get_sample_value("kubeproxy_sync_proxy_rules_service_changes_total") == 1
    assert second.registry.get_sample_value("kubeproxy_sync_proxy_rules_service_changes_total") == 0


def endpoint(ip: str) -> EndpointInfo:
    return EndpointInfo(ip, 80, None, None, True, True, False, False)


PORT_LABELS = {"namespace": "default", "service": "web", "port": "http"}


def test_weight_series_per_endpoint_are_replaced_per_port() -> None:
    metrics = ProxyMetrics(weight_metrics="endpoint")
    metrics.record_weights(key(), "http", [endpoint("10.0.0.1"), endpoint("fd00::1")], [3, 5])
    sample = metrics.registry.get_sample_value
    assert sample("waolb_endpoint_weight", {**PORT_LABELS, "endpoint": "[fd00::1]:80"}) == 5
    metrics.record_weights(key(), "http", [endpoint("10.0.0.1")], [7])
    assert sample("waolb_endpoint_weight", {**PORT_LABELS, "endpoint": "10.0.0.1:80"}) == 7
    assert sample("waolb_endpoint_weight", {**PORT_LABELS, "endpoint": "[fd00::1]:80"}) is None
    metrics.forget_weights(key())
    assert sample("waolb_endpoint_weight", {**PORT_LABELS, "endpoint": "10.0.0.1:80"}) is None


@pytest.mark.parametrize("detail", ["service", "endpoint"])
def test_a_service_ports_summary_tells_its_endpoints_and_largest_share(detail: str) -> None:
    metrics = ProxyMetrics(weight_metrics=detail)
    endpoints = [endpoint("10.0.0.1"), endpoint("10.0.0.2"), endpoint("10.0.0.3")]
    metrics.record_weights(key(), "http", endpoints, [6, 3, 1])
    sample = metrics.registry.get_sample_value
    labels = {**PORT_LABELS, "family": "IPv4"}
    assert sample("waolb_service_endpoints", labels) == 3
    assert sample("waolb_service_max_endpoint_share", labels) == 0.6
    metrics.record_weights(key(), "http", endpoints, [0, 0, 0])  # nothing left to weigh
    assert sample("waolb_service_max_endpoint_share", labels) == 0
    metrics.forget_weights(key())
    assert sample("waolb_service_endpoints", labels) is None


def test_the_default_weight_series_are_per_service_port_only() -> None:
    metrics = ProxyMetrics()
    metrics.record_weights(key(), "http", [endpoint("10.0.0.1")], [1])
    text = metrics.exposition().decode()
    assert "waolb_service_endpoints{" in text
    assert "waolb_endpoint_weight" not in text


def test_weight_series_can_be_turned_off() -> None:
    metrics = ProxyMetrics(weight_metrics="none")
    metrics.record_weights(key(), "http", [endpoint("10.0.0.1")], [1])
    text = metrics.exposition().decode()
    assert "waolb_service_endpoints" not in text
    assert "waolb_endpoint_weight" not in text
    with pytest.raises(ValueError, match="'all' is not one of none, service, endpoint"):
        ProxyMetrics(weight_metrics="all")
