"""A protocol-faithful Kubernetes API server for tests: the project's only API test double."""

from .errors import ApiError
from .resources import (
    DEFAULT_RESOURCES,
    ENDPOINT_SLICES,
    NODE_CONFIGS,
    NODE_METRICS,
    NODES,
    SECRETS,
    SERVICES,
    ResourceType,
)
from .server import KubeApiServer, RecordedRequest

__all__ = [
    "DEFAULT_RESOURCES",
    "ENDPOINT_SLICES",
    "NODES",
    "NODE_CONFIGS",
    "NODE_METRICS",
    "SECRETS",
    "SERVICES",
    "ApiError",
    "KubeApiServer",
    "RecordedRequest",
    "ResourceType",
]
