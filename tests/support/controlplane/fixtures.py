"""pytest fixtures for the real control plane; conftest.py files import them by name."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubeapi import KubeApiServer

from . import REPO, ControlPlane, missing_prerequisite, start_control_plane
from .aggregated import start_metrics_server
from .api import RealApi

DEPLOY = REPO / "deploy"
WAOLB_ACCOUNT = ("kube-system", "waolb")
WAOLB_USER = "system:serviceaccount:kube-system:waolb"
FIELD_MANAGER = "waolb-tests"


@dataclass
class Deployment:
    """The control plane with deploy/base applied, the metrics APIs registered, and a token of
    waolb's ServiceAccount, so that waolb runs with exactly the permissions deploy/ grants."""

    plane: ControlPlane
    metrics: KubeApiServer
    waolb_token: str

    def api(self) -> RealApi:
        return RealApi(self.plane, self.metrics)

    def node_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig as waolb's ServiceAccount, for a node attached to the control plane."""
        return self.plane.kubeconfig(path, token=self.waolb_token, server=self.plane.node_url)


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """etcd and kube-apiserver, once per session (see tests/support/controlplane)."""
    reason = missing_prerequisite()
    if reason is not None:
        pytest.skip(reason)
    with start_control_plane() as plane:
        yield plane


@pytest.fixture(scope="session")
def deployment(control_plane: ControlPlane) -> Iterator[Deployment]:
    metrics = start_metrics_server(control_plane)
    try:
        control_plane.kubectl(
            "apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-k",
            str(DEPLOY / "base"),
        )  # fmt: skip
        control_plane.kubectl(
            "wait", "--for=condition=Established", "--timeout=300s",
            "crd/nodeconfigs.wao.bitmedia.co.jp",
        )  # fmt: skip
        token = control_plane.service_account_token(*WAOLB_ACCOUNT)
        yield Deployment(control_plane, metrics, token)
    finally:
        metrics.stop()
