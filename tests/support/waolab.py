"""A WAO-enabled test cluster: nodes with metrics, sensors, NodeConfigs and real predictors.

Shared by the scoring tests, the end-to-end test and the benchmarks. Every node gets a Node
(CPU capacity), NodeMetrics (CPU usage), ``inlet_temp`` and ``delta_p`` custom metrics, and a
NodeConfig naming its own V2 predictor server, whose power model the caller chooses.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client import ApiClient, Configuration

from kubeapi import NODE_CONFIGS, NODE_METRICS, NODES, KubeApiServer, objects
from waolb.config import WaolbSettings
from waolb.kube.rest import RestClient
from waolb.metrics import ProxyMetrics
from waolb.policy.wao import WaoWeights
from waolb.state import EndpointInfo, ServicePortInfo, ServicePortKey
from waolb.wao.inventory import WaoInventory
from waolb.wao.metrics_api import ClusterMetrics
from waolb.wao.predictor import PowerPredictors
from waolb.wao.scorer import NodePowerScorer
from waolb.wao.secrets import SecretReader
from waoservers import PowerModel, V2PredictorServer

WAO_NAMESPACE = "wao-system"


def cpu_times(slope: float, per_degree: float = 0.0) -> PowerModel:
    """watts = cpu * (slope + per_degree * inlet_temp): the inlet temperature changes the slope,
    so it changes the power *delta* (an additive term would cancel out of it)."""
    return lambda cpu, inlet_temp, delta_p: cpu * (slope + per_degree * inlet_temp)


@dataclass
class WaoCluster:
    """The test API server's WAO objects, and the predictors serving them."""

    api: KubeApiServer
    predictors: dict[str, V2PredictorServer] = field(default_factory=dict)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def add_node(
        self,
        name: str,
        power_model: PowerModel,
        *,
        cpu_capacity: str = "4",
        cpu_usage: str = "1",
        inlet_temp: float = 20.0,
        delta_p: float = 10.0,
        sock: socket.socket | None = None,
        node_config: bool = True,
    ) -> V2PredictorServer:
        """A node with its own predictor (listening on ``sock`` when given)."""
        server = self._stack.enter_context(V2PredictorServer(power_model=power_model, sock=sock))
        self.predictors[name] = server
        self.api.create(objects.node(name, cpu=cpu_capacity))
        self.api.create(objects.node_metrics(name, cpu_usage))
        self.api.set_node_metric(name, "inlet_temp", inlet_temp)
        self.api.set_node_metric(name, "delta_p", delta_p)
        if node_config:
            self.api.create(
                objects.node_config(WAO_NAMESPACE, f"{name}-config", name, server.endpoint)
            )
        return server

    def close(self) -> None:
        self._stack.close()

    def feed(self, inventory: WaoInventory) -> None:
        """Hand the inventory the current Nodes and NodeConfigs, as the reflectors would."""
        for resource in (NODES, NODE_CONFIGS):
            items = self.api.list(resource)
            inventory.replace(resource.kind, items, str(self.api.resource_version))

    def set_cpu_usage(self, node: str, cpu_usage: str) -> None:
        self.api.patch(NODE_METRICS, node, {"usage": {"cpu": cpu_usage}})


@contextlib.contextmanager
def wao_cluster(api: KubeApiServer) -> Iterator[WaoCluster]:
    api.register_wao()
    cluster = WaoCluster(api)
    try:
        yield cluster
    finally:
        cluster.close()


def api_client(api: KubeApiServer) -> ApiClient:
    configuration = Configuration()
    configuration.host = api.url
    configuration.retries = 0
    return ApiClient(configuration)


def wao_weights(
    client: ApiClient,
    settings: WaolbSettings | None = None,
    *,
    metrics: ProxyMetrics | None = None,
    clock: Callable[[], float] | None = None,
) -> tuple[WaoWeights, WaoInventory, ProxyMetrics]:
    """The WAO provider wired as the proxier wires it, against real servers."""
    settings = settings or WaolbSettings()
    metrics = metrics or ProxyMetrics()
    inventory = WaoInventory()
    extra: dict[str, Any] = {} if clock is None else {"clock": clock}
    scorer = NodePowerScorer(
        inventory,
        ClusterMetrics(RestClient(client), settings.request_timeout),
        PowerPredictors(timeout=settings.request_timeout, verify_tls=settings.verify_tls),
        SecretReader(RestClient(client), settings.metrics_cache_ttl),
        settings,
        on_error=lambda kind: metrics.scoring_errors.labels(kind).inc(),
        **extra,
    )
    return WaoWeights(scorer, settings, metrics, forget_after=90.0, **extra), inventory, metrics


def port(
    name: str, annotations: dict[str, str] | None = None, namespace: str = "default"
) -> ServicePortInfo:
    return ServicePortInfo(
        key=ServicePortKey(4, namespace, name, "http", "TCP"),
        cluster_ip="10.96.0.10",
        port=80,
        node_port=0,
        target_port=8080,
        session_affinity_timeout=None,
        external_traffic_policy="Cluster",
        internal_traffic_policy="Cluster",
        annotations=annotations or {},
    )


def endpoints(*nodes: str | None, base: int = 10) -> list[EndpointInfo]:
    """One ready endpoint per node given, at 10.244.0.<base + i>."""
    return [
        EndpointInfo(
            ip=f"10.244.0.{base + index}",
            port=8080,
            node_name=node,
            zone=None,
            ready=True,
            serving=True,
            terminating=False,
            is_local=False,
        )
        for index, node in enumerate(nodes)
    ]
