"""waolb's metrics API client against the test API server, through the real Kubernetes client."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes.client import ApiClient
from structlog.testing import capture_logs

from kubeapi import NODE_METRICS, ApiError, KubeApiServer
from kubeapi.objects import node, node_metrics
from waolb.kube.client import build_api_client
from waolb.kube.rest import RestClient
from waolb.wao.metrics_api import (
    CUSTOM_METRICS_PATH,
    NODE_METRICS_PATH,
    ClusterMetrics,
    MetricsApiError,
)

WILDCARD_INLET_TEMP = f"{CUSTOM_METRICS_PATH}/nodes/*/inlet_temp"


@pytest.fixture
def metrics(kube_client: ApiClient) -> ClusterMetrics:
    return ClusterMetrics(RestClient(kube_client), timeout=5.0)


@pytest.fixture
def production_client(kube_api: KubeApiServer) -> Iterator[ApiClient]:
    """The client as waolb configures it: without urllib3's retries, which would otherwise
    retry a 429 after its Retry-After, and a timed-out read, behind the caller's back."""
    with build_api_client(master=kube_api.url) as client:
        yield client


def error_of(call: pytest.ExceptionInfo[MetricsApiError]) -> tuple[str, int | None]:
    return call.value.kind, call.value.status


# CPU usage from metrics-server.


def test_cpu_usage_of_every_node_in_one_list(
    kube_api: KubeApiServer, metrics: ClusterMetrics
) -> None:
    kube_api.register(NODE_METRICS)
    for name, cpu in (
        ("node-a", "250m"),
        ("node-b", "123456789n"),
        ("node-c", "2"),
        ("node-d", "1.5"),
    ):
        kube_api.create(node_metrics(name, cpu))
    usage = metrics.node_cpu_usage()
    assert usage == {"node-a": 0.25, "node-b": 0.123456789, "node-c": 2.0, "node-d": 1.5}
    assert usage.skipped == {}
    assert [r.path for r in kube_api.requests()] == [NODE_METRICS_PATH]


def test_requests_carry_the_clients_credentials(
    kube_api: KubeApiServer, kube_client: ApiClient
) -> None:
    kube_api.register_wao()
    kube_client.configuration.api_key = {"authorization": "Bearer t0ken"}
    kube_client.user_agent = "waolb/test"
    metrics = ClusterMetrics(RestClient(kube_client), timeout=5.0)
    metrics.node_cpu_usage()
    metrics.node_metric("inlet_temp")
    for request in kube_api.requests():
        assert request.headers["authorization"] == "Bearer t0ken"
        assert request.headers["user-agent"] == "waolb/test"
        assert request.headers["accept"] == "application/json"


def test_malformed_node_metrics_are_skipped_and_logged(
    kube_api: KubeApiServer, metrics: ClusterMetrics
) -> None:
    items = [
        {"metadata": {"name": "node-a"}, "usage": {"cpu": "250m", "memory": "1Gi"}},
        {"metadata": {}, "usage": {"cpu": "1"}},
        {"metadata": {"name": "node-c"}, "usage": {"cpu": "bogus"}},
        {"metadata": {"name": "node-d"}},
        "not an object",
        {"metadata": {"name": "node-f"}, "usage": {"cpu": "-1"}},
        {"metadata": {"name": "node-g"}, "usage": {"cpu": True}},
        {"metadata": {"name": "node-h"}, "usage": {"cpu": "NaN"}},
        {"metadata": {"name": ""}, "usage": {"cpu": "1"}},
        {"metadata": {"name": "node-j"}, "usage": {"cpu": 3}},  # Go decodes numbers too
    ]
    body = orjson.dumps({"kind": "NodeMetricsList", "items": items})
    with kube_api.answering(NODE_METRICS_PATH, body), capture_logs() as logs:
        usage = metrics.node_cpu_usage()
    assert usage == {"node-a": 0.25, "node-j": 3.0}
    assert usage.skipped == {
        "items[1]": "no name",
        "node-c": "'bogus' is not a quantity",
        "node-d": "no usage",
        "items[4]": "string indices must be integers, not 'str'",
        "node-f": "negative CPU usage -1.0",
        "node-g": "True is not a quantity",
        "node-h": "'NaN' is not a finite quantity",
        "items[8]": "the node name is ''",
    }
    (warning,) = logs
    assert (warning["log_level"], warning["skipped"]) == ("warning", usage.skipped)


def test_metrics_server_missing_or_down_is_unavailable(
    kube_api: KubeApiServer, metrics: ClusterMetrics
) -> None:
    with pytest.raises(MetricsApiError) as missing:
        metrics.node_cpu_usage()
    assert error_of(missing) == ("unavailable", 404)
    kube_api.register(NODE_METRICS)
    with kube_api.unavailable("metrics.k8s.io"), pytest.raises(MetricsApiError) as down:
        metrics.node_cpu_usage()
    assert error_of(down) == ("unavailable", 503)
    assert "service unavailable" in str(down.value)
    assert metrics.node_cpu_usage() == {}


@pytest.mark.parametrize(
    ("code", "kind"), [(500, "http_status"), (503, "unavailable"), (429, "http_status")]
)
def test_failed_answers(
    kube_api: KubeApiServer, production_client: ApiClient, code: int, kind: str
) -> None:
    kube_api.register(NODE_METRICS)
    metrics = ClusterMetrics(RestClient(production_client), timeout=5.0)
    with kube_api.failing(code, count=1), pytest.raises(MetricsApiError) as failed:
        metrics.node_cpu_usage()
    assert error_of(failed) == (kind, code)
    assert kube_api.count_requests(path=NODE_METRICS_PATH) == 1


@pytest.mark.parametrize(
    "body", [b"<html>oops</html>", b"[1, 2]", b'{"kind": "NodeMetricsList", "items": {}}', b"{}"]
)
def test_answers_that_are_no_list_are_response_errors(
    kube_api: KubeApiServer, metrics: ClusterMetrics, body: bytes
) -> None:
    with kube_api.answering(NODE_METRICS_PATH, body), pytest.raises(MetricsApiError) as bad:
        metrics.node_cpu_usage()
    assert error_of(bad) == ("response", None)


def test_refused_connection(kube_api: KubeApiServer, metrics: ClusterMetrics) -> None:
    kube_api.stop()
    with pytest.raises(MetricsApiError) as refused:
        metrics.node_cpu_usage()
    assert error_of(refused) == ("connection", None)


def test_a_slow_server_times_out(kube_api: KubeApiServer, production_client: ApiClient) -> None:
    kube_api.register_wao()
    metrics = ClusterMetrics(RestClient(production_client), timeout=0.3)
    for call in (metrics.node_cpu_usage, lambda: metrics.node_metric("inlet_temp")):
        with kube_api.slow(5.0, count=1):
            started = time.monotonic()
            with pytest.raises(MetricsApiError) as slow:
                call()
            # Only the first request is slow: a retry would have succeeded.
            assert error_of(slow) == ("timeout", None)
            assert time.monotonic() - started < 2.0
    assert metrics.node_metric("inlet_temp") == {}


def test_timeout_must_be_positive(kube_client: ApiClient) -> None:
    with pytest.raises(ValueError, match="above zero"):
        ClusterMetrics(RestClient(kube_client), timeout=0)


# Custom metrics from the custom metrics API.


def test_custom_metric_of_every_node_in_one_request(
    kube_api: KubeApiServer, metrics: ClusterMetrics
) -> None:
    kube_api.serve_custom_metrics()
    values = {
        "node-a": 22.5,  # "22500m", as wao-metrics-adapter writes it
        "node-b": "21",
        "node-c": "20.75",
        "node-d": "21123456u",
        "node-e": "19500000000n",
        "node-f": "2.5e1",
    }
    for name, value in values.items():
        kube_api.create(node(name))
        kube_api.set_node_metric(name, "inlet_temp", value)
    kube_api.create(node("node-g"))  # no value: left out, not an error
    temperatures = metrics.node_metric("inlet_temp")
    assert temperatures == {
        "node-a": 22.5,
        "node-b": 21.0,
        "node-c": 20.75,
        "node-d": 21.123456,
        "node-e": 19.5,
        "node-f": 25.0,
    }
    assert temperatures.skipped == {}
    assert [r.path for r in kube_api.requests()] == [WILDCARD_INLET_TEMP]


def test_malformed_custom_metric_items_are_skipped(
    kube_api: KubeApiServer, metrics: ClusterMetrics
) -> None:
    def item(kind: str, name: str, metric: str, value: object) -> dict[str, object]:
        return {
            "describedObject": {"kind": kind, "name": name, "apiVersion": "/v1"},
            "metric": {"name": metric, "selector": None},
            "timestamp": "2024-01-01T00:00:00Z",
            "value": value,
        }

    items = [
        item("Node", "node-a", "inlet_temp", "22500m"),
        item("Pod", "web-1", "inlet_temp", "1"),
        item("Node", "node-c", "delta_p", "1"),
        item("Node", "node-d", "inlet_temp", "hot"),
        {"describedObject": {"kind": "Node", "name": "node-e"}, "metric": {"name": "inlet_temp"}},
    ]
    body = orjson.dumps({"kind": "MetricValueList", "items": items})
    with kube_api.answering(WILDCARD_INLET_TEMP, body):
        temperatures = metrics.node_metric("inlet_temp")
    assert temperatures == {"node-a": 22.5}
    assert temperatures.skipped == {
        "items[1]": "describes a 'Pod', not a Node",
        "node-c": "is metric 'delta_p', not 'inlet_temp'",
        "node-d": "'hot' is not a quantity",
        "node-e": "no value",
    }


def test_custom_metrics_api_missing_down_or_failing(
    kube_api: KubeApiServer, metrics: ClusterMetrics
) -> None:
    with pytest.raises(MetricsApiError) as missing:
        metrics.node_metric("inlet_temp", nodes=["node-a"])
    assert error_of(missing) == ("unavailable", 404)
    kube_api.serve_custom_metrics()
    with kube_api.unavailable("custom.metrics.k8s.io"), pytest.raises(MetricsApiError) as down:
        metrics.node_metric("inlet_temp")
    assert error_of(down) == ("unavailable", 503)
    for code, kind in ((500, "http_status"), (503, "unavailable")):
        with kube_api.failing(code), pytest.raises(MetricsApiError) as failed:
            metrics.node_metric("inlet_temp", nodes=["node-a"])
        # An API server failure is no reason to ask node by node.
        assert error_of(failed) == (kind, code)
    assert kube_api.count_requests(path=f"{CUSTOM_METRICS_PATH}/nodes/node-a/inlet_temp") == 0


def test_a_metric_the_adapter_does_not_know_is_not_found(
    kube_api: KubeApiServer, metrics: ClusterMetrics
) -> None:
    # prometheus-adapter answers a wildcard for a metric it has no rule for like this.
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "the server could not find the metric inlet_temp for nodes",
        "reason": "NotFound",
        "code": 404,
    }
    answer = orjson.dumps(status)
    with (
        kube_api.answering(WILDCARD_INLET_TEMP, answer, 404),
        pytest.raises(MetricsApiError) as unknown,
    ):
        metrics.node_metric("inlet_temp")
    assert error_of(unknown) == ("not_found", 404)
    assert "could not find the metric inlet_temp for nodes" in str(unknown.value)


def test_wao_metrics_adapter_is_asked_node_by_node_when_one_node_has_no_value(
    kube_api: KubeApiServer, metrics: ClusterMetrics
) -> None:
    kube_api.serve_custom_metrics(missing="error")
    for name in ("node-a", "node-b", "node-c", "control-plane"):
        kube_api.create(node(name))
    kube_api.set_node_metric("node-a", "delta_p", 7.5)
    kube_api.set_node_metric("node-c", "delta_p", 0.0)
    with pytest.raises(MetricsApiError) as whole:
        metrics.node_metric("delta_p")
    assert (*error_of(whole), whole.value.reason) == ("http_status", 500, "")

    pressures = metrics.node_metric("delta_p", nodes=["node-a", "node-b", "node-c"])
    assert pressures == {"node-a": 7.5, "node-c": 0.0}
    assert pressures.skipped == {
        "node-b": f"{CUSTOM_METRICS_PATH}/nodes/node-b/delta_p: HTTP 500: "
        "metric delta_p for /nodes/node-b not found"
    }
    asked = [r.path.rsplit("/", 2)[1] for r in kube_api.requests()]
    assert asked == ["*", "*", "node-a", "node-b", "node-c"]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=5))
def test_values_read_back_as_the_adapter_wrote_them(
    kube_api: KubeApiServer, metrics: ClusterMetrics, readings: list[float]
) -> None:
    kube_api.serve_custom_metrics()
    for index, value in enumerate(readings):
        with contextlib.suppress(ApiError):  # an earlier example created it
            kube_api.create(node(f"node-{index}"))
        kube_api.set_node_metric(f"node-{index}", "inlet_temp", value)
    read = metrics.node_metric("inlet_temp")
    for index, value in enumerate(readings):
        # The adapter keeps six decimals, truncated; both sides round the same rational.
        assert read[f"node-{index}"] == int(value * 10**6) / 10**6
