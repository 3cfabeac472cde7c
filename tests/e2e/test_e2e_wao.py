"""WAO end to end: the ``waolb`` process scores three nodes with three real predictors and
real traffic follows the scores.

The three "nodes" are names only: every pod runs in the one node namespace
(tests/support/e2e.py), but
each pod's endpoint claims a different node, and each node has its own NodeConfig, metrics and
V2 predictor. The predictors and the API server listen inside the node namespace, where waolb
runs.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator

import pytest

from e2e import WAOLB, WEB_IP, Environment, environment, service, wait_for_traffic
from kubeapi import objects
from netns import SERVER_PORT, chi_square, chi_square_sf, entered, requires_netns, wait_until
from waolab import WaoCluster, cpu_times, wao_cluster

pytestmark = requires_netns

# pod<i> runs on NODES[i]. 4 cores at 1 core used; 100m more is +2.5 points of CPU. Slopes in
# watts per point (node-a's grows 0.01 per degree of inlet temperature): at 20 degrees the
# deltas are 10.5 -> 10, 20 and 40 W; upstream's scores 100, 52, 27.
NODES = ("node-a", "node-b", "node-c")
EXPECTED = {"pod0": 100, "pod1": 52, "pod2": 27}
CONNECTIONS = 3000
# The shares must fit the scores: chi-square with 2 degrees of freedom, p > 0.001.
P_MIN = 0.001


def loopback_socket() -> socket.socket:
    """A listening socket on 127.0.0.1 of the namespace the caller is in."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    return listener


@pytest.fixture
def env() -> Iterator[tuple[Environment, WaoCluster]]:
    with environment() as result, wao_cluster(result.api) as cluster:
        with entered(result.cluster.node):
            sockets = [loopback_socket() for _ in NODES]
        for node, sock in zip(NODES, sockets, strict=True):
            per_degree = 0.025 if node == "node-a" else 0.0
            slope = {"node-a": 3.5, "node-b": 8.0, "node-c": 16.0}[node]
            cluster.add_node(node, cpu_times(slope, per_degree), sock=sock)
        result.api.create(service("web", WEB_IP))
        result.api.create(
            objects.endpoint_slice(
                "web-a",
                "web",
                addresses=["10.244.0.10", "10.244.0.11", "10.244.0.12"],
                node_names=NODES,
                port=SERVER_PORT,
            )
        )
        yield result, cluster


def shares_fit(counts: dict[str, int], weights: dict[str, int]) -> float:
    pods = sorted(weights)
    return chi_square_sf(
        chi_square([counts.get(p, 0) for p in pods], [weights[p] for p in pods]), len(pods) - 1
    )


def weights_report(env: Environment) -> dict[str, object]:
    output = subprocess.run(
        ["ip", "netns", "exec", env.node, str(WAOLB), "weights", "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    document: dict[str, object] = json.loads(output)
    return document


POD_OF_ENDPOINT = {f"10.244.0.{10 + i}:{SERVER_PORT}": f"pod{i}" for i in range(3)}


def programmed_weights(env: Environment) -> dict[str, int]:
    """Pod -> weight, as `waolb weights` reads it back from the kernel."""
    rows = weights_report(env)["endpoints"]
    assert isinstance(rows, list)
    return {POD_OF_ENDPOINT[row["endpoint"]]: row["weight"] for row in rows}


def test_traffic_follows_the_scores_and_their_inputs(
    env: tuple[Environment, WaoCluster],
) -> None:
    environment_, cluster = env
    environment_.start_proxy(
        "--wao-scoring-interval=200ms",
        "--wao-metrics-cache-ttl=100ms",
        "--wao-predictor-cache-ttl=100ms",
        "--wao-request-timeout=1s",
        "--wao-min-weight-change=0.01",
    )
    wait_for_traffic(environment_, WEB_IP, set(EXPECTED))
    wait_until(
        lambda: programmed_weights(environment_) == EXPECTED,
        what=f"weights {EXPECTED} programmed",
    )

    counts = environment_.traffic(WEB_IP, count=CONNECTIONS)
    assert sum(counts.values()) == CONNECTIONS
    assert shares_fit(counts, EXPECTED) > P_MIN, counts

    # `waolb weights` joins the kernel's weights with the scorer's inputs.
    report = weights_report(environment_)
    rows = {row["node"]: row for row in report["endpoints"]}  # type: ignore[union-attr]
    assert rows["node-b"]["delta_watts"] == pytest.approx(20.0)
    assert rows["node-a"]["share"] == pytest.approx(100 / 179)

    # node-a's inlet heats to 60 degrees: slope 5, 12.5 W -> 12 W, +1 = 13 W. Still the
    # cheapest: 100, round(100 * 13 / 21) = 62, round(100 * 13 / 41) = 32. The largest share
    # moves 4.4 points, so the hysteresis flag is set below that.
    environment_.api.set_node_metric("node-a", "inlet_temp", 60.0)
    hotter = {"pod0": 100, "pod1": 62, "pod2": 32}
    wait_until(
        lambda: programmed_weights(environment_) == hotter,
        what="weights after the inlet temperature change",
    )
    counts = environment_.traffic(WEB_IP, count=CONNECTIONS)
    assert shares_fit(counts, hotter) > P_MIN, counts

    # Every predictor dies: scoring falls back to equal shares and traffic keeps flowing.
    for server in cluster.predictors.values():
        server.stop()
    equal = dict.fromkeys(EXPECTED, 1)
    wait_until(
        lambda: programmed_weights(environment_) == equal,
        what="equal weights once no node can be scored",
    )
    counts = environment_.traffic(WEB_IP, count=CONNECTIONS)
    assert sum(counts.values()) == CONNECTIONS
    assert shares_fit(counts, equal) > P_MIN, counts
    metrics = environment_.http(10249, "/metrics")[1].decode()
    assert 'waolb_wao_fallbacks_total{reason="service_unscored"}' in metrics
    assert 'waolb_wao_fallbacks_total{reason="predictor_connection"}' in metrics
