"""The multi-node lab (waolb.lab) against the test API server: the harness of the parity and
RAP tests. The API server listens on the fabric's address, which every node reaches.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kubeapi import KubeApiServer
from waolb.lab import KubeLab, entered, kube_lab, multinode


@contextmanager
def kube_cluster(nodes: int = 3, pods: int = 3, **lab_options: Any) -> Iterator[KubeLab]:
    """A :class:`waolb.lab.KubeLab`: ``nodes`` nodes with ``pods`` pods each, their Node
    objects in the test API server (``.api``), no proxy started yet."""
    with multinode(nodes, pods, **lab_options) as lab:
        api = KubeApiServer(host=lab.fabric_address(), bookmark_interval=0.2, future_wait=0.5)
        with entered(lab.fabric):  # its listening socket lives in the fabric's namespace
            api.start()
        try:
            with kube_lab(lab, api) as cluster:
                yield cluster
        finally:
            api.stop()
