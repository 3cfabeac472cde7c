"""The resource types the test API server serves, and the name rules the real one enforces."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Object names: most resources take DNS-1123 subdomains; Services (and a few others) take the
# stricter DNS-1035 label because their name becomes a DNS label of the cluster domain.
DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = rf"{DNS1123_LABEL}(\.{DNS1123_LABEL})*"
DNS1035_LABEL = r"[a-z]([-a-z0-9]*[a-z0-9])?"
_MAX_LENGTH = {DNS1123_LABEL: 63, DNS1123_SUBDOMAIN: 253, DNS1035_LABEL: 63}


def name_problem(name: str, pattern: str) -> str | None:
    """Why ``name`` breaks ``pattern`` (one of the constants above), or None when it is valid."""
    limit = _MAX_LENGTH[pattern]
    if len(name) > limit:
        return f"must be no more than {limit} characters"
    if not re.fullmatch(pattern, name):
        if pattern == DNS1035_LABEL:
            return (
                "a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
                "start with an alphabetic character, and end with an alphanumeric character"
            )
        return (
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
            "'-' or '.', and must start and end with an alphanumeric character"
        )
    return None


@dataclass(frozen=True)
class ResourceType:
    """One REST resource, as the real API server addresses it.

    ``group`` is "" for the core ("legacy") group served under /api. ``field_labels`` are the
    dotted object paths a field selector may name besides metadata.name and metadata.namespace.
    ``custom`` marks a resource defined by a CustomResourceDefinition, whose list items keep
    their apiVersion and kind. ``returns_deleted_object``: DELETE answers with the object's last
    state instead of a Status (Services and Pods do).
    """

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    name_pattern: str = DNS1123_SUBDOMAIN
    field_labels: tuple[str, ...] = ()
    custom: bool = False
    returns_deleted_object: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version_path(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    @property
    def qualified_resource(self) -> str:
        """How error messages name the resource: "services", "endpointslices.discovery.k8s.io"."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        """How validation errors name the kind: "Service", "EndpointSlice.discovery.k8s.io"."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    def collection_path(self, namespace: str | None = None) -> str:
        if namespace is None:
            return f"{self.group_version_path}/{self.plural}"
        return f"{self.group_version_path}/namespaces/{namespace}/{self.plural}"

    def object_path(self, name: str, namespace: str | None = None) -> str:
        return f"{self.collection_path(namespace)}/{name}"


SERVICES = ResourceType(
    "",
    "v1",
    "services",
    "Service",
    namespaced=True,
    name_pattern=DNS1035_LABEL,
    field_labels=("spec.clusterIP", "spec.type"),  # as kube-apiserver v1.34 serves them
    returns_deleted_object=True,
)
NODES = ResourceType("", "v1", "nodes", "Node", namespaced=False)
SECRETS = ResourceType("", "v1", "secrets", "Secret", namespaced=True, field_labels=("type",))
ENDPOINT_SLICES = ResourceType(
    "discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", namespaced=True
)

DEFAULT_RESOURCES = (SERVICES, NODES, SECRETS, ENDPOINT_SLICES)

# What WAO scoring reads besides the defaults (KubeApiServer.register_wao serves them all):
# metrics-server's node usage and wao-core's NodeConfig custom resource.
NODE_METRICS = ResourceType("metrics.k8s.io", "v1beta1", "nodes", "NodeMetrics", namespaced=False)
NODE_CONFIGS = ResourceType(
    "wao.bitmedia.co.jp", "v1beta1", "nodeconfigs", "NodeConfig", namespaced=True, custom=True
)
