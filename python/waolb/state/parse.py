"""Services and EndpointSlices (plain JSON dicts) to the records the proxy keeps of them.

The start of a large cluster parses 100 000 endpoints and more at once, so the per-endpoint
work is kept small: a slice builds the :class:`EndpointInfo` of each of its ports once, sorted
and without duplicates, so that a service port that one slice port serves can take that port's
tuple as it is instead of merging a copy.

Every field is read through :mod:`waolb.kube.objects`, so a malformed object raises
:class:`MalformedObjectError` naming the field and nothing else.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any, Final, NamedTuple

from waolb import logs
from waolb.kube.objects import (
    HEADLESS_LABEL,
    MalformedObjectError,
    ObjectMetadata,
    expect_choice,
    expect_type,
    object_metadata,
    optional_field,
    shown,
)
from waolb.state.model import PROTOCOLS, EndpointInfo, ServiceName, ServicePortInfo, ServicePortKey

log = logs.get_logger(__name__)

SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"
TRIGGER_TIME_ANNOTATION: Final = "endpoints.kubernetes.io/last-change-trigger-time"
DEFAULT_AFFINITY_TIMEOUT: Final = 10800  # seconds, the API server's default
MAX_AFFINITY_TIMEOUT: Final = 86400
_ADDRESS_FAMILIES: Final = {"IPv4": 4, "IPv6": 6}
_SERVICE_TYPES: Final = frozenset({"ClusterIP", "NodePort", "LoadBalancer", "ExternalName"})
_TRAFFIC_POLICIES: Final = frozenset({"Cluster", "Local"})


def _port_number(value: object, where: str, *, allow_zero: bool = False) -> int:
    number: int = expect_type(value, int, where, "a port number")
    if not (0 if allow_zero else 1) <= number <= 65535:
        raise MalformedObjectError(f"{where}: port {shown(number)} is out of range")
    return number


def _protocol(obj: Mapping[str, Any], where: str) -> str:
    protocol = optional_field(obj, "protocol", str, where, "a protocol") or "TCP"
    return expect_choice(protocol, PROTOCOLS, f"{where}.protocol", "protocol")


def ip_address(address: object, where: str) -> tuple[str, int, bytes]:
    """An IP address in canonical text, its family (4 or 6) and its packed bytes."""
    if type(address) is str:
        # inet_pton takes exactly the dotted quads ipaddress takes (no leading zeros, no short
        # forms), and those are canonical already: 50 times faster for the common case.
        try:
            return address, 4, socket.inet_pton(socket.AF_INET, address)
        except (OSError, ValueError):
            pass
    text: str = expect_type(address, str, where, "an IP address")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise MalformedObjectError(f"{where}: {shown(text)} is not an IP address") from None
    return str(ip), ip.version, ip.packed


def _condition(conditions: Mapping[str, Any], name: str) -> bool | None:
    value: bool | None = optional_field(conditions, name, bool, "conditions", "true or false")
    return value


@dataclass(frozen=True)
class ParsedService:
    """A Service as the proxy keeps it: its ports, once per family it has a cluster IP of."""

    name: ServiceName
    ports: tuple[ServicePortInfo, ...]
    # Compared so that a new annotation reaches the weight providers at the next sync.
    annotations: dict[str, str]
    resource_version: str = field(compare=False)


def parse_service(obj: object) -> ParsedService | None:
    """Parse a Service; None when no proxy handles it (headless, ExternalName, no cluster IP)."""
    meta = object_metadata(obj)
    assert isinstance(obj, dict)  # object_metadata checked it
    spec = expect_type(obj.get("spec"), dict, "spec", "an object")
    ip_by_family = _cluster_ips(spec, meta)
    if ip_by_family is None:
        return None
    # What every port of the Service shares.
    shared: dict[str, Any] = {
        "session_affinity_timeout": _affinity_timeout(spec),
        "external_traffic_policy": _traffic_policy(spec, "externalTrafficPolicy"),
        "internal_traffic_policy": _traffic_policy(spec, "internalTrafficPolicy"),
        "annotations": meta.annotations,
    }
    ports: list[ServicePortInfo] = []
    seen: set[tuple[str, str]] = set()
    for index, port in enumerate(optional_field(spec, "ports", list, "spec", "a list") or []):
        where = f"spec.ports[{index}]"
        expect_type(port, dict, where, "an object")
        port_name = optional_field(port, "name", str, where, "a name") or ""
        protocol = _protocol(port, where)
        if (port_name, protocol) in seen:
            raise MalformedObjectError(f"{where}: duplicate port {shown(port_name)}/{protocol}")
        seen.add((port_name, protocol))
        number = _port_number(port.get("port"), f"{where}.port")
        node_port = port.get("nodePort")
        target = port.get("targetPort")
        if isinstance(target, str) and target:
            target_port: int | str = target
        elif target is None:
            target_port = number
        else:
            target_port = _port_number(target, f"{where}.targetPort")
        for family, ip in sorted(ip_by_family.items()):
            ports.append(
                ServicePortInfo(
                    key=ServicePortKey(family, meta.namespace, meta.name, port_name, protocol),
                    cluster_ip=ip,
                    port=number,
                    node_port=0
                    if node_port is None
                    else _port_number(node_port, f"{where}.nodePort", allow_zero=True),
                    target_port=target_port,
                    **shared,
                )
            )
    return ParsedService(
        name=ServiceName(meta.namespace, meta.name),
        ports=tuple(ports),
        annotations=meta.annotations,
        resource_version=meta.resource_version,
    )


def _cluster_ips(spec: Mapping[str, Any], meta: ObjectMetadata) -> dict[int, str] | None:
    """The Service's cluster IP by family; None when no proxy handles the Service."""
    service_type = optional_field(spec, "type", str, "spec", "a service type") or "ClusterIP"
    expect_choice(service_type, _SERVICE_TYPES, "spec.type", "service type")
    cluster_ip = optional_field(spec, "clusterIP", str, "spec", "an IP address") or ""
    cluster_ips: list[object] = optional_field(spec, "clusterIPs", list, "spec", "a list") or (
        [cluster_ip] if cluster_ip else []
    )
    if (
        service_type == "ExternalName"
        or HEADLESS_LABEL in meta.labels
        or "None" in (cluster_ip, *cluster_ips)
        or not cluster_ips
    ):
        return None
    ip_by_family: dict[int, str] = {}
    for index, address in enumerate(cluster_ips):
        ip, family, _ = ip_address(address, f"spec.clusterIPs[{index}]")
        if family in ip_by_family:
            raise MalformedObjectError("spec.clusterIPs: two addresses of one IP family")
        ip_by_family[family] = ip
    for index, family_name in enumerate(
        optional_field(spec, "ipFamilies", list, "spec", "a list") or []
    ):
        expect_choice(family_name, _ADDRESS_FAMILIES, f"spec.ipFamilies[{index}]", "family")
    return ip_by_family


def _affinity_timeout(spec: Mapping[str, Any]) -> int | None:
    """None without session affinity; else the ClientIP affinity timeout in seconds."""
    affinity = optional_field(spec, "sessionAffinity", str, "spec", "a string") or "None"
    if affinity == "None":
        return None
    if affinity != "ClientIP":
        raise MalformedObjectError(f"spec.sessionAffinity: unknown value {shown(affinity)}")
    config = optional_field(spec, "sessionAffinityConfig", dict, "spec", "an object") or {}
    client_ip = optional_field(config, "clientIP", dict, "spec.sessionAffinityConfig", "an object")
    where = "spec.sessionAffinityConfig.clientIP"
    timeout = (
        None
        if client_ip is None
        else optional_field(client_ip, "timeoutSeconds", int, where, "seconds")
    )
    if timeout is None:
        return DEFAULT_AFFINITY_TIMEOUT
    if not 0 < timeout <= MAX_AFFINITY_TIMEOUT:
        raise MalformedObjectError(f"{where}.timeoutSeconds: {shown(timeout)} is out of range")
    return int(timeout)


def _traffic_policy(spec: Mapping[str, Any], key: str) -> str:
    policy = optional_field(spec, key, str, "spec", "a traffic policy") or "Cluster"
    return expect_choice(policy, _TRAFFIC_POLICIES, f"spec.{key}", "policy")


class SlicePort(NamedTuple):
    """One port of an EndpointSlice, with the slice's endpoints as that port's endpoints."""

    name: str
    protocol: str
    port: int
    # One per address (see parse_endpoint_slice), sorted by address value.
    endpoints: tuple[EndpointInfo, ...]


@dataclass(frozen=True)
class ParsedEndpointSlice:
    """An EndpointSlice as the proxy keeps it: the Service it belongs to, and its ports."""

    service: ServiceName
    name: str
    family: int
    ports: tuple[SlicePort, ...]
    resource_version: str = field(compare=False)
    trigger_time: float | None = field(compare=False)


# (ip, node name, zone, ready, serving, terminating, local): an EndpointInfo less its port.
_SliceEndpoint = tuple[str, str | None, str | None, bool, bool, bool, bool]


def parse_endpoint_slice(obj: object, node_name: str) -> ParsedEndpointSlice | None:
    """Parse an EndpointSlice; None for FQDN slices, which kube-proxy ignores.

    ``node_name`` is this proxy's node, which makes an endpoint local. Of two endpoints with one
    address, the first local one is kept, else the first: what merging the slice's ports into
    service ports would keep, done once here so that a service port one slice port serves takes
    that port's endpoints as they are.
    """
    meta = object_metadata(obj)
    assert isinstance(obj, dict)  # object_metadata checked it
    service_name = meta.labels.get(SERVICE_NAME_LABEL)
    if not service_name:
        raise MalformedObjectError(f"metadata.labels: no {SERVICE_NAME_LABEL} label")
    address_type = obj.get("addressType")
    if address_type == "FQDN":
        return None
    family = _ADDRESS_FAMILIES[
        expect_choice(address_type, _ADDRESS_FAMILIES, "addressType", "address type")
    ]

    ports: list[tuple[str, str, int]] = []
    for index, port in enumerate(optional_field(obj, "ports", list, "", "a list") or []):
        where = f"ports[{index}]"
        expect_type(port, dict, where, "an object")
        number = port.get("port")
        # A missing port means "all ports", which kube-proxy does not support either; 0 is
        # what kube-proxy skips too (not false, which is no number at all).
        if number is None or (type(number) is int and number == 0):
            log.debug(
                "ignoring an EndpointSlice port without a number", slice=meta.name, port=index
            )
            continue
        ports.append(
            (
                # The API server defaults a missing name to "" and protocol to TCP.
                optional_field(port, "name", str, where, "a name") or "",
                _protocol(port, where),
                _port_number(number, f"{where}.port"),
            )
        )

    # By address: the packed address (to sort by) and the endpoint.
    by_address: dict[str, tuple[bytes, _SliceEndpoint]] = {}
    for index, endpoint in enumerate(optional_field(obj, "endpoints", list, "", "a list") or []):
        if type(endpoint) is not dict:
            expect_type(endpoint, dict, f"endpoints[{index}]", "an object")
        try:
            packed, parsed = _slice_endpoint(endpoint, family, node_name)
        except MalformedObjectError as error:
            raise MalformedObjectError(f"endpoints[{index}].{error}") from None
        kept = by_address.get(parsed[0])
        if kept is None or (parsed[-1] and not kept[1][-1]):
            by_address[parsed[0]] = packed, parsed
    endpoints = [parsed for _, parsed in sorted(by_address.values(), key=itemgetter(0))]
    return ParsedEndpointSlice(
        service=ServiceName(meta.namespace, service_name),
        name=meta.name,
        family=family,
        ports=tuple(
            SlicePort(
                name,
                protocol,
                number,
                tuple(
                    [
                        EndpointInfo(ip, number, node, zone, ready, serving, terminating, local)
                        for ip, node, zone, ready, serving, terminating, local in endpoints
                    ]
                ),
            )
            for name, protocol, number in sorted(ports, key=lambda p: (p[2], p[0], p[1]))
        ),
        resource_version=meta.resource_version,
        trigger_time=_trigger_time(meta),
    )


def _slice_endpoint(
    endpoint: Mapping[str, Any], family: int, node_name: str
) -> tuple[bytes, _SliceEndpoint]:
    """One endpoint of a slice and its packed address; errors name fields from the endpoint."""
    addresses = endpoint.get("addresses")
    if type(addresses) is not list:
        addresses = expect_type(addresses, list, "addresses", "a list")
    if not addresses:
        raise MalformedObjectError("addresses: empty")
    ip, ip_family, packed = ip_address(addresses[0], "addresses[0]")
    if ip_family != family:
        raise MalformedObjectError(f"addresses[0]: {ip} is not an IPv{family} address")
    conditions = optional_field(endpoint, "conditions", dict, "", "an object") or {}

    # kube-proxy: unknown readiness counts as ready, unknown termination as not.
    ready = _condition(conditions, "ready") is not False
    serving = _condition(conditions, "serving") is not False
    terminating = _condition(conditions, "terminating") is True
    node = optional_field(endpoint, "nodeName", str, "", "a node name")
    zone = optional_field(endpoint, "zone", str, "", "a zone")
    return packed, (ip, node, zone, ready, serving, terminating, node == node_name)


def _trigger_time(meta: ObjectMetadata) -> float | None:
    text = meta.annotations.get(TRIGGER_TIME_ANNOTATION)
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    # OverflowError and OSError: dates the platform's clock functions cannot convert.
    except (ValueError, OverflowError, OSError):
        log.debug("ignoring an unparsable trigger time", slice=meta.name, value=text)
        return None
