"""The healthz and metrics servers, over real HTTP on loopback."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from builders import key
from waolb.health import TO_BE_DELETED_TAINT, ProxierHealth, go_time
from waolb.metrics import HttpEndpoint, ProxyMetrics, metrics_routes
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


@pytest.fixture
def health_url(health: ProxierHealth) -> Iterator[str]:
    server = HttpEndpoint("127.0.0.1:0", health.routes(), "healthz")
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


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
    server = HttpEndpoint("127.0.0.1:0", metrics_routes(metrics), "metrics")
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


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


def test_ipv6_addresses_are_served(metrics: ProxyMetrics) -> None:
    server = HttpEndpoint("[::1]:0", metrics_routes(metrics), "metrics")
    try:
        server.start()
    except OSError as error:  # a host without IPv6 loopback
        pytest.skip(f"no IPv6 loopback: {error}")
    try:
        assert get(f"http://[::1]:{server.port}/proxyMode")[0] == 200
    finally:
        server.stop()


def test_a_taken_address_fails_to_start_and_a_stopped_server_frees_it(
    metrics: ProxyMetrics,
) -> None:
    first = HttpEndpoint("127.0.0.1:0", metrics_routes(metrics), "metrics")
    first.start()
    address = f"127.0.0.1:{first.port}"
    with pytest.raises(OSError):
        HttpEndpoint(address, metrics_routes(metrics), "metrics").start()
    first.stop()
    with socket.create_server(("127.0.0.1", int(address.rsplit(":", 1)[1]))):
        pass


def test_weight_gauges_are_replaced_per_port(metrics: ProxyMetrics) -> None:
    def ep(ip: str) -> EndpointInfo:
        return EndpointInfo(ip, 80, None, None, True, True, False, False)

    metrics.record_weights(key(), "http", [ep("10.0.0.1"), ep("fd00::1")], [3, 5])
    sample = metrics.registry.get_sample_value
    labels = {"namespace": "default", "service": "web", "port": "http"}
    assert sample("waolb_endpoint_weight", {**labels, "endpoint": "[fd00::1]:80"}) == 5
    metrics.record_weights(key(), "http", [ep("10.0.0.1")], [7])
    assert sample("waolb_endpoint_weight", {**labels, "endpoint": "10.0.0.1:80"}) == 7
    assert sample("waolb_endpoint_weight", {**labels, "endpoint": "[fd00::1]:80"}) is None
    metrics.forget_weights(key())
    assert sample("waolb_endpoint_weight", {**labels, "endpoint": "10.0.0.1:80"}) is None
