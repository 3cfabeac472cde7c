"""The lab's address plan: which address every node, pod and client has (plain data).

Node ``i`` (0-based) has InternalIPs 172.18.0.(10+i) and fd00:172:18::(10+i) on the fabric,
pod CIDRs 10.244.i.0/24 and fd00:244:0:i::/64 with its bridge at .1 / ::1, and its pods at
.(10+j) / ::(10+j). The fabric's own host (where the API server and other cluster-wide
services listen) is 172.18.0.1 / fd00:172:18::1; the external client is .200 / ::200.
Services get addresses from :data:`SERVICE_CIDRS`, LoadBalancer ingress IPs and ExternalIPs
from :data:`EXTERNAL_CIDRS`. Node 0's pod addresses are the single-node lab's (10.244.0.x,
fd00:244::x), so tests written for one node read the same on several.
"""

from __future__ import annotations

import ipaddress

Family = int  # 4 or 6

FABRIC_CIDRS = {4: "172.18.0.0/24", 6: "fd00:172:18::/64"}
FABRIC_GATEWAY = {4: "172.18.0.1", 6: "fd00:172:18::1"}
CLIENT_ADDRESS = {4: "172.18.0.200", 6: "fd00:172:18::200"}
SERVICE_CIDRS = {4: "10.96.0.0/16", 6: "fd00:96::/112"}
EXTERNAL_CIDRS = {4: "203.0.113.0/24", 6: "fd00:203::/112"}
CLUSTER_CIDRS = {4: "10.244.0.0/16", 6: "fd00:244::/48"}
MAX_NODES = 90
MAX_PODS_PER_NODE = 240


def _canonical(address: str) -> str:
    return str(ipaddress.ip_address(address))


def node_address(node: int, family: Family) -> str:
    """Node ``node``'s InternalIP on the fabric."""
    _check_node(node)
    return _canonical(f"172.18.0.{10 + node}" if family == 4 else f"fd00:172:18::{10 + node}")


def pod_cidr(node: int, family: Family) -> str:
    _check_node(node)
    return (
        f"10.244.{node}.0/24"
        if family == 4
        else str(ipaddress.ip_network(f"fd00:244:0:{node}::/64"))
    )


def pod_gateway(node: int, family: Family) -> str:
    """The address of node ``node``'s pod bridge: its pods' default gateway."""
    return _host(pod_cidr(node, family), 1)


def pod_address(node: int, pod: int, family: Family) -> str:
    if not 0 <= pod < MAX_PODS_PER_NODE:
        raise ValueError(f"pod index {pod} outside 0..{MAX_PODS_PER_NODE - 1}")
    _check_node(node)
    # IPv6 host parts are written with the same digits as IPv4's (::10 for .10), as before.
    return (
        f"10.244.{node}.{10 + pod}" if family == 4 else _canonical(f"fd00:244:0:{node}::{10 + pod}")
    )


def prefix_length(cidr: str) -> int:
    return ipaddress.ip_network(cidr).prefixlen


def family_of(address: str) -> Family:
    return ipaddress.ip_address(address.split("/", maxsplit=1)[0]).version


def _host(cidr: str, offset: int) -> str:
    network = ipaddress.ip_network(cidr)
    return str(network.network_address + offset)


def _check_node(node: int) -> None:
    if not 0 <= node < MAX_NODES:
        raise ValueError(f"node index {node} outside 0..{MAX_NODES - 1}")


class AddressPool:
    """Hands out addresses of a CIDR in order, skipping the network address and ``.1``."""

    def __init__(self, cidr: str, first: int = 10) -> None:
        self._network = ipaddress.ip_network(cidr)
        self._next = first

    def take(self) -> str:
        if self._next >= self._network.num_addresses:
            raise ValueError(f"no address left in {self._network}")
        address = self._network.network_address + self._next
        self._next += 1
        return str(address)
