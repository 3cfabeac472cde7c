"""How many more watts a node would draw for one more request: WAO's power delta, per node.

Upstream WAO-LB asks the predictor twice per endpoint per Service on every sync. The delta only
depends on the node and on the Service's cpu-per-request, so :class:`NodePowerScorer` asks once
per node for the "before" figure and once per node and distinct cpu-per-request for "after",
whatever the number of Services and endpoints, and remembers each answer for the predictor
cache TTL under the exact inputs (as upstream keys its cache). Node inputs come from three
cluster-wide requests (NodeMetrics, inlet_temp, delta_p) reused for the metrics cache TTL.

A node that cannot be scored gets a *reason* instead of a delta (``no_nodeconfig``,
``predictor_timeout``...); the policy leaves such nodes out, as upstream does.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final, Generic, Protocol, TypeVar

from waolb.config import WaolbSettings
from waolb.wao.inventory import WaoInventory
from waolb.wao.metrics_api import MetricsApiError
from waolb.wao.nodeconfig import EndpointTerm, NodeConfig
from waolb.wao.predictor import BasicAuth, PredictorError

INLET_TEMP: Final = "inlet_temp"
DELTA_P: Final = "delta_p"

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class MetricsSource(Protocol):
    def node_cpu_usage(self) -> dict[str, float]: ...

    def node_metric(self, metric: str, nodes: Collection[str] = ()) -> dict[str, float]: ...


class Predictors(Protocol):
    def predict(
        self,
        term: EndpointTerm,
        auth: BasicAuth | None,
        cpu_usage: float,
        inlet_temp: float,
        delta_p: float,
    ) -> float: ...

    def resolve_endpoint(self, provider: EndpointTerm, auth: BasicAuth | None) -> EndpointTerm: ...


class Secrets(Protocol):
    def basic_auth(self, namespace: str, name: str) -> BasicAuth: ...


ErrorCallback = Callable[[str], None]


class _Unscored(Exception):
    """A node cannot be scored; ``reason`` is its fallback reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class SingleFlightCache(Generic[_K, _V]):
    """A TTL cache whose concurrent misses for one key share one computation.

    Failures are not cached: the next caller tries again, so a predictor that recovers is used
    at the next scoring round rather than after the TTL.
    """

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._values: dict[_K, tuple[float, _V]] = {}
        self._in_flight: dict[_K, Future[_V]] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: _K, compute: Callable[[], _V]) -> _V:
        with self._lock:
            cached = self._values.get(key)
            if cached is not None and self._clock() < cached[0]:
                self.hits += 1
                return cached[1]
            future = self._in_flight.get(key)
            leader = future is None
            if future is None:
                future = self._in_flight[key] = Future()
                self.misses += 1
            else:
                self.hits += 1
        if not leader:
            return future.result()
        try:
            value = compute()
        except BaseException as error:
            with self._lock:
                del self._in_flight[key]
            future.set_exception(error)
            raise
        with self._lock:
            self._values[key] = (self._clock() + self._ttl, value)
            del self._in_flight[key]
        future.set_result(value)
        return value

    def expire(self) -> None:
        """Drop entries past their TTL (they would be recomputed anyway)."""
        now = self._clock()
        with self._lock:
            for key in [k for k, (expiry, _) in self._values.items() if expiry <= now]:
                del self._values[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)


@dataclass(frozen=True)
class NodeInputs:
    """What the predictor is asked for one node: CPU before one more request, and the sensors."""

    cpu_usage_cores: float
    cpu_capacity_cores: float | None
    inlet_temp: float
    delta_p: float
    predictor: str  # the predictor URL (or "Fake")


@dataclass(frozen=True)
class NodePower:
    """The power delta of one (node, cpu-per-request) pair, or why it has none."""

    node: str
    cpu_per_request: float
    delta_watts: float | None
    reason: str | None = None
    detail: str = ""
    inputs: NodeInputs | None = None
    watts_before: float | None = None
    watts_after: float | None = None


@dataclass
class _NodeMetrics:
    cpu: dict[str, float] = field(default_factory=dict)
    inlet_temp: dict[str, float] = field(default_factory=dict)
    delta_p: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # by input name


class NodePowerScorer:
    """Scores (node, cpu-per-request) pairs with WAO's power models; one instance per proxy."""

    def __init__(
        self,
        inventory: WaoInventory,
        metrics: MetricsSource,
        predictors: Predictors,
        secrets: Secrets,
        settings: WaolbSettings,
        *,
        on_error: ErrorCallback = lambda kind: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inventory = inventory
        self._metrics = metrics
        self._predictors = predictors
        self._secrets = secrets
        self._settings = settings
        self._on_error = on_error
        self._clock = clock
        self._node_metrics: SingleFlightCache[frozenset[str], _NodeMetrics] = SingleFlightCache(
            settings.metrics_cache_ttl, clock
        )
        self.predictions: SingleFlightCache[tuple[str, float, float, float], float] = (
            SingleFlightCache(settings.predictor_cache_ttl, clock)
        )
        self._endpoints: SingleFlightCache[tuple[EndpointTerm, BasicAuth | None], EndpointTerm] = (
            SingleFlightCache(settings.predictor_cache_ttl, clock)
        )
        self._pool = ThreadPoolExecutor(settings.parallelism, thread_name_prefix="waolb-wao")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def score(self, wanted: Mapping[str, Iterable[float]]) -> dict[tuple[str, float], NodePower]:
        """The power delta of every wanted (node, cpu-per-request in cores) pair.

        Nodes are scored in parallel (``parallelism`` at a time); within a node the "before"
        prediction is shared by every cpu-per-request.
        """
        if not wanted:
            return {}
        nodes = frozenset(wanted)
        metrics = self._node_metrics.get(nodes, lambda: self._fetch_metrics(nodes))
        self.predictions.expire()
        futures = {
            node: self._pool.submit(self._score_node, node, tuple(set(values)), metrics)
            for node, values in wanted.items()
        }
        result: dict[tuple[str, float], NodePower] = {}
        for future in futures.values():
            for power in future.result():
                result[(power.node, power.cpu_per_request)] = power
        return result

    # ---- inputs ----

    def _fetch_metrics(self, nodes: Collection[str]) -> _NodeMetrics:
        """The three cluster-wide node inputs; a failed one is empty and named in ``errors``.

        ``nodes`` lets the custom metrics client ask node by node when the adapter fails a
        wildcard request because some other node has no value yet.
        """
        fetched = _NodeMetrics()
        sources: tuple[tuple[str, Callable[[], dict[str, float]], dict[str, float]], ...] = (
            ("cpu", self._metrics.node_cpu_usage, fetched.cpu),
            (INLET_TEMP, lambda: self._metrics.node_metric(INLET_TEMP, nodes), fetched.inlet_temp),
            (DELTA_P, lambda: self._metrics.node_metric(DELTA_P, nodes), fetched.delta_p),
        )
        for name, fetch, into in sources:
            try:
                into.update(fetch())
            except MetricsApiError as error:
                fetched.errors[name] = f"{error.kind}: {error}"
                self._on_error(f"metrics_{error.kind}")
        return fetched

    def _score_node(
        self, node: str, cpu_per_request: tuple[float, ...], metrics: _NodeMetrics
    ) -> list[NodePower]:
        def unscored(reason: str, detail: str, inputs: NodeInputs | None = None) -> list[NodePower]:
            return [NodePower(node, c, None, reason, detail, inputs) for c in cpu_per_request]

        lookup = self._inventory.node_config(node)
        if lookup.config is None:
            return unscored(lookup.problem or "no_nodeconfig", "")
        usage = metrics.cpu.get(node)
        if usage is None:
            return unscored("no_cpu_metrics", metrics.errors.get("cpu", "no NodeMetrics"))
        sensors = []
        for name, values in ((INLET_TEMP, metrics.inlet_temp), (DELTA_P, metrics.delta_p)):
            value = values.get(node)
            if value is None or not math.isfinite(value):
                return unscored(f"no_{name}", metrics.errors.get(name, f"no {name} value"))
            sensors.append(value)
        capacity = self._inventory.cpu_capacity(node)
        percent = self._settings.cpu_usage_format == "Percent"
        if percent and not capacity:
            return unscored("no_capacity", "the Node has no status.capacity.cpu")
        try:
            term, auth = self._predictor_of(lookup.config)
        except _Unscored as error:
            return unscored(error.reason, str(error))
        inputs = NodeInputs(usage, capacity, sensors[0], sensors[1], term.endpoint or term.type)

        def cpu_input(cores: float) -> float:
            return 100.0 * cores / capacity if percent and capacity else cores

        def predict(cores: float) -> float:
            cpu = cpu_input(cores)
            key = (inputs.predictor, cpu, inputs.inlet_temp, inputs.delta_p)
            return self.predictions.get(
                key,
                lambda: self._predictors.predict(term, auth, cpu, *sensors),
            )

        try:
            before = predict(usage)
        except PredictorError as error:
            self._on_error(f"predictor_{error.kind}")
            return unscored(f"predictor_{error.kind}", str(error), inputs)
        result = []
        for cores in cpu_per_request:
            try:
                after = predict(usage + cores)
            except PredictorError as error:
                self._on_error(f"predictor_{error.kind}")
                reason = f"predictor_{error.kind}"
                result.append(NodePower(node, cores, None, reason, str(error), inputs))
                continue
            result.append(NodePower(node, cores, after - before, None, "", inputs, before, after))
        return result

    def _predictor_of(self, config: NodeConfig) -> tuple[EndpointTerm, BasicAuth | None]:
        """The predictor term to call for a node, and its credentials.

        As upstream: an endpoint provider (Redfish), when there is one, names the predictor's
        type and URL, replacing powerConsumption's; the credentials stay powerConsumption's
        (none without it). Otherwise powerConsumption is used as it is.
        """
        direct = config.power_consumption
        provider = config.power_consumption_endpoint_provider
        if provider is None:
            if direct is None:
                raise _Unscored("no_predictor", "the NodeConfig names no power predictor")
            return direct, self._auth(config, direct)
        provider_auth = self._auth(config, provider)
        try:
            term = self._endpoints.get(
                (provider, provider_auth),
                lambda: self._predictors.resolve_endpoint(provider, provider_auth),
            )
        except PredictorError as error:
            self._on_error(f"endpoint_provider_{error.kind}")
            raise _Unscored(
                f"endpoint_provider_{error.kind}", f"{provider.type} {provider.endpoint}: {error}"
            ) from None
        return term, self._auth(config, direct) if direct is not None else None

    def _auth(self, config: NodeConfig, term: EndpointTerm) -> BasicAuth | None:
        if not term.basic_auth_secret:
            return None
        try:
            return self._secrets.basic_auth(config.namespace, term.basic_auth_secret)
        except PredictorError as error:
            self._on_error("secret")
            raise _Unscored(
                "secret", f"Secret {config.namespace}/{term.basic_auth_secret}: {error}"
            ) from None
