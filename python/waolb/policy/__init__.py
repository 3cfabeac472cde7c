"""Weight providers: how a service port's traffic is shared among its endpoints.

The sync loop asks a provider for weights while it builds a batch, so a provider answers at
once from what it already knows (WAO and RAP score in the background) and tells the sync loop
through the subscribed callback when some Services' weights changed; the loop then resyncs
those Services with whatever the provider answers at that time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from waolb.state import EndpointInfo, ServiceName, ServicePortInfo

WeightsChanged = Callable[[Iterable[ServiceName]], None]


class WeightProvider(Protocol):
    def weights(
        self, port: ServicePortInfo, endpoints: Sequence[EndpointInfo]
    ) -> Sequence[int] | None:
        """The latest weights, one per endpoint in order; 0 leaves an endpoint out.

        None, or all zeros, means equal shares (kube-proxy's behaviour). Never blocks.
        """

    def subscribe(self, on_change: WeightsChanged) -> None:
        """Call ``on_change(services)`` whenever those Services' weights change."""

    def start(self) -> None:
        """Start background scoring, if any."""

    def stop(self) -> None:
        """Stop background scoring; weights() may still be called afterwards."""


def equal_weights(count: int) -> tuple[int, ...]:
    return (1,) * count
