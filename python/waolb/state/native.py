"""The ``waolb._native.ServicePort`` objects the dataplane takes, built once per input."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from waolb import logs
from waolb._native import ServicePort
from waolb.state.model import PROGRAMMED_PROTOCOLS, PortEndpoints, ServicePortKey

log = logs.get_logger(__name__)


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
