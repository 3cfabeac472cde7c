"""The ``waolb`` process end to end: API objects in, kernel rules and real traffic out.

Each test builds a "node" network namespace with pods (tests/support/netns.py) and runs
``waolb`` in the node namespace with kube-proxy's flags, as a DaemonSet would. Traffic to
cluster IPs goes from the node namespace to the pods' servers, which answer with their pod
name. The API server is the test double, listening inside the node namespace, and, for the
tests marked so, also the real control plane (kube-apiserver v1.34 and etcd), where waolb runs
as its ServiceAccount with deploy/'s RBAC.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import pytest

from e2e import (
    API_IP,
    NODE,
    PROXY_NAME_LABEL,
    WAOLB,
    WEB_IP,
    Environment,
    endpoint_slice,
    environment,
    service,
    wait_for_traffic,
)
from kubeapi import ENDPOINT_SLICES, NODES, SERVICES
from netns import HUNG_AFTER, entered, exchange, requires_netns, wait_until

pytestmark = requires_netns


@pytest.fixture(params=["double", "real"])
def env(request: pytest.FixtureRequest) -> Iterator[Environment]:
    """The test runs against the test double and against the real control plane."""
    real = request.getfixturevalue("deployment") if request.param == "real" else None
    with environment(real=real) as result:
        yield result


@pytest.fixture
def double_env() -> Iterator[Environment]:
    """For what only the test double does: restarts, objects a real server refuses."""
    with environment() as result:
        yield result


def test_services_are_programmed_and_follow_endpoint_changes(env: Environment) -> None:
    env.api.create(service("web", WEB_IP))
    env.api.create(endpoint_slice("web-a", "web", {"pod0": True, "pod1": True}))
    proxy = env.start_proxy()

    counts = wait_for_traffic(env, WEB_IP, {"pod0", "pod1"})
    assert min(counts.values()) > 40, counts
    assert "table ip wao-loadbalancer" in env.ruleset()

    # A second slice of the same service adds an endpoint (a partial sync).
    env.api.create(endpoint_slice("web-b", "web", {"pod2": True}))
    wait_for_traffic(env, WEB_IP, {"pod0", "pod1", "pod2"})

    # Not ready any more: left out.
    env.api.update(endpoint_slice("web-a", "web", {"pod0": False, "pod1": True}))
    wait_for_traffic(env, WEB_IP, {"pod1", "pod2"})

    # No endpoint left at all: connections are rejected, not black-holed.
    env.api.delete(ENDPOINT_SLICES, "web-b", "default")
    env.api.update(endpoint_slice("web-a", "web", {"pod0": False, "pod1": False}))
    refused = wait_until(
        lambda: exchange(env.cluster.node, WEB_IP, 80, count=5, timeout=1.0).errors.get(
            "ECONNREFUSED"
        ),
        what="connections refused",
    )
    assert refused == 5

    # The service goes away: so do its rules.
    env.api.delete(SERVICES, "web", "default")
    wait_until(lambda: "default/web" not in env.ruleset(), what="rules removed")
    assert proxy.process.poll() is None


def test_udp_services_and_the_minimum_sync_period_flag(env: Environment) -> None:
    env.api.create(service("dns", API_IP, protocol="UDP"))
    env.api.create(endpoint_slice("dns-a", "dns", {"pod0": True, "pod2": True}, protocol="UDP"))
    env.start_proxy()
    counts = wait_for_traffic(env, API_IP, {"pod0", "pod2"}, proto="udp", count=100)
    assert sum(counts.values()) == 100


def test_health_and_metrics_servers(env: Environment) -> None:
    env.api.create(service("web", WEB_IP))
    env.api.create(endpoint_slice("web-a", "web", {"pod0": True}))
    env.api.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}, "spec": {}})
    env.start_proxy()
    wait_for_traffic(env, WEB_IP, {"pod0"})

    status, body = env.http(10256, "/healthz")
    assert status == 200
    assert json.loads(body)["nodeEligible"] is True
    assert env.http(10256, "/livez")[0] == 200

    text = env.http(10249, "/metrics")[1].decode()
    assert "kubeproxy_sync_full_proxy_rules_duration_seconds_count 1.0" in text
    # The real server has two Services of its own: kubernetes, and the metrics APIs'.
    services = 3 if env.real else 1
    assert f"kubeproxy_sync_proxy_rules_service_changes_total {services}.0" in text
    # Per service port by default; one series per endpoint only if asked (weightMetrics).
    summary = 'waolb_service_endpoints{family="IPv4",namespace="default",port="http",'
    assert f'{summary}service="web"}} 1.0' in text
    assert "waolb_endpoint_weight" not in text
    assert env.http(10249, "/proxyMode") == (200, b"nftables")
    # The scorer's view is on its own loopback listener, not beside the metrics.
    assert env.http(10249, "/waolb/weights")[0] == 404
    status, body = env.http(10263, "/waolb/weights")
    assert status == 200
    assert set(json.loads(body)) == {"nodes", "services"}

    # The cluster autoscaler is about to delete the node: healthz fails, livez does not.
    taint = {"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}
    env.api.patch(NODES, NODE, {"spec": {"taints": [taint]}})
    wait_until(lambda: env.http(10256, "/healthz")[0] == 503, what="healthz 503")
    assert env.http(10256, "/livez")[0] == 200


def test_non_default_proxy_handles_only_its_labelled_services(env: Environment) -> None:
    env.api.create(service("web", WEB_IP, labels={PROXY_NAME_LABEL: "wao-loadbalancer"}))
    env.api.create(endpoint_slice("web-a", "web", {"pod0": True, "pod1": True}))
    env.api.create(service("plain", API_IP))
    env.api.create(endpoint_slice("plain-a", "plain", {"pod2": True}))
    env.api.create(service("other", "10.96.0.12", labels={PROXY_NAME_LABEL: "someone-else"}))
    env.api.create(endpoint_slice("other-a", "other", {"pod2": True}))
    # The addresses in the flags are overridden in this mode, as upstream WAO-LB does.
    env.start_proxy("--healthz-bind-address=127.0.0.1:1", proxy_name="wao-loadbalancer")

    wait_for_traffic(env, WEB_IP, {"pod0", "pod1"})
    rules = env.ruleset()
    assert "default/web" in rules
    assert "default/plain" not in rules
    assert "default/other" not in rules
    assert env.http(10356, "/healthz")[0] == 200
    assert env.http(10349, "/proxyMode") == (200, b"nftables")
    assert env.http(10256, "/healthz")[0] == 0  # nothing on kube-proxy's port

    # Relabelling moves a Service in or out of this proxy's hands.
    env.api.patch(
        SERVICES,
        "plain",
        {"metadata": {"labels": {PROXY_NAME_LABEL: "wao-loadbalancer"}}},
        "default",
    )
    wait_for_traffic(env, API_IP, {"pod2"})
    env.api.patch(SERVICES, "web", {"metadata": {"labels": {PROXY_NAME_LABEL: None}}}, "default")
    wait_until(lambda: "default/web" not in env.ruleset(), what="web released")


def test_a_malformed_object_is_skipped_and_the_rest_keeps_working(
    double_env: Environment,
) -> None:
    env = double_env  # a real API server refuses the broken address
    env.api.create(service("web", WEB_IP))
    env.api.create(endpoint_slice("web-a", "web", {"pod0": True}))
    env.api.create(service("api", API_IP))
    broken = endpoint_slice("api-a", "api", {"pod1": True})
    broken["endpoints"][0]["addresses"] = ["10.244.0.300"]
    env.api.create(broken)
    proxy = env.start_proxy()

    wait_for_traffic(env, WEB_IP, {"pod0"})
    wait_until(lambda: proxy.events("skipping a malformed object"), what="the error logged")
    (logged,) = proxy.events("skipping a malformed object")
    assert (logged["kind"], logged["namespace"], logged["name"]) == (
        "EndpointSlice",
        "default",
        "api-a",
    )
    assert "10.244.0.300" in logged["problem"]

    env.api.update(endpoint_slice("api-a", "api", {"pod1": True}))
    wait_for_traffic(env, API_IP, {"pod1"})
    assert len(proxy.events("skipping a malformed object")) == 1


def test_sigterm_leaves_the_rules_and_cleanup_removes_them(env: Environment) -> None:
    env.api.create(service("web", WEB_IP))
    env.api.create(endpoint_slice("web-a", "web", {"pod0": True, "pod1": True}))
    proxy = env.start_proxy()
    wait_for_traffic(env, WEB_IP, {"pod0", "pod1"})

    proxy.process.send_signal(signal.SIGTERM)
    assert proxy.process.wait(timeout=HUNG_AFTER) == 0
    assert set(env.traffic(WEB_IP)) == {"pod0", "pod1"}  # rules stay, traffic flows

    cleanup = env.cluster.node.run(str(WAOLB), "--cleanup", check=False)
    assert cleanup.returncode == 0, cleanup.stderr
    assert "wao-loadbalancer" not in env.ruleset()


def test_an_api_server_restart_is_survived(double_env: Environment) -> None:
    env = double_env
    env.api.create(service("web", WEB_IP))
    env.api.create(endpoint_slice("web-a", "web", {"pod0": True}))
    proxy = env.start_proxy()
    wait_for_traffic(env, WEB_IP, {"pod0"})

    with entered(env.cluster.node):
        env.api.restart()
    # Rules stay while the watches reconnect, and later changes still arrive.
    assert set(env.traffic(WEB_IP, count=20)) == {"pod0"}
    env.api.update(endpoint_slice("web-a", "web", {"pod0": True, "pod2": True}))
    wait_for_traffic(env, WEB_IP, {"pod0", "pod2"})
    text = env.http(10249, "/metrics")[1].decode()
    assert 'waolb_watch_restarts_total{kind="Service"' in text
    assert proxy.process.poll() is None


def test_a_kube_proxy_config_file_and_command_line(env: Environment) -> None:
    config = env.workdir / "config.conf"
    config.write_text(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\n"
        "kind: KubeProxyConfiguration\n"
        "mode: iptables\n"
        "metricsBindAddress: 127.0.0.1:20249\n"
        "healthzBindAddress: 127.0.0.1:20256\n"
        "iptables:\n"
        "  minSyncPeriod: 100ms\n"
        "  syncPeriod: 10s\n"
        "conntrack:\n"
        "  maxPerCore: 0\n"
        # kubeadm's: the API server from a kubeconfig (the test double's --master also applies).
        + "".join(
            f"clientConnection:\n  kubeconfig: {flag.partition('=')[2]}\n"
            for flag in env.server_flags
            if flag.startswith("--kubeconfig=")
        )
    )
    env.api.create(service("web", WEB_IP))
    env.api.create(endpoint_slice("web-a", "web", {"pod1": True}))
    # kubeadm's DaemonSet: --config and --hostname-override (start_proxy adds the server).
    proxy = env.start_proxy(f"--config={config}", "--metrics-bind-address=127.0.0.1:1")
    wait_for_traffic(env, WEB_IP, {"pod1"})
    assert env.http(20249, "/proxyMode") == (200, b"nftables")
    assert env.http(20256, "/healthz")[0] == 200
    (warning,) = proxy.events("proxy mode is always nftables in waolb")
    assert warning["configured_mode"] == "iptables"
    (ignored,) = proxy.events("flags ignored because --config is given (as kube-proxy does)")
    assert "--metrics-bind-address" in ignored["flags"]


def test_an_invalid_config_file_stops_the_start(env: Environment) -> None:
    config = env.workdir / "config.conf"
    config.write_text(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
        "nftables:\n  masqueradeBit: 40\n"
    )
    proxy = env.start_proxy(f"--config={config}")
    assert proxy.process.wait(timeout=HUNG_AFTER) == 2
    assert "nftables.masqueradeBit: 40 is not within [0, 31]" in proxy.log_path.read_text()
