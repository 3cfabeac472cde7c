"""WAO weights: each endpoint's share follows the extra power its node draws per request.

Scoring runs in its own thread, never in a sync. The sync loop asks :meth:`WaoWeights.weights`
for every port it builds and gets, at once, weights computed from the latest node power deltas
(:mod:`waolb.wao.scorer`). Every ``scoring_interval`` (or sooner, when a sync met a node or a
cpu-per-request it had no delta for) the thread re-scores the nodes that the known ports use,
recomputes every port's weights with upstream's scoring (``waolb._native.wao_scores``, all
ports in one call) and reports the Services whose shares moved by at least
``min_weight_change``; the sync loop then re-programs only those.

Fallbacks, each counted in ``waolb_wao_fallbacks_total{reason}`` (once per node or port per
scoring round) and logged at most once a minute per reason, with a count and a few examples:

* a node that cannot be scored (no NodeConfig, no metrics, predictor down...) has its endpoints
  left out, exactly as upstream does;
* a port none of whose endpoints can be scored gets equal weights (reason ``service_unscored``),
  kube-proxy's behaviour, so WAO being down never blackholes a Service.
"""

from __future__ import annotations

import math
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from waolb import logs
from waolb._native import wao_scores
from waolb.config import WaolbSettings, parse_cpu_quantity
from waolb.metrics import ProxyMetrics
from waolb.policy import WeightsChanged
from waolb.state import EndpointInfo, ServiceName, ServicePortInfo, ServicePortKey
from waolb.wao.scorer import NodePower, NodePowerScorer

log = logs.get_logger(__name__)

CPU_PER_REQUEST_ANNOTATION: Final = "waok8s.github.io/cpu-per-request"
LOG_INTERVAL: Final = 60.0
LOGGED_EXAMPLES: Final = 5
# A sync that meets unknown nodes wakes scoring; waiting this long first lets the sync finish
# registering its ports (a full sync asks for thousands) instead of competing with it.
WAKE_SETTLE: Final = 0.1


@dataclass(frozen=True)
class PortScore:
    """One port's last weights and what they came from, for syncs and for ``waolb weights``."""

    key: ServicePortKey
    # The weights stand for exactly these endpoints (the state hands the same tuple to every
    # sync until they change, so the usual check is one identity comparison).
    endpoints: tuple[EndpointInfo, ...]
    cpu_per_request: float
    deltas: tuple[float, ...]  # NaN: the node could not be scored
    weights: tuple[int, ...] | None  # None: equal shares (nothing scored)
    asked_at: float


def shares(weights: Sequence[int]) -> list[float]:
    total = sum(weights)
    return [w / total for w in weights] if total else [0.0] * len(weights)


def moved_enough(old: Sequence[int] | None, new: Sequence[int] | None, threshold: float) -> bool:
    """Whether new weights justify re-programming: any share moved by ``threshold`` or more.

    An endpoint joining or leaving the weighted set (0 <-> above 0) always counts, and so does
    switching between equal and scored weights; identical weights never do.
    """
    if old == new:
        return False
    if old is None or new is None or len(old) != len(new):
        return True
    if any((a == 0) != (b == 0) for a, b in zip(old, new, strict=True)):
        return True
    return any(abs(a - b) >= threshold for a, b in zip(shares(old), shares(new), strict=True))


class RateLimitedLog:
    """Logs each reason at most once per ``interval`` seconds."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def warning(self, event: str, reason: str, **fields: Any) -> None:
        now = self._clock()
        with self._lock:
            last = self._last.get(reason)
            if last is not None and now - last < self._interval:
                return
            self._last[reason] = now
        log.warning(event, reason=reason, **fields)


class WaoWeights:
    """The WAO weight provider (see the module docstring)."""

    def __init__(
        self,
        scorer: NodePowerScorer,
        settings: WaolbSettings,
        metrics: ProxyMetrics,
        *,
        forget_after: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._scorer = scorer
        self._settings = settings
        self._metrics = metrics
        self._forget_after = forget_after
        self._clock = clock
        self._log = RateLimitedLog(LOG_INTERVAL, clock)
        self._lock = threading.Lock()
        self._ports: dict[ServicePortKey, PortScore] = {}
        self._power: dict[tuple[str, float], NodePower] = {}
        self._wanted_now = False
        self._last_wanted_at = float("-inf")
        self._wake = threading.Condition(self._lock)
        self._listeners: list[WeightsChanged] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._cpu_per_request_cache: dict[str, float] = {}

    # ---- WeightProvider ----

    def subscribe(self, on_change: WeightsChanged) -> None:
        self._listeners.append(on_change)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="waolb-wao-scoring", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
        self._scorer.close()

    def weights(
        self, port: ServicePortInfo, endpoints: Sequence[EndpointInfo]
    ) -> Sequence[int] | None:
        """The port's weights from the latest deltas; never waits for a prediction."""
        identity = tuple(endpoints)
        cpu_per_request = self._cpu_per_request(port)
        now = self._clock()
        with self._lock:
            known = self._ports.get(port.key)
            if (
                known is not None
                and (known.endpoints is identity or known.endpoints == identity)
                and known.cpu_per_request == cpu_per_request
            ):
                self._ports[port.key] = _asked(known, now)
                return known.weights
            power = self._power
        deltas = tuple(_delta(power, e.node_name, cpu_per_request) for e in identity)
        weights = _port_weights(deltas)
        score = PortScore(port.key, identity, cpu_per_request, deltas, weights, now)
        unknown = any((e.node_name, cpu_per_request) not in power for e in identity if e.node_name)
        with self._lock:
            self._ports[port.key] = score
            if unknown:
                self._wanted_now = True
                self._last_wanted_at = now
                self._wake.notify()
        # A fallback here is counted by the scoring round this port is now part of.
        return weights

    # ---- scoring ----

    def _run(self) -> None:
        interval = self._settings.scoring_interval
        next_round = self._clock()
        while True:
            with self._lock:
                while not self._stopping and not self._wanted_now:
                    delay = next_round - self._clock()
                    if delay <= 0:
                        break
                    self._wake.wait(delay)
                if self._stopping:
                    return
                while self._wanted_now and not self._stopping:
                    quiet_for = self._clock() - self._last_wanted_at
                    if quiet_for >= WAKE_SETTLE:
                        break
                    self._wake.wait(WAKE_SETTLE - quiet_for)
                self._wanted_now = False
            try:
                self.refresh()
            except Exception:
                # A bug must not end scoring: syncs keep the last weights meanwhile.
                self._metrics.scoring_errors.labels("internal").inc()
                log.exception("WAO scoring failed; the previous weights stay in force")
            next_round = self._clock() + interval

    def refresh(self) -> set[ServiceName]:
        """One scoring round: re-score the nodes in use, update weights, report changed Services."""
        started = self._clock()
        with self._lock:
            cutoff = started - self._forget_after
            for key in [k for k, p in self._ports.items() if p.asked_at < cutoff]:
                del self._ports[key]
            ports = list(self._ports.values())
        wanted: dict[str, set[float]] = {}
        for port in ports:
            for endpoint in port.endpoints:
                if endpoint.node_name:
                    wanted.setdefault(endpoint.node_name, set()).add(port.cpu_per_request)
        power = self._scorer.score(wanted)
        self._report_unscored_nodes(power.values())

        # Every port in one call to the scoring core: flat deltas plus group offsets.
        flat = array("d")
        offsets = array("q", [0])
        for port in ports:
            flat.extend(_delta(power, e.node_name, port.cpu_per_request) for e in port.endpoints)
            offsets.append(len(flat))
        scores = wao_scores(memoryview(flat), offsets) if ports else []

        threshold = self._settings.min_weight_change
        changed: set[ServiceName] = set()
        unscored: list[str] = []
        with self._lock:
            self._power = power
            for index, port in enumerate(ports):
                start, end = offsets[index], offsets[index + 1]
                deltas = tuple(flat[start:end])
                weights = tuple(scores[start:end]) if _any_scored(deltas) else None
                current = self._ports.get(port.key)
                if (
                    current is None
                    or current.endpoints != port.endpoints
                    or current.cpu_per_request != port.cpu_per_request
                ):
                    continue  # changed meanwhile; the sync that changed it computed anew
                if weights is None and port.endpoints:
                    unscored.append(str(port.key))
                if moved_enough(current.weights, weights, threshold):
                    self._ports[port.key] = PortScore(
                        port.key,
                        port.endpoints,
                        port.cpu_per_request,
                        deltas,
                        weights,
                        current.asked_at,
                    )
                    changed.add(port.key.service)
                else:
                    # Keep the programmed weights but show the latest deltas.
                    self._ports[port.key] = PortScore(
                        port.key,
                        port.endpoints,
                        port.cpu_per_request,
                        deltas,
                        current.weights,
                        current.asked_at,
                    )
        self._fallback("service_unscored", unscored, "no endpoint's node could be scored")
        self._metrics.scoring_duration.observe(self._clock() - started)
        if changed:
            for listener in self._listeners:
                listener(changed)
        return changed

    # ---- inspection ----

    def snapshot(self) -> dict[str, Any]:
        """The scorer's last inputs and results, as JSON-ready data (``/waolb/weights``)."""
        with self._lock:
            ports = sorted(self._ports.values(), key=lambda p: p.key)
            power = dict(self._power)
        nodes: dict[str, dict[str, Any]] = {}
        for (node, cpu_per_request), item in sorted(power.items()):
            entry = nodes.setdefault(node, {"name": node, "by_cpu_per_request": []})
            if item.inputs is not None:
                entry.update(
                    cpu_usage_cores=item.inputs.cpu_usage_cores,
                    cpu_capacity_cores=item.inputs.cpu_capacity_cores,
                    inlet_temp=item.inputs.inlet_temp,
                    delta_p=item.inputs.delta_p,
                    predictor=item.inputs.predictor,
                )
            entry["by_cpu_per_request"].append(
                {
                    "cpu_per_request": cpu_per_request,
                    "watts_before": item.watts_before,
                    "watts_after": item.watts_after,
                    "delta_watts": item.delta_watts,
                    "reason": item.reason,
                    "detail": item.detail,
                }
            )
        services = []
        for port in ports:
            weights = port.weights or (1,) * len(port.endpoints)
            services.append(
                {
                    "family": port.key.family,
                    "namespace": port.key.namespace,
                    "name": port.key.name,
                    "port": port.key.port_name,
                    "protocol": port.key.protocol,
                    "cpu_per_request": port.cpu_per_request,
                    "fallback": port.weights is None,
                    "endpoints": [
                        {
                            "ip": endpoint.ip,
                            "port": endpoint.port,
                            "node": endpoint.node_name,
                            "delta_watts": None if math.isnan(delta) else delta,
                            "weight": weight,
                            "share": share,
                        }
                        for endpoint, delta, weight, share in zip(
                            port.endpoints, port.deltas, weights, shares(weights), strict=True
                        )
                    ],
                }
            )
        return {"nodes": list(nodes.values()), "services": services}

    # ---- helpers ----

    def _cpu_per_request(self, port: ServicePortInfo) -> float:
        text = port.annotations.get(CPU_PER_REQUEST_ANNOTATION)
        if text is None:
            return self._settings.cpu_per_request
        cached = self._cpu_per_request_cache.get(text)
        if cached is not None:
            return cached
        try:
            value = parse_cpu_quantity(text)
        except ValueError as error:
            self._fallback(
                "invalid_cpu_per_request",
                [str(port.key.service)],
                f"{CPU_PER_REQUEST_ANNOTATION}: {error}; using the default",
            )
            return self._settings.cpu_per_request
        self._cpu_per_request_cache[text] = value
        return value

    def _fallback(self, reason: str, subjects: Sequence[str], detail: str) -> None:
        """Count a fallback for each subject; log one line for all of them, rate-limited.

        One line per reason, not per subject: a cluster without any NodeConfig would otherwise
        log every Service and node every minute.
        """
        if not subjects:
            return
        self._metrics.wao_fallbacks.labels(reason).inc(len(subjects))
        self._log.warning(
            "WAO scoring fallback",
            reason,
            detail=detail,
            count=len(subjects),
            examples=sorted(subjects)[:LOGGED_EXAMPLES],
        )

    def _report_unscored_nodes(self, power: Iterable[NodePower]) -> None:
        by_reason: dict[str, dict[str, str]] = {}
        for item in power:
            if item.reason is not None:
                by_reason.setdefault(item.reason, {})[item.node] = item.detail
        for reason, nodes in sorted(by_reason.items()):
            first = min(nodes)
            self._fallback(reason, sorted(nodes), nodes[first] or "node left out")


def _delta(power: Mapping[tuple[str, float], NodePower], node: str | None, cpu: float) -> float:
    item = power.get((node, cpu)) if node else None
    if item is None or item.delta_watts is None:
        return math.nan
    return item.delta_watts


def _any_scored(deltas: Sequence[float]) -> bool:
    return any(math.isfinite(d) for d in deltas)


def _port_weights(deltas: Sequence[float]) -> tuple[int, ...] | None:
    if not _any_scored(deltas):
        return None
    return tuple(wao_scores(array("d", deltas), [0, len(deltas)]))


def _asked(score: PortScore, now: float) -> PortScore:
    return PortScore(
        score.key, score.endpoints, score.cpu_per_request, score.deltas, score.weights, now
    )
