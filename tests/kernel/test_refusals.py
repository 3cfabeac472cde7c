"""A kernel refusal never drops a working Service (issue 8 §3), with real packets.

The sync loop runs against the real kernel in a node namespace with three pods
(tests/support/netns.py ``cluster``), on a fake clock so that every sync is one the test
asks for. Each test makes the kernel refuse a port's new state, then checks with real
connections that the Service keeps answering from its previous endpoints, that the other
Services' changes went through, and that the new endpoints take over once the cause goes.
Where the kernel cannot refuse on demand, the fault-injection build's ``inject_fault`` does
(rust/src/dataplane/faults.rs): it refuses the matching messages before they reach the
kernel, as the kernel would, and passes everything else on.
"""

from __future__ import annotations

import errno
import random
import socket
from collections.abc import Iterator

import pytest

from builders import endpoint, endpoint_slice, service
from netns import Cluster, cluster, exchange, new_dataplane, requires_netns
from rulesets import TABLE
from waolb.dataplane import NftablesDataplane
from waolb.health import ProxierHealth
from waolb.metrics import ProxyMetrics
from waolb.policy.equal import EqualWeights
from waolb.state import ClusterState
from waolb.sync import SyncLoop

pytestmark = requires_netns

WEB_VIP = "10.96.0.60"
API_VIP = "10.96.0.61"
WEB_CHAIN = "service-default/web/tcp/http"


@pytest.fixture(scope="module")
def net() -> Iterator[Cluster]:
    """One node and pods pod0..pod2 (10.244.0.10-12) for the module."""
    with cluster(3) as built:
        yield built


class Proxy:
    """The sync loop programming the node, stepped by hand on a fake clock."""

    def __init__(self, net: Cluster) -> None:
        self.net = net
        self.now = 0.0
        self.metrics = ProxyMetrics()
        self.state = ClusterState("node-a")
        self.native = new_dataplane(net.node)
        rng = random.Random()
        rng.random = lambda: 0.0  # type: ignore[method-assign] # full backoff delays
        self.loop = SyncLoop(
            NftablesDataplane(self.native),
            self.state,
            EqualWeights(),
            self.metrics,
            ProxierHealth(60.0, self.metrics),
            min_sync_period=0.1,
            sync_period=30.0,
            clock=lambda: self.now,
            rng=rng,
        )

    def serve(self, name: str, vip: str, pod: int, rv: str) -> None:
        """Service ``name`` at ``vip`` with one endpoint: pod ``pod``."""
        self.state.upsert_service(service(name, cluster_ips=(vip,), rv=rv))
        ip = self.net.pods[pod].ipv4 or ""
        self.state.upsert_endpoint_slice(
            endpoint_slice(f"{name}-a", name, rv=rv, endpoints=(endpoint(ip),))
        )

    def step(self) -> None:
        """Run the next sync that is due."""
        self.now = max(self.now, self.loop.next_sync_at())
        assert self.loop.run_if_due()

    def answers(self, vip: str) -> set[str]:
        """Which pods answer 30 new connections to ``vip``; fails on any error."""
        result = exchange(self.net.node, vip, 80, count=30)
        assert result.errors == {}, result
        return set(result.counts)

    def port_errors(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value("waolb_sync_port_errors", {"reason": reason})
        return value or 0.0


@pytest.fixture
def proxy(net: Cluster) -> Iterator[Proxy]:
    """web on pod0 and api on pod1, programmed; the tables are deleted after the test."""
    built = Proxy(net)
    built.serve("web", WEB_VIP, 0, "1")
    built.serve("api", API_VIP, 1, "1")
    built.step()
    assert built.answers(WEB_VIP) == {"pod0"}
    try:
        yield built
    finally:
        built.native.clear_faults()
        built.native.delete_tables()


def test_a_chain_deleted_behind_waolbs_back_keeps_the_service_on_its_endpoints(
    proxy: Proxy,
) -> None:
    # An operator deletes web's chain (its map element first: the element jumps to it).
    proxy.net.node.run(
        "nft", "-f", "-",
        input=f"delete element ip {TABLE} service-ips {{ {WEB_VIP} . tcp . 80 }}\n"
        f"delete chain ip {TABLE} {WEB_CHAIN}\n",
    )  # fmt: skip
    # Then both Services move to pod2: rewriting web's chain fails (ENOENT), api's commits.
    proxy.serve("web", WEB_VIP, 2, "2")
    proxy.serve("api", API_VIP, 2, "2")
    proxy.step()
    assert proxy.answers(API_VIP) == {"pod2"}
    assert proxy.port_errors("kernel") == 1
    # The full sync that follows rebuilds web as it was programmed: its previous endpoint.
    proxy.step()
    assert proxy.answers(WEB_VIP) == {"pod0"}
    # Its retry, once due, finds the chain there again: the new endpoint takes over.
    proxy.step()
    assert proxy.answers(WEB_VIP) == {"pod2"}
    assert proxy.port_errors("kernel") == 0


def test_a_persistent_refusal_of_one_port_keeps_its_previous_endpoints(proxy: Proxy) -> None:
    pod2 = socket.inet_aton(proxy.net.pods[2].ipv4 or "")
    # The kernel refuses every message that sends web's traffic to pod2, full sync or not.
    proxy.native.inject_fault(errno.ENOSPC, namespace="default", name="web", containing=pod2)
    proxy.serve("web", WEB_VIP, 2, "2")
    proxy.serve("api", API_VIP, 2, "2")
    proxy.step()
    assert proxy.answers(API_VIP) == {"pod2"}
    kinds = set()
    for _ in range(6):  # retries, partial, and the full syncs after each
        assert proxy.answers(WEB_VIP) == {"pod0"}
        proxy.step()
        kinds.add(proxy.metrics.registry.get_sample_value(
            "kubeproxy_sync_full_proxy_rules_duration_seconds_count"))  # fmt: skip
    assert len(kinds) > 1, "no full sync among the retries"
    assert proxy.answers(WEB_VIP) == {"pod0"}
    assert proxy.port_errors("kernel") == 1
    proxy.native.clear_faults()
    for _ in range(3):
        proxy.step()
        if proxy.answers(WEB_VIP) == {"pod2"}:
            break
    assert proxy.answers(WEB_VIP) == {"pod2"}
    assert proxy.port_errors("kernel") == 0


def test_a_transient_error_on_every_attempt_keeps_the_old_rules_until_it_goes(
    proxy: Proxy,
) -> None:
    # The batch as a whole fails three times in a row.
    proxy.native.inject_fault(errno.ENOMEM, times=3)
    proxy.serve("web", WEB_VIP, 1, "2")
    for _ in range(3):
        proxy.step()
        assert proxy.answers(WEB_VIP) == {"pod0"}
    proxy.step()
    assert proxy.answers(WEB_VIP) == {"pod1"}
    failures = proxy.metrics.registry.get_sample_value(
        "kubeproxy_sync_proxy_rules_nftables_sync_failures_total"
    )
    assert failures == 3
