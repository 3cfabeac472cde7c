"""Talking to the Kubernetes API: client configuration and list+watch reflectors."""

from waolb.kube.client import KubeConfigError, build_api_client, load_configuration
from waolb.kube.reflector import (
    ENDPOINT_SLICES,
    NODES,
    SERVICES,
    Reflector,
    Resource,
    RestartCallback,
    WatchHandler,
)

__all__ = [
    "ENDPOINT_SLICES",
    "NODES",
    "SERVICES",
    "KubeConfigError",
    "Reflector",
    "Resource",
    "RestartCallback",
    "WatchHandler",
    "build_api_client",
    "load_configuration",
]
