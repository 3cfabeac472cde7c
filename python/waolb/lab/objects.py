"""Kubernetes objects that describe the lab: Nodes, Services and EndpointSlices (plain dicts,
shaped as the API serves them), built from the lab's topology so that names, addresses,
zones and node names always agree with the namespaces."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .addressing import Family
from .topology import Node, Pod
from .traffic import SERVER_PORT

JsonObject = dict[str, Any]
FAMILY_NAMES = {4: "IPv4", 6: "IPv6"}


@dataclass(frozen=True)
class PortSpec:
    """A Service port. ``target_port`` may be a name: each backend's number then comes from
    :attr:`Backend.port` (or the pod's first server port)."""

    name: str = "http"
    protocol: str = "TCP"
    port: int = 80
    target_port: int | str = SERVER_PORT


@dataclass(frozen=True)
class Backend:
    """One endpoint of a Service: a pod, or a node for a host-network endpoint, with its
    EndpointSlice conditions and topology hints."""

    target: Pod | Node
    ready: bool = True
    serving: bool | None = None  # None: as ready
    terminating: bool = False
    for_zones: tuple[str, ...] | None = None
    for_nodes: tuple[str, ...] | None = None
    port: int | None = None  # the number behind a named target port

    @property
    def name(self) -> str:
        return self.target.name


def as_backend(item: Pod | Node | Backend) -> Backend:
    return item if isinstance(item, Backend) else Backend(item)


def node_object(
    node: Node,
    *,
    cpu: str = "4",
    memory: str = "8Gi",
    labels: Mapping[str, str] | None = None,
) -> JsonObject:
    """The Node ``node`` is: InternalIPs, pod CIDRs, zone label, capacity."""
    families = [family for family in (4, 6) if (node.ipv4 if family == 4 else node.ipv6)]
    capacity = {"cpu": cpu, "memory": memory, "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": {
                "kubernetes.io/hostname": node.name,
                "kubernetes.io/os": "linux",
                "topology.kubernetes.io/zone": node.zone,
                **(labels or {}),
            },
        },
        "spec": {
            "podCIDR": node.pod_cidr(families[0]),
            "podCIDRs": [node.pod_cidr(family) for family in families],
        },
        "status": {
            "addresses": [
                *({"type": "InternalIP", "address": node.address(f)} for f in families),
                {"type": "Hostname", "address": node.name},
            ],
            "capacity": capacity,
            "allocatable": dict(capacity),
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def service_object(
    name: str,
    namespace: str,
    *,
    ports: Sequence[PortSpec],
    cluster_ips: Mapping[Family, str],
    service_type: str = "ClusterIP",
    node_ports: Mapping[str, int] | None = None,
    ingress_ips: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    spec: Mapping[str, Any] | None = None,
) -> JsonObject:
    """A Service; ``spec`` entries are merged last, so any field can be set or overridden."""
    families = list(cluster_ips)
    metadata: JsonObject = {"name": name, "namespace": namespace}
    if labels:
        metadata["labels"] = dict(labels)
    if annotations:
        metadata["annotations"] = dict(annotations)
    port_entries = []
    for port in ports:
        entry: JsonObject = {
            "name": port.name,
            "protocol": port.protocol,
            "port": port.port,
            "targetPort": port.target_port,
        }
        if node_ports and port.name in node_ports:
            entry["nodePort"] = node_ports[port.name]
        port_entries.append(entry)
    obj: JsonObject = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "type": service_type,
            "clusterIP": cluster_ips[families[0]],
            "clusterIPs": [cluster_ips[family] for family in families],
            "ipFamilies": [FAMILY_NAMES[family] for family in families],
            "ipFamilyPolicy": "RequireDualStack" if len(families) == 2 else "SingleStack",
            "ports": port_entries,
            "sessionAffinity": "None",
            **(spec or {}),
        },
    }
    if ingress_ips:
        obj["status"] = {
            "loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"} for ip in ingress_ips]}
        }
    return obj


def _backend_port(backend: Backend | None, port: PortSpec) -> int:
    if isinstance(port.target_port, int):
        return port.target_port
    if backend is not None and backend.port is not None:
        return backend.port
    if backend is not None and isinstance(backend.target, Pod):
        return backend.target.ports[0]
    return SERVER_PORT


def _endpoint(
    backend: Backend, family: Family, namespace: str, zones: Mapping[str, str]
) -> JsonObject:
    target = backend.target
    node_name = target.node if isinstance(target, Pod) else target.name
    serving = backend.ready if backend.serving is None else backend.serving
    endpoint: JsonObject = {
        "addresses": [target.address(family)],
        "conditions": {
            "ready": backend.ready,
            "serving": serving,
            "terminating": backend.terminating,
        },
        "nodeName": node_name,
        "targetRef": {"kind": "Pod", "namespace": namespace, "name": target.name},
    }
    if node_name in zones:
        endpoint["zone"] = zones[node_name]
    hints: JsonObject = {}
    if backend.for_zones is not None:
        hints["forZones"] = [{"name": zone} for zone in backend.for_zones]
    if backend.for_nodes is not None:
        hints["forNodes"] = [{"name": node} for node in backend.for_nodes]
    if hints:
        endpoint["hints"] = hints
    return endpoint


def endpoint_slices(
    service: str,
    namespace: str,
    *,
    ports: Sequence[PortSpec],
    backends: Sequence[Backend],
    families: Sequence[Family],
    zones: Mapping[str, str],
) -> list[JsonObject]:
    """The EndpointSlices of ``service``: one per family and per set of backend port numbers
    (named target ports may resolve differently per pod), as the EndpointSlice controller
    groups them. ``zones`` maps node names to their zone. Names are ``<service>-ipv<f>-<k>``."""
    slices = []
    for family in families:
        groups: dict[tuple[int, ...], list[JsonObject]] = {}
        for backend in backends:
            numbers = tuple(_backend_port(backend, port) for port in ports)
            endpoint = _endpoint(backend, family, namespace, zones)
            groups.setdefault(numbers, []).append(endpoint)
        if not groups:
            numbers = tuple(_backend_port(None, port) for port in ports)
            groups[numbers] = []
        for k, (numbers, endpoints) in enumerate(groups.items()):
            name = f"{service}-ipv{family}-{k}"
            slices.append(
                _slice(
                    service,
                    namespace,
                    name,
                    family,
                    ports=ports,
                    numbers=numbers,
                    endpoints=endpoints,
                )
            )
    return slices


def empty_endpoint_slice(
    service: str, namespace: str, name: str, family: Family, ports: Sequence[PortSpec]
) -> JsonObject:
    """Slice ``name`` of ``service`` with no endpoints (its backends moved elsewhere)."""
    numbers = tuple(_backend_port(None, port) for port in ports)
    return _slice(service, namespace, name, family, ports=ports, numbers=numbers, endpoints=[])


def _slice(
    service: str,
    namespace: str,
    name: str,
    family: Family,
    *,
    ports: Sequence[PortSpec],
    numbers: tuple[int, ...],
    endpoints: list[JsonObject],
) -> JsonObject:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "waolb-lab",
            },
        },
        "addressType": FAMILY_NAMES[family],
        "endpoints": endpoints,
        "ports": [
            {"name": port.name, "protocol": port.protocol, "port": number}
            for port, number in zip(ports, numbers, strict=True)
        ],
    }
