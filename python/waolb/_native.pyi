"""Type stubs for waolb._native, the Rust core (rust/src/python.rs)."""

from collections.abc import Sequence
from typing import TypedDict

# ---- weights (rust/src/weights.rs) -------------------------------------------------------

def wao_scores(delta_watts: Sequence[float] | memoryview, offsets: Sequence[int]) -> list[int]:
    """Upstream WAO-LB scores for groups of endpoints.

    ``delta_watts`` is flat; group ``g`` spans ``delta_watts[offsets[g]:offsets[g+1]]`` (one group
    per service). Returns one score in [0, 100] per endpoint; 0 means "leave out". A group in which
    nothing scores above 0 gets all-1 scores (equal weights, kube-proxy's fallback).
    """

def numgen_layout(weights: Sequence[int]) -> tuple[int, list[tuple[int, int] | None]]:
    """The numgen range layout: (modulus, per-endpoint inclusive range or None for weight 0)."""

# ---- dataplane (rust/src/dataplane.rs) ---------------------------------------------------

class SyncStats(TypedDict):
    messages: int
    bytes: int
    services: int
    seconds: float

class NftError(OSError):
    """The kernel rejected a batch; nothing was changed. ``errno`` and ``object`` say what failed."""

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
    """Owns the nf_tables tables named ``table`` (families ip and ip6) in the current netns."""

    def __init__(self, table: str = "wao-loadbalancer", masquerade_bit: int = 14) -> None: ...
    def replace(self, services: Sequence[ServicePort]) -> SyncStats:
        """Full sync: the tables' contents become exactly ``services``, in one transaction."""
    def apply(self, upsert: Sequence[ServicePort], remove: Sequence[ServicePort]) -> SyncStats:
        """Partial sync: add or change ``upsert``, delete ``remove``; nothing else is touched."""
    def delete_tables(self) -> bool:
        """Delete both tables (``--cleanup``); True if anything was deleted."""
