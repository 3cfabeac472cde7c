"""Building and removing the namespaces lab (waolb.lab), against the one-node lab of the
kernel tests as the same run's baseline.

Each round builds a lab, waits until every path answers (what ``with multinode(...)``
guarantees before it yields) and tears it down; ``extra_info`` splits the mean into build and
teardown. Target: a 3-node lab with 3 pods per node (15 namespaces, 12 servers) in a couple of
seconds. The last benchmark adds the test API server, a Service and a waolb process per node,
up to every proxy's first sync.
"""

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from multinode import kube_cluster
from netns import requires_netns
from waolb.lab import cluster, multinode

pytestmark = requires_netns

ROUNDS = 5


def build_and_remove(
    benchmark: BenchmarkFixture, make: Callable[[], AbstractContextManager[Any]]
) -> None:
    builds: list[float] = []
    teardowns: list[float] = []

    def once() -> None:
        started = time.perf_counter()
        with make():
            built = time.perf_counter()
        builds.append(built - started)
        teardowns.append(time.perf_counter() - built)

    benchmark.pedantic(once, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(
        build_s=sum(builds[-ROUNDS:]) / ROUNDS, teardown_s=sum(teardowns[-ROUNDS:]) / ROUNDS
    )


def test_lab_one_node_three_pods_baseline(benchmark: BenchmarkFixture) -> None:
    build_and_remove(benchmark, lambda: cluster(3, ipv6=True))


@pytest.mark.parametrize("nodes", [1, 3])
def test_lab_multinode_three_pods_per_node(benchmark: BenchmarkFixture, nodes: int) -> None:
    build_and_remove(benchmark, lambda: multinode(nodes, 3))


@contextmanager
def three_synced_proxies() -> Iterator[None]:
    with kube_cluster(3, 3) as lab:
        lab.service("web", lab.lab.pods)
        for proxy in lab.start_proxies():
            proxy.wait_synced()
        yield


def test_lab_three_nodes_with_proxies_synced(benchmark: BenchmarkFixture) -> None:
    build_and_remove(benchmark, three_synced_proxies)
