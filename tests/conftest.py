"""Shared fixtures."""

from collections.abc import Iterator

import pytest
from kubernetes.client import ApiClient, Configuration

from kubeapi import KubeApiServer


@pytest.fixture
def kube_api() -> Iterator[KubeApiServer]:
    """A running test API server (tests/kubeapi) with short bookmark and future-version waits."""
    with KubeApiServer(bookmark_interval=0.2, future_wait=0.5) as server:
        yield server


@pytest.fixture
def kube_client(kube_api: KubeApiServer) -> Iterator[ApiClient]:
    """The real Kubernetes client, pointed at ``kube_api`` without credentials."""
    configuration = Configuration()
    configuration.host = kube_api.url
    with ApiClient(configuration) as client:
        yield client
