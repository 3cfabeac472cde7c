"""The lab's plain-data parts, without root: the address plan, the Kubernetes objects that
describe the lab, conntrack output parsing and the SCTP packets of the lab's peers."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from waolb.lab import (
    Backend,
    Netns,
    Node,
    Pod,
    PortSpec,
    addressing,
    endpoint_slices,
    node_object,
    peer,
    service_object,
)
from waolb.lab.conntrack import ConntrackTuple, parse_entry
from waolb.lab.topology import GATEWAY4, GATEWAY6, POD_SUBNET4, POD_SUBNET6


def node(index: int, pods: int = 2) -> Node:
    built = Node(
        name=f"node-{index}",
        ns=Netns("unit"),  # never entered: no namespace is made
        ipv4=addressing.node_address(index, 4),
        ipv6=addressing.node_address(index, 6),
        index=index,
        zone=f"zone-{index}",
    )
    built.pods = [
        Pod(
            name=f"node-{index}-pod{j}",
            ns=Netns("unit"),
            ipv4=addressing.pod_address(index, j, 4),
            ipv6=addressing.pod_address(index, j, 6),
            ports=(8080 + j,),
            node=built.name,
        )
        for j in range(pods)
    ]
    return built


def test_node_0_has_the_single_node_labs_addresses() -> None:
    assert (POD_SUBNET4, POD_SUBNET6) == ("10.244.0.0/24", "fd00:244::/64")
    assert (GATEWAY4, GATEWAY6) == ("10.244.0.1", "fd00:244::1")
    assert addressing.pod_address(0, 2, 4) == "10.244.0.12"
    assert addressing.pod_address(0, 2, 6) == "fd00:244::12"


def test_addresses_are_unique_and_inside_their_cidrs() -> None:
    seen = set()
    for n in range(5):
        for family in (4, 6):
            cidr = ipaddress.ip_network(addressing.pod_cidr(n, family))
            assert ipaddress.ip_address(addressing.pod_gateway(n, family)) in cidr
            fabric = ipaddress.ip_network(addressing.FABRIC_CIDRS[family])
            assert ipaddress.ip_address(addressing.node_address(n, family)) in fabric
            seen.add(addressing.node_address(n, family))
            for j in range(4):
                address = addressing.pod_address(n, j, family)
                assert ipaddress.ip_address(address) in cidr
                seen.add(address)
    assert len(seen) == 5 * 2 * (1 + 4)
    with pytest.raises(ValueError, match="node index"):
        addressing.node_address(addressing.MAX_NODES, 4)


def test_an_address_pool_runs_out_with_a_clear_error() -> None:
    pool = addressing.AddressPool("10.0.0.0/30", first=2)
    assert [pool.take(), pool.take()] == ["10.0.0.2", "10.0.0.3"]
    with pytest.raises(ValueError, match=r"no address left in 10\.0\.0\.0/30"):
        pool.take()


def test_a_node_object_names_its_addresses_cidrs_and_zone() -> None:
    obj = node_object(node(1), cpu="8", memory="16Gi")
    assert obj["metadata"]["labels"]["topology.kubernetes.io/zone"] == "zone-1"
    assert obj["spec"]["podCIDRs"] == ["10.244.1.0/24", "fd00:244:0:1::/64"]
    assert obj["status"]["addresses"][:2] == [
        {"type": "InternalIP", "address": "172.18.0.11"},
        {"type": "InternalIP", "address": "fd00:172:18::11"},
    ]
    assert obj["status"]["allocatable"]["cpu"] == "8"


def test_a_dual_stack_service_with_node_ports_and_ingress() -> None:
    obj = service_object(
        "web",
        "default",
        ports=[PortSpec(), PortSpec("dns", "UDP", 53, "dns")],
        cluster_ips={6: "fd00:96::a", 4: "10.96.0.10"},
        service_type="LoadBalancer",
        node_ports={"http": 30000},
        ingress_ips=["203.0.113.10"],
        spec={"externalTrafficPolicy": "Local"},
    )
    spec = obj["spec"]
    assert spec["clusterIPs"] == ["fd00:96::a", "10.96.0.10"]
    assert spec["ipFamilies"] == ["IPv6", "IPv4"]
    assert spec["ipFamilyPolicy"] == "RequireDualStack"
    assert spec["ports"][0]["nodePort"] == 30000 and "nodePort" not in spec["ports"][1]
    assert spec["externalTrafficPolicy"] == "Local"
    assert obj["status"]["loadBalancer"]["ingress"] == [{"ip": "203.0.113.10", "ipMode": "VIP"}]


def test_slices_group_backends_by_resolved_port_and_carry_conditions_and_hints() -> None:
    a, b = node(0), node(1)
    backends = [
        Backend(a.pods[0]),  # named port -> the pod's own 8080
        Backend(a.pods[1], ready=False, serving=True, terminating=True),  # 8081
        Backend(b.pods[0], for_zones=("zone-0",), for_nodes=("node-0",)),  # 8080
        Backend(b, port=9000),  # a host-network endpoint
    ]
    slices = endpoint_slices(
        "web",
        "default",
        ports=[PortSpec(target_port="http")],
        backends=backends,
        families=[4, 6],
        zones={"node-0": "zone-0", "node-1": "zone-1"},
    )
    by_name = {s["metadata"]["name"]: s for s in slices}
    assert sorted(by_name) == [f"web-ipv{f}-{k}" for f in (4, 6) for k in range(3)]
    ports = {name: s["ports"][0]["port"] for name, s in by_name.items()}
    assert ports == {f"web-ipv{f}-{k}": p for f in (4, 6) for k, p in enumerate((8080, 8081, 9000))}
    first = by_name["web-ipv6-0"]["endpoints"]
    assert [e["addresses"] for e in first] == [["fd00:244::10"], ["fd00:244:0:1::10"]]
    assert first[1]["hints"] == {"forZones": [{"name": "zone-0"}], "forNodes": [{"name": "node-0"}]}
    assert [(e["nodeName"], e["zone"]) for e in first] == [
        ("node-0", "zone-0"),
        ("node-1", "zone-1"),
    ]
    terminating = by_name["web-ipv4-1"]["endpoints"][0]["conditions"]
    assert terminating == {"ready": False, "serving": True, "terminating": True}
    host = by_name["web-ipv4-2"]["endpoints"][0]
    assert (host["addresses"], host["nodeName"]) == (["172.18.0.11"], "node-1")
    for s in slices:
        assert s["metadata"]["labels"]["kubernetes.io/service-name"] == "web"


def test_a_service_without_backends_has_an_empty_slice_per_family() -> None:
    slices = endpoint_slices(
        "web", "default", ports=[PortSpec()], backends=[], families=[4], zones={}
    )
    assert [(s["metadata"]["name"], s["endpoints"]) for s in slices] == [("web-ipv4-0", [])]


def test_conntrack_lines_parse_into_both_directions() -> None:
    entry = parse_entry(
        "tcp      6 431999 ESTABLISHED src=10.244.1.10 dst=10.96.0.10 sport=40000 dport=80 "
        "src=10.244.2.11 dst=10.244.1.10 sport=8080 dport=40000 [ASSURED] mark=0 use=1"
    )
    assert (entry.protocol, entry.state, entry.timeout) == ("tcp", "ESTABLISHED", 431999)
    assert entry.original == ConntrackTuple("10.244.1.10", "10.96.0.10", 40000, 80)
    assert entry.reply == ConntrackTuple("10.244.2.11", "10.244.1.10", 8080, 40000)
    assert entry.flags == {"ASSURED"}
    udp = parse_entry(
        "udp      17 29 src=::1 dst=::1 sport=5 dport=9 [UNREPLIED] src=::1 dst=::1 sport=9 "
        "dport=5 mark=0 use=1"
    )
    assert (udp.state, udp.flags, udp.reply.sport) == (None, {"UNREPLIED"}, 9)
    icmp = parse_entry(
        "icmp     1 29 src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=7 src=10.0.0.2 dst=10.0.0.1 "
        "type=0 code=0 id=7 mark=0 use=1"
    )
    assert icmp.original == ConntrackTuple("10.0.0.1", "10.0.0.2", None, None)
    with pytest.raises(ValueError, match="not a conntrack entry"):
        parse_entry("conntrack v1.4.7 (conntrack-tools): 0 flow entries have been shown.")


def test_sctp_packets_carry_a_crc32c_that_is_checked() -> None:
    assert peer.crc32c(b"123456789") == 0xE3069283  # the standard check value
    chunk = peer._chunk(peer.SCTP_INIT, struct.pack("!IIHHI", 7, 65536, 1, 1, 7))
    packet = peer.sctp_packet(40000, 80, 0, chunk)
    assert peer.sctp_parse(packet) == (40000, 80, 0, peer.SCTP_INIT, chunk[4:])
    corrupted = packet[:-1] + bytes([packet[-1] ^ 1])
    assert peer.sctp_parse(corrupted) is None
    assert peer.sctp_parse(packet[:10]) is None
