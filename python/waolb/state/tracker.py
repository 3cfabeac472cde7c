"""ClusterState: the Services and EndpointSlices this proxy handles, merged into service ports.

The reflectors hand over plain JSON dicts; the state parses them (:mod:`waolb.state.parse`),
merges every EndpointSlice of a Service and address family into one endpoint list per service
port, and remembers which Services changed since the sync loop last asked, so that a partial
sync touches only those.

Decisions, where kube-proxy has none to copy:

* A malformed object (missing or mistyped fields, bad IPs or ports) is logged once per
  resourceVersion and skipped. If an earlier version of the same object was good, that version
  stays in force: the API server validates what it stores, so a "malformed" object almost always
  means a gap in this parser, and dropping working rules for it would turn a parser gap into an
  outage. Deleting the object still removes it. A parser that fails in any other way is treated
  the same, so that one odd object can never make its reflector relist in a loop.
* EndpointSlices are kept for every Service, tracked or not, because the Service and slice
  watches are independent: a slice may arrive before its Service (or before the Service gains
  the service-proxy-name label). Only tracked Services produce service ports.
* Duplicate endpoints (the same address and port in two slices while an endpoint moves between
  slices, or twice in one) are resolved in slice name order then slice order, preferring a
  local copy, so results are deterministic.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from waolb import logs
from waolb.kube.objects import MalformedObjectError, object_identity
from waolb.state.model import (
    ChangeBatch,
    ChangeKind,
    ChangeListener,
    EndpointInfo,
    PortEndpoints,
    ServiceName,
    ServicePortInfo,
    ServicePortKey,
)
from waolb.state.parse import (
    ParsedEndpointSlice,
    ParsedService,
    ip_address,
    parse_endpoint_slice,
    parse_service,
)

log = logs.get_logger(__name__)

# An object's namespace and name.
ObjectKey = tuple[str, str]
_Parsed = TypeVar("_Parsed")


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
    return sorted(merged.values(), key=lambda e: (ip_address(e.ip, "ip")[2], e.port))


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


@dataclass(frozen=True)
class _Kind(Generic[_Parsed]):
    """One kind the state tracks: how its objects are parsed, kept and dropped (lock held).

    ``keep`` and ``drop`` return whether a tracked Service changed; ``parse`` returns None for
    an object no proxy handles, which is dropped like a deleted one.
    """

    name: str
    change: ChangeKind
    parse: Callable[[object], _Parsed | None]
    keep: Callable[[ObjectKey, _Parsed], bool]
    drop: Callable[[ObjectKey], bool]
    known: Callable[[], Iterable[ObjectKey]]


class ClusterState:
    """The Services and EndpointSlices this proxy handles, fed by the reflectors.

    Thread-safe: the reflectors write from their threads, the sync loop reads from its own.
    """

    def __init__(self, node_name: str, wall_clock: Callable[[], float] = time.time) -> None:
        self._on_change: ChangeListener | None = None
        # kube-proxy only measures programming latency for changes made after it started.
        self._started_at = wall_clock()
        self._lock = threading.Lock()
        self._services: dict[ServiceName, ParsedService] = {}
        self._slices: dict[ObjectKey, ParsedEndpointSlice] = {}
        self._slices_by_service: dict[ServiceName, dict[str, ParsedEndpointSlice]] = {}
        self._ports: dict[ServiceName, dict[ServicePortKey, PortEndpoints]] = {}
        self._dirty: set[ServiceName] = set()
        self._trigger_times: list[float] = []
        # Problems logged, per (kind, namespace, name), by resourceVersion.
        self._reported = logs.OncePerState()
        self._service_kind = _Kind(
            "Service",
            "service",
            parse_service,
            self._keep_service,
            self._drop_service,
            self._services.keys,
        )
        self._slice_kind = _Kind(
            "EndpointSlice",
            "endpoints",
            functools.partial(parse_endpoint_slice, node_name=node_name),
            self._keep_slice,
            self._drop_slice,
            self._slices.keys,
        )

    def subscribe(self, on_change: ChangeListener) -> None:
        """Call ``on_change(kind, count)``, outside the lock, after an event changed ``count``
        objects that matter to a tracked Service."""
        self._on_change = on_change

    # -- the reflector handlers: plain JSON dicts in --

    def replace_services(self, objects: Sequence[object]) -> None:
        self._replace(self._service_kind, objects)

    def upsert_service(self, obj: object) -> None:
        self._upsert(self._service_kind, obj)

    def delete_service(self, obj: object) -> None:
        self._delete(self._service_kind, obj)

    def replace_endpoint_slices(self, objects: Sequence[object]) -> None:
        self._replace(self._slice_kind, objects)

    def upsert_endpoint_slice(self, obj: object) -> None:
        self._upsert(self._slice_kind, obj)

    def delete_endpoint_slice(self, obj: object) -> None:
        self._delete(self._slice_kind, obj)

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

    # -- one kind's events --

    def _replace(self, kind: _Kind[_Parsed], objects: Sequence[object]) -> None:
        changes = 0
        with self._lock:
            present: set[ObjectKey] = set()
            for obj in objects:
                key, changed = self._apply(kind, obj)
                present.add(key)
                changes += changed
            for key in [key for key in kind.known() if key not in present]:
                changes += kind.drop(key)
        self._notify(kind.change, changes)

    def _upsert(self, kind: _Kind[_Parsed], obj: object) -> None:
        with self._lock:
            _, changed = self._apply(kind, obj)
        self._notify(kind.change, changed)

    def _delete(self, kind: _Kind[_Parsed], obj: object) -> None:
        namespace, name, _ = object_identity(obj)
        with self._lock:
            self._reported.forget((kind.name, namespace, name))
            changed = kind.drop((namespace, name))
        self._notify(kind.change, changed)

    def _apply(self, kind: _Kind[_Parsed], obj: object) -> tuple[ObjectKey, bool]:
        """Parse ``obj`` and keep it (lock held); a bad object leaves its last good version."""
        namespace, name, version = object_identity(obj)
        key = (namespace, name)
        try:
            parsed = kind.parse(obj)
        except Exception as error:
            self._report(kind.name, key, version, error)
            return key, False
        self._reported.forget((kind.name, namespace, name))
        if parsed is None:
            return key, kind.drop(key)
        return key, kind.keep(key, parsed)

    def _report(self, kind: str, key: ObjectKey, version: str, error: Exception) -> None:
        if not self._reported.first((kind, *key), version):
            return
        namespace, name = key
        if isinstance(error, MalformedObjectError):
            log.error(
                "skipping a malformed object",
                kind=kind,
                namespace=namespace,
                name=name,
                resource_version=version,
                problem=str(error),
            )
        else:
            # A gap in the parser, not in the object: the traceback is what fixes it.
            log.exception(
                "skipping an object the parser failed on",
                kind=kind,
                namespace=namespace,
                name=name,
                resource_version=version,
                problem=repr(error),
            )

    def _notify(self, kind: ChangeKind, changes: int) -> None:
        if changes and self._on_change is not None:
            self._on_change(kind, changes)

    # -- keeping Services and slices, and the ports made of them (lock held) --

    def _keep_service(self, key: ObjectKey, service: ParsedService) -> bool:
        if self._services.get(service.name) == service:
            return False
        self._services[service.name] = service
        return self._mark(service.name)

    def _drop_service(self, key: ObjectKey) -> bool:
        name = ServiceName(*key)
        if self._services.pop(name, None) is None:
            return False
        self._ports.pop(name, None)
        self._dirty.add(name)
        return True

    def _keep_slice(self, key: ObjectKey, parsed: ParsedEndpointSlice) -> bool:
        previous = self._slices.get(key)
        if previous == parsed:
            return False
        changed = False
        if previous is not None and previous.service != parsed.service:
            changed = self._drop_slice(key)
        self._slices[key] = parsed
        self._slices_by_service.setdefault(parsed.service, {})[parsed.name] = parsed
        if self._mark(parsed.service):
            changed = True
            if parsed.trigger_time is not None and parsed.trigger_time > self._started_at:
                self._trigger_times.append(parsed.trigger_time)
        return changed

    def _drop_slice(self, key: ObjectKey) -> bool:
        previous = self._slices.pop(key, None)
        if previous is None:
            return False
        siblings = self._slices_by_service.get(previous.service, {})
        siblings.pop(previous.name, None)
        if not siblings:
            self._slices_by_service.pop(previous.service, None)
        return self._mark(previous.service)

    def _mark(self, name: ServiceName) -> bool:
        """Invalidate a Service's ports; True if it is tracked (so the change matters)."""
        self._ports.pop(name, None)
        if name in self._services:
            self._dirty.add(name)
            return True
        return False

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
