"""The records the proxy's desired state is made of: plain, immutable and cheap to compare.

The start of a large cluster builds 100 000 endpoints and more at once, so the per-endpoint
records are named tuples (built, compared and hashed in C).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, NamedTuple

PROTOCOLS: Final = frozenset({"TCP", "UDP", "SCTP"})

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
