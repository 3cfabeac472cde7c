"""One sync: the state's service ports and their weights in, one kernel batch out.

:class:`SyncLoop` is the work a :class:`~waolb.runner.BoundedFrequencyRunner` runs (kube-proxy's
semantics, which the runner keeps):

* a change (from the state or a weight provider) asks for a sync; changes that arrive before
  it runs coalesce into it, and two syncs start at least ``min_sync_period`` apart;
* a full sync runs first, every ``sync_period`` and after any failure; otherwise only the
  changed Services are sent, and the dataplane (its Rust ledger) works out what changes;
* a sync that fails leaves the kernel as it was (batches are atomic) and is retried, full,
  after an exponential backoff;
* a port whose new state is refused (it cannot be built, its ClusterIP and port are another
  port's, or the kernel refuses it) keeps its last programmed state in every later sync, full
  or partial, while the rest of the batch commits. It is logged once per refused state,
  counted in ``waolb_sync_port_errors{reason}``, and retried with a backoff of its own (at
  once when its state changes). A kernel refusal also makes the next sync full: the kernel
  no longer holds what the ledger says (a chain deleted behind waolb's back).

Tests drive :meth:`SyncLoop.run_if_due` with a fake clock; in production the runner's thread
runs it, and a crash of that thread turns ``/healthz`` unhealthy.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from waolb import logs
from waolb.dataplane import DesiredPort, NftablesDataplane, Refusal, SyncOutcome
from waolb.health import ProxierHealth
from waolb.metrics import ProxyMetrics
from waolb.policy import WeightProvider, equal_weights
from waolb.runner import Backoff, BoundedFrequencyRunner
from waolb.state import ChangeKind, ClusterState, PortEndpoints, ServiceName, ServicePortKey

log = logs.get_logger(__name__)

#: Refusal reasons, as ``waolb_sync_port_errors`` labels them.
REFUSAL_REASONS: Final = ("invalid", "clash", "kernel")


@dataclass(frozen=True)
class _Refused:
    """A port whose new state was refused: that state, and when it is tried again."""

    state: DesiredPort
    reason: str
    attempt: int
    retry_at: float


class SyncLoop:
    def __init__(
        self,
        dataplane: NftablesDataplane,
        state: ClusterState,
        weights: WeightProvider,
        metrics: ProxyMetrics,
        health: ProxierHealth,
        *,
        min_sync_period: float = 1.0,
        sync_period: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._dataplane = dataplane
        self._state = state
        self._weights = weights
        self._metrics = metrics
        self._health = health
        self._period = sync_period
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng
        self._backoff = Backoff(initial=1.0, cap=sync_period)
        self.runner = BoundedFrequencyRunner(
            "waolb-sync",
            self.sync,
            min_interval=min_sync_period,
            max_interval=sync_period,
            clock=clock,
            on_crash=lambda crash: health.crashed("the sync loop", crash),
        )
        # Only the runner's thread touches the rest.
        self._needs_full = True
        self._next_full_at = float("-inf")
        self._failures = 0
        self._refused: dict[ServicePortKey, _Refused] = {}
        self._reported_weights: set[ServicePortKey] = set()
        self._trigger_times: list[float] = []
        # Shared with the weight providers' threads.
        self._lock = threading.Lock()
        self._weight_changes: set[ServiceName] = set()
        state.subscribe(self.changes_queued)
        weights.subscribe(self.weights_changed)
        self.runner.run()  # the first sync, full, as soon as the runner runs

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
        with self._lock:
            self._weight_changes.update(services)
        self._queue()

    def _queue(self) -> None:
        self._health.queued_update()
        self._metrics.last_queued_timestamp.set(self._wall_clock())
        self.runner.run()

    # ---- scheduling, delegated to the runner ----

    def start(self) -> None:
        self.runner.start()

    def stop(self) -> None:
        self.runner.stop()

    def next_sync_at(self) -> float:
        return self.runner.next_run_at()

    def run_if_due(self) -> bool:
        """Sync now, in the caller's thread, if one is due; True if one ran."""
        return self.runner.run_if_due()

    # ---- one sync ----

    def sync(self) -> None:
        """Run one sync, full or partial as needed (the runner's work)."""
        started = self._clock()
        full = self._needs_full or started >= self._next_full_at
        with self._lock:
            weight_changes, self._weight_changes = self._weight_changes, set()
        batch = self._state.take_changes()
        self._trigger_times.extend(batch.trigger_times)
        due = {key.service for key, refused in self._refused.items() if refused.retry_at <= started}
        services = None if full else batch.services | weight_changes | due
        # Any failure, the dataplane's or a bug's, must leave the loop running: the next,
        # full, sync starts over from the state.
        try:
            ports = self._state.all_ports() if services is None else self._state.ports_of(services)
            desired = {key: (port, self._weights_for(port)) for key, port in ports.items()}
            outcome = None
            if services is None or services:
                hold = self._held(desired, started)
                outcome = self._dataplane.sync(desired, services=services, hold=hold)
        except Exception as error:
            self._failed(error, full)
            return
        self._succeeded(full, started, outcome)
        if outcome is not None:
            self._follow_refusals(outcome, desired, services, started)
            self._record_weights(outcome, desired)

    def _held(
        self, desired: Mapping[ServicePortKey, DesiredPort], now: float
    ) -> set[ServicePortKey]:
        """Refused ports whose state is the one refused and whose retry is not due yet."""
        return {
            key
            for key, refused in self._refused.items()
            if now < refused.retry_at and desired.get(key) == refused.state
        }

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

    # ---- results ----

    def _follow_refusals(
        self,
        outcome: SyncOutcome,
        desired: Mapping[ServicePortKey, DesiredPort],
        services: frozenset[ServiceName] | None,
        now: float,
    ) -> None:
        """Track refused ports for their retries; forget those programmed or gone since."""
        refused_now = {refusal.key: refusal for refusal in outcome.refused}
        held = self._held(desired, now)
        for key in list(self._refused):
            in_scope = services is None or key.service in services
            if key in refused_now or key in held or not in_scope:
                continue
            del self._refused[key]
            if key in desired:
                log.info("a refused service port is programmed again", service_port=str(key))
        for key, refusal in refused_now.items():
            self._refusal(refusal, desired.get(key), now)
        for reason in REFUSAL_REASONS:
            count = sum(1 for refused in self._refused.values() if refused.reason == reason)
            self._metrics.sync_port_errors.labels(reason).set(count)
        if any(refusal.reason != "invalid" for refusal in outcome.refused):
            self._metrics.nftables_sync_failures.inc()
        if any(refusal.reason == "kernel" for refusal in outcome.refused):
            # The kernel may no longer hold what the ledger says (a chain deleted behind
            # waolb's back): a full sync rebuilds it, with the refused ports as they were.
            self._needs_full = True
            self.runner.run()
        if self._refused:
            next_retry = min(refused.retry_at for refused in self._refused.values())
            self.runner.retry_after(next_retry - now)

    def _refusal(self, refusal: Refusal, state: DesiredPort | None, now: float) -> None:
        """One refused port: the same state refused again backs off further; a new one is
        logged and starts over."""
        if state is None:
            return
        previous = self._refused.get(refusal.key)
        repeated = previous is not None and previous.state == state
        attempt = previous.attempt + 1 if previous is not None and repeated else 0
        delay = self._backoff.delay(attempt, self._rng)
        self._refused[refusal.key] = _Refused(state, refusal.reason, attempt, now + delay)
        if not repeated:
            log.error(
                "a service port's new state is refused; it keeps its previous rules"
                if refusal.kept
                else "a service port's new state is refused; it is not programmed",
                service_port=str(refusal.key),
                port=refusal.port,
                reason=refusal.reason,
                errno=refusal.errno,
                error=refusal.message,
                retry_in=round(delay, 3),
            )

    def _record_weights(
        self, outcome: SyncOutcome, desired: Mapping[ServicePortKey, DesiredPort]
    ) -> None:
        for key in outcome.removed:
            self._metrics.forget_weights(key)
        for key in outcome.changed:
            port, weights = desired[key]
            self._metrics.record_weights(key, _port_label(port), port.endpoints, weights)

    def _succeeded(self, full: bool, started: float, outcome: SyncOutcome | None) -> None:
        duration = self._clock() - started
        now = self._wall_clock()
        self._metrics.sync_duration.observe(duration)
        (self._metrics.full_sync_duration if full else self._metrics.partial_sync_duration).observe(
            duration
        )
        self._metrics.last_sync_timestamp.set(now)
        if outcome is not None:
            self._metrics.sync_batch_messages.observe(outcome.messages)
        for trigger_time in self._trigger_times:
            self._metrics.network_programming_duration.observe(max(0.0, now - trigger_time))
        self._trigger_times.clear()
        self._health.updated()
        self._failures = 0
        if full:
            self._needs_full = False
            self._next_full_at = started + self._period
        log.debug(
            "rules synced",
            full=full,
            seconds=round(duration, 6),
            changed=len(outcome.changed) if outcome else 0,
            messages=outcome.messages if outcome else 0,
        )

    def _failed(self, error: Exception, full: bool) -> None:
        self._metrics.nftables_sync_failures.inc()
        delay = self._backoff.delay(self._failures, self._rng)
        self._failures += 1
        log.error(
            "sync failed; the previous rules stay in force",
            error=str(error),
            error_type=type(error).__name__,
            full=full,
            retry_in=round(delay, 3),
            exc_info=not isinstance(error, OSError | ValueError),
        )
        self._needs_full = True
        self.runner.retry_after(delay)


def _port_label(port: PortEndpoints) -> str:
    return port.info.key.port_name or str(port.info.port)
