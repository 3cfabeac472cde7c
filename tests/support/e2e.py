"""Shared machinery of the end-to-end tests: a node namespace with pods, the test API server
listening inside it, and ``waolb`` processes run there with kube-proxy's flags, as a DaemonSet
would. Traffic to cluster IPs goes from the node namespace to the pods' servers, which answer
with their pod name.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controlplane.api import RealApi
from controlplane.fixtures import Deployment
from kubeapi import KubeApiServer, objects
from netns import (
    SERVER_PORT,
    Cluster,
    cluster,
    entered,
    exchange,
    stop_process,
    wait_until,
)

WAOLB = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "waolb"
NODE = "node-a"
WEB_IP = "10.96.0.10"
API_IP = "10.96.0.11"
PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"


def service(
    name: str,
    cluster_ip: str,
    *,
    labels: dict[str, str] | None = None,
    protocol: str = "TCP",
    port: int = 80,
) -> dict[str, Any]:
    return objects.service(
        name,
        labels=labels,
        cluster_ip=cluster_ip,
        ports=(port,),
        protocol=protocol,
        port_name="http",
        target_port=SERVER_PORT,
    )


def endpoint_slice(
    name: str,
    service_name: str,
    ready: dict[str, bool],
    *,
    protocol: str = "TCP",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A slice of ``service_name`` with pods (by name, as in the test cluster) and readiness."""
    slice_ = objects.endpoint_slice(
        name,
        service_name,
        addresses=[f"10.244.0.{10 + int(pod.removeprefix('pod'))}" for pod in ready],
        ready=list(ready.values()),
        node_name=NODE,
        port=SERVER_PORT,
        protocol=protocol,
    )
    return {**slice_, **(extra or {})}


@dataclass
class Proxy:
    """A running ``waolb`` process and where it logs."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def logs(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def events(self, event: str) -> list[dict[str, Any]]:
        return [entry for entry in self.logs() if entry.get("event") == event]


@dataclass
class Environment:
    """A node, its pods and an API server: the test double, or the real control plane
    (``api`` is then a RealApi and waolb runs as its ServiceAccount, with deploy/'s RBAC)."""

    cluster: Cluster
    api: KubeApiServer | RealApi
    workdir: Path
    server_flags: list[str]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def real(self) -> bool:
        return isinstance(self.api, RealApi)

    @property
    def node(self) -> str:
        return self.cluster.node.name

    def start_proxy(
        self, *flags: str, proxy_name: str | None = None, executable: Path = WAOLB
    ) -> Proxy:
        log_path = self.workdir / f"waolb-{len(list(self.workdir.iterdir()))}.log"
        env = {k: v for k, v in os.environ.items() if k != "WAO_SERVICE_PROXY_NAME"}
        if proxy_name is not None:
            env["WAO_SERVICE_PROXY_NAME"] = proxy_name
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    "ip", "netns", "exec", self.node, str(executable),
                    *self.server_flags,
                    f"--hostname-override={NODE}",
                    "--iptables-min-sync-period=100ms",
                    "--log-format=json",
                    "--v=2",
                    *flags,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
            )  # fmt: skip
        self.processes.append(process)
        return Proxy(process, log_path)

    def stop_all(self) -> None:
        for process in self.processes:
            stop_process(process, grace=10.0)  # type: ignore[arg-type]

    def traffic(self, ip: str, *, count: int = 200, proto: str = "tcp") -> dict[str, int]:
        result = exchange(self.cluster.node, ip, 80, proto=proto, count=count, timeout=1.0)
        return result.counts

    def http(self, port: int, path: str) -> tuple[int, bytes]:
        """GET from inside the node namespace, where waolb's servers listen."""
        with entered(self.cluster.node):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as error:
                return error.code, error.read()
            except OSError:
                return 0, b""

    def ruleset(self) -> str:
        return self.cluster.node.ruleset()


@contextmanager
def environment(pods: int = 3, *, real: Deployment | None = None) -> Iterator[Environment]:
    """A node with ``pods`` pods and the test API server, or the real control plane given in
    ``real`` (attached to the node; what the test creates is deleted after it); every process
    stopped on exit."""
    with (
        cluster(pods=pods) as test_cluster,
        tempfile.TemporaryDirectory(prefix="waolb-e2e-") as workdir,
    ):
        if real is not None:
            real.plane.attach(test_cluster.node)
            kubeconfig = real.node_kubeconfig(Path(workdir) / "waolb.kubeconfig")
            real_api = real.api()
            result = Environment(
                test_cluster, real_api, Path(workdir), [f"--kubeconfig={kubeconfig}"]
            )
            try:
                yield result
            finally:
                result.stop_all()
                real_api.reset()
            return
        api = KubeApiServer(bookmark_interval=0.2, future_wait=0.5)
        # The listening socket is created inside the node namespace, where waolb runs.
        with entered(test_cluster.node):
            api.start()
        result = Environment(test_cluster, api, Path(workdir), [f"--master={api.url}"])
        try:
            yield result
        finally:
            result.stop_all()
            api.stop()


def wait_for_traffic(env: Environment, ip: str, pods: set[str], **kwargs: Any) -> dict[str, int]:
    def probe() -> dict[str, int] | None:
        counts = env.traffic(ip, **kwargs)
        return counts if set(counts) == pods else None

    return wait_until(probe, interval=0.2, what=f"traffic to {ip} reaching {pods}")
