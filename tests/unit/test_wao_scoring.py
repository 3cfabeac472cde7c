"""WAO scoring end to end below the dataplane: real predictors on loopback, metrics and
NodeConfigs through the test API server, the scorer and the WAO weight provider."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from kubernetes.client import ApiClient

from kubeapi import NODE_CONFIGS, NODE_METRICS, KubeApiServer, objects
from netns import HUNG_AFTER, wait_until
from waolab import (
    WAO_NAMESPACE,
    WaoCluster,
    api_client,
    cpu_times,
    endpoints,
    port,
    wao_cluster,
    wao_weights,
)
from waolb.config import WaolbSettings
from waolb.metrics import ProxyMetrics
from waolb.policy.equal import EqualWeights
from waolb.policy.select import POLICY_ANNOTATION, PolicySelector
from waolb.policy.wao import CPU_PER_REQUEST_ANNOTATION, WaoWeights, moved_enough
from waolb.state import ServiceName
from waolb.wao.inventory import WaoInventory
from waolb.wao.scorer import SingleFlightCache
from waoservers import Fault

# Three nodes of 4 cores at 1 core used (25 %); 100m more is +2.5 percentage points, so the
# deltas are 2.5 * slope: 10, 20 and 40 W. Upstream: +1 W each -> 11, 21, 41; score =
# round(100 * 11 / w) -> 100, 52, 27.
SLOPES = {"node-a": 4.0, "node-b": 8.0, "node-c": 16.0}
EXPECTED = (100, 52, 27)
WEB = port("web")


@pytest.fixture
def cluster(kube_api: KubeApiServer) -> Iterator[WaoCluster]:
    with wao_cluster(kube_api) as result:
        for node, slope in SLOPES.items():
            result.add_node(node, cpu_times(slope))
        yield result


@pytest.fixture
def client(kube_api: KubeApiServer) -> Iterator[ApiClient]:
    with api_client(kube_api) as result:
        yield result


def fallbacks(metrics: ProxyMetrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("waolb_wao_fallbacks_total", {"reason": reason})
    return value or 0.0


def scored(
    cluster: WaoCluster, client: ApiClient, settings: WaolbSettings | None = None
) -> tuple[WaoWeights, WaoInventory, ProxyMetrics, list[set[ServiceName]]]:
    """A provider that has seen WEB over the three nodes and scored once."""
    wao, inventory, metrics = wao_weights(client, settings)
    cluster.feed(inventory)
    changes: list[set[ServiceName]] = []
    wao.subscribe(lambda services: changes.append(set(services)))
    # Nothing is known yet: equal shares now, a score soon.
    assert wao.weights(WEB, endpoints(*SLOPES)) is None
    wao.refresh()
    return wao, inventory, metrics, changes


def test_weights_follow_upstreams_scores_and_changes_are_reported(
    cluster: WaoCluster, client: ApiClient
) -> None:
    wao, _, _, changes = scored(cluster, client)
    assert changes == [{ServiceName("default", "web")}]
    assert tuple(wao.weights(WEB, endpoints(*SLOPES)) or ()) == EXPECTED

    snapshot = wao.snapshot()
    [service] = snapshot["services"]
    assert [e["delta_watts"] for e in service["endpoints"]] == pytest.approx([10.0, 20.0, 40.0])
    assert [e["node"] for e in service["endpoints"]] == list(SLOPES)
    node_a = next(n for n in snapshot["nodes"] if n["name"] == "node-a")
    assert (node_a["cpu_usage_cores"], node_a["cpu_capacity_cores"]) == (1.0, 4.0)
    assert node_a["by_cpu_per_request"][0]["watts_before"] == pytest.approx(100.0)


def test_each_node_is_asked_once_per_input_not_once_per_endpoint(
    cluster: WaoCluster, client: ApiClient
) -> None:
    wao, inventory, _ = wao_weights(client)
    cluster.feed(inventory)
    # 50 services with an endpoint on every node, 10 of them with their own cpu-per-request.
    for index in range(50):
        annotations = {CPU_PER_REQUEST_ANNOTATION: "250m"} if index < 10 else {}
        wao.weights(port(f"svc-{index}", annotations), endpoints(*SLOPES, base=index * 3))
    wao.refresh()
    # Per node: "before", "after 100m", "after 250m". Upstream asks 2 per endpoint per
    # Service on every sync: 2 * 3 * 50 = 300.
    assert {n: s.request_count for n, s in cluster.predictors.items()} == dict.fromkeys(SLOPES, 3)
    heavy = wao.weights(
        port("svc-0", {CPU_PER_REQUEST_ANNOTATION: "250m"}), endpoints(*SLOPES, base=0)
    )
    assert tuple(heavy or ()) == (100, 51, 26)  # 25, 50, 100 W -> 26, 51, 101

    # A second round within the caches' lifetimes asks nobody.
    wao.refresh()
    assert sum(s.request_count for s in cluster.predictors.values()) == 9


def test_concurrent_misses_share_one_computation() -> None:
    cache: SingleFlightCache[str, int] = SingleFlightCache(ttl=60.0)
    release = threading.Event()
    calls = []

    def compute() -> int:
        calls.append(1)
        release.wait(5)
        return 42

    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get("k", compute))) for _ in range(16)
    ]
    for thread in threads:
        thread.start()
    release.set()
    for thread in threads:
        thread.join()
    assert results == [42] * 16
    assert len(calls) == 1


def test_failures_are_not_cached_and_the_next_caller_retries() -> None:
    cache: SingleFlightCache[str, int] = SingleFlightCache(ttl=60.0)

    def fail() -> int:
        raise RuntimeError("down")

    with pytest.raises(RuntimeError):
        cache.get("k", fail)
    assert cache.get("k", lambda: 7) == 7


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (500, "predictor_http_status"),
        (401, "predictor_auth"),
        (403, "predictor_auth"),
        (404, "predictor_not_found"),
        (Fault.NOT_JSON, "predictor_response"),
        (Fault.HTML_PAGE, "predictor_response"),
        (Fault.EMPTY_OUTPUTS, "predictor_response"),
        (Fault.WRONG_SHAPE, "predictor_response"),
        (Fault.NAN, "predictor_value"),
        (Fault.CLOSE, "predictor_connection"),
        (Fault.DELAY, "predictor_timeout"),
    ],
)
def test_a_failing_predictor_leaves_its_node_out(
    cluster: WaoCluster, client: ApiClient, fault: Fault | int, reason: str
) -> None:
    wao, inventory, metrics = wao_weights(client, WaolbSettings(request_timeout=0.5))
    cluster.feed(inventory)
    wao.weights(WEB, endpoints(*SLOPES))
    with cluster.predictors["node-c"].faulty(fault, delay=2.0):
        wao.refresh()
    # node-c gets nothing; the others keep upstream's scores among themselves.
    assert tuple(wao.weights(WEB, endpoints(*SLOPES)) or ()) == (100, 52, 0)
    assert fallbacks(metrics, reason) == 1
    kind = reason.removeprefix("predictor_")
    errors = metrics.registry.get_sample_value(
        "waolb_scoring_errors_total", {"kind": f"predictor_{kind}"}
    )
    assert errors == 1


def test_negative_watts_are_used_as_upstream_uses_them(
    cluster: WaoCluster, client: ApiClient
) -> None:
    wao, inventory, _ = wao_weights(client)
    cluster.feed(inventory)
    wao.weights(WEB, endpoints(*SLOPES))
    with cluster.predictors["node-c"].faulty(Fault.NEGATIVE):
        wao.refresh()
    # node-c's delta is -40 W, counted as 0 W: the cheapest, 1 W after the +1.
    assert tuple(wao.weights(WEB, endpoints(*SLOPES)) or ()) == (9, 5, 100)


@pytest.mark.parametrize("missing", ["inlet_temp", "delta_p"])
def test_a_node_without_sensor_metrics_is_left_out(
    cluster: WaoCluster, client: ApiClient, kube_api: KubeApiServer, missing: str
) -> None:
    kube_api.remove_node_metric("node-b", missing)
    wao, _, metrics, _ = scored(cluster, client)
    assert tuple(wao.weights(WEB, endpoints(*SLOPES)) or ()) == (100, 0, 27)
    assert fallbacks(metrics, f"no_{missing}") == 1


def test_a_node_without_cpu_metrics_is_left_out(
    cluster: WaoCluster, client: ApiClient, kube_api: KubeApiServer
) -> None:
    kube_api.delete(NODE_METRICS, "node-a")
    wao, _, metrics, _ = scored(cluster, client)
    # node-b is now the cheapest: 21 and 41 W -> 100, 51.
    assert tuple(wao.weights(WEB, endpoints(*SLOPES)) or ()) == (0, 100, 51)
    assert fallbacks(metrics, "no_cpu_metrics") == 1


def test_missing_or_ambiguous_nodeconfigs_leave_the_node_out(
    cluster: WaoCluster, client: ApiClient, kube_api: KubeApiServer
) -> None:
    kube_api.delete(NODE_CONFIGS, "node-a-config", WAO_NAMESPACE)
    second = objects.node_config(
        "other", "node-c-again", "node-c", cluster.predictors["node-c"].endpoint
    )
    kube_api.create(second)
    wao, _, metrics, _ = scored(cluster, client)
    assert tuple(wao.weights(WEB, endpoints(*SLOPES)) or ()) == (0, 100, 0)
    assert fallbacks(metrics, "no_nodeconfig") == 1
    assert fallbacks(metrics, "ambiguous_nodeconfig") == 1


def test_a_nodeconfig_naming_a_missing_secret_leaves_the_node_out(
    cluster: WaoCluster, client: ApiClient, kube_api: KubeApiServer
) -> None:
    config = objects.node_config(
        WAO_NAMESPACE,
        "node-b-config",
        "node-b",
        cluster.predictors["node-b"].endpoint,
        secret="absent",
    )
    kube_api.update(config)
    wao, _, metrics, _ = scored(cluster, client)
    assert tuple(wao.weights(WEB, endpoints(*SLOPES)) or ()) == (100, 0, 27)
    assert fallbacks(metrics, "secret") == 1


def test_when_no_node_can_be_scored_the_service_shares_equally(
    cluster: WaoCluster, client: ApiClient
) -> None:
    wao, inventory, metrics = wao_weights(client)
    cluster.feed(inventory)
    wao.weights(WEB, endpoints(*SLOPES))
    for server in cluster.predictors.values():
        server.stop()
    wao.refresh()
    assert wao.weights(WEB, endpoints(*SLOPES)) is None  # equal shares, never a blackhole
    assert fallbacks(metrics, "service_unscored") >= 1
    assert fallbacks(metrics, "predictor_connection") == 3


def test_endpoints_without_a_node_name_are_left_out(cluster: WaoCluster, client: ApiClient) -> None:
    wao, _, _, _ = scored(cluster, client)
    assert tuple(wao.weights(WEB, endpoints("node-a", None, "node-c")) or ()) == (100, 0, 27)


def test_small_share_changes_do_not_reprogram_large_ones_do(
    kube_api: KubeApiServer, client: ApiClient
) -> None:
    with wao_cluster(kube_api) as cluster:
        # The inlet temperature steepens node-a's slope: 4 + 0.05 per degree above nothing.
        cluster.add_node("node-a", cpu_times(3.0, per_degree=0.05), inlet_temp=20.0)
        cluster.add_node("node-b", cpu_times(8.0))
        settings = WaolbSettings(min_weight_change=0.05, metrics_cache_ttl=0.001)
        wao, inventory, _ = wao_weights(client, settings)
        cluster.feed(inventory)
        two = endpoints("node-a", "node-b")
        wao.weights(WEB, two)
        assert wao.refresh() == {ServiceName("default", "web")}
        before = tuple(wao.weights(WEB, two) or ())
        assert before == (100, 52)  # 10 W and 20 W

        # 24 degrees: 4.2 W per point, delta 10.5 -> 10 W: no change at all.
        kube_api.set_node_metric("node-a", "inlet_temp", 24.0)
        assert wao.refresh() == set()
        # 28 degrees: slope 4.4 -> 11 W -> 12 vs 21 -> (100, 57): shares move 2.3 points.
        kube_api.set_node_metric("node-a", "inlet_temp", 28.0)
        assert wao.refresh() == set()
        assert tuple(wao.weights(WEB, two) or ()) == before
        # 60 degrees: slope 6 -> 15 W -> 16 vs 21 -> (100, 76): 6.9 points, reprogrammed.
        kube_api.set_node_metric("node-a", "inlet_temp", 60.0)
        assert wao.refresh() == {ServiceName("default", "web")}
        assert tuple(wao.weights(WEB, two) or ()) == (100, 76)


def test_moved_enough() -> None:
    assert not moved_enough((1, 1), (1, 1), 0.0)
    assert moved_enough((1, 1), (1, 2), 0.0)
    assert not moved_enough((100, 52), (100, 57), 0.05)
    assert moved_enough((100, 52), (100, 76), 0.05)
    assert moved_enough((100, 1), (100, 0), 0.5)  # an endpoint leaving always counts
    assert moved_enough(None, (1, 1), 0.5) and moved_enough((1, 1), None, 0.5)


def test_weights_never_wait_for_a_slow_predictor(cluster: WaoCluster, client: ApiClient) -> None:
    # The predictor holds its answer, and the client waits for it, far longer than the joins
    # below allow: a weights() call that waited for it could not end in time, while one that
    # does not wait ends in milliseconds, however busy the machine.
    wao, inventory, _ = wao_weights(client, WaolbSettings(request_timeout=HUNG_AFTER))
    cluster.feed(inventory)
    with cluster.predictors["node-a"].faulty(Fault.DELAY, delay=HUNG_AFTER):
        wao.start()
        try:
            assert wao.weights(WEB, endpoints(*SLOPES)) is None
            wait_until(
                lambda: cluster.predictors["node-a"].request_count >= 1,
                what="the scoring thread asking node-a",
            )
            # The scoring thread is stuck on node-a's predictor, yet weights answer at once,
            # for the known endpoints and for new ones alike.
            for nodes in (endpoints(*SLOPES), endpoints("node-a", "node-b")):
                asking = threading.Thread(target=wao.weights, args=(WEB, nodes))
                asking.start()
                asking.join(timeout=HUNG_AFTER / 5)
                assert not asking.is_alive()
        finally:
            cluster.predictors["node-a"].stop()  # lets the held request go
            wao.stop()


def test_an_invalid_cpu_per_request_annotation_uses_the_default(
    cluster: WaoCluster, client: ApiClient
) -> None:
    wao, _, metrics, _ = scored(cluster, client)
    bad = port("web", {CPU_PER_REQUEST_ANNOTATION: "lots"})
    assert tuple(wao.weights(bad, endpoints(*SLOPES)) or ()) == EXPECTED
    assert fallbacks(metrics, "invalid_cpu_per_request") == 1


def test_the_policy_annotation_chooses_the_provider(
    cluster: WaoCluster, client: ApiClient, capsys: pytest.CaptureFixture[str]
) -> None:
    wao, _, _, _ = scored(cluster, client)
    selector = PolicySelector({"equal": EqualWeights(), "wao": wao}, "wao")
    nodes = endpoints(*SLOPES)
    assert tuple(selector.weights(WEB, nodes) or ()) == EXPECTED
    assert selector.weights(port("web", {POLICY_ANNOTATION: "equal"}), nodes) is None
    assert tuple(selector.weights(port("web", {POLICY_ANNOTATION: "fastest"}), nodes) or ()) == (
        EXPECTED
    )
    equal_default = PolicySelector({"equal": EqualWeights(), "wao": wao}, "equal")
    assert equal_default.weights(WEB, nodes) is None
    assert tuple(equal_default.weights(port("web", {POLICY_ANNOTATION: "wao"}), nodes) or ()) == (
        EXPECTED
    )


def test_the_raw_cpu_format_sends_cores(kube_api: KubeApiServer, client: ApiClient) -> None:
    with wao_cluster(kube_api) as cluster:
        # Watts per core: 100m more costs 10, 20 and 40 W, the same deltas as in percent above.
        for node, slope in SLOPES.items():
            cluster.add_node(node, cpu_times(25 * slope))
        wao, _, _, _ = scored(cluster, client, WaolbSettings(cpu_usage_format="Raw"))
        assert tuple(wao.weights(WEB, endpoints(*SLOPES)) or ()) == EXPECTED
        cpu_inputs = sorted(cpu for cpu, _, _ in cluster.predictors["node-a"].inputs)
        assert cpu_inputs == pytest.approx([1.0, 1.1])  # cores, not percent of 4 cores
