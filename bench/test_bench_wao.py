"""WAO scoring at scale: 1 000 Services of 10 endpoints over 100 nodes.

Real parts throughout: the test API server serves the Nodes' metrics, sensors and NodeConfigs,
and one real V2 predictor on loopback answers for every node (each node's CPU usage differs, so
no two nodes share a cached prediction). The provider is wired as the proxier wires it.

* ``test_scoring_round_warm``: one scoring round (``WaoWeights.refresh``) with warm caches:
  node inputs and predictions within their TTLs, so the round is waolb's own work: collecting
  the nodes in use, the deltas of 10 000 endpoints, upstream's scores for all of them in one
  native call and the hysteresis check.
* ``test_scoring_round_cold``: the first round, from empty caches. extra_info counts the
  predictor requests it makes against upstream WAO-LB's pattern, two predictions per endpoint
  per Service on every sync, and reports the ratio.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from kubeapi import KubeApiServer, objects
from waolab import WAO_NAMESPACE, WaoCluster, api_client, endpoints, port, wao_weights
from waolb.config import WaolbSettings
from waolb.policy.wao import WaoWeights
from waoservers import LinearPowerModel, V2PredictorServer

NODES = 100
SERVICES = 1000
ENDPOINTS_PER_SERVICE = 10

pytestmark = pytest.mark.benchmark(group="WAO scoring, 1 000 services x 10 over 100 nodes")


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[KubeApiServer, V2PredictorServer]]:
    with (
        KubeApiServer() as api,
        V2PredictorServer(power_model=LinearPowerModel(50.0, cpu=3.0)) as predictor,
    ):
        api.register_wao()
        for index in range(NODES):
            name = f"node-{index:03}"
            api.create(objects.node(name, cpu="16"))
            api.create(objects.node_metrics(name, f"{1000 + 37 * index}m"))
            api.set_node_metric(name, "inlet_temp", 20.0 + index % 7)
            api.set_node_metric(name, "delta_p", 5.0 + index % 3)
            api.create(
                objects.node_config(WAO_NAMESPACE, f"{name}-config", name, predictor.endpoint)
            )
        yield api, predictor


def provider(api: KubeApiServer) -> WaoWeights:
    """A fresh provider that has been asked for every service's weights once."""
    wao, inventory, _ = wao_weights(api_client(api), WaolbSettings())
    WaoCluster(api).feed(inventory)
    for service in range(SERVICES):
        nodes = [
            f"node-{(service * ENDPOINTS_PER_SERVICE + offset) % NODES:03}"
            for offset in range(ENDPOINTS_PER_SERVICE)
        ]
        wao.weights(port(f"svc-{service}"), endpoints(*nodes, base=0))
    return wao


def test_scoring_round_cold(
    benchmark: BenchmarkFixture, cluster: tuple[KubeApiServer, V2PredictorServer]
) -> None:
    api, predictor = cluster
    requests_before = predictor.request_count

    def setup() -> tuple[tuple[WaoWeights], dict[str, object]]:
        return (provider(api),), {}

    changed = benchmark.pedantic(lambda wao: wao.refresh(), setup=setup, rounds=3)
    assert len(changed) == SERVICES
    per_round = (predictor.request_count - requests_before) / 3
    upstream = 2 * SERVICES * ENDPOINTS_PER_SERVICE
    assert per_round == 2 * NODES  # "before" and "after 100m" per node
    benchmark.extra_info.update(
        predictor_calls=per_round,
        upstream_predictor_calls_per_sync=upstream,
        upstream_to_waolb_calls=upstream / per_round,
    )


def test_scoring_round_warm(
    benchmark: BenchmarkFixture, cluster: tuple[KubeApiServer, V2PredictorServer]
) -> None:
    api, predictor = cluster
    wao = provider(api)
    assert len(wao.refresh()) == SERVICES
    calls = predictor.request_count
    started = time.monotonic()
    benchmark(wao.refresh)
    # Still within the 30 s metrics TTL: the warm rounds asked nobody.
    assert time.monotonic() - started < WaolbSettings().metrics_cache_ttl
    assert predictor.request_count == calls
