"""Type stubs for waolb._native, the Rust core (rust/src/python.rs)."""

from collections.abc import Sequence
from typing import TypedDict

# ---- weights (rust/src/weights.rs) -------------------------------------------------------

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

# ---- dataplane (rust/src/dataplane.rs) ---------------------------------------------------

class SyncStats(TypedDict):
    messages: int
    bytes: int
    services: int
    seconds: float

class ProgrammedEndpoint(TypedDict):
    """One endpoint rule as the kernel holds it (``Dataplane.read_endpoints``)."""

    family: int
    namespace: str
    name: str
    protocol: str
    port_name: str
    ip: str
    port: int
    weight: int
    total: int

class NftError(OSError):
    """The kernel rejected a batch; nothing changed. ``errno`` and ``object`` say what failed."""

    object: str

class ServicePort:
    """One Service port of one IP family, with its endpoints in columns."""

    namespace: str
    name: str
    port_name: str
    protocol: str
    family: int
    cluster_ip: str
    port: int
    endpoint_ips: list[str]
    endpoint_ports: list[int]
    weights: list[int]
    def __init__(
        self,
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
    ) -> None: ...

class Dataplane:
    """Owns the nf_tables tables named ``table`` (families ip and ip6) in the current netns,
    and the ``table-shard-<n>`` tables its service chains are spread over at scale."""

    def __init__(self, table: str = "wao-loadbalancer", masquerade_bit: int = 14) -> None: ...
    def replace(self, services: Sequence[ServicePort]) -> SyncStats:
        """Full sync: the tables' contents become exactly ``services``, in one transaction."""
    def apply(self, upsert: Sequence[ServicePort], remove: Sequence[ServicePort]) -> SyncStats:
        """Partial sync: add or change ``upsert``, delete ``remove``; nothing else is touched."""
    @property
    def table(self) -> str: ...
    def read_endpoints(self) -> list[ProgrammedEndpoint]:
        """The endpoint rules programmed in this dataplane's tables, read back from the kernel.

        One dict per rule: the service from its chain's name, ``ip``/``port`` from the DNAT it
        performs, ``weight``/``total`` from its comment. Sorted by family, namespace, name,
        protocol and port name; a service's endpoints keep their rule order. Missing tables give
        an empty list; rules that are not waolb's endpoint rules are skipped.
        """
    def delete_tables(self) -> None:
        """Delete the tables, main and shards, that exist (``--cleanup``); the next sync must be
        full."""
