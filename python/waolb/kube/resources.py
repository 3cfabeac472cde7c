"""The resource types waolb lists and watches."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resource:
    """A resource type to list and watch across all namespaces; ``group`` is "" for core."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def collection_path(self) -> str:
        prefix = f"/apis/{self.group}" if self.group else "/api"
        return f"{prefix}/{self.version}/{self.plural}"


SERVICES = Resource("", "v1", "services", "Service")
ENDPOINT_SLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
NODES = Resource("", "v1", "nodes", "Node")
# wao-core's CRD: which power predictor serves which node.
NODE_CONFIGS = Resource("wao.bitmedia.co.jp", "v1beta1", "nodeconfigs", "NodeConfig")
