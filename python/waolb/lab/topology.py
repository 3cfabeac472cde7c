"""The lab's cluster: node namespaces on a fabric bridge, pods on each node's bridge, a client.

:func:`multinode` builds N nodes. The fabric is a bridge in a namespace of its own, whose
address (:data:`~waolb.lab.addressing.FABRIC_GATEWAY`) every node and the client reach on the
link: serve cluster-wide things there (the API server, predictors). Each node has an InternalIP
per family on the fabric (``eth0``), a pod bridge ``br0`` with its pod CIDR, routes to every
other node's pod CIDR via that node's InternalIP (so pod-to-pod and node-to-pod traffic
crosses nodes untranslated, as with a routed CNI), and a default route to the fabric's host,
so ClusterIPs sent from the node itself reach its ``nat output`` hook; traffic from pods
reaches ``nat prerouting`` through the bridge. The external client sits on the fabric with
routes to the Service and external (LoadBalancer, ExternalIP) CIDRs via a node of the test's
choice. Every pod, and every node on its own address, runs a server (:mod:`waolb.lab.peer`).

:func:`cluster` is the one-node lab of the kernel tests (no fabric, default route via ``br0``),
built by the same code.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Unpack

from . import addressing, ownership
from .addressing import Family
from .conntrack import ConntrackEntry, conntrack_entries
from .delay import BASE_METRIC, DelayLink, delay_link
from .netns import (
    CommandError,
    Netns,
    entered,
    ip_batch,
    stop_process,
    wait_until,
    write_sysctls,
)
from .traffic import (
    PROTOCOLS,
    SERVER_PORT,
    Exchange,
    ExchangeOptions,
    ServerSpec,
    exchange,
    start_servers,
)

NODE_BRIDGE = "br0"
FABRIC_BRIDGE = "fabric0"
UPLINK = "eth0"
#: Single-node lab names kept for the kernel tests.
POD_SUBNET4 = addressing.pod_cidr(0, 4)
POD_SUBNET6 = addressing.pod_cidr(0, 6)
GATEWAY4 = addressing.pod_gateway(0, 4)
GATEWAY6 = addressing.pod_gateway(0, 6)

_NO_DAD = {"net.ipv6.conf.all.accept_dad": 0, "net.ipv6.conf.default.accept_dad": 0}
# A node forwards (both families), has no reverse-path filter (so the result does not depend on
# the host's defaults, which IPv4 namespaces inherit) and sends no ICMP redirects: ClusterIPs
# from pods can route back out of the bridge they came in by, and every redirect resets the
# per-host ICMP rate limit, which would drop the port-unreachable of a reject.
_NODE_SYSCTLS = {
    **_NO_DAD,
    "net.ipv4.ip_forward": 1,
    "net.ipv6.conf.all.forwarding": 1,
    "net.ipv4.conf.all.send_redirects": 0,
    "net.ipv4.conf.default.send_redirects": 0,
    "net.ipv4.conf.all.rp_filter": 0,
    "net.ipv4.conf.default.rp_filter": 0,
}


@dataclass
class Host:
    """A namespace with an address per family (the second None in an IPv4-only lab): a node
    or the client on the fabric, or a pod on its node's bridge."""

    name: str
    ns: Netns
    ipv4: str
    ipv6: str | None
    #: The server answering as ``name`` (see :mod:`waolb.lab.peer`), if one runs.
    server: subprocess.Popen[str] | None = field(default=None, kw_only=True)

    def address(self, family: Family) -> str:
        address = self.ipv4 if family == 4 else self.ipv6
        if address is None:
            raise ValueError(f"{self.name} has no IPv{family} address (the lab is IPv4 only)")
        return address

    @property
    def addresses(self) -> list[str]:
        return [self.ipv4] + ([self.ipv6] if self.ipv6 else [])

    def exchange(self, host: str, port: int, **options: Unpack[ExchangeOptions]) -> Exchange:
        """:func:`~waolb.lab.traffic.exchange` from this namespace."""
        return exchange(self.ns, host, port, **options)

    def start_server(
        self, ports: tuple[int, ...] = (SERVER_PORT,), protocols: tuple[str, ...] = PROTOCOLS
    ) -> None:
        """(Re)starts the server answering as this host's name."""
        self.stop_server()
        (self.server,) = start_servers([ServerSpec(self.ns, self.name, ports, protocols)])

    def stop_server(self) -> None:
        """Stops the server, as if the pod's process died: its ports refuse from now on."""
        if self.server is not None:
            stop_process(self.server)
            self.ns.forget(self.server)
            self.server = None

    def add_address(self, address: str, device: str = UPLINK) -> None:
        """Gives the host one more address on the fabric's prefix (for source-range tests:
        ``exchange(..., source=address)``); the first address stays the default source (an
        IPv4 secondary, an IPv6 address deprecated at once)."""
        family = addressing.family_of(address)
        prefix = addressing.prefix_length(addressing.FABRIC_CIDRS[family])
        lifetime = " preferred_lft 0" if family == 6 else ""
        ip_batch(self.ns, [f"addr add {address}/{prefix} dev {device} nodad{lifetime}"])


@dataclass
class Pod(Host):
    """A pod: its own namespace on its node's bridge, with a server on ``ports``."""

    ports: tuple[int, ...] = (SERVER_PORT,)
    node: str = ""

    def start_server(
        self, ports: tuple[int, ...] | None = None, protocols: tuple[str, ...] = PROTOCOLS
    ) -> None:
        """(Re)starts the pod's server, on its own ports unless told otherwise."""
        super().start_server(ports or self.ports, protocols)


@dataclass
class Node(Host):
    """A node: fabric address, pod bridge and CIDRs, its pods, and a host-network server
    answering as the node's name on the pods' ports."""

    index: int = 0
    zone: str = ""
    pods: list[Pod] = field(default_factory=list)

    def pod_cidr(self, family: Family) -> str:
        return addressing.pod_cidr(self.index, family)

    def gateway(self, family: Family) -> str:
        """The pod bridge's address, which pods on this node use as their gateway."""
        return addressing.pod_gateway(self.index, family)

    def ruleset(self) -> str:
        return self.ns.ruleset()

    def conntrack(self, *filters: str) -> list[ConntrackEntry]:
        """This node's conntrack entries, filtered as ``conntrack -L`` filters them
        (``"-p", "udp", "--orig-dst", ip``)."""
        return conntrack_entries(self.ns, *filters)

    def wait_for_rules(self, *needles: str, present: bool = True) -> str:
        """Waits until ``nft list ruleset`` in this node contains every needle (or, with
        ``present=False``, none of them); returns the ruleset."""

        def probe() -> str | None:
            text = self.ruleset()
            found = [needle in text for needle in needles]
            return text if (all(found) if present else not any(found)) else None

        state = "in" if present else "gone from"
        return wait_until(probe, interval=0.1, what=f"{needles} {state} {self.name}'s ruleset")


@dataclass
class Lab:
    """A running multi-node lab (see :func:`multinode`)."""

    fabric: Netns
    nodes: list[Node]
    client: Host
    ipv6: bool
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)

    @property
    def pods(self) -> list[Pod]:
        return [pod for node in self.nodes for pod in node.pods]

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def pod(self, name: str) -> Pod:
        return next(pod for pod in self.pods if pod.name == name)

    def fabric_address(self, family: Family = 4) -> str:
        """Where to serve cluster-wide things (bind inside ``with entered(lab.fabric)``)."""
        return addressing.FABRIC_GATEWAY[family]

    def node_of(self, backend: str) -> str:
        """The node a backend identity (a pod's or a node's name) runs on."""
        for node in self.nodes:
            if backend == node.name or any(pod.name == backend for pod in node.pods):
                return node.name
        raise KeyError(backend)

    def by_node(self, counts: dict[str, int]) -> dict[str, int]:
        """Answers per backend (``Exchange.counts``) summed per node."""
        totals: dict[str, int] = {}
        for backend, count in counts.items():
            node = self.node_of(backend)
            totals[node] = totals.get(node, 0) + count
        return totals

    def route_client_via(self, node: Node, cidrs: Sequence[str] | None = None) -> None:
        """Sends the client's traffic for ``cidrs`` (default: the Service and external CIDRs
        of the lab's families) to ``node``, as an external router would."""
        families = (4, 6) if self.ipv6 else (4,)
        chosen = cidrs or [
            cidr
            for f in families
            for cidr in (addressing.SERVICE_CIDRS[f], addressing.EXTERNAL_CIDRS[f])
        ]
        ip_batch(
            self.client.ns,
            [
                f"route replace {cidr} via {node.address(addressing.family_of(cidr))}"
                for cidr in chosen
            ],
        )

    def delay(self, a: Host, b: Host, seconds: float, back: float | None = None) -> DelayLink:
        """Adds ``seconds`` of one-way delay to traffic from ``a`` to ``b`` (node addresses
        and pod CIDRs) and ``back`` (default: the same) from ``b`` to ``a``, until the
        returned link is closed or the lab ends. See :mod:`waolb.lab.delay`."""
        link = delay_link(self, a, b, seconds, seconds if back is None else back)
        self._stack.callback(link.close)
        return link

    def close(self) -> None:
        self._stack.close()


def _node_name(index: int) -> str:
    return f"node-{chr(ord('a') + index)}" if index < 26 else f"node-{index}"


def _pods_per_node(pods: int | Sequence[int], nodes: int) -> list[int]:
    counts = [pods] * nodes if isinstance(pods, int) else list(pods)
    if len(counts) != nodes:
        raise ValueError(f"pods per node {counts} does not name {nodes} nodes")
    return counts


def _families(ipv6: bool) -> tuple[Family, ...]:
    return (4, 6) if ipv6 else (4,)


def _node_commands(
    node: Node, families: tuple[Family, ...], uplink: bool, peers: Sequence[Node]
) -> list[str]:
    """The node side: bridge, pods' veths, uplink address and routes."""
    commands = [f"link add {NODE_BRIDGE} type bridge forward_delay 0"]
    for family in families:
        prefix = addressing.prefix_length(node.pod_cidr(family))
        commands.append(f"addr add {node.gateway(family)}/{prefix} dev {NODE_BRIDGE} nodad")
    commands.append(f"link set {NODE_BRIDGE} up")
    for j, pod in enumerate(node.pods):
        port = f"veth{j}"
        commands += [
            f"link add {port} type veth peer name eth0 netns {pod.ns.name}",
            f"link set {port} master {NODE_BRIDGE}",
            # Hairpin, as CNI bridge plugins set it: a pod reaches itself through a Service.
            f"link set {port} type bridge_slave hairpin on",
            f"link set {port} up",
        ]
    if not uplink:
        commands.append(f"route add default dev {NODE_BRIDGE}")
        if len(families) == 2:
            commands.append(f"route add ::/0 dev {NODE_BRIDGE}")
        return commands
    for family in families:
        prefix = addressing.prefix_length(addressing.FABRIC_CIDRS[family])
        commands.append(f"addr add {node.address(family)}/{prefix} dev {UPLINK} nodad")
    commands.append(f"link set {UPLINK} up")
    for family in families:
        for peer in peers:
            commands.append(
                f"route add {peer.pod_cidr(family)} via {peer.address(family)} metric {BASE_METRIC}"
            )
        default = "default" if family == 4 else "::/0"
        commands.append(f"route add {default} via {addressing.FABRIC_GATEWAY[family]}")
    return commands


def _pod_commands(pod: Pod, node: Node, families: tuple[Family, ...]) -> list[str]:
    commands = []
    for family in families:
        prefix = addressing.prefix_length(node.pod_cidr(family))
        commands.append(f"addr add {pod.address(family)}/{prefix} dev eth0 nodad")
    commands.append("link set eth0 up")
    for family in families:
        default = "default" if family == 4 else "::/0"
        commands.append(f"route add {default} via {node.gateway(family)}")
    return commands


def _add_pods(
    stack: contextlib.ExitStack,
    node: Node,
    count: int,
    *,
    prefix: str,
    ipv6: bool,
    ports: tuple[int, ...],
) -> None:
    for j in range(count):
        node.pods.append(
            Pod(
                name=f"{prefix}{j}",
                ns=stack.enter_context(Netns("pod")),
                ipv4=addressing.pod_address(node.index, j, 4),
                ipv6=addressing.pod_address(node.index, j, 6) if ipv6 else None,
                ports=ports,
                node=node.name,
            )
        )


def _start_servers(
    nodes: Sequence[Node], ports: tuple[int, ...], protocols: tuple[str, ...], node_servers: bool
) -> None:
    specs = [ServerSpec(pod.ns, pod.name, ports, protocols) for node in nodes for pod in node.pods]
    hosts = list(nodes) if node_servers else []
    specs += [ServerSpec(node.ns, node.name, ports, protocols) for node in hosts]
    processes = iter(start_servers(specs))
    for node in nodes:
        for pod in node.pods:
            pod.server = next(processes)
    for node in hosts:
        node.server = next(processes)


def _answer(source: Netns, address: str, port: int) -> str | None:
    """The identity answering a TCP line at ``address:port`` from ``source``, or None."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with entered(source):
        sock = socket.socket(family, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(1.0)
        try:
            sock.connect((address, port))
            sock.sendall(b"?\n")
            return sock.recv(256).decode().split()[0]
        except (OSError, IndexError):
            return None


def _wait_connected(checks: list[tuple[Netns, str, int, str]]) -> None:
    """Waits until every (source, address, port) answers as its expected identity."""
    pending = list(checks)

    def probe() -> bool:
        for check in list(pending):
            source, address, port, identity = check
            answer = _answer(source, address, port)
            if answer is not None and answer != identity:
                raise CommandError(f"{address}:{port} answered {answer!r}, not {identity!r}")
            if answer == identity:
                pending.remove(check)
        return not pending

    wait_until(probe, interval=0.05, what=f"lab connectivity ({len(pending)} paths left)")


@contextlib.contextmanager
def multinode(
    nodes: int = 3,
    pods: int | Sequence[int] = 3,
    *,
    ipv6: bool = True,
    ports: tuple[int, ...] = (SERVER_PORT,),
    protocols: tuple[str, ...] = PROTOCOLS,
    zones: Sequence[str] | None = None,
    node_servers: bool = True,
) -> Iterator[Lab]:
    """Builds ``nodes`` nodes with ``pods`` pods each (or per node), a fabric and a client.

    Node ``i`` is ``node-a``, ``node-b``... in zone ``zones[i]`` (default: a zone per node,
    ``zone-a``...); its pods are ``<node>-pod<j>``. Yields once every node reaches every pod
    and the client reaches every node, on each family; everything is removed on exit, on
    errors halfway through too. Dual-stack unless ``ipv6=False``.
    """
    ownership.sweep_stale()
    families = _families(ipv6)
    per_node = _pods_per_node(pods, nodes)
    zone_names = (
        list(zones)
        if zones is not None
        else [f"zone-{chr(ord('a') + i % 26)}" for i in range(nodes)]
    )
    with contextlib.ExitStack() as stack:
        fabric = stack.enter_context(Netns("fabric"))
        built: list[Node] = []
        for i in range(nodes):
            built.append(
                Node(
                    name=_node_name(i),
                    ns=stack.enter_context(Netns("node")),
                    ipv4=addressing.node_address(i, 4),
                    ipv6=addressing.node_address(i, 6) if ipv6 else None,
                    index=i,
                    zone=zone_names[i],
                )
            )
            _add_pods(
                stack,
                built[-1],
                per_node[i],
                prefix=f"{built[-1].name}-pod",
                ipv6=ipv6,
                ports=ports,
            )
        client = Host(
            "client",
            stack.enter_context(Netns("client")),
            addressing.CLIENT_ADDRESS[4],
            addressing.CLIENT_ADDRESS[6] if ipv6 else None,
        )
        lab = Lab(fabric, built, client, ipv6)
        stack.callback(lab.close)
        _wire(lab, families)
        _start_servers(built, ports, protocols, node_servers)
        checks = [
            (node.ns, pod.address(family), ports[0], pod.name)
            for node in built
            for pod in lab.pods
            for family in families
        ]
        if node_servers:
            checks += [
                (client.ns, node.address(family), ports[0], node.name)
                for node in built
                for family in families
            ]
        _wait_connected(checks)
        yield lab


def _wire(lab: Lab, families: tuple[Family, ...]) -> None:
    """Sysctls, links, addresses and routes of every namespace of ``lab``."""
    write_sysctls(lab.fabric, _NO_DAD)
    write_sysctls(lab.client.ns, {**_NO_DAD, "net.ipv4.conf.all.rp_filter": 0})
    for node in lab.nodes:
        write_sysctls(node.ns, _NODE_SYSCTLS)
        for pod in node.pods:
            write_sysctls(pod.ns, _NO_DAD)
    hosts: list[Host] = [*lab.nodes, lab.client]
    fabric_commands = [f"link add {FABRIC_BRIDGE} type bridge forward_delay 0"]
    for family in families:
        prefix = addressing.prefix_length(addressing.FABRIC_CIDRS[family])
        fabric_commands.append(
            f"addr add {addressing.FABRIC_GATEWAY[family]}/{prefix} dev {FABRIC_BRIDGE} nodad"
        )
    fabric_commands.append(f"link set {FABRIC_BRIDGE} up")
    for k, host in enumerate(hosts):
        fabric_commands += [
            f"link add port{k} type veth peer name {UPLINK} netns {host.ns.name}",
            f"link set port{k} master {FABRIC_BRIDGE}",
            f"link set port{k} up",
        ]
    # Replies from the fabric's own host (API server, predictors) to pods go via their node.
    fabric_commands += [
        f"route add {node.pod_cidr(family)} via {node.address(family)}"
        for node in lab.nodes
        for family in families
    ]
    ip_batch(lab.fabric, fabric_commands)
    for node in lab.nodes:
        peers = [peer for peer in lab.nodes if peer is not node]
        ip_batch(node.ns, _node_commands(node, families, uplink=True, peers=peers))
        for pod in node.pods:
            ip_batch(pod.ns, _pod_commands(pod, node, families))
    client_commands = []
    for family in families:
        prefix = addressing.prefix_length(addressing.FABRIC_CIDRS[family])
        client_commands.append(f"addr add {lab.client.address(family)}/{prefix} dev {UPLINK} nodad")
    client_commands.append(f"link set {UPLINK} up")
    ip_batch(lab.client.ns, client_commands)
    if lab.nodes:
        lab.route_client_via(lab.nodes[0])


# ---- the one-node lab of the kernel tests ----------------------------------------------------


@dataclass
class Cluster:
    """A node namespace with bridge ``br0`` (10.244.0.1/24, fd00:244::1/64) and its pods."""

    node: Netns
    pods: list[Pod] = field(default_factory=list)
    ipv6: bool = False
    gateway4: str = GATEWAY4
    gateway6: str = GATEWAY6

    def pod(self, name: str) -> Pod:
        return next(p for p in self.pods if p.name == name)


@contextlib.contextmanager
def cluster(
    pods: int = 3, *, ipv6: bool = False, ports: tuple[int, ...] = (SERVER_PORT,)
) -> Iterator[Cluster]:
    """Builds a node and ``pods`` pods; yields once every pod answers the node directly.

    Pod ``i`` is ``pod<i>`` at 10.244.0.<10+i> (and fd00:244::<10+i> with ``ipv6``), its
    bridge port in hairpin mode. The node has no fabric: its default route leaves by the
    bridge, so ClusterIPs (10.96.0.0/16, fd00:96::/112) route. Everything is removed on exit,
    including on errors halfway through.
    """
    ownership.sweep_stale()
    families = _families(ipv6)
    with contextlib.ExitStack() as stack:
        ns = stack.enter_context(Netns("node"))
        node = Node(name="node", ns=ns, ipv4=GATEWAY4, ipv6=GATEWAY6 if ipv6 else None)
        _add_pods(stack, node, pods, prefix="pod", ipv6=ipv6, ports=ports)
        write_sysctls(ns, _NODE_SYSCTLS)
        for pod in node.pods:
            write_sysctls(pod.ns, _NO_DAD)
        ip_batch(ns, _node_commands(node, families, uplink=False, peers=[]))
        for pod in node.pods:
            ip_batch(pod.ns, _pod_commands(pod, node, families))
        _start_servers([node], ports, PROTOCOLS, node_servers=False)
        _wait_connected(
            [
                (ns, pod.address(family), ports[0], pod.name)
                for pod in node.pods
                for family in families
            ]
        )
        yield Cluster(node=ns, pods=node.pods, ipv6=ipv6)
