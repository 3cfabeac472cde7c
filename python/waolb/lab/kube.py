"""The lab as a Kubernetes cluster: Node objects, Services with EndpointSlices on chosen pods,
and one waolb process per node, all against one API server.

The API server is anything with ``url``, ``create(obj)`` and ``update(obj)`` (the project's
test API server, or an adapter for a real kube-apiserver); it must listen where every node
reaches it: the fabric's address (:meth:`waolb.lab.Lab.fabric_address`).
"""

from __future__ import annotations

import contextlib
import itertools
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from . import addressing
from .addressing import AddressPool, Family
from .netns import wait_until
from .objects import (
    Backend,
    JsonObject,
    PortSpec,
    as_backend,
    empty_endpoint_slice,
    endpoint_slices,
    node_object,
    service_object,
)
from .proxies import Proxy, proxy_command, proxy_environment
from .topology import Host, Lab, Node, Pod
from .traffic import Exchange

FIRST_NODE_PORT = 30000
#: Fast syncs, so that tests wait for rules in tenths of a second, not seconds.
DEFAULT_FLAGS = ("--iptables-min-sync-period=100ms",)


class ObjectApi(Protocol):
    """What the lab needs of an API server."""

    @property
    def url(self) -> str: ...

    def create(self, obj: Mapping[str, Any]) -> JsonObject: ...

    def update(self, obj: Mapping[str, Any]) -> JsonObject: ...


@dataclass
class LabService:
    """A Service the lab created, with every address and port it was given."""

    name: str
    namespace: str
    ports: tuple[PortSpec, ...]
    cluster_ips: dict[Family, str]
    node_ports: dict[str, int] = field(default_factory=dict)
    ingress_ips: dict[Family, str] = field(default_factory=dict)
    external_ips: dict[Family, str] = field(default_factory=dict)
    health_check_node_port: int | None = None
    backends: tuple[Backend, ...] = ()
    slices: dict[str, Family] = field(default_factory=dict)  # EndpointSlice names

    @property
    def families(self) -> list[Family]:
        return list(self.cluster_ips)

    def cluster_ip(self, family: Family = 4) -> str:
        return self.cluster_ips[family]

    def port(self, name: str | None = None) -> PortSpec:
        return self.ports[0] if name is None else next(p for p in self.ports if p.name == name)

    def node_port(self, name: str | None = None) -> int:
        return self.node_ports[self.port(name).name]


class KubeLab:
    """Nodes, Services and proxies of a :class:`~waolb.lab.Lab` against ``api``.

    Creates a Node object per lab node at once. ``connection`` is how waolb reaches the API
    (default ``--master=<api.url>``); ``default_flags`` go on every proxy's command line.
    Use as a context manager: every proxy is stopped on exit.
    """

    def __init__(
        self,
        lab: Lab,
        api: ObjectApi,
        workdir: Path,
        *,
        connection: Sequence[str] | None = None,
        default_flags: Sequence[str] = DEFAULT_FLAGS,
        node_cpu: str = "4",
        node_memory: str = "8Gi",
    ) -> None:
        self.lab = lab
        self.api = api
        self.workdir = workdir
        self.connection = list(connection or [f"--master={api.url}"])
        self.default_flags = list(default_flags)
        self.proxies: dict[str, Proxy] = {}
        self._cluster_ips = {f: AddressPool(addressing.SERVICE_CIDRS[f]) for f in (4, 6)}
        self._external_ips = {f: AddressPool(addressing.EXTERNAL_CIDRS[f]) for f in (4, 6)}
        self._node_ports = itertools.count(FIRST_NODE_PORT)
        self._zones = {node.name: node.zone for node in lab.nodes}
        for node in lab.nodes:
            api.create(node_object(node, cpu=node_cpu, memory=node_memory))

    def __enter__(self) -> KubeLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_proxies()

    # ---- proxies -------------------------------------------------------------------------------

    def start_proxy(
        self,
        node: Node | str,
        *flags: str,
        proxy_name: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Proxy:
        """Starts waolb on ``node`` (replacing a stopped one); ``proxy_name`` sets
        ``WAO_SERVICE_PROXY_NAME``."""
        target = self.lab.node(node) if isinstance(node, str) else node
        old = self.proxies.get(target.name)
        if old is not None:
            old.stop()
        proxy = Proxy(
            node=target,
            argv=proxy_command(target, self.connection, [*self.default_flags, *flags]),
            env=proxy_environment(proxy_name, env),
            log_path=self.workdir / f"waolb-{target.name}.log",
        )
        self.proxies[target.name] = proxy
        return proxy.start()

    def start_proxies(self, *flags: str, proxy_name: str | None = None) -> list[Proxy]:
        """Starts waolb on every node."""
        return [self.start_proxy(node, *flags, proxy_name=proxy_name) for node in self.lab.nodes]

    def proxy(self, node: Node | str) -> Proxy:
        return self.proxies[node if isinstance(node, str) else node.name]

    def stop_proxies(self) -> None:
        for proxy in self.proxies.values():
            proxy.stop()

    # ---- services ------------------------------------------------------------------------------

    def service(
        self,
        name: str,
        backends: Iterable[Pod | Node | Backend] = (),
        *,
        ports: Sequence[PortSpec] = (PortSpec(),),
        service_type: str = "ClusterIP",
        families: Sequence[Family] | None = None,
        namespace: str = "default",
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        external_ips: bool = False,
        **spec: Any,
    ) -> LabService:
        """Creates a Service and its EndpointSlices; returns what it was given.

        ClusterIPs (one per family, default: the lab's families), node ports (NodePort and
        LoadBalancer types, unless ``allocateLoadBalancerNodePorts=False``), LoadBalancer
        ingress IPs, ExternalIPs (``external_ips=True``) and the health check node port
        (LoadBalancer with ``externalTrafficPolicy="Local"``) are allocated here, as the API
        server and a load-balancer controller would. ``spec`` holds any other Service spec
        field under its API name (``sessionAffinity="ClientIP"``); it is applied last.
        """
        chosen = list(families or ((4, 6) if self.lab.ipv6 else (4,)))
        service = LabService(
            name,
            namespace,
            tuple(ports),
            {family: self._cluster_ips[family].take() for family in chosen},
        )
        balancer = service_type == "LoadBalancer"
        if service_type == "NodePort" or (
            balancer and spec.get("allocateLoadBalancerNodePorts", True)
        ):
            service.node_ports = {port.name: next(self._node_ports) for port in ports}
        if balancer:
            service.ingress_ips = {f: self._external_ips[f].take() for f in chosen}
            if spec.get("externalTrafficPolicy") == "Local" and "healthCheckNodePort" not in spec:
                service.health_check_node_port = next(self._node_ports)
                spec["healthCheckNodePort"] = service.health_check_node_port
        if external_ips:
            service.external_ips = {f: self._external_ips[f].take() for f in chosen}
            spec.setdefault("externalIPs", list(service.external_ips.values()))
        self.api.create(
            service_object(
                name,
                namespace,
                ports=ports,
                cluster_ips=service.cluster_ips,
                service_type=service_type,
                node_ports=service.node_ports,
                ingress_ips=list(service.ingress_ips.values()),
                labels=labels,
                annotations=annotations,
                spec=spec,
            )
        )
        self.set_backends(service, backends)
        return service

    def set_backends(self, service: LabService, backends: Iterable[Pod | Node | Backend]) -> None:
        """Replaces the Service's endpoints (creating, updating or emptying its slices)."""
        service.backends = tuple(as_backend(item) for item in backends)
        slices = endpoint_slices(
            service.name,
            service.namespace,
            ports=service.ports,
            backends=service.backends,
            families=service.families,
            zones=self._zones,
        )
        wanted = {obj["metadata"]["name"]: obj for obj in slices}
        for name, family in service.slices.items():
            if name not in wanted:  # a set of port numbers no backend has any more
                self.api.update(
                    empty_endpoint_slice(
                        service.name, service.namespace, name, family, service.ports
                    )
                )
        for name, obj in wanted.items():
            (self.api.update if name in service.slices else self.api.create)(obj)
            service.slices[name] = 4 if obj["addressType"] == "IPv4" else 6

    # ---- traffic -------------------------------------------------------------------------------

    def wait_for_backends(
        self,
        source: Host | Pod,
        address: str,
        port: int,
        backends: set[str],
        *,
        proto: str = "tcp",
        count: int = 60,
        timeout: float = 1.0,
    ) -> Exchange:
        """Exchanges ``count`` times from ``source`` until exactly ``backends`` answer (the
        rules of every node on the path caught up); returns the last exchange."""

        def probe() -> Exchange | None:
            result = source.exchange(address, port, proto=proto, count=count, timeout=timeout)
            return result if set(result.counts) == backends else None

        return wait_until(
            probe, interval=0.1, what=f"{sorted(backends)} answering {address}:{port}"
        )


@contextlib.contextmanager
def kube_lab(
    lab: Lab, api: ObjectApi, workdir: Path | None = None, **options: Any
) -> Iterator[KubeLab]:
    """A :class:`KubeLab`, with proxy logs in ``workdir`` (default: a temporary directory,
    removed on exit)."""
    with contextlib.ExitStack() as stack:
        directory = workdir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="waolb-lab-"))
        )
        cluster = stack.enter_context(KubeLab(lab, api, directory, **options))
        yield cluster
