"""metrics.k8s.io and custom.metrics.k8s.io behind the real API server, as in a cluster.

A test API server (tests/support/kubeapi) serving only NodeMetrics, the custom metrics and the
Nodes its wildcard answers need listens over HTTPS inside the control plane's namespace; a
Service without selector, its Endpoints and EndpointSlice point at it, and two APIServices
register it with the aggregator (CA bundle checked, no insecureSkipTLSVerify). Clients then
reach it through kube-apiserver, with kube-apiserver's authentication and RBAC in front.
"""

from __future__ import annotations

import base64
import ssl
from typing import TYPE_CHECKING

from kubeapi import NODE_METRICS, NODES, KubeApiServer
from kubeapi.custom_metrics import GROUP as CUSTOM_GROUP
from kubeapi.custom_metrics import VERSION as CUSTOM_VERSION
from netns import entered, wait_until

if TYPE_CHECKING:
    from . import ControlPlane

SERVICE = "test-metrics"
NAMESPACE = "kube-system"
# Far from the addresses the tests give their own Services.
CLUSTER_IP = "10.96.255.200"
GROUP_VERSIONS = (("metrics.k8s.io", "v1beta1"), (CUSTOM_GROUP, CUSTOM_VERSION))


def start_metrics_server(plane: ControlPlane) -> KubeApiServer:
    """The metrics server, registered and Available; stop() it when done."""
    assert plane.pki is not None
    pair = plane.pki.issue(SERVICE, f"{SERVICE}.{NAMESPACE}.svc", ips=(plane.address,))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pair.cert, pair.key)
    server = KubeApiServer((NODES, NODE_METRICS), host=plane.address, tls=context)
    server.serve_custom_metrics()
    with entered(plane.ns):
        server.start()
    try:
        _register(plane, server.port)
    except BaseException:
        server.stop()
        raise
    return server


def _register(plane: ControlPlane, port: int) -> None:
    ports = [{"name": "https", "port": port, "protocol": "TCP"}]
    plane.request(
        "POST",
        f"/api/v1/namespaces/{NAMESPACE}/services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": SERVICE},
            "spec": {"clusterIP": CLUSTER_IP, "ports": [{**ports[0], "targetPort": port}]},
        },
    )
    plane.request(
        "POST",
        f"/api/v1/namespaces/{NAMESPACE}/endpoints",
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": SERVICE},
            "subsets": [{"addresses": [{"ip": plane.address}], "ports": ports}],
        },
    )
    plane.request(
        "POST",
        f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices",
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": SERVICE, "labels": {"kubernetes.io/service-name": SERVICE}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [plane.address], "conditions": {"ready": True}}],
            "ports": ports,
        },
    )
    ca_bundle = base64.b64encode(plane.ca_cert.read_bytes()).decode()
    for group, version in GROUP_VERSIONS:
        plane.request(
            "POST",
            "/apis/apiregistration.k8s.io/v1/apiservices",
            {
                "apiVersion": "apiregistration.k8s.io/v1",
                "kind": "APIService",
                "metadata": {"name": f"{version}.{group}"},
                "spec": {
                    "group": group,
                    "version": version,
                    "service": {"name": SERVICE, "namespace": NAMESPACE, "port": port},
                    "caBundle": ca_bundle,
                    "groupPriorityMinimum": 100,
                    "versionPriority": 100,
                },
            },
        )
    for group, version in GROUP_VERSIONS:
        wait_until(
            lambda name=f"{version}.{group}": _available(plane, name),
            interval=0.2,
            what=f"APIService {version}.{group} Available",
        )


def _available(plane: ControlPlane, name: str) -> bool:
    service = plane.json("GET", f"/apis/apiregistration.k8s.io/v1/apiservices/{name}")
    conditions = service.get("status", {}).get("conditions", [])
    return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)
