"""Plain-dict Services and EndpointSlices, as the reflectors hand them over, for unit tests."""

from __future__ import annotations

from typing import Any

from waolb.state import ServicePortKey

PortSpec = tuple[str, str, int]


def service(
    name: str = "web",
    namespace: str = "default",
    *,
    ports: tuple[PortSpec, ...] = (("http", "TCP", 80),),
    cluster_ips: tuple[str, ...] = ("10.96.0.10",),
    rv: str = "1",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "resourceVersion": rv}
    if labels is not None:
        metadata["labels"] = labels
    if annotations is not None:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ips[0] if cluster_ips else "",
            "clusterIPs": list(cluster_ips),
            "ports": [
                {"name": n, "protocol": p, "port": port, "targetPort": port + 8000}
                for n, p, port in ports
            ],
            **spec,
        },
    }


def endpoint(
    ip: str,
    *,
    node: str | None = "node-b",
    ready: bool | None = True,
    serving: bool | None = None,
    terminating: bool | None = None,
) -> dict[str, Any]:
    conditions = {
        key: value
        for key, value in (("ready", ready), ("serving", serving), ("terminating", terminating))
        if value is not None
    }
    result: dict[str, Any] = {"addresses": [ip], "conditions": conditions}
    if node is not None:
        result["nodeName"] = node
    return result


def endpoint_slice(
    name: str,
    service_name: str = "web",
    namespace: str = "default",
    *,
    family: str = "IPv4",
    ports: tuple[PortSpec, ...] = (("http", "TCP", 8080),),
    endpoints: tuple[dict[str, Any], ...] = (),
    rv: str = "1",
    trigger_time: str | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "resourceVersion": rv,
        "labels": {"kubernetes.io/service-name": service_name},
    }
    if trigger_time is not None:
        metadata["annotations"] = {"endpoints.kubernetes.io/last-change-trigger-time": trigger_time}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": metadata,
        "addressType": family,
        "ports": [{"name": n, "protocol": p, "port": port} for n, p, port in ports],
        "endpoints": list(endpoints),
    }


def key(
    port_name: str = "http",
    protocol: str = "TCP",
    family: int = 4,
    name: str = "web",
    namespace: str = "default",
) -> ServicePortKey:
    return ServicePortKey(family, namespace, name, port_name, protocol)
