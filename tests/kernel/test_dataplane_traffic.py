"""Real packets through waolb's nf_tables ruleset.

A node namespace with a bridge and three pod namespaces (tests/support/netns.py ``cluster``), each
pod running a server that answers with its name and the source address it saw. A Dataplane
created in the node namespace programs ClusterIPs; clients connect from the node (nat
output) or from a pod (nat prerouting, forward, hairpin).

Shares are checked with Pearson's chi-square goodness of fit against the weights: a test
fails if p < 0.001, so a correct dataplane fails one such check in a thousand runs.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from netns import (
    HUNG_AFTER,
    Cluster,
    Exchange,
    Netns,
    chi_square,
    chi_square_sf,
    cluster,
    entered,
    exchange,
    new_dataplane,
    requires_netns,
)
from rulesets import apply, shard_names, spread, table_of
from waolb._native import Dataplane, ServicePort

pytestmark = requires_netns

#: The significance level of every goodness-of-fit check here.
ALPHA = 0.001
PORT = 8080


@pytest.fixture(scope="module")
def net() -> Iterator[Cluster]:
    """One node and pods pod0..pod2 (10.244.0.10-12, fd00:244::10-12) for the module."""
    with cluster(3, ipv6=True) as built:
        yield built


@pytest.fixture
def dp(net: Cluster) -> Iterator[Dataplane]:
    """A Dataplane in the node namespace; its tables are deleted after the test."""
    plane = new_dataplane(net.node)
    yield plane
    plane.delete_tables()


def service(
    net: Cluster,
    name: str,
    cluster_ip: str,
    weights: list[int],
    *,
    protocol: str = "tcp",
    port: int = 80,
) -> ServicePort:
    """A service whose i-th endpoint is pod i (in the cluster IP's family) on PORT."""
    family = 6 if ":" in cluster_ip else 4
    pods = net.pods[: len(weights)]
    ips = [(p.ipv6 if family == 6 else p.ipv4) or "" for p in pods]
    return ServicePort(
        "default",
        name,
        protocol,
        protocol,
        family,
        cluster_ip,
        port,
        ips,
        [PORT] * len(ips),
        weights,
    )


def assert_shares(
    result: Exchange, net: Cluster, weights: list[int], count: int, label: str
) -> float:
    """Every exchange answered, and the per-pod counts fit the weights (chi-square, ALPHA)."""
    assert result.errors == {}, result
    assert result.total == count, result
    names = [p.name for p in net.pods[: len(weights)]]
    observed = [result.counts.get(name, 0) for name in names]
    for name, weight, seen in zip(names, weights, observed, strict=True):
        if weight == 0:
            assert seen == 0, f"{name} has weight 0 but answered {seen} times"
    used = [(o, w) for o, w in zip(observed, weights, strict=True) if w > 0]
    statistic = chi_square([o for o, _ in used], [w for _, w in used])
    dof = len(used) - 1
    p_value = chi_square_sf(statistic, dof)
    shares = ", ".join(
        f"{n} {o / count:.3f} (want {w / sum(weights):.3f})"
        for n, o, w in zip(names, observed, weights, strict=True)
    )
    print(
        f"\n{label}: {count} in {result.seconds:.2f} s; {shares}; "
        f"chi2 = {statistic:.2f}, dof {dof}, p = {p_value:.3f}"
    )
    assert p_value > ALPHA, f"{label}: shares {shares} do not fit (chi2 {statistic:.1f})"
    return statistic


class Connection:
    """One TCP connection opened from a namespace and kept open across syncs."""

    def __init__(self, ns: Netns, host: str, port: int) -> None:
        with entered(ns):
            self.sock = socket.create_connection((host, port), timeout=3)
        self.reader = self.sock.makefile("rb")

    def ask(self) -> str:
        """The name of the pod at the other end, asked over this same connection."""
        self.sock.sendall(b"?\n")
        line = self.reader.readline()
        assert line.endswith(b"\n"), f"connection closed: {line!r}"
        return line.decode().split()[0]

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


# ---- shares ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "weights", "count"),
    [
        pytest.param("tcp", [100, 80, 67], 3000, id="tcp-wao-100-80-67"),
        pytest.param("udp", [1, 2, 3], 3000, id="udp-1-2-3"),
    ],
)
def test_traffic_from_the_node_follows_the_weights(
    net: Cluster, dp: Dataplane, protocol: str, weights: list[int], count: int
) -> None:
    dp.sync_full([service(net, "shares", "10.96.0.10", weights, protocol=protocol)])
    result = exchange(net.node, "10.96.0.10", 80, proto=protocol, count=count)
    assert_shares(result, net, weights, count, f"{protocol} weights {weights}")
    # From the node, nothing is masqueraded: pods see the node's bridge address.
    assert {s for sources in result.sources.values() for s in sources} == {net.gateway4}


def test_ipv6_service_works_for_tcp(net: Cluster, dp: Dataplane) -> None:
    weights = [2, 1, 1]
    dp.sync_full(
        [
            service(net, "web", "10.96.0.10", [1, 1, 1]),
            service(net, "web", "fd00:96::10", weights),
        ]
    )
    result = exchange(net.node, "fd00:96::10", 80, count=800)
    assert_shares(result, net, weights, 800, f"tcp over IPv6 weights {weights}")
    assert {s for sources in result.sources.values() for s in sources} == {net.gateway6}


# ---- changes while traffic flows ------------------------------------------------------------


def test_weight_change_moves_new_connections_and_keeps_established_ones(
    net: Cluster, dp: Dataplane
) -> None:
    vip = "10.96.0.20"
    dp.sync_full([service(net, "web", vip, [1, 0, 0])])
    established = Connection(net.node, vip, 80)
    try:
        assert established.ask() == "pod0"
        for weights, pod in (([0, 1, 0], "pod1"), ([0, 0, 1], "pod2"), ([0, 3, 1], None)):
            stats = apply(dp, [service(net, "web", vip, weights)])
            assert stats.services == 1
            if pod is not None:
                # New connections all land where the only weight is ...
                result = exchange(net.node, vip, 80, count=200)
                assert result.counts == {pod: 200}, result
            else:
                result = exchange(net.node, vip, 80, count=2000)
                assert_shares(result, net, weights, 2000, f"after a change to {weights}")
            # ... while the connection made before the change still talks to pod0.
            assert [established.ask() for _ in range(3)] == ["pod0"] * 3
    finally:
        established.close()


def test_service_without_endpoints_is_refused_at_once(net: Cluster, dp: Dataplane) -> None:
    vip = "10.96.0.30"
    empty = [service(net, "empty", vip, []), service(net, "dns", vip, [], protocol="udp")]
    dp.sync_full(empty)
    # From the node (nat output / filter output), and through the node from pods (forward).
    # The kernel lets a host have a burst of 6 ICMP errors, then 1 a second: stay below.
    for ns, protocol, expected in (
        (net.node, "tcp", "ECONNREFUSED"),
        (net.pods[1].ns, "tcp", "ECONNREFUSED"),
        (net.pods[2].ns, "udp", "ECONNREFUSED"),
        # The node's own UDP datagram is rejected in its output hook: send() itself fails,
        # as the packet was dropped there (kube-proxy's reject behaves the same).
        (net.node, "udp", "EPERM"),
    ):
        result = exchange(ns, vip, 80, proto=protocol, count=3, timeout=5.0)
        assert result.errors == {expected: 3}, (ns, protocol, result)

    # Endpoints arrive: the service moves to service-ips and answers...
    apply(dp, [service(net, "empty", vip, [1, 1])])
    result = exchange(net.node, vip, 80, count=50)
    assert result.errors == {} and set(result.counts) <= {"pod0", "pod1"}, result
    # ... and when they go, it is refused again.
    apply(dp, [service(net, "empty", vip, [])])
    result = exchange(net.node, vip, 80, count=3, timeout=HUNG_AFTER)
    assert result.errors == {"ECONNREFUSED": 3}, result


# ---- hairpin --------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
def test_hairpin_traffic_is_masqueraded(net: Cluster, dp: Dataplane, family: int) -> None:
    v6 = family == 6
    vip, vip_self = ("fd00:96::40", "fd00:96::41") if v6 else ("10.96.0.40", "10.96.0.41")
    gateway = net.gateway6 if v6 else net.gateway4
    pod0 = net.pods[0]
    own = (pod0.ipv6 if v6 else pod0.ipv4) or ""
    dp.sync_full(
        [
            service(net, "all", vip, [1, 1, 1]),
            service(net, "self", vip_self, [1]),
            service(net, "self", vip_self, [1], protocol="udp"),
        ]
    )
    # Only pod0 behind the service: pod0 reaches itself, and sees the node's address.
    for protocol in ("tcp", "udp"):
        result = exchange(pod0.ns, vip_self, 80, proto=protocol, count=20)
        assert result.errors == {}, result
        assert result.counts == {"pod0": 20}, result
        assert result.sources == {"pod0": [gateway]}, result

    # Three pods behind it: only the connections that land on pod0 itself are masqueraded.
    result = exchange(pod0.ns, vip, 80, count=90)
    assert result.errors == {} and result.total == 90, result
    assert result.counts.get("pod0", 0) > 0, result  # P(none of 90) = (2/3)^90
    assert result.sources["pod0"] == [gateway], result
    for other in ("pod1", "pod2"):
        if other in result.sources:
            assert result.sources[other] == [own], result


# ---- service chains over several tables ----------------------------------------------------


def test_services_answer_from_every_shard_table(net: Cluster, dp: Dataplane) -> None:
    """Filler ports (33 000 chains and rules, endpoints nobody answers for) spread the service
    chains over three tables, each with its own nat hooks. NAT asks the tables in turn until
    one translates a new connection; shares, hairpin masquerade and reject must work wherever
    a port lands."""
    filler = spread(3000)
    weights = [3, 2, 1]
    # Where a port lands follows from its name; of nine names, some land in every table.
    real = [service(net, f"web{k}", f"10.100.0.{k + 1}", weights) for k in range(9)]
    own = [service(net, f"self{k}", f"10.100.1.{k + 1}", [1]) for k in range(9)]
    empty = service(net, "empty", "10.100.2.1", [])
    dp.sync_full([*filler, *real, *own, empty])
    tables = shard_names(net.node, "ip")
    assert len(tables) == 2

    def home(port: ServicePort) -> str:
        return table_of(net.node, "ip", f"service-default/{port.name}/tcp/tcp")

    real_in = {home(port): port for port in real}
    assert len(real_in) == 3, sorted(real_in)
    for table, port in sorted(real_in.items()):
        result = exchange(net.node, port.cluster_ip, 80, count=900)
        assert_shares(result, net, weights, 900, f"{port.name} in {table}")
    self_in = {home(port): port for port in own}
    assert len(self_in) == 3, sorted(self_in)
    for table, port in sorted(self_in.items()):
        result = exchange(net.pods[0].ns, port.cluster_ip, 80, count=5)
        assert result.sources == {"pod0": [net.gateway4]}, (table, result)
    result = exchange(net.node, empty.cluster_ip, 80, count=3, timeout=5.0)
    assert result.errors == {"ECONNREFUSED": 3}, result
