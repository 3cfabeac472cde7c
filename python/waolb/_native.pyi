"""Type stubs for waolb._native, the Rust core (bindings in rust/src/python/).

``make lint`` checks them against the built module (``python -m mypy.stubtest``).
"""

from collections.abc import Sequence
from typing import Literal, final

__all__ = [
    "Dataplane",
    "InvalidServicePort",
    "NftError",
    "PortRefusal",
    "ProgrammedEndpoint",
    "ServicePort",
    "SyncResult",
    "numgen_layout",
    "wao_scores",
]

# ---- weights (rust/src/weights.rs, rust/src/python/weights.rs) ------------------------------

def wao_scores(delta_watts: Sequence[float] | memoryview, offsets: Sequence[int]) -> list[int]:
    """Upstream WAO-LB scores for groups of endpoints.

    ``delta_watts`` is flat; group ``g`` spans ``delta_watts[offsets[g]:offsets[g+1]]`` (one group
    per service), so ``offsets`` starts at 0, never decreases and ends at ``len(delta_watts)``.
    Float64 buffers (``array('d')``, memoryview, numpy) are read in one copy, other sequences more
    slowly; ``offsets`` may be a 32- or 64-bit integer buffer or any sequence of ints.

    Returns one score in [0, 100] per endpoint; 0 means "leave out". As upstream: a delta is cut
    to whole watts (toward zero), a negative one counts as 0 W, 1 W is added, and
    ``score = round(100 * (min / watts))`` with halves rounded up. A NaN or infinite delta scores 0
    and takes no part in the minimum. A group in which nothing scores above 0 gets all-1 scores
    (equal weights, kube-proxy's fallback). Raises ValueError if ``offsets`` does not fit.
    """

def numgen_layout(weights: Sequence[int]) -> tuple[int, list[tuple[int, int] | None]]:
    """The numgen range layout: (modulus, per-endpoint inclusive range or None for weight 0).

    In order, each endpoint with a weight above 0 owns the next ``weight`` values ``(a, b)`` of
    ``numgen random mod modulus``, where ``modulus`` is the total weight. Raises ValueError for a
    weight outside [0, 2**32 - 1], a total above 2**32 - 1, or no weight above 0.
    """

# ---- dataplane (rust/src/dataplane/, rust/src/python/dataplane.rs) -------------------------

#: A service port's identity, as ``waolb.state.ServicePortKey`` spells it: (family,
#: namespace, name, port name, protocol as Kubernetes spells it: "TCP" or "UDP").
_PortKey = tuple[int, str, str, str, str]

class NftError(OSError):
    """The kernel rejected a batch for a reason no single service port explains (a table or
    set, the transaction as a whole); nothing changed. ``errno`` says why."""

    #: What failed, as text: "add table for table ip wao-loadbalancer".
    object: str
    #: What the failing message did ("add table"), or None for the transaction as a whole.
    action: str | None
    #: The port the failing message was about, if any (when its programmed state was
    #: refused too).
    key: _PortKey | None
    #: The kernel's extended-ack text, if it gave one.
    detail: str | None

class InvalidServicePort(ValueError):
    """A service port the dataplane cannot program: ``reason`` says what is wrong."""

    key: _PortKey
    namespace: str
    name: str
    port_name: str
    protocol: str
    family: int
    #: The service port number (0 if it was not one).
    port: int
    reason: str

@final
class ServicePort:
    """One Service port of one IP family, with its endpoints in columns.

    Raises InvalidServicePort for anything the kernel would refuse (bad addresses or ports,
    names, more than 100 000 endpoints, weights that do not fit numgen).
    """

    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def port_name(self) -> str: ...
    @property
    def protocol(self) -> str:
        """As nft spells it: "tcp" or "udp"."""
    @property
    def family(self) -> int: ...
    @property
    def cluster_ip(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def endpoint_ips(self) -> list[str]: ...
    @property
    def endpoint_ports(self) -> list[int]: ...
    @property
    def weights(self) -> list[int]: ...
    @property
    def key(self) -> _PortKey: ...
    def __new__(
        cls,
        namespace: str,
        name: str,
        port_name: str,
        protocol: str,
        family: int,
        cluster_ip: str,
        port: int,
        endpoint_ips: Sequence[str],
        endpoint_ports: Sequence[int],
        weights: Sequence[int],
    ) -> ServicePort: ...

@final
class PortRefusal:
    """A service port whose new state a sync refused. It keeps its programmed state
    (``kept``), or, if it had none (or the kernel refused that too), is not programmed."""

    @property
    def key(self) -> _PortKey: ...
    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def port_name(self) -> str: ...
    @property
    def protocol(self) -> str: ...
    @property
    def family(self) -> int: ...
    @property
    def port(self) -> int:
        """The refused state's service port number."""
    @property
    def reason(self) -> Literal["clash", "kernel"]:
        """clash: another port holds its ClusterIP, protocol and port; kernel: the kernel
        refused a message of its change."""
    @property
    def errno(self) -> int | None: ...
    @property
    def action(self) -> str | None:
        """What the refused message did ("flush chain"), for kernel refusals."""
    @property
    def holder(self) -> _PortKey | None:
        """The port that holds the address, for clashes."""
    @property
    def message(self) -> str: ...
    @property
    def kept(self) -> bool: ...

@final
class SyncResult:
    """What a sync did. The batch committed; refused ports are listed, not raised."""

    @property
    def full(self) -> bool: ...
    @property
    def messages(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def services(self) -> int:
        """Service ports the batch programmed (full sync) or changed (partial sync)."""
    @property
    def seconds(self) -> float: ...
    @property
    def changed(self) -> list[_PortKey]:
        """Ports added or changed, in key order."""
    @property
    def removed(self) -> list[_PortKey]: ...
    @property
    def refused(self) -> list[PortRefusal]: ...
    @property
    def held(self) -> list[_PortKey]:
        """Held ports that keep a programmed state."""

@final
class ProgrammedEndpoint:
    """One endpoint rule as the kernel holds it (``Dataplane.read_endpoints``)."""

    @property
    def family(self) -> int: ...
    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def protocol(self) -> str:
        """As nft spells it: "tcp" or "udp"."""
    @property
    def port_name(self) -> str: ...
    @property
    def ip(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def weight(self) -> int: ...
    @property
    def total(self) -> int: ...
    def __new__(
        cls,
        family: int,
        namespace: str,
        name: str,
        protocol: str,
        port_name: str,
        ip: str,
        port: int,
        weight: int,
        total: int,
    ) -> ProgrammedEndpoint: ...

@final
class Dataplane:
    """Owns the nf_tables tables named ``table`` (families ip and ip6) in the current netns,
    the ``table-shard-<n>`` tables its service chains are spread over at scale, and the
    ledger of what they hold.

    A sync plans against the ledger. A port whose new state is refused (its ClusterIP and
    port are another's, or the kernel refuses a message of its change) keeps its programmed
    state, the rest of the batch commits, and the result lists the refusal. NftError means
    the kernel refused the batch for a reason no port explains: nothing changed.
    """

    def __new__(cls, table: str = "wao-loadbalancer", masquerade_bit: int = 14) -> Dataplane: ...
    @property
    def table(self) -> str: ...
    def sync_full(self, ports: Sequence[ServicePort], hold: Sequence[_PortKey] = ...) -> SyncResult:
        """The tables' contents become exactly ``ports``, in one transaction; the ``hold``
        ports keep their programmed state (or stay out if they have none)."""
    def sync_services(
        self,
        services: Sequence[tuple[str, str]],
        ports: Sequence[ServicePort],
        hold: Sequence[_PortKey] = ...,
    ) -> SyncResult:
        """Partial sync of ``services`` ((namespace, name) pairs): their ports become
        ``ports`` (a programmed port not listed goes; unchanged ones cost nothing), the
        ``hold`` ports stay as programmed, no other Service is touched. ValueError before
        the first full sync, or for a port outside ``services``."""
    def programmed(self) -> list[ServicePort]:
        """What the ledger says the kernel holds, in key order."""
    def read_endpoints(self) -> list[ProgrammedEndpoint]:
        """The endpoint rules programmed in this dataplane's tables, read back from the kernel.

        The service from its chain's name, ``ip``/``port`` from the DNAT it performs,
        ``weight``/``total`` from its comment. Sorted by family, namespace, name, protocol and
        port name; a service's endpoints keep their rule order. Missing tables give an empty
        list; rules that are not waolb's endpoint rules are skipped.
        """
    def delete_tables(self) -> None:
        """Delete the tables, main and shards, that exist (``--cleanup``); the next sync must be
        full."""
    # Development builds only (the fault-injection feature that ``make native`` turns on):
    @staticmethod
    def simulated(table: str = "wao-loadbalancer", masquerade_bit: int = 14) -> Dataplane:
        """A dataplane whose kernel takes every batch and holds nothing (no root needed)."""
    def inject_fault(
        self,
        errno: int,
        namespace: str | None = None,
        name: str | None = None,
        action: str | None = None,
        times: int | None = None,
        containing: bytes | None = None,
    ) -> None:
        """Refuse, with ``errno``, the messages of the matching ports (doing ``action``, and
        holding the bytes ``containing``, if given: an endpoint's address picks a port's new
        state), or with neither namespace nor name the batch as a whole, for the next
        ``times`` batches they appear in (None: until cleared)."""
    def clear_faults(self) -> None: ...
