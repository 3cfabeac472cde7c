"""Per-Service policy choice: the policy annotation, else the configured default policy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from waolb import logs
from waolb.policy import WeightProvider, WeightsChanged
from waolb.state import EndpointInfo, ServicePortInfo

log = logs.get_logger(__name__)

POLICY_ANNOTATION: Final = "waok8s.github.io/waolb-policy"


class PolicySelector:
    """A weight provider that hands each port to the provider of its Service's policy."""

    def __init__(self, providers: Mapping[str, WeightProvider], default: str) -> None:
        if default not in providers:
            raise ValueError(f"unknown default policy {default!r}")
        self._providers = dict(providers)
        self._default = default
        # (namespace, name, value) already warned about, so a bad annotation warns once.
        self._warned: set[tuple[str, str, str]] = set()

    def policy_of(self, port: ServicePortInfo) -> str:
        value = port.annotations.get(POLICY_ANNOTATION)
        if value is None or value in self._providers:
            return value or self._default
        warning = (port.key.namespace, port.key.name, value)
        if warning not in self._warned:
            self._warned.add(warning)
            log.warning(
                "unknown policy in the Service's annotation; using the default",
                service=str(port.key.service),
                annotation=POLICY_ANNOTATION,
                value=value,
                known=sorted(self._providers),
                default=self._default,
            )
        return self._default

    def weights(
        self, port: ServicePortInfo, endpoints: Sequence[EndpointInfo]
    ) -> Sequence[int] | None:
        return self._providers[self.policy_of(port)].weights(port, endpoints)

    def subscribe(self, on_change: WeightsChanged) -> None:
        for provider in self._providers.values():
            provider.subscribe(on_change)

    def start(self) -> None:
        for provider in self._providers.values():
            provider.start()

    def stop(self) -> None:
        for provider in self._providers.values():
            provider.stop()
