"""The multi-node lab itself (waolb.lab): real packets between its namespaces.

Three nodes with two pods each, dual-stack, no proxy: traffic crosses nodes by plain routing,
so every server must see the true source address of its client (no NAT on the fabric).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from netns import requires_netns
from waolb.lab import (
    SERVER_PORT,
    Exchange,
    Host,
    Lab,
    ServerSpec,
    multinode,
    start_servers,
    stop_process,
)

pytestmark = requires_netns

FAMILIES = [pytest.param(4, id="ipv4"), pytest.param(6, id="ipv6")]
PROTOCOLS = [pytest.param(p, id=p) for p in ("tcp", "udp", "sctp")]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with multinode(3, 2) as built:
        yield built


def only(result: Exchange, backend: str, count: int) -> None:
    assert result.errors == {}, result
    assert result.counts == {backend: count}, result


@pytest.mark.parametrize("proto", PROTOCOLS)
@pytest.mark.parametrize("family", FAMILIES)
def test_pods_reach_pods_on_other_nodes_with_their_own_address(
    lab: Lab, family: int, proto: str
) -> None:
    for client_node in lab.nodes:
        client = client_node.pods[0]
        for server in lab.pods:
            if server.node == client.node:
                continue
            result = client.exchange(server.address(family), SERVER_PORT, proto=proto, count=3)
            only(result, server.name, 3)
            assert result.sources == {server.name: [client.address(family)]}


@pytest.mark.parametrize("family", FAMILIES)
def test_nodes_reach_remote_pods_from_their_internal_ip(lab: Lab, family: int) -> None:
    for node in lab.nodes:
        for pod in lab.pods:
            result = node.exchange(pod.address(family), SERVER_PORT, count=2)
            only(result, pod.name, 2)
            # Local pods see the bridge's address, remote ones the node's InternalIP.
            expected = node.gateway(family) if pod.node == node.name else node.address(family)
            assert result.sources == {pod.name: [expected]}


@pytest.mark.parametrize("proto", PROTOCOLS)
@pytest.mark.parametrize("family", FAMILIES)
def test_the_client_reaches_every_node(lab: Lab, family: int, proto: str) -> None:
    for node in lab.nodes:
        result = lab.client.exchange(node.address(family), SERVER_PORT, proto=proto, count=3)
        only(result, node.name, 3)
        assert result.sources == {node.name: [lab.client.address(family)]}


def test_nodes_pods_and_the_client_reach_the_fabric_host(lab: Lab) -> None:
    """Cluster-wide services (the API server, predictors) listen on the fabric's address."""
    (server,) = start_servers([ServerSpec(lab.fabric, "fabric", protocols=("tcp",))])
    try:
        for family in (4, 6):
            for host in [lab.client, *lab.nodes, lab.nodes[2].pods[1]]:
                result = host.exchange(lab.fabric_address(family), SERVER_PORT, count=2)
                only(result, "fabric", 2)
                assert result.sources == {"fabric": [host.address(family)]}
    finally:
        stop_process(server)
        lab.fabric.forget(server)


def test_unanswered_ports_are_refused_and_counted_by_kind(lab: Lab) -> None:
    pod = lab.pods[-1]
    for proto in ("tcp", "sctp"):
        result = lab.pods[0].exchange(pod.ipv4, SERVER_PORT + 1, proto=proto, count=2)
        assert result.errors == {"ECONNREFUSED": 2}, (proto, result)
        assert result.error_kinds == {"refused": 2}


SERVICE_IP = {4: "10.96.0.99", 6: "fd00:96::99"}
# External clients go to a pod on the node itself: a remote pod would answer them directly
# (they share the fabric), bypassing the node's conntrack, which is why kube-proxy masquerades
# such traffic. Everyone else goes to a pod on another node.
SERVICE_TABLE = """
table inet lab-test {
    chain prerouting { type nat hook prerouting priority -100; jump services; }
    chain output { type nat hook output priority -100; jump services; }
    chain services {
        ip saddr 172.18.0.200 ip daddr 10.96.0.99 udp dport 80 dnat ip to %(local4)s:8080
        ip6 saddr fd00:172:18::200 ip6 daddr fd00:96::99 udp dport 80 dnat ip6 to [%(local6)s]:8080
        ip daddr 10.96.0.99 udp dport 80 dnat ip to %(remote4)s:8080
        ip6 daddr fd00:96::99 udp dport 80 dnat ip6 to [%(remote6)s]:8080
    }
}
"""


@pytest.mark.parametrize("family", FAMILIES)
def test_service_addresses_reach_the_nat_hooks_of_the_senders_node(lab: Lab, family: int) -> None:
    """A pod's and its node's traffic to a ClusterIP, and the client's routed via that node,
    enter that node's nat hooks; conntrack there shows the translations."""
    node = lab.nodes[1]
    local, remote = node.pods[1], lab.nodes[2].pods[1]
    addresses = {"local4": local.ipv4, "local6": local.ipv6}
    addresses |= {"remote4": remote.ipv4, "remote6": remote.ipv6}
    node.ns.run("nft", "-f", "-", input=SERVICE_TABLE % addresses)
    try:
        lab.route_client_via(node)
        vip = SERVICE_IP[family]
        senders: list[Host] = [node.pods[0], node]
        for sender in senders:
            only(sender.exchange(vip, 80, proto="udp", count=3), remote.name, 3)
        only(lab.client.exchange(vip, 80, proto="udp", count=3), local.name, 3)
        entries = node.conntrack("-p", "udp", "--orig-dst", vip)
        assert {(entry.original.src, entry.reply.src) for entry in entries} == {
            (node.pods[0].address(family), remote.address(family)),
            (node.address(family), remote.address(family)),
            (lab.client.address(family), local.address(family)),
        }
        # Another node has no such rule: routed there, the address is not answered.
        lab.route_client_via(lab.nodes[0])
        result = lab.client.exchange(vip, 80, proto="udp", count=1, timeout=0.5)
        assert result.counts == {}, result
    finally:
        node.ns.run("nft", "delete", "table", "inet", "lab-test")
        lab.route_client_via(lab.nodes[0])


def round_trip(source: Host, target: Host, family: int = 4) -> float:
    """The median time of one UDP exchange (one round trip) from ``source`` to ``target``."""
    result = source.exchange(target.address(family), SERVER_PORT, proto="udp", count=9)
    assert result.errors == {}, result
    return result.percentile(50)


def test_a_delay_link_slows_only_the_chosen_pair_and_goes_away(lab: Lab) -> None:
    a, b, c = lab.nodes
    delay = 0.05
    baseline = round_trip(a, b)
    link = lab.delay(a, b, delay)
    try:
        # Packets are held `delay` each way: a round trip takes at least twice that. The
        # upper bound only guards against a wildly wrong delay; it is generous for a busy
        # machine (the baseline is measured in the same run).
        for family in (4, 6):
            for source, target in ((a, b), (b, a), (a.pods[0], b.pods[1]), (b.pods[0], a)):
                rtt = round_trip(source, target, family)
                assert 2 * delay <= rtt < 4 * 2 * delay + 10 * baseline, (source.name, rtt)
        assert round_trip(a, c) < delay, "a pair without a link is not delayed"
        link.set(delay, 0.0)
        rtt = round_trip(a, b)
        assert delay <= rtt < 2 * delay, rtt
    finally:
        link.close()
    assert round_trip(a, b) < delay
    assert a.ns.run("ip", "-o", "link", "show").stdout.count("to-node-b") == 0


def test_a_stopped_server_refuses_and_a_restarted_one_answers(lab: Lab) -> None:
    pod = lab.nodes[2].pods[0]
    pod.stop_server()
    try:
        for proto in ("tcp", "udp"):
            result = lab.pods[0].exchange(pod.ipv6 or "", SERVER_PORT, proto=proto, count=2)
            assert result.error_kinds == {"refused": 2}, (proto, result)
    finally:
        pod.start_server()
    only(lab.pods[0].exchange(pod.ipv4, SERVER_PORT, proto="udp", count=2), pod.name, 2)


@pytest.mark.parametrize(
    ("family", "extra"), [(4, "172.18.0.201"), (6, "fd00:172:18::201")], ids=["ipv4", "ipv6"]
)
def test_the_client_can_send_from_an_extra_address(lab: Lab, family: int, extra: str) -> None:
    lab.client.add_address(extra)
    node = lab.nodes[1]
    result = lab.client.exchange(node.address(family), SERVER_PORT, count=2, source=extra)
    only(result, node.name, 2)
    assert result.sources == {node.name: [extra]}
    result = lab.client.exchange(node.address(family), SERVER_PORT, count=1)
    assert result.sources == {node.name: [lab.client.address(family)]}


def test_an_answer_that_is_not_name_and_source_is_counted_not_fatal(lab: Lab) -> None:
    (server,) = start_servers([ServerSpec(lab.fabric, "two words", protocols=("tcp",))])
    try:
        result = lab.client.exchange(lab.fabric_address(4), SERVER_PORT, count=3)
        assert (result.counts, result.errors) == ({}, {"bad answer": 3}), result
    finally:
        stop_process(server)
        lab.fabric.forget(server)
