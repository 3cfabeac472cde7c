"""Equal weights: kube-proxy's behaviour, every selected endpoint gets the same share."""

from __future__ import annotations

from collections.abc import Sequence

from waolb.policy import WeightsChanged
from waolb.state import EndpointInfo, ServicePortInfo


class EqualWeights:
    def weights(
        self, port: ServicePortInfo, endpoints: Sequence[EndpointInfo]
    ) -> Sequence[int] | None:
        return None

    def subscribe(self, on_change: WeightsChanged) -> None:
        """Equal weights never change, so there is nothing to report."""

    def start(self) -> None:
        """Nothing runs in the background."""

    def stop(self) -> None:
        """Nothing runs in the background."""
