"""Services and EndpointSlices as kube-proxy sees them, and the service ports they make.

The reflectors deliver plain JSON dicts; :class:`ClusterState` parses them into immutable
records, merges every EndpointSlice of a Service and address family into one endpoint list per
service port, and remembers which Services changed since the sync loop last asked, so that a
partial sync touches only those.

The start of a large cluster parses 100 000 endpoints and more at once, so the per-endpoint
work is kept small: records are named tuples (built, compared and hashed in C), a slice builds
the :class:`EndpointInfo` of each of its ports once, and a service port that one slice port
serves takes that port's tuple as it is instead of merging a copy.

Decisions, where kube-proxy has none to copy:

* A malformed object (missing or mistyped fields, bad IPs or ports) is logged once per
  resourceVersion and skipped. If an earlier version of the same object was good, that version
  stays in force: the API server validates what it stores, so a "malformed" object almost always
  means a gap in this parser, and dropping working rules for it would turn a parser gap into an
  outage. Deleting the object still removes it.
* EndpointSlices are kept for every Service, tracked or not, because the Service and slice
  watches are independent: a slice may arrive before its Service (or before the Service gains
  the service-proxy-name label). Only tracked Services produce service ports.
* Duplicate endpoints (the same address and port in two slices while an endpoint moves between
  slices, or twice in one) are resolved in slice name order then slice order, preferring a
  local copy, so results are deterministic.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any, Final, Literal, NamedTuple

from waolb import logs
from waolb._native import ServicePort
from waolb.config import HEADLESS_LABEL

log = logs.get_logger(__name__)

SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"
TRIGGER_TIME_ANNOTATION: Final = "endpoints.kubernetes.io/last-change-trigger-time"
PROTOCOLS: Final = frozenset({"TCP", "UDP", "SCTP"})
# What the dataplane programs today; SCTP is tracked and waits for the parity issue.
PROGRAMMED_PROTOCOLS: Final = frozenset({"TCP", "UDP"})
DEFAULT_AFFINITY_TIMEOUT: Final = 10800  # seconds, the API server's default
MAX_AFFINITY_TIMEOUT: Final = 86400
_ADDRESS_FAMILIES: Final = {"IPv4": 4, "IPv6": 6}
_SERVICE_TYPES: Final = frozenset({"ClusterIP", "NodePort", "LoadBalancer", "ExternalName"})
_TRAFFIC_POLICIES: Final = frozenset({"Cluster", "Local"})

ChangeKind = Literal["service", "endpoints"]
ChangeListener = Callable[[ChangeKind, int], None]


class ServiceName(NamedTuple):
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class ServicePortKey(NamedTuple):
    """The identity of one programmed service port: family, Service, port name and protocol.

    A named tuple: the sync loop hashes and compares keys for every port, and tuples do that in C.
    """

    family: int  # 4 or 6
    namespace: str
    name: str
    port_name: str
    protocol: str

    @property
    def service(self) -> ServiceName:
        return ServiceName(self.namespace, self.name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}:{self.port_name}/{self.protocol}/ipv{self.family}"


@dataclass(frozen=True)
class ServicePortInfo:
    """One port of a Service in one IP family, with what kube-proxy keeps about it."""

    key: ServicePortKey
    cluster_ip: str
    port: int
    node_port: int  # 0: none
    target_port: int | str
    # None: no session affinity; else the ClientIP affinity timeout in seconds.
    session_affinity_timeout: int | None
    external_traffic_policy: str
    internal_traffic_policy: str
    # For weight providers (e.g. WAO's cpu-per-request). Not part of equality: annotations do
    # not change the rules, and a provider whose result depends on them says so through its
    # change callback.
    annotations: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)


class EndpointInfo(NamedTuple):
    """One endpoint of one service port."""

    ip: str
    port: int
    node_name: str | None
    zone: str | None
    ready: bool
    serving: bool
    terminating: bool
    is_local: bool


@dataclass(frozen=True)
class PortEndpoints:
    """What one service port is programmed from: the port and the endpoints traffic may use."""

    info: ServicePortInfo
    # Ready endpoints, or serving-and-terminating ones when none is ready; sorted by address
    # value, then port.
    endpoints: tuple[EndpointInfo, ...]


@dataclass(frozen=True)
class ChangeBatch:
    """Services whose ports may have changed since the previous batch."""

    services: frozenset[ServiceName]
    # endpoints.kubernetes.io/last-change-trigger-time of the slice changes, epoch seconds.
    trigger_times: tuple[float, ...]


class MalformedObjectError(ValueError):
    """An API object this proxy cannot use; the message names the field."""


# ---- parsing -----------------------------------------------------------------------------


# The exact-type tests below are fast paths: decoded JSON holds exact dicts, lists, strs, ints
# and bools, and the parsers run for every endpoint of the cluster.


def expect_type(value: object, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    if type(value) is kind:
        return value
    # bool is an int subclass; a JSON true is never a port number.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise MalformedObjectError(f"{where}: expected {what}, got {value!r}")
    return value


def optional_field(obj: Mapping[str, Any], key: str, kind: type, where: str, what: str) -> Any:
    value = obj.get(key)
    if value is None or type(value) is kind:
        return value
    return expect_type(value, kind, f"{where}.{key}" if where else key, what)


def _string_map(obj: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
    value = optional_field(obj, key, dict, where, "a map")
    if not value:
        return {}
    for name, text in value.items():
        if type(text) is not str:
            expect_type(text, str, f"{where}.{key}[{name}]", "a string")
    return dict(value)


def _port_number(value: object, where: str, *, allow_zero: bool = False) -> int:
    number: int = expect_type(value, int, where, "a port number")
    if not (0 if allow_zero else 1) <= number <= 65535:
        raise MalformedObjectError(f"{where}: port {number} is out of range")
    return number


def _protocol(obj: Mapping[str, Any], where: str) -> str:
    protocol = optional_field(obj, "protocol", str, where, "a protocol") or "TCP"
    if protocol not in PROTOCOLS:
        raise MalformedObjectError(f"{where}.protocol: unknown protocol {protocol!r}")
    return str(protocol)


def _ip_address(address: object, where: str) -> tuple[str, int, bytes]:
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
        raise MalformedObjectError(f"{where}: {text!r} is not an IP address") from None
    return str(ip), ip.version, ip.packed


class _Metadata(NamedTuple):
    namespace: str
    name: str
    resource_version: str
    labels: dict[str, str]
    annotations: dict[str, str]


def _condition(conditions: Mapping[str, Any], name: str) -> bool | None:
    value: bool | None = optional_field(conditions, name, bool, "conditions", "true or false")
    return value


def object_metadata(obj: object) -> _Metadata:
    document = expect_type(obj, dict, "object", "an object")
    meta = expect_type(document.get("metadata"), dict, "metadata", "an object")
    namespace = expect_type(meta.get("namespace"), str, "metadata.namespace", "a namespace")
    name = expect_type(meta.get("name"), str, "metadata.name", "a name")
    if not namespace or not name:
        raise MalformedObjectError("metadata: namespace and name must not be empty")
    return _Metadata(
        namespace=namespace,
        name=name,
        resource_version=str(meta.get("resourceVersion") or ""),
        labels=_string_map(meta, "labels", "metadata"),
        annotations=_string_map(meta, "annotations", "metadata"),
    )


def _identity(obj: object) -> tuple[str, str, str]:
    """(namespace, name, resourceVersion) of any object, as far as they can be read."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict):
        return "", "", ""

    def text(key: str) -> str:
        value = meta.get(key)
        return value if isinstance(value, str) else ""

    return text("namespace"), text("name"), text("resourceVersion")


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
    service_type = optional_field(spec, "type", str, "spec", "a service type") or "ClusterIP"
    if service_type not in _SERVICE_TYPES:
        raise MalformedObjectError(f"spec.type: unknown service type {service_type!r}")
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
        ip, family, _ = _ip_address(address, f"spec.clusterIPs[{index}]")
        if family in ip_by_family:
            raise MalformedObjectError("spec.clusterIPs: two addresses of one IP family")
        ip_by_family[family] = ip
    for index, family_name in enumerate(
        optional_field(spec, "ipFamilies", list, "spec", "a list") or []
    ):
        if family_name not in _ADDRESS_FAMILIES:
            raise MalformedObjectError(f"spec.ipFamilies[{index}]: unknown family {family_name!r}")

    affinity = optional_field(spec, "sessionAffinity", str, "spec", "a string") or "None"
    affinity_timeout: int | None = None
    if affinity == "ClientIP":
        config = optional_field(spec, "sessionAffinityConfig", dict, "spec", "an object") or {}
        client_ip = optional_field(
            config, "clientIP", dict, "spec.sessionAffinityConfig", "an object"
        )
        affinity_timeout = DEFAULT_AFFINITY_TIMEOUT
        if client_ip is not None:
            where = "spec.sessionAffinityConfig.clientIP"
            timeout = optional_field(client_ip, "timeoutSeconds", int, where, "seconds")
            if timeout is not None:
                if not 0 < timeout <= MAX_AFFINITY_TIMEOUT:
                    raise MalformedObjectError(f"{where}.timeoutSeconds: {timeout} is out of range")
                affinity_timeout = timeout
    elif affinity != "None":
        raise MalformedObjectError(f"spec.sessionAffinity: unknown value {affinity!r}")
    external_policy = _traffic_policy(spec, "externalTrafficPolicy")
    internal_policy = _traffic_policy(spec, "internalTrafficPolicy")

    ports: list[ServicePortInfo] = []
    seen: set[tuple[str, str]] = set()
    for index, port in enumerate(optional_field(spec, "ports", list, "spec", "a list") or []):
        where = f"spec.ports[{index}]"
        expect_type(port, dict, where, "an object")
        port_name = optional_field(port, "name", str, where, "a name") or ""
        protocol = _protocol(port, where)
        if (port_name, protocol) in seen:
            raise MalformedObjectError(f"{where}: duplicate port {port_name!r}/{protocol}")
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
            key = ServicePortKey(family, meta.namespace, meta.name, port_name, protocol)
            ports.append(
                ServicePortInfo(
                    key=key,
                    cluster_ip=ip,
                    port=number,
                    node_port=0
                    if node_port is None
                    else _port_number(node_port, f"{where}.nodePort", allow_zero=True),
                    target_port=target_port,
                    session_affinity_timeout=affinity_timeout,
                    external_traffic_policy=external_policy,
                    internal_traffic_policy=internal_policy,
                    annotations=meta.annotations,
                )
            )
    return ParsedService(
        name=ServiceName(meta.namespace, meta.name),
        ports=tuple(ports),
        annotations=meta.annotations,
        resource_version=meta.resource_version,
    )


def _traffic_policy(spec: Mapping[str, Any], key: str) -> str:
    policy = optional_field(spec, key, str, "spec", "a traffic policy") or "Cluster"
    if policy not in _TRAFFIC_POLICIES:
        raise MalformedObjectError(f"spec.{key}: unknown policy {policy!r}")
    return str(policy)


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
    if address_type not in _ADDRESS_FAMILIES:
        raise MalformedObjectError(f"addressType: unknown address type {address_type!r}")
    family = _ADDRESS_FAMILIES[address_type]

    ports: list[tuple[str, str, int]] = []
    for index, port in enumerate(optional_field(obj, "ports", list, "", "a list") or []):
        where = f"ports[{index}]"
        expect_type(port, dict, where, "an object")
        number = port.get("port")
        # A missing port means "all ports", which kube-proxy does not support either; 0 is
        # what kube-proxy skips too.
        if number is None or number == 0:
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
    ip, ip_family, packed = _ip_address(addresses[0], "addresses[0]")
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


def _trigger_time(meta: _Metadata) -> float | None:
    text = meta.annotations.get(TRIGGER_TIME_ANNOTATION)
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        log.debug("ignoring an unparsable trigger time", slice=meta.name, value=text)
        return None


# ---- the tracker -------------------------------------------------------------------------


def merge_endpoints(slice_ports: Sequence[Sequence[EndpointInfo]]) -> Sequence[EndpointInfo]:
    """The endpoints of the slice ports serving one service port, sorted by address value and
    port; of two copies of an endpoint, the first local one, else the first."""
    if len(slice_ports) == 1:
        return slice_ports[0]  # unique and sorted already
    merged: dict[tuple[str, int], EndpointInfo] = {}
    for endpoints in slice_ports:
        for endpoint in endpoints:
            key = (endpoint.ip, endpoint.port)
            kept = merged.setdefault(key, endpoint)
            if endpoint.is_local and not kept.is_local:
                merged[key] = endpoint
    return sorted(merged.values(), key=lambda e: (_ip_address(e.ip, "ip")[2], e.port))


def select_endpoints(
    info: ServicePortInfo, endpoints: Sequence[EndpointInfo]
) -> tuple[EndpointInfo, ...]:
    """kube-proxy's choice for cluster IP traffic, in the order given: local only if
    internalTrafficPolicy is Local; ready endpoints, else the serving and terminating ones."""
    candidates = (
        [e for e in endpoints if e.is_local]
        if info.internal_traffic_policy == "Local"
        else endpoints
    )
    ready = [e for e in candidates if e.ready]
    if len(ready) == len(candidates):
        return tuple(candidates)  # the same object when a slice port's tuple comes in
    return tuple(ready or [e for e in candidates if e.serving and e.terminating])


class ClusterState:
    """The Services and EndpointSlices this proxy handles, fed by the reflectors.

    Thread-safe: the reflectors write from their threads, the sync loop reads from its own.
    """

    def __init__(self, node_name: str, wall_clock: Callable[[], float] = time.time) -> None:
        self._node_name = node_name
        self._on_change: ChangeListener | None = None
        # kube-proxy only measures programming latency for changes made after it started.
        self._started_at = wall_clock()
        self._lock = threading.Lock()
        self._services: dict[ServiceName, ParsedService] = {}
        self._slices: dict[tuple[str, str], ParsedEndpointSlice] = {}
        self._slices_by_service: dict[ServiceName, dict[str, ParsedEndpointSlice]] = {}
        self._ports: dict[ServiceName, dict[ServicePortKey, PortEndpoints]] = {}
        self._dirty: set[ServiceName] = set()
        self._trigger_times: list[float] = []
        # (kind, namespace, name) -> resourceVersion whose problem was already logged.
        self._reported: dict[tuple[str, str, str], str] = {}

    def subscribe(self, on_change: ChangeListener) -> None:
        """Call ``on_change(kind, count)``, outside the lock, after an event changed ``count``
        objects that matter to a tracked Service."""
        self._on_change = on_change

    # -- the reflector handlers: plain JSON dicts in --

    def replace_services(self, objects: Sequence[object]) -> None:
        changes = 0
        with self._lock:
            present: set[tuple[str, str]] = set()
            for obj in objects:
                name, changed = self._upsert_service(obj)
                present.add(name)
                changes += changed
            for name in set(self._services) - present:
                changes += self._delete_service(name)
            self._forget_reports("Service", present)
        self._notify("service", changes)

    def upsert_service(self, obj: object) -> None:
        with self._lock:
            _, changed = self._upsert_service(obj)
        self._notify("service", changed)

    def delete_service(self, obj: object) -> None:
        namespace, name, _ = _identity(obj)
        with self._lock:
            self._reported.pop(("Service", namespace, name), None)
            changed = self._delete_service(ServiceName(namespace, name))
        self._notify("service", changed)

    def replace_endpoint_slices(self, objects: Sequence[object]) -> None:
        changes = 0
        with self._lock:
            present: set[tuple[str, str]] = set()
            for obj in objects:
                key, changed = self._upsert_slice(obj)
                present.add(key)
                changes += changed
            for key in set(self._slices) - present:
                changes += self._delete_slice(key)
            self._forget_reports("EndpointSlice", present)
        self._notify("endpoints", changes)

    def upsert_endpoint_slice(self, obj: object) -> None:
        with self._lock:
            _, changed = self._upsert_slice(obj)
        self._notify("endpoints", changed)

    def delete_endpoint_slice(self, obj: object) -> None:
        namespace, name, _ = _identity(obj)
        with self._lock:
            self._reported.pop(("EndpointSlice", namespace, name), None)
            changed = self._delete_slice((namespace, name))
        self._notify("endpoints", changed)

    # -- the sync loop's side --

    def take_changes(self) -> ChangeBatch:
        """The Services changed since the previous call, and their slices' trigger times."""
        with self._lock:
            batch = ChangeBatch(frozenset(self._dirty), tuple(self._trigger_times))
            self._dirty.clear()
            self._trigger_times.clear()
        return batch

    def ports_of(self, services: Iterable[ServiceName]) -> dict[ServicePortKey, PortEndpoints]:
        """The current service ports of ``services`` (none for a Service that is gone)."""
        with self._lock:
            result: dict[ServicePortKey, PortEndpoints] = {}
            for name in services:
                result.update(self._service_ports(name))
            return result

    def all_ports(self) -> dict[ServicePortKey, PortEndpoints]:
        with self._lock:
            result: dict[ServicePortKey, PortEndpoints] = {}
            for name in self._services:
                result.update(self._service_ports(name))
            return result

    # -- internals, called with the lock held --

    def _notify(self, kind: ChangeKind, changes: int) -> None:
        if changes and self._on_change is not None:
            self._on_change(kind, changes)

    def _report(self, kind: str, obj: object, error: MalformedObjectError) -> None:
        namespace, name, version = _identity(obj)
        if self._reported.get((kind, namespace, name)) == version:
            return
        self._reported[(kind, namespace, name)] = version
        log.error(
            "skipping a malformed object",
            kind=kind,
            namespace=namespace,
            name=name,
            resource_version=version,
            problem=str(error),
        )

    def _forget_reports(self, kind: str, present: set[tuple[str, str]]) -> None:
        """After a relist, drop the log-once memory of objects that are gone."""
        for report in [r for r in self._reported if r[0] == kind]:
            if (report[1], report[2]) not in present:
                del self._reported[report]

    def _service_ports(self, name: ServiceName) -> dict[ServicePortKey, PortEndpoints]:
        ports = self._ports.get(name)
        if ports is None:
            service = self._services.get(name)
            ports = {} if service is None else self._compute_ports(service)
            self._ports[name] = ports
        return ports

    def _compute_ports(self, service: ParsedService) -> dict[ServicePortKey, PortEndpoints]:
        slices = sorted(
            self._slices_by_service.get(service.name, {}).values(), key=lambda s: s.name
        )
        result = {}
        for info in service.ports:
            key = info.key
            slice_ports = [
                port.endpoints
                for endpoint_slice in slices
                if endpoint_slice.family == key.family
                for port in endpoint_slice.ports
                if port.name == key.port_name and port.protocol == key.protocol
            ]
            endpoints = merge_endpoints(slice_ports)
            result[key] = PortEndpoints(info, select_endpoints(info, endpoints))
        return result

    def _mark(self, name: ServiceName) -> bool:
        """Invalidate a Service's ports; True if it is tracked (so the change matters)."""
        self._ports.pop(name, None)
        if name in self._services:
            self._dirty.add(name)
            return True
        return False

    def _upsert_service(self, obj: object) -> tuple[ServiceName, bool]:
        namespace, name_text, _ = _identity(obj)
        name = ServiceName(namespace, name_text)
        try:
            service = parse_service(obj)
        except MalformedObjectError as error:
            self._report("Service", obj, error)
            return name, False
        self._reported.pop(("Service", namespace, name_text), None)
        if service is None:
            return name, self._delete_service(name)
        if self._services.get(name) == service:
            return name, False
        self._services[name] = service
        return name, self._mark(name)

    def _delete_service(self, name: ServiceName) -> bool:
        if self._services.pop(name, None) is None:
            return False
        self._ports.pop(name, None)
        self._dirty.add(name)
        return True

    def _upsert_slice(self, obj: object) -> tuple[tuple[str, str], bool]:
        namespace, name, _ = _identity(obj)
        key = (namespace, name)
        try:
            parsed = parse_endpoint_slice(obj, self._node_name)
        except MalformedObjectError as error:
            self._report("EndpointSlice", obj, error)
            return key, False
        self._reported.pop(("EndpointSlice", namespace, name), None)
        if parsed is None:
            return key, self._delete_slice(key)
        previous = self._slices.get(key)
        if previous == parsed:
            return key, False
        changed = False
        if previous is not None and previous.service != parsed.service:
            changed = self._delete_slice(key)
        self._slices[key] = parsed
        self._slices_by_service.setdefault(parsed.service, {})[name] = parsed
        if self._mark(parsed.service):
            changed = True
            if parsed.trigger_time is not None and parsed.trigger_time > self._started_at:
                self._trigger_times.append(parsed.trigger_time)
        return key, changed

    def _delete_slice(self, key: tuple[str, str]) -> bool:
        previous = self._slices.pop(key, None)
        if previous is None:
            return False
        siblings = self._slices_by_service.get(previous.service, {})
        siblings.pop(previous.name, None)
        if not siblings:
            self._slices_by_service.pop(previous.service, None)
        return self._mark(previous.service)


# ---- the native objects the dataplane takes ----------------------------------------------


@dataclass(frozen=True)
class _Built:
    source: PortEndpoints
    weights: tuple[int, ...]
    native: ServicePort | None  # None: this version cannot be programmed


class NativePortCache:
    """Builds ``waolb._native.ServicePort`` objects, reusing each until its inputs change.

    The same object comes back for unchanged inputs, so the sync loop can tell a changed port
    from an unchanged one by identity. Ports the dataplane cannot program (SCTP for now, or a
    ValueError from the constructor) come back as None and are logged once per version.
    """

    def __init__(self) -> None:
        self._built: dict[ServicePortKey, _Built] = {}

    def get(self, port: PortEndpoints, weights: tuple[int, ...]) -> ServicePort | None:
        key = port.info.key
        cached = self._built.get(key)
        if cached is not None and cached.source == port and cached.weights == weights:
            return cached.native
        native = self._build(port, weights)
        self._built[key] = _Built(port, weights, native)
        return native

    def retain(self, keys: Iterable[ServicePortKey]) -> None:
        """Forget every port not in ``keys`` (those that are gone)."""
        wanted = set(keys)
        for key in [k for k in self._built if k not in wanted]:
            del self._built[key]

    @staticmethod
    def _build(port: PortEndpoints, weights: tuple[int, ...]) -> ServicePort | None:
        info = port.info
        if info.key.protocol not in PROGRAMMED_PROTOCOLS:
            log.debug("not programming a non-TCP/UDP service port yet", service_port=str(info.key))
            return None
        try:
            return ServicePort(
                namespace=info.key.namespace,
                name=info.key.name,
                port_name=info.key.port_name,
                protocol=info.key.protocol,
                family=info.key.family,
                cluster_ip=info.cluster_ip,
                port=info.port,
                endpoint_ips=[e.ip for e in port.endpoints],
                endpoint_ports=[e.port for e in port.endpoints],
                weights=weights,
            )
        # OverflowError: an int beyond 64 bits is refused before the constructor's own checks.
        except (ValueError, OverflowError) as error:
            log.error(
                "the dataplane rejects a service port", service_port=str(info.key), error=str(error)
            )
            return None
