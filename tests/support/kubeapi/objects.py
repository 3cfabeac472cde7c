"""Builders for the objects tests put into the server, shaped as the real API returns them."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

JsonObject = dict[str, Any]


def _metadata(name: str, namespace: str | None, labels: Mapping[str, str] | None) -> JsonObject:
    metadata: JsonObject = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    if labels:
        metadata["labels"] = dict(labels)
    return metadata


def service(
    name: str,
    namespace: str = "default",
    *,
    labels: Mapping[str, str] | None = None,
    cluster_ip: str = "10.96.0.10",
    ports: Sequence[int] = (80,),
    protocol: str = "TCP",
    port_name: str | None = None,
    target_port: int | None = None,
) -> JsonObject:
    """A ClusterIP Service; ports are named ``p<port>`` unless ``port_name`` names the one."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, namespace, labels),
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "ipFamilies": ["IPv4"],
            "ports": [
                {
                    "name": port_name or f"p{port}",
                    "port": port,
                    "protocol": protocol,
                    "targetPort": target_port or port,
                }
                for port in ports
            ],
        },
    }


def node(name: str, *, labels: Mapping[str, str] | None = None, cpu: str = "4") -> JsonObject:
    """A Node whose capacity and allocatable CPU are ``cpu`` (a quantity: "4", "3500m")."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": _metadata(name, None, labels),
        "status": {"capacity": {"cpu": cpu}, "allocatable": {"cpu": cpu}},
    }


def endpoint_slice(
    name: str,
    service_name: str,
    namespace: str = "default",
    *,
    addresses: Sequence[str] = ("10.244.0.5",),
    ready: Sequence[bool] | None = None,
    node_name: str = "node-a",
    node_names: Sequence[str] | None = None,
    port: int = 8080,
    protocol: str = "TCP",
) -> JsonObject:
    """A slice of ``service_name``; every endpoint is ready unless ``ready`` says otherwise and
    on ``node_name`` unless ``node_names`` gives one node per address."""
    readiness = list(ready) if ready is not None else [True] * len(addresses)
    nodes = list(node_names) if node_names is not None else [node_name] * len(addresses)
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": _metadata(name, namespace, {"kubernetes.io/service-name": service_name}),
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": [address],
                "conditions": {"ready": is_ready, "serving": is_ready, "terminating": False},
                "nodeName": node,
                "targetRef": {"kind": "Pod", "namespace": namespace, "name": f"pod-{index}"},
            }
            for index, (address, is_ready, node) in enumerate(
                zip(addresses, readiness, nodes, strict=True)
            )
        ],
        "ports": [{"name": "http", "port": port, "protocol": protocol}],
    }


def secret(
    name: str,
    namespace: str = "default",
    *,
    secret_type: str = "Opaque",
    data: Mapping[str, str | bytes] | None = None,
) -> JsonObject:
    """A Secret; ``data`` values are base64-encoded as the API carries them (text as UTF-8)."""
    encoded = {
        key: base64.b64encode(value if isinstance(value, bytes) else value.encode()).decode()
        for key, value in (data or {}).items()
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(name, namespace, None),
        "type": secret_type,
        "data": encoded,
    }


def node_metrics(
    name: str, cpu: str, memory: str = "1Gi", *, window: str = "15.004s"
) -> JsonObject:
    """The NodeMetrics metrics-server serves for node ``name`` (resource NODE_METRICS): ``cpu``
    is a quantity such as "250m" or metrics-server's nanocores "123456789n"."""
    return {
        "apiVersion": "metrics.k8s.io/v1beta1",
        "kind": "NodeMetrics",
        "metadata": {"name": name},
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "window": window,
        "usage": {"cpu": cpu, "memory": memory},
    }


def node_config(
    namespace: str,
    name: str,
    node_name: str,
    predictor_url: str,
    *,
    type: str = "V2InferenceProtocol",
    secret: str | None = None,
) -> JsonObject:
    """A wao-core NodeConfig (resource NODE_CONFIGS) for ``node_name`` whose power predictor is
    at ``predictor_url``. A ``Redfish`` type makes it the endpoint provider
    (spec.predictor.powerConsumptionEndpointProvider) instead of the predictor itself
    (powerConsumption); ``secret`` names the basic-auth Secret in ``namespace``."""
    term: JsonObject = {"type": type, "endpoint": predictor_url}
    if secret is not None:
        term["basicAuthSecret"] = {"name": secret}
    role = "powerConsumptionEndpointProvider" if type == "Redfish" else "powerConsumption"
    # The CRD requires both collectors; waolb reads their values from the custom metrics API.
    collector = {"type": "Fake", "endpoint": "http://fake.invalid"}
    return {
        "apiVersion": "wao.bitmedia.co.jp/v1beta1",
        "kind": "NodeConfig",
        "metadata": _metadata(name, namespace, None),
        "spec": {
            "nodeName": node_name,
            "metricsCollector": {"inletTemp": collector, "deltaP": dict(collector)},
            "predictor": {role: term},
        },
    }
