"""deploy/ against the real control plane: the manifests apply, waolb needs no permission they
do not grant, and they grant none it does not use.

The control plane (tests/support/controlplane) has deploy/base applied for the whole session;
NodeMetrics and the custom metrics reach waolb through APIService registrations, served by a
metrics server on the control plane's loopback. Its audit log records every request a
ServiceAccount makes, with the answer: the permissions check reads it.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from test_e2e_wao import POD_OF_ENDPOINT, loopback_socket, weights_report

from controlplane import KUBE_BIN, ControlPlane
from controlplane.fixtures import DEPLOY, WAOLB_USER, Deployment
from e2e import (
    NODE,
    WAOLB,
    WEB_IP,
    Environment,
    endpoint_slice,
    environment,
    service,
    wait_for_traffic,
)
from kubeapi import objects
from netns import SERVER_PORT, entered, requires_netns, stop_process, wait_until
from waolab import WAO_NAMESPACE, cpu_times, wao_cluster

pytestmark = requires_netns

OVERLAYS = ("base", "non-default", "replace-kube-proxy", "restore-kube-proxy", "samples")
INSTALLER = "waolb-install"  # the field manager the guide's commands use


def rendered(plane: ControlPlane, overlay: str) -> list[dict[str, Any]]:
    text = plane.kubectl("kustomize", str(DEPLOY / overlay)).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def test_every_overlay_renders_and_passes_a_strict_server_side_dry_run(
    deployment: Deployment,
) -> None:
    plane = deployment.plane
    kinds = {overlay: [doc["kind"] for doc in rendered(plane, overlay)] for overlay in OVERLAYS}
    assert "DaemonSet" in kinds["non-default"]
    assert kinds["samples"] == ["Service", "NodeConfig"]
    for overlay in ("non-default", "samples"):
        plane.kubectl(
            "apply", "--server-side", "--dry-run=server", "--validate=strict",
            f"--field-manager={INSTALLER}", "-k", str(DEPLOY / overlay),
        )  # fmt: skip
    (daemonset,) = (d for d in rendered(plane, "non-default") if d["kind"] == "DaemonSet")
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "localhost/waolb:0.1.0"
    assert container["command"][0] == "/usr/local/bin/kube-proxy"
    assert {"name": "WAO_SERVICE_PROXY_NAME", "value": "wao-loadbalancer"} in container["env"]
    (sample,) = (d for d in rendered(plane, "samples") if d["kind"] == "Service")
    assert sample["metadata"]["labels"]["service.kubernetes.io/service-proxy-name"] == (
        "wao-loadbalancer"
    )
    assert sample["metadata"]["annotations"] == {"waok8s.github.io/cpu-per-request": "500m"}


def test_applying_the_base_again_changes_nothing(deployment: Deployment) -> None:
    plane = deployment.plane

    def versions() -> dict[str, str]:
        listed = plane.kubectl("get", "-k", str(DEPLOY / "base"), "-o", "yaml").stdout
        return {
            f"{item['kind']}/{item['metadata']['name']}": item["metadata"]["resourceVersion"]
            for item in yaml.safe_load(listed)["items"]
        }

    before = versions()
    plane.kubectl(
        "apply", "--server-side", "--field-manager=waolb-tests", "-k", str(DEPLOY / "base")
    )
    assert versions() == before


KUBEADM_KUBE_PROXY = {
    "apiVersion": "apps/v1",
    "kind": "DaemonSet",
    "metadata": {
        "name": "kube-proxy",
        "namespace": "kube-system",
        "labels": {"k8s-app": "kube-proxy"},
    },
    "spec": {
        "selector": {"matchLabels": {"k8s-app": "kube-proxy"}},
        "template": {
            "metadata": {"labels": {"k8s-app": "kube-proxy"}},
            "spec": {
                "serviceAccountName": "kube-proxy",
                "hostNetwork": True,
                "priorityClassName": "system-node-critical",
                "containers": [
                    {
                        "name": "kube-proxy",
                        "image": "registry.k8s.io/kube-proxy:v1.34.4",
                        "command": [
                            "/usr/local/bin/kube-proxy",
                            "--config=/var/lib/kube-proxy/config.conf",
                            "--hostname-override=$(NODE_NAME)",
                        ],
                        "securityContext": {"privileged": True},
                        "volumeMounts": [
                            {"name": "kube-proxy", "mountPath": "/var/lib/kube-proxy"}
                        ],
                    }
                ],
                "volumes": [{"name": "kube-proxy", "configMap": {"name": "kube-proxy"}}],
            },
        },
    },
}


@pytest.fixture
def kube_proxy_daemonset(deployment: Deployment) -> Iterator[str]:
    """kubeadm's kube-proxy DaemonSet, written as kubeadm writes it (an update, not an apply)."""
    plane = deployment.plane
    path = "/apis/apps/v1/namespaces/kube-system/daemonsets"
    plane.request("POST", path, KUBEADM_KUBE_PROXY, query={"fieldManager": "kubeadm"})
    yield f"{path}/kube-proxy"
    plane.request("DELETE", f"{path}/kube-proxy", expect=(200, 404))


def test_the_kube_proxy_daemonset_swaps_to_waolb_and_back(
    deployment: Deployment, kube_proxy_daemonset: str
) -> None:
    plane = deployment.plane

    def apply(overlay: str, *extra: str, check: bool = True) -> Any:
        return plane.kubectl(
            "apply", "--server-side", f"--field-manager={INSTALLER}", *extra,
            "-k", str(DEPLOY / overlay), check=check,
        )  # fmt: skip

    # The image belongs to kubeadm: taking it over needs --force-conflicts, as the guide says.
    refused = apply("replace-kube-proxy", check=False)
    assert refused.returncode != 0
    assert "conflict" in refused.stderr.lower()
    assert "image" in refused.stderr

    apply("replace-kube-proxy", "--force-conflicts")
    spec = plane.json("GET", kube_proxy_daemonset)["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    original = KUBEADM_KUBE_PROXY["spec"]["template"]["spec"]  # type: ignore[index]
    assert container["image"] == "localhost/waolb:0.1.0"
    assert container["command"] == original["containers"][0]["command"]  # unchanged
    assert spec["volumes"][0]["configMap"]["name"] == "kube-proxy"
    assert spec["serviceAccountName"] == "waolb"
    (cleanup,) = spec["initContainers"]
    assert cleanup["image"] == "registry.k8s.io/kube-proxy:v1.34.4"
    assert cleanup["command"] == ["/usr/local/bin/kube-proxy", "--cleanup"]

    # Back: the same field manager, so what replace-kube-proxy added and restore does not
    # list (the kube-proxy cleanup) is removed by the server.
    apply("restore-kube-proxy", "--force-conflicts")
    spec = plane.json("GET", kube_proxy_daemonset)["spec"]["template"]["spec"]
    assert spec["containers"][0]["image"] == "registry.k8s.io/kube-proxy:v1.34.4"
    assert spec["serviceAccountName"] == "kube-proxy"
    assert [c["name"] for c in spec["initContainers"]] == ["waolb-cleanup"]
    assert spec["initContainers"][0]["command"] == ["/usr/local/bin/waolb", "--cleanup"]


# ---- permissions ----------------------------------------------------------------------------


def granted(documents: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every rule in deploy/'s own Roles and ClusterRoles."""
    return {
        (group, resource, verb)
        for doc in documents
        if doc["kind"] in ("Role", "ClusterRole")
        for rule in doc["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def requested(events: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    used = set()
    for event in events:
        ref = event.get("objectRef", {})
        resource = ref.get("resource", "")
        if ref.get("subresource"):
            resource += "/" + ref["subresource"]
        used.add((ref.get("apiGroup", ""), resource, event["verb"]))
    return used


def programmed_weights(env: Environment) -> dict[str, int]:
    """Pod -> weight of the test's Service (the real server has Services of its own)."""
    rows = weights_report(env)["endpoints"]
    assert isinstance(rows, list)
    return {
        POD_OF_ENDPOINT[row["endpoint"]]: row["weight"]
        for row in rows
        if row["endpoint"] in POD_OF_ENDPOINT
    }


NODES = ("node-a", "node-b")
EXPECTED = {"pod0": 100, "pod1": 52}  # deltas 10 W and 20 W: see test_e2e_wao.py
CREDENTIALS = ("wao", "s3cret")


@pytest.fixture
def wao_env(deployment: Deployment) -> Iterator[Environment]:
    with environment(pods=2, real=deployment) as env, wao_cluster(env.api) as cluster:
        with entered(env.cluster.node):
            sockets = [loopback_socket() for _ in NODES]
        cluster.add_node("node-a", cpu_times(4.0), sock=sockets[0])
        # node-b's predictor wants basic auth: its NodeConfig names a Secret waolb must read.
        predictor = cluster.add_node("node-b", cpu_times(8.0), sock=sockets[1], node_config=False)
        predictor.credentials = CREDENTIALS
        env.api.create(
            objects.secret(
                "node-b-predictor",
                WAO_NAMESPACE,
                data={"username": CREDENTIALS[0], "password": CREDENTIALS[1]},
            )
        )
        env.api.create(
            objects.node_config(
                WAO_NAMESPACE, "node-b-config", "node-b", predictor.endpoint,
                secret="node-b-predictor",
            )
        )  # fmt: skip
        env.api.create(service("web", WEB_IP))
        env.api.create(
            objects.endpoint_slice(
                "web-a", "web", addresses=["10.244.0.10", "10.244.0.11"], node_names=NODES,
                port=SERVER_PORT,
            )
        )  # fmt: skip
        yield env


def test_wao_inputs_arrive_through_the_api_with_exactly_the_granted_permissions(
    wao_env: Environment, deployment: Deployment
) -> None:
    since = time.time()
    wao_env.start_proxy("--wao-scoring-interval=200ms", "--wao-request-timeout=1s")
    wait_until(
        lambda: programmed_weights(wao_env) == EXPECTED,
        what=f"weights {EXPECTED} from metrics read through the aggregator",
    )

    events = deployment.plane.audit(WAOLB_USER, since=since)
    refused = [
        (e["verb"], e["requestURI"]) for e in events if e["responseStatus"]["code"] in (401, 403)
    ]
    assert not refused, f"waolb was refused: {refused}"
    used = requested(events)
    own_rules = granted(rendered(deployment.plane, "base"))
    unused = own_rules - used
    assert not unused, f"deploy/ grants permissions waolb never used: {sorted(unused)}"
    # Everything else waolb asked for is kube-proxy's own role's.
    assert used - own_rules <= {
        ("", "services", "list"),
        ("", "services", "watch"),
        ("discovery.k8s.io", "endpointslices", "list"),
        ("discovery.k8s.io", "endpointslices", "watch"),
        ("", "nodes", "list"),
        ("", "nodes", "watch"),
        ("", "nodes", "get"),
    }, sorted(used - own_rules)


# ---- from kube-proxy to waolb and back, on a node ------------------------------------------


@pytest.fixture
def node_env(deployment: Deployment) -> Iterator[Environment]:
    with environment(real=deployment) as env:
        env.api.create(objects.node(NODE))  # kube-proxy wants its Node
        env.api.create(service("web", WEB_IP))
        env.api.create(endpoint_slice("web-a", "web", {"pod0": True, "pod1": True}))
        yield env


def start_kube_proxy(env: Environment) -> subprocess.Popen[bytes]:
    """kube-proxy v1.34 in nftables mode, as kubeadm's DaemonSet runs it (its flags)."""
    with entered(env.cluster.node):
        sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    healthz, metrics = (sock.getsockname()[1] for sock in sockets)
    for sock in sockets:
        sock.close()
    log = (env.workdir / "kube-proxy.log").open("ab")
    with log:
        process = subprocess.Popen(
            [
                "ip", "netns", "exec", env.node, str(KUBE_BIN / "kube-proxy"),
                "--proxy-mode=nftables", *env.server_flags, f"--hostname-override={NODE}",
                "--conntrack-max-per-core=0",  # nf_conntrack_max is read-only in a namespace
                f"--healthz-bind-address=127.0.0.1:{healthz}",
                f"--metrics-bind-address=127.0.0.1:{metrics}",
            ],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    env.processes.append(process)
    return process


def node_run(env: Environment, *command: str) -> None:
    """A one-off command in the node namespace, as an init container runs it."""
    done = env.cluster.node.run(*command, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_from_kube_proxy_to_waolb_and_back_on_a_node(node_env: Environment) -> None:
    env = node_env
    kube_proxy = start_kube_proxy(env)
    try:
        wait_for_traffic(env, WEB_IP, {"pod0", "pod1"}, count=20)
    except BaseException:
        print((env.workdir / "kube-proxy.log").read_text()[-5000:])
        print(env.ruleset()[:5000])
        raise
    assert "table ip kube-proxy" in env.ruleset()

    # deploy/replace-kube-proxy: the pod restarts with `kube-proxy --cleanup` first, then waolb.
    stop_process(kube_proxy, grace=10.0)  # type: ignore[arg-type]
    node_run(env, str(KUBE_BIN / "kube-proxy"), "--cleanup")
    assert "table ip kube-proxy" not in env.ruleset()
    waolb = env.start_proxy()
    wait_for_traffic(env, WEB_IP, {"pod0", "pod1"})
    env.api.update(endpoint_slice("web-a", "web", {"pod0": False, "pod1": True}))
    wait_for_traffic(env, WEB_IP, {"pod1"})
    assert "table ip kube-proxy" not in env.ruleset()

    # deploy/restore-kube-proxy: `waolb --cleanup` first, then kube-proxy again.
    stop_process(waolb.process, grace=10.0)  # type: ignore[arg-type]
    node_run(env, str(WAOLB), "--cleanup")
    assert "wao-loadbalancer" not in env.ruleset()
    start_kube_proxy(env)
    wait_for_traffic(env, WEB_IP, {"pod1"})
    assert "wao-loadbalancer" not in env.ruleset()
