"""The sync loop: state and weights in, one kernel batch out, at a bounded frequency.

Scheduling (kube-proxy's bounded-frequency runner, reduced to what waolb needs):

* a change (from the state or a weight provider) asks for a sync; changes that arrive before
  it runs coalesce into it, and two syncs start at least ``min_sync_period`` apart;
* a full sync (``Dataplane.replace``) runs at start, every ``sync_period`` and after any
  failure; otherwise only the changed Services are sent (``Dataplane.apply``);
* a failed sync leaves the kernel as it was (batches are atomic) and is retried, full, after a
  jittered exponential backoff. When the dataplane names one service port of the batch as the
  cause, that port is left out until its Service or endpoints change, and the retry comes
  without backoff, so that one bad port cannot hold every other Service back.
* a port whose new version cannot be built (the ServicePort constructor's ValueError) keeps its
  last programmed version in force, as the state keeps the last good version of an object.

The loop is a thread in production; tests drive :meth:`SyncLoop.sync_if_due` with a fake clock.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from waolb import logs
from waolb._native import ServicePort
from waolb.health import ProxierHealth
from waolb.metrics import ProxyMetrics
from waolb.policy import WeightProvider, equal_weights
from waolb.state import (
    ChangeKind,
    ClusterState,
    NativePortCache,
    PortEndpoints,
    ServiceName,
    ServicePortKey,
)

if TYPE_CHECKING:
    from waolb._native import SyncStats  # a TypedDict that exists only in the stub

log = logs.get_logger(__name__)

RETRY_INITIAL_DELAY: Final = 1.0
RETRY_JITTER: Final = 0.2  # +-20 %, so that the nodes of a cluster do not retry in step


class Dataplane(Protocol):
    """What the sync loop needs of ``waolb._native.Dataplane``."""

    def replace(self, services: Sequence[ServicePort]) -> SyncStats: ...

    def apply(self, upsert: Sequence[ServicePort], remove: Sequence[ServicePort]) -> SyncStats: ...


@dataclass(frozen=True)
class _Programmed:
    """A service port as the kernel holds it (or, in a batch being built, will hold it)."""

    source: PortEndpoints
    weights: tuple[int, ...]
    native: ServicePort


def dataplane_name(key: ServicePortKey) -> str:
    """How the Rust dataplane names a service port in its errors."""
    family = "ip" if key.family == 4 else "ip6"
    return f"{key.namespace}/{key.name}:{key.port_name} ({key.protocol.lower()} {family})"


def blamed_port(error: Exception, candidates: Iterable[ServicePortKey]) -> ServicePortKey | None:
    """The service port an error names first, among those the failed batch changed."""
    message = f"{getattr(error, 'object', '')} {error}"
    positions = {}
    for key in candidates:
        position = message.find(dataplane_name(key))
        if position >= 0:
            positions[key] = position
    return min(positions, key=positions.__getitem__) if positions else None


class SyncLoop:
    def __init__(
        self,
        dataplane: Dataplane,
        state: ClusterState,
        weights: WeightProvider,
        metrics: ProxyMetrics,
        health: ProxierHealth,
        *,
        min_sync_period: float = 1.0,
        sync_period: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._dataplane = dataplane
        self._state = state
        self._weights = weights
        self._metrics = metrics
        self._health = health
        self._min_period = min_sync_period
        self._period = sync_period
        self._clock = clock
        self._wall_clock = wall_clock
        self._jitter = jitter
        self._cache = NativePortCache()
        # What the kernel holds, by Service; only the sync thread touches it.
        self._programmed: dict[ServiceName, dict[ServicePortKey, _Programmed]] = {}
        # Ports the dataplane refused, with the inputs it refused: left out until they change.
        self._set_aside: dict[ServicePortKey, PortEndpoints] = {}
        self._reported_weights: set[ServicePortKey] = set()
        self._trigger_times: list[float] = []
        self._failures = 0

        # Scheduling, shared with the threads that report changes.
        self._condition = threading.Condition()
        self._pending = False
        self._weight_changes: set[ServiceName] = set()
        self._needs_full = True
        self._next_full_at = float("-inf")
        self._last_attempt_at = float("-inf")
        self._retry_at: float | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        state.subscribe(self.changes_queued)
        weights.subscribe(self.weights_changed)

    # ---- inputs (any thread) ----

    def changes_queued(self, kind: ChangeKind, count: int) -> None:
        """The state's change listener: ``count`` Services or EndpointSlices changed."""
        counter = (
            self._metrics.service_changes if kind == "service" else self._metrics.endpoint_changes
        )
        counter.inc(count)
        self._queue()

    def weights_changed(self, services: Iterable[ServiceName]) -> None:
        """A weight provider's callback: these Services' weights changed."""
        with self._condition:
            self._weight_changes.update(services)
        self._queue()

    def _queue(self) -> None:
        self._health.queued_update()
        self._metrics.last_queued_timestamp.set(self._wall_clock())
        with self._condition:
            self._pending = True
            self._condition.notify()

    # ---- scheduling ----

    def next_sync_at(self) -> float:
        """When the next sync is due, on the monotonic clock."""
        with self._condition:
            if self._retry_at is not None:
                return self._retry_at
            due = self._next_full_at
            if self._pending:
                due = min(due, self._last_attempt_at + self._min_period)
            return due

    def sync_if_due(self) -> bool:
        """Sync if one is due now; True if a sync was attempted."""
        if self._clock() < self.next_sync_at():
            return False
        self.sync()
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="waolb-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._condition:
            self._stopping = True
            self._condition.notify()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._condition:
                if self._stopping:
                    return
                delay = self.next_sync_at() - self._clock()
                if delay > 0:
                    self._condition.wait(delay)
                    continue
            self.sync()

    # ---- one sync ----

    def sync(self) -> bool:
        """Run one sync now, full or partial as needed; True if it succeeded."""
        started = self._clock()
        with self._condition:
            self._last_attempt_at = started
            self._retry_at = None
            full = self._needs_full or started >= self._next_full_at
            self._pending = False
            weight_changes, self._weight_changes = self._weight_changes, set()
        batch = self._state.take_changes()
        self._trigger_times.extend(batch.trigger_times)
        changed = batch.services | weight_changes
        # The ports the batch changes, with their current inputs, to blame on failure.
        attempted: dict[ServicePortKey, PortEndpoints] = {}
        stats: SyncStats | None
        # Any failure, the dataplane's or a bug's, must leave the loop running: the next,
        # full, sync starts over from the state.
        try:
            if full:
                stats, programmed = self._sync_full(attempted)
            else:
                stats, programmed = self._sync_partial(changed, attempted)
            self._succeeded(full, started, stats, programmed)
        except Exception as error:
            self._failed(error, full, started, attempted)
            return False
        return True

    def _sync_full(
        self, attempted: dict[ServicePortKey, PortEndpoints]
    ) -> tuple[SyncStats, dict[ServiceName, dict[ServicePortKey, _Programmed]]]:
        ports = self._state.all_ports()
        self._cache.retain(ports)
        for key in [k for k in self._set_aside if k not in ports]:
            del self._set_aside[key]
        built = self._build(ports)
        attempted.update((key, ports[key]) for key in built)
        stats = self._dataplane.replace([p.native for p in built.values()])
        return stats, _by_service(built)

    def _sync_partial(
        self, services: frozenset[ServiceName], attempted: dict[ServicePortKey, PortEndpoints]
    ) -> tuple[SyncStats | None, dict[ServiceName, dict[ServicePortKey, _Programmed]]]:
        """Send only ``services``; the result maps each of them to its programmed ports."""
        ports = self._state.ports_of(services)
        programmed = _by_service(self._build(ports))
        upsert: list[ServicePort] = []
        remove: list[ServicePort] = []
        for service in services:
            before = self._programmed.get(service, {})
            for key, port in programmed.get(service, {}).items():
                if key not in before or before[key].native is not port.native:
                    upsert.append(port.native)
                    attempted[key] = ports[key]
            remove += [p.native for k, p in before.items() if k not in programmed.get(service, {})]
        stats = None
        if upsert or remove:
            stats = self._dataplane.apply(upsert, remove)
        return stats, {service: programmed.get(service, {}) for service in services}

    def _build(
        self, ports: Mapping[ServicePortKey, PortEndpoints]
    ) -> dict[ServicePortKey, _Programmed]:
        """The programmable version of each port; the last good one where a new one fails."""
        result = {}
        for key, port in ports.items():
            if self._set_aside.get(key) == port:
                continue
            weights = self._weights_for(port)
            native = self._cache.get(port, weights)
            if native is not None:
                result[key] = _Programmed(port, weights, native)
            elif (previous := self._programmed.get(key.service, {}).get(key)) is not None:
                result[key] = previous
        return result

    def _weights_for(self, port: PortEndpoints) -> tuple[int, ...]:
        """The provider's latest weights, checked; equal weights when it has none or bad ones."""
        key, count = port.info.key, len(port.endpoints)
        try:
            answer = self._weights.weights(port.info, port.endpoints)
            weights = None if answer is None else tuple(answer)
        except Exception as error:
            return self._unusable_weights(key, count, "provider", f"provider failed: {error!r}")
        if weights is not None and (
            len(weights) != count
            or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 0 for w in weights)
        ):
            return self._unusable_weights(key, count, "invalid_weights", f"got {list(weights)}")
        self._reported_weights.discard(key)
        # kube-proxy's behaviour when nothing is scored: equal shares.
        return weights if weights and any(weights) else equal_weights(count)

    def _unusable_weights(
        self, key: ServicePortKey, count: int, kind: str, problem: str
    ) -> tuple[int, ...]:
        """Count the failure, log it once until the port's weights are usable again."""
        self._metrics.scoring_errors.labels(kind).inc()
        if key not in self._reported_weights:
            self._reported_weights.add(key)
            log.error(
                "unusable weights, sharing equally",
                service_port=str(key),
                endpoints=count,
                problem=problem,
            )
        return equal_weights(count)

    def _succeeded(
        self,
        full: bool,
        started: float,
        stats: SyncStats | None,
        programmed: dict[ServiceName, dict[ServicePortKey, _Programmed]],
    ) -> None:
        """Record what the kernel now holds (all of it, or the synced Services) and report."""
        touched = set(self._programmed) | set(programmed) if full else set(programmed)
        for service in touched:
            before = self._programmed.get(service, {})
            after = programmed.get(service, {})
            for key in before.keys() - after.keys():
                self._metrics.forget_weights(key)
            for key, port in after.items():
                previous = before.get(key)
                if previous is None or previous.native is not port.native:
                    self._metrics.record_weights(
                        key, _port_label(port.source), port.source.endpoints, port.weights
                    )
            if after:
                self._programmed[service] = after
            else:
                self._programmed.pop(service, None)

        duration = self._clock() - started
        now = self._wall_clock()
        self._metrics.sync_duration.observe(duration)
        (self._metrics.full_sync_duration if full else self._metrics.partial_sync_duration).observe(
            duration
        )
        self._metrics.last_sync_timestamp.set(now)
        if stats is not None:
            self._metrics.sync_batch_messages.observe(stats["messages"])
        for trigger_time in self._trigger_times:
            self._metrics.network_programming_duration.observe(max(0.0, now - trigger_time))
        self._trigger_times.clear()
        self._health.updated()
        self._failures = 0
        with self._condition:
            if full:
                self._needs_full = False
                self._next_full_at = started + self._period
        log.debug(
            "rules synced",
            full=full,
            seconds=round(duration, 6),
            services=len(programmed),
            messages=stats["messages"] if stats else 0,
        )

    def _failed(
        self,
        error: Exception,
        full: bool,
        started: float,
        attempted: Mapping[ServicePortKey, PortEndpoints],
    ) -> None:
        self._metrics.nftables_sync_failures.inc()
        culprit = blamed_port(error, attempted)
        if culprit is not None:
            self._set_aside[culprit] = attempted[culprit]
            delay = self._min_period
            log.error(
                "the dataplane refused a service port; leaving it out until it changes",
                service_port=str(culprit),
                error=str(error),
                full=full,
            )
        else:
            self._failures += 1
            backoff = min(self._period, RETRY_INITIAL_DELAY * 2 ** (self._failures - 1))
            delay = max(self._min_period, backoff * (1 + RETRY_JITTER * (2 * self._jitter() - 1)))
            log.error(
                "sync failed; the previous rules stay in force",
                error=str(error),
                error_type=type(error).__name__,
                object=getattr(error, "object", None),
                full=full,
                retry_in=round(delay, 3),
                exc_info=not isinstance(error, OSError | ValueError),
            )
        with self._condition:
            self._needs_full = True
            self._retry_at = started + delay


def _by_service(
    ports: Mapping[ServicePortKey, _Programmed],
) -> dict[ServiceName, dict[ServicePortKey, _Programmed]]:
    result: dict[ServiceName, dict[ServicePortKey, _Programmed]] = {}
    for key, port in ports.items():
        result.setdefault(key.service, {})[key] = port
    return result


def _port_label(port: PortEndpoints) -> str:
    return port.info.key.port_name or str(port.info.port)
