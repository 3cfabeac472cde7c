"""The test API server's object interface on the real control plane, so that the same test runs
against both: ``create``, ``update``, ``patch``, ``delete``, ``get``, ``list``, and the WAO
inputs (``register_wao``, ``set_node_metric``) that the aggregated metrics server holds.

The control plane lives for the whole session: :meth:`RealApi.reset` deletes what a test made
(through here or any other client), so that each test starts from an empty cluster.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from kubeapi import (
    DEFAULT_RESOURCES,
    ENDPOINT_SLICES,
    NODE_CONFIGS,
    NODE_METRICS,
    NODES,
    SECRETS,
    SERVICES,
    ApiError,
    KubeApiServer,
    ResourceType,
)

if TYPE_CHECKING:
    from . import ControlPlane

JsonObject = dict[str, Any]
RESOURCES = (*DEFAULT_RESOURCES, NODE_CONFIGS)
KUBERNETES = ("default", "kubernetes")  # the API server's own Service


def resource_of(obj: Mapping[str, Any]) -> ResourceType:
    for resource in (*RESOURCES, NODE_METRICS):
        if (resource.api_version, resource.kind) == (obj.get("apiVersion"), obj.get("kind")):
            return resource
    raise ValueError(f"no resource for apiVersion {obj.get('apiVersion')} kind {obj.get('kind')}")


class RealApi:
    """Objects on ``plane`` (as the admin); NodeMetrics and custom metrics on ``metrics``."""

    def __init__(self, plane: ControlPlane, metrics: KubeApiServer) -> None:
        self.plane = plane
        self.metrics = metrics

    @property
    def url(self) -> str:
        """Where attached nodes reach the API server."""
        return self.plane.node_url

    @property
    def resource_version(self) -> int:
        listed = self.plane.json("GET", NODES.collection_path(), query={"limit": "1"})
        return int(listed["metadata"]["resourceVersion"])

    def _namespace(self, resource: ResourceType, obj: Mapping[str, Any]) -> str | None:
        if not resource.namespaced:
            return None
        return str(obj.get("metadata", {}).get("namespace") or "default")

    def create(self, obj: Mapping[str, Any]) -> JsonObject:
        resource = resource_of(obj)
        if resource is NODE_METRICS:
            return self.metrics.create(obj)
        if resource is NODES:
            # The custom metrics wildcard answers for the Nodes the metrics server knows.
            self.metrics.create(obj)
        namespace = self._namespace(resource, obj)
        if namespace is not None:
            self.plane.ensure_namespace(namespace)
        created = self.plane.json("POST", resource.collection_path(namespace), dict(obj))
        return created

    def update(self, obj: Mapping[str, Any]) -> JsonObject:
        """Replace; unconditional (as the double's) unless ``obj`` carries a resourceVersion."""
        resource = resource_of(obj)
        if resource is NODE_METRICS:
            return self.metrics.update(obj)
        namespace = self._namespace(resource, obj)
        path = resource.object_path(obj["metadata"]["name"], namespace)
        body = orjson.loads(orjson.dumps(obj))
        if not body["metadata"].get("resourceVersion"):
            current = self.plane.json("GET", path)
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        return self.plane.json("PUT", path, body)

    def patch(
        self,
        resource: ResourceType,
        name: str,
        patch: Mapping[str, Any],
        namespace: str = "default",
    ) -> JsonObject:
        """A JSON merge patch."""
        if resource is NODE_METRICS:
            return self.metrics.patch(resource, name, patch, namespace)
        path = resource.object_path(name, namespace if resource.namespaced else None)
        return self.plane.json(
            "PATCH", path, dict(patch), content_type="application/merge-patch+json"
        )

    def delete(self, resource: ResourceType, name: str, namespace: str = "default") -> JsonObject:
        if resource in (NODES, NODE_METRICS):
            # The metrics server may not know a Node made through another client.
            with contextlib.suppress(ApiError):
                self.metrics.delete(resource, name, namespace)
            if resource is NODE_METRICS:
                return {}
        path = resource.object_path(name, namespace if resource.namespaced else None)
        return self.plane.json("DELETE", path, expect=(200, 202))

    def get(self, resource: ResourceType, name: str, namespace: str = "default") -> JsonObject:
        path = resource.object_path(name, namespace if resource.namespaced else None)
        return self.plane.json("GET", path)

    def list(self, resource: ResourceType) -> list[JsonObject]:
        items: list[JsonObject] = self.plane.json("GET", resource.collection_path())["items"]
        return items

    # WAO inputs: the metrics server serves them behind the aggregator all along.

    def register(self, resource: ResourceType) -> None:
        """Nothing to do: the real server serves the CRD and the metrics APIs all along."""

    def register_wao(self) -> None:
        """Nothing to do (see register)."""

    def set_node_metric(self, node: str, metric: str, value: float | str) -> None:
        self.metrics.set_node_metric(node, metric, value)

    def remove_node_metric(self, node: str, metric: str) -> None:
        self.metrics.remove_node_metric(node, metric)

    def reset(self) -> None:
        """Delete every object a test may have made (through here or any client), and forget
        the metrics: everything but the cluster's own objects in kube-system and the
        kubernetes Service."""
        for resource in (SERVICES, ENDPOINT_SLICES, NODE_CONFIGS, SECRETS, NODES):
            for item in self.list(resource):
                metadata = item["metadata"]
                namespace = metadata.get("namespace")
                if namespace == "kube-system" or (namespace, metadata["name"]) == KUBERNETES:
                    continue
                path = resource.object_path(metadata["name"], namespace)
                self.plane.request("DELETE", path, expect=(200, 202, 404))
        self.metrics.store.reset()
        self.metrics.custom_metrics = type(self.metrics.custom_metrics)()
        self.metrics.serve_custom_metrics()
