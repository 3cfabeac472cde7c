"""The running proxy: watches, state, weights, the sync loop and the HTTP servers, wired.

Data flows one way: the reflectors feed :class:`~waolb.state.ClusterState`, whose changes wake
the :class:`~waolb.sync.SyncLoop`, which asks the weight provider and sends one kernel batch.
The first sync waits until both the Service and the EndpointSlice lists have arrived, so a
restarted proxy never replaces good rules with a half-known cluster. On SIGTERM or SIGINT the
watches and servers stop and the rules stay in place, as kube-proxy leaves them.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, Final

import orjson

from waolb import logs
from waolb.config import ProxySettings
from waolb.dataplane import NftablesDataplane
from waolb.health import ProxierHealth
from waolb.httpserver import JSON, HttpServer, Response, Route, by_path
from waolb.kube.client import KubeConfigError, TokenBucket, build_api_client
from waolb.kube.reflector import Reflector
from waolb.kube.resources import ENDPOINT_SLICES, NODE_CONFIGS, NODES, SERVICES
from waolb.kube.rest import RestClient
from waolb.metrics import ProxyMetrics
from waolb.policy import WeightProvider
from waolb.policy.equal import EqualWeights
from waolb.policy.select import PolicySelector
from waolb.policy.wao import WaoWeights
from waolb.redaction import redact_value
from waolb.state import ClusterState
from waolb.sync import SyncLoop
from waolb.wao.inventory import WaoInventory
from waolb.wao.metrics_api import ClusterMetrics
from waolb.wao.predictor import PowerPredictors
from waolb.wao.scorer import NodePowerScorer
from waolb.wao.secrets import SecretReader
from waolb.weights_report import WEIGHTS_PATH

log = logs.get_logger(__name__)

EXIT_FAILURE: Final = 1
JsonObject = dict[str, Any]


class _EventRouter:
    """The reflectors' handler: Services and EndpointSlices to the state, this node to health,
    every Node and NodeConfig to the WAO inventory."""

    def __init__(
        self,
        state: ClusterState,
        health: ProxierHealth,
        inventory: WaoInventory,
        node_name: str,
        on_lists: Callable[[], None],
    ) -> None:
        self._state = state
        self._health = health
        self._inventory = inventory
        self._node_name = node_name
        self._on_lists = on_lists
        self._listed: set[str] = set()
        self._lock = threading.Lock()

    def _is_this_node(self, obj: JsonObject) -> bool:
        return bool((obj.get("metadata") or {}).get("name") == self._node_name)

    def replace(self, kind: str, objects: list[JsonObject], resource_version: str) -> None:
        if kind == SERVICES.kind:
            self._state.replace_services(objects)
        elif kind == ENDPOINT_SLICES.kind:
            self._state.replace_endpoint_slices(objects)
        else:
            self._inventory.replace(kind, objects, resource_version)
            # A relist without this node says nothing new: only a delete event removes it.
            mine = [obj for obj in objects if self._is_this_node(obj)] if kind == NODES.kind else []
            if mine:
                self._health.sync_node(mine[0])
        with self._lock:
            first_time = kind not in self._listed
            self._listed.add(kind)
            ready = {SERVICES.kind, ENDPOINT_SLICES.kind} <= self._listed
        if first_time and ready and kind in (SERVICES.kind, ENDPOINT_SLICES.kind):
            self._on_lists()

    def upsert(self, kind: str, obj: JsonObject) -> None:
        if kind == SERVICES.kind:
            self._state.upsert_service(obj)
        elif kind == ENDPOINT_SLICES.kind:
            self._state.upsert_endpoint_slice(obj)
        else:
            self._inventory.upsert(kind, obj)
            if kind == NODES.kind and self._is_this_node(obj):
                self._health.sync_node(obj)

    def delete(self, kind: str, obj: JsonObject) -> None:
        if kind == SERVICES.kind:
            self._state.delete_service(obj)
        elif kind == ENDPOINT_SLICES.kind:
            self._state.delete_endpoint_slice(obj)
        else:
            self._inventory.delete(kind, obj)
            if kind == NODES.kind and self._is_this_node(obj):
                self._health.sync_node(None)


class Proxier:
    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        self.inventory = WaoInventory()
        self.wao: WaoWeights | None = None
        self.weights: WeightProvider = EqualWeights()
        self.metrics = ProxyMetrics(weight_metrics=settings.config.waolb.weight_metrics)
        config = settings.config
        self.health = ProxierHealth(2 * config.sync_period, self.metrics)
        self._stop_requested = threading.Event()
        self._reflectors: list[Reflector] = []
        self._servers: list[HttpServer] = []
        self._loop: SyncLoop | None = None

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; the exit status."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        try:
            self.start()
        except (KubeConfigError, OSError) as error:
            log.error("cannot start the proxy", error=str(error))
            self.stop()
            return EXIT_FAILURE
        self._stop_requested.wait()
        self.stop()
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("stopping; the rules stay in place", signal=signal.Signals(signum).name)
        self._stop_requested.set()

    def start(self) -> None:
        settings, config = self.settings, self.settings.config
        log.info(
            "starting waolb",
            node=settings.node_name,
            service_proxy_name=settings.service_proxy_name,
            table=settings.table_name,
            sync_period=config.sync_period,
            min_sync_period=config.min_sync_period,
        )
        dataplane = NftablesDataplane.open(settings.table_name, config.masquerade_bit)
        api_client = build_api_client(config.kubeconfig or None, config.master or None)
        # One rate limit for every API request of the process, as client-go's.
        rest = RestClient(api_client, TokenBucket(config.qps, config.burst))
        self.weights = self._weight_providers(rest)
        state = ClusterState(settings.node_name)
        self._loop = SyncLoop(
            dataplane,
            state,
            self.weights,
            self.metrics,
            self.health,
            min_sync_period=config.min_sync_period,
            sync_period=config.sync_period,
        )
        self._serve("healthz", [(settings.healthz_bind_address, self.health.routes())])
        # The weights listener shares the metrics server's thread; it is only where the
        # operator puts it (this node's loopback by default): it shows predictor URLs and
        # errors, which stay on the node.
        weights = {WEIGHTS_PATH: self._weights_route}
        self._serve(
            "metrics",
            [
                (settings.metrics_bind_address, self.metrics.routes()),
                (config.waolb.weights_bind_address, weights),
            ],
        )
        self.weights.start()
        router = _EventRouter(
            state, self.health, self.inventory, settings.node_name, on_lists=self._loop.start
        )
        # (resource, label selector, field selector): EndpointSlices carry no service-proxy-name
        # label, so they are all watched and the state keeps those of the tracked Services.
        # Every Node is watched, not only this one as kube-proxy does: WAO needs the CPU
        # capacity of the nodes endpoints run on.
        watches = [
            (SERVICES, settings.service_label_selector, None),
            (ENDPOINT_SLICES, None, None),
            (NODES, None, None),
            (NODE_CONFIGS, None, None),
        ]
        for resource, label_selector, field_selector in watches:
            reflector = Reflector(
                rest,
                resource,
                router,
                label_selector=label_selector,
                field_selector=field_selector,
                on_restart=self._watch_restarted,
            )
            reflector.start()
            self._reflectors.append(reflector)

    def _weight_providers(self, rest: RestClient) -> PolicySelector:
        """Equal and WAO weights, chosen per Service by annotation or the default policy."""
        wao = self.settings.config.waolb
        scorer = NodePowerScorer(
            self.inventory,
            ClusterMetrics(rest, wao.request_timeout),
            PowerPredictors(
                timeout=wao.request_timeout,
                verify_tls=wao.verify_tls,
                max_connections=wao.parallelism,
            ),
            SecretReader(rest, wao.metrics_cache_ttl),
            wao,
            on_error=lambda kind: self.metrics.scoring_errors.labels(kind).inc(),
        )
        # Full syncs ask for every port's weights each sync period; a port not asked for in
        # three periods is gone.
        self.wao = WaoWeights(
            scorer, wao, self.metrics, forget_after=3 * self.settings.config.sync_period
        )
        return PolicySelector({"equal": EqualWeights(), "wao": self.wao}, wao.default_policy)

    def _weights_route(self) -> Response:
        snapshot = self.wao.snapshot() if self.wao is not None else {"nodes": [], "services": []}
        # The scorer redacts what it knows to be secret; this catches what slipped through.
        return Response(200, orjson.dumps(redact_value(snapshot)), JSON)

    def stop(self) -> None:
        """Stop watching, syncing and serving; the kernel rules are left as they are."""
        for reflector in self._reflectors:
            reflector.stop()
        if self._loop is not None:
            self._loop.stop()
        self.weights.stop()
        for server in self._servers:
            server.stop()

    def _serve(self, name: str, listeners: list[tuple[str, dict[str, Route]]]) -> None:
        """One server thread for ``listeners`` (address, routes); "" addresses are off."""
        wanted = [(address, routes) for address, routes in listeners if address]
        if not wanted:
            return
        server = HttpServer(name, on_drop=self._connection_dropped)
        server.start()
        self._servers.append(server)
        for address, routes in wanted:
            try:
                server.listen(address, by_path(routes))
            except OSError as error:
                # As kube-proxy without bindAddressHardFail: the proxy still programs rules.
                log.error("cannot serve", server=name, address=address, error=str(error))

    def _connection_dropped(self, server: str, reason: str) -> None:
        self.metrics.http_drops.labels(server, reason).inc()

    def _watch_restarted(self, kind: str, reason: str) -> None:
        self.metrics.watch_restarts.labels(kind, reason).inc()
