"""The dataplane adapter: the one module that programs rules through ``waolb._native``.

The Rust side keeps the one record of what the kernel holds (its ledger, next to the kernel)
and works out what a sync changes against it. This module turns the state's service ports and
their weights into the native ports it takes, and its results back into the state's keys:

* a full sync sends every port; a partial sync sends the current ports of the Services it
  covers, and the Rust side adds, changes and removes against its ledger;
* ``hold`` names ports that keep what the kernel holds for them whatever their new state
  (the sync loop holds a refused port until its retry is due);
* a port whose new state is refused, here (``InvalidServicePort``: it cannot be programmed at
  all) or by the Rust side (its ClusterIP and port are another's, or the kernel refused it),
  keeps its programmed state and comes back as a :class:`Refusal`; the rest commits.

Native ports are built once per input and reused while the port's endpoints and weights stay
the same: a full sync of 10 000 ports would otherwise spend about 0.15 s building them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from waolb import _native, logs
from waolb.state import PortEndpoints, ServiceName, ServicePortKey

log = logs.get_logger(__name__)

#: What the dataplane programs today; SCTP is tracked and waits for the parity issue.
PROGRAMMED_PROTOCOLS: Final = frozenset({"TCP", "UDP"})

#: A port to program: its endpoints and their weights (one per endpoint).
DesiredPort = tuple[PortEndpoints, tuple[int, ...]]
ProgrammedEndpoint = _native.ProgrammedEndpoint


@dataclass(frozen=True)
class Refusal:
    """A service port whose new state was refused; it keeps its programmed state if ``kept``."""

    key: ServicePortKey
    #: The refused state's service port number.
    port: int
    #: invalid: the port cannot be programmed (bad address, too many endpoints...); clash:
    #: another port holds its ClusterIP, protocol and port; kernel: the kernel refused it.
    reason: str
    errno: int | None
    message: str
    kept: bool


@dataclass(frozen=True)
class SyncOutcome:
    """What a sync did: the batch committed, refused ports left as they were."""

    full: bool
    messages: int
    changed: tuple[ServicePortKey, ...]
    removed: tuple[ServicePortKey, ...]
    refused: tuple[Refusal, ...]


@dataclass(frozen=True)
class _Built:
    source: PortEndpoints
    weights: tuple[int, ...]
    native: _native.ServicePort | _native.InvalidServicePort


class NftablesDataplane:
    """waolb's nf_tables tables in this network namespace, programmed through the Rust core."""

    def __init__(self, native: _native.Dataplane) -> None:
        self._native = native
        self._built: dict[ServicePortKey, _Built] = {}

    @classmethod
    def open(cls, table: str, masquerade_bit: int = 14) -> NftablesDataplane:
        """Opens the netlink socket in the caller's network namespace."""
        return cls(_native.Dataplane(table, masquerade_bit))

    @property
    def table(self) -> str:
        return self._native.table

    def sync(
        self,
        ports: Mapping[ServicePortKey, DesiredPort],
        *,
        services: Collection[ServiceName] | None = None,
        hold: Collection[ServicePortKey] = (),
    ) -> SyncOutcome:
        """Program ``ports``: all of them (``services`` None, a full sync) or those of
        ``services``, whose other programmed ports go. ``hold`` ports keep their state.

        Raises ``waolb._native.NftError`` (an OSError; nothing changed) when the kernel refuses
        the batch for a reason no port explains, OSError when the socket fails.
        """
        natives: list[_native.ServicePort] = []
        held = set(hold)
        invalid: list[tuple[ServicePortKey, _native.InvalidServicePort]] = []
        for key, (port, weights) in ports.items():
            if key in held or key.protocol not in PROGRAMMED_PROTOCOLS:
                continue
            built = self._build(key, port, weights)
            if isinstance(built, _native.InvalidServicePort):
                invalid.append((key, built))
            else:
                natives.append(built)
        held.update(key for key, _ in invalid)
        if services is None:
            self._forget_all_but(ports)
            result = self._native.sync_full(natives, list(held))
        else:
            result = self._native.sync_services(list(services), natives, list(held))
        kept = {ServicePortKey._make(key) for key in result.held}
        refused = [_invalid_refusal(key, error, key in kept) for key, error in invalid]
        refused += [_refusal(refusal) for refusal in result.refused]
        return SyncOutcome(
            full=result.full,
            messages=result.messages,
            changed=tuple(ServicePortKey._make(key) for key in result.changed),
            removed=tuple(ServicePortKey._make(key) for key in result.removed),
            refused=tuple(refused),
        )

    def programmed(self) -> list[_native.ServicePort]:
        """What the Rust ledger says the kernel holds."""
        return self._native.programmed()

    def read_endpoints(self) -> list[ProgrammedEndpoint]:
        """The endpoint rules the kernel holds, read back over netlink."""
        return self._native.read_endpoints()

    def delete_tables(self) -> None:
        """Delete waolb's tables (``--cleanup``); the next sync must be full."""
        self._native.delete_tables()

    def _build(
        self, key: ServicePortKey, port: PortEndpoints, weights: tuple[int, ...]
    ) -> _native.ServicePort | _native.InvalidServicePort:
        cached = self._built.get(key)
        if (
            cached is not None
            and (cached.source is port or cached.source == port)
            and cached.weights == weights
        ):
            return cached.native
        info = port.info
        native: _native.ServicePort | _native.InvalidServicePort
        try:
            native = _native.ServicePort(
                key.namespace,
                key.name,
                key.port_name,
                key.protocol,
                key.family,
                info.cluster_ip,
                info.port,
                [e.ip for e in port.endpoints],
                [e.port for e in port.endpoints],
                weights,
            )
        except _native.InvalidServicePort as error:
            native = error
        self._built[key] = _Built(port, weights, native)
        return native

    def _forget_all_but(self, keys: Iterable[ServicePortKey]) -> None:
        """Drop the built ports of service ports that are gone (at each full sync)."""
        wanted = set(keys)
        for key in [k for k in self._built if k not in wanted]:
            del self._built[key]


def _refusal(refusal: _native.PortRefusal) -> Refusal:
    return Refusal(
        key=ServicePortKey._make(refusal.key),
        port=refusal.port,
        reason=refusal.reason,
        errno=refusal.errno,
        message=refusal.message,
        kept=refusal.kept,
    )


def _invalid_refusal(key: ServicePortKey, error: _native.InvalidServicePort, kept: bool) -> Refusal:
    return Refusal(
        key=key,
        port=error.port,
        reason="invalid",
        errno=None,
        message=str(error),
        kept=kept,
    )
