"""waolb on three nodes of the multi-node lab (waolb.lab), one process per node, against the
test API server on the fabric: a ClusterIP Service with pods on every node answers from every
node and every pod, on both families, and each node follows endpoint changes on its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from multinode import kube_cluster
from netns import requires_netns
from waolb.lab import KubeLab, LabService, Pod

pytestmark = requires_netns


@pytest.fixture(scope="module")
def cluster() -> Iterator[KubeLab]:
    with kube_cluster(3, 3) as built:
        yield built


def names(pods: list[Pod]) -> set[str]:
    return {pod.name for pod in pods}


def assert_everywhere(cluster: KubeLab, service: LabService, backends: set[str]) -> None:
    """From a pod and from the node itself, on every node and family, exactly ``backends``
    answer; the pods saw the client's own address (nothing is masqueraded on the way)."""
    for node in cluster.lab.nodes:
        client = node.pods[-1]
        for family in service.families:
            address = service.cluster_ip(family)
            result = cluster.wait_for_backends(client, address, 80, backends, count=120)
            assert result.errors == {}, (node.name, result)
            own = [client.address(family)]
            assert all(sources == own for sources in result.sources.values()), result
            result = cluster.wait_for_backends(node, address, 80, backends, count=120)
            assert result.errors == {}, (node.name, result)


def test_a_cluster_ip_with_pods_on_every_node_answers_from_every_node(cluster: KubeLab) -> None:
    lab = cluster.lab
    backends = [pod for node in lab.nodes for pod in node.pods[:2]]
    web = cluster.service("web", backends)
    proxies = cluster.start_proxies()
    for proxy in proxies:
        proxy.wait_synced()
        assert proxy.healthz()[0] == 200
        assert proxy.events("rules synced"), proxy.logs()[-5:]

    assert_everywhere(cluster, web, names(backends))
    result = lab.nodes[0].pods[-1].exchange(web.cluster_ip(4), 80, count=300)
    assert set(lab.by_node(result.counts)) == {node.name for node in lab.nodes}, result

    # node-c's pods leave: every node stops sending there.
    remaining = [pod for pod in backends if pod.node != "node-c"]
    cluster.set_backends(web, remaining)
    assert_everywhere(cluster, web, names(remaining))

    # With node-b's proxy stopped, its rules stay as they were while the others follow.
    node_b = cluster.proxy("node-b")
    node_b.stop()
    moved = lab.node("node-c").pods[:2]
    cluster.set_backends(web, moved)
    for node in ("node-a", "node-c"):
        cluster.wait_for_backends(lab.node(node).pods[-1], web.cluster_ip(4), 80, names(moved))
    stale = lab.node("node-b").pods[-1].exchange(web.cluster_ip(4), 80, count=60)
    assert stale.total == 60 and set(stale.counts) <= names(remaining), stale
    node_b.start().wait_synced()
    assert_everywhere(cluster, web, names(moved))
    assert cluster.proxy("node-a").metric("kubeproxy_sync_proxy_rules_last_timestamp_seconds")
