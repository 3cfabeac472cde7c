"""Malformed input never escapes its handler (issue 8 §7), found by mutating valid inputs.

Each property takes a valid Service, EndpointSlice, Node, NodeConfig, Secret or configuration
file, breaks it anywhere (tests/support/mutations.py) and asserts that:

* the parser fails only with its own error (MalformedObjectError, ConfigError...), never with a
  TypeError or anything else a handler would not expect;
* the handler raises nothing, and skips a malformed object with one log line naming it;
* every other object stays as it was.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import yaml
from hypothesis import HealthCheck, given, settings
from kubernetes.client import ApiClient
from structlog.testing import capture_logs

from builders import endpoint, endpoint_slice, service
from kubeapi import ENDPOINT_SLICES as ENDPOINT_SLICE_TYPE
from kubeapi import KubeApiServer
from kubeapi.objects import node, node_config, secret
from mutations import ANY_INTEGERS, mutated
from netns import HUNG_AFTER
from waolb.config import ConfigError, ProxyConfig, apply_flags, load_config_file
from waolb.kube.objects import MalformedObjectError
from waolb.kube.reflector import Reflector
from waolb.kube.resources import ENDPOINT_SLICES, SERVICES
from waolb.kube.rest import RestClient
from waolb.state import ClusterState, PortEndpoints, ServicePortKey
from waolb.state.parse import parse_endpoint_slice, parse_service
from waolb.wao.inventory import WaoInventory, node_cpu_capacity
from waolb.wao.nodeconfig import parse_node_config
from waolb.wao.predictor import PredictorError
from waolb.wao.secrets import SecretReader

NODE = "node-a"
# Longer than any name the mutations can make up, so no mutant can pose as one of these.
STEADY = ("steady-service-a", "steady-service-b")
FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
Logs = list[dict[str, Any]]


def steady_state() -> ClusterState:
    state = ClusterState(NODE)
    state.replace_services(
        [service(name, cluster_ips=(f"10.96.0.{20 + i}",)) for i, name in enumerate(STEADY)]
    )
    state.replace_endpoint_slices(
        [
            endpoint_slice(f"{name}-1", name, endpoints=(endpoint(f"10.0.0.{1 + i}"),))
            for i, name in enumerate(STEADY)
        ]
    )
    return state


STEADY_PORTS = steady_state().all_ports()


def steady_ports(state: ClusterState) -> dict[ServicePortKey, PortEndpoints]:
    return {key: port for key, port in state.all_ports().items() if key.name in STEADY}


def problems(logs: Logs) -> Logs:
    return [entry for entry in logs if entry["log_level"] in ("warning", "error", "critical")]


def malformed(parse: Callable[[Any], object], obj: Any) -> bool:
    """Whether the parser refuses ``obj``; any exception but MalformedObjectError fails."""
    try:
        parse(obj)
    except MalformedObjectError:
        return True
    return False


def named(obj: Any) -> str | None:
    """The object's name as a log line should give it, if it has a usable one."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) and name else None


def assert_skipped_and_named(kind: str, obj: Any, logs: Logs, *, is_malformed: bool) -> None:
    reports = problems(logs)
    if not is_malformed:
        assert reports == []
        return
    assert [entry["event"] for entry in reports] == ["skipping a malformed object"], reports
    assert reports[0]["kind"] == kind
    if named(obj) is not None:
        assert reports[0]["name"] == named(obj)


# ---- Services and EndpointSlices ----------------------------------------------------------


@FUZZ
@given(mutated(service("target", cluster_ips=("10.96.0.30",), sessionAffinity="ClientIP")))
def test_mutated_services(obj: Any) -> None:
    is_malformed = malformed(parse_service, obj)
    state = steady_state()
    with capture_logs() as logs:
        state.replace_services([*_steady_services(), obj])
        state.upsert_service(obj)
    assert_skipped_and_named("Service", obj, logs, is_malformed=is_malformed)
    assert steady_ports(state) == STEADY_PORTS
    state.delete_service(obj)
    assert steady_ports(state) == STEADY_PORTS


def _steady_services() -> list[dict[str, Any]]:
    return [service(name, cluster_ips=(f"10.96.0.{20 + i}",)) for i, name in enumerate(STEADY)]


@FUZZ
@given(
    mutated(
        endpoint_slice(
            "target-1",
            "target",
            endpoints=(endpoint("10.0.0.9"), endpoint("10.0.0.10", ready=False)),
            trigger_time="2024-01-01T00:00:00Z",
        )
    )
)
def test_mutated_endpoint_slices(obj: Any) -> None:
    is_malformed = malformed(lambda o: parse_endpoint_slice(o, NODE), obj)
    state = steady_state()
    state.upsert_service(service("target", cluster_ips=("10.96.0.30",)))
    slices = [
        endpoint_slice(f"{name}-1", name, endpoints=(endpoint(f"10.0.0.{1 + i}"),))
        for i, name in enumerate(STEADY)
    ]
    with capture_logs() as logs:
        state.replace_endpoint_slices([*slices, obj])
        state.upsert_endpoint_slice(obj)
    assert_skipped_and_named("EndpointSlice", obj, logs, is_malformed=is_malformed)
    assert steady_ports(state) == STEADY_PORTS
    state.delete_endpoint_slice(obj)
    assert steady_ports(state) == STEADY_PORTS


def test_unhashable_names_neither_escape_nor_make_the_reflector_relist(
    kube_api: KubeApiServer, kube_client: ApiClient
) -> None:
    """addressType: [] and ipFamilies: [[...]] once raised TypeError past the handler, and
    the reflector relisted in a loop. Now each costs its object only, once."""
    kube_api.create(service("web"))
    kube_api.create(
        {**service("odd"), "spec": {**service("odd")["spec"], "ipFamilies": [["IPv4"]]}}
    )
    kube_api.create(endpoint_slice("web-1", "web", endpoints=(endpoint("10.0.0.1"),)))
    state = ClusterState(NODE)
    reflectors = [
        Reflector(RestClient(kube_client), resource, _StateHandler(state))
        for resource in (SERVICES, ENDPOINT_SLICES)
    ]
    with capture_logs() as logs:
        for reflector in reflectors:
            reflector.start()
        try:
            assert all(reflector.wait_for_sync(HUNG_AFTER) for reflector in reflectors)
            assert kube_api.wait_for_watches(ENDPOINT_SLICE_TYPE, timeout=HUNG_AFTER)
            kube_api.create({**endpoint_slice("web-2", "web"), "addressType": []})
            kube_api.create(endpoint_slice("web-3", "web", endpoints=(endpoint("10.0.0.3"),)))
            assert _wait_for(
                lambda: (
                    [e.ip for e in state.all_ports()[_web_key()].endpoints]
                    == ["10.0.0.1", "10.0.0.3"]
                )
            )
        finally:
            for reflector in reflectors:
                reflector.stop()
    assert sorted(e["name"] for e in problems(logs)) == ["odd", "web-2"]
    assert kube_api.count_requests(verb="list") == 2  # one each: no relist


class _StateHandler:
    """The proxier's routing of Services and EndpointSlices to the state."""

    def __init__(self, state: ClusterState) -> None:
        self._state = state
        self._lock = threading.Lock()

    def replace(self, kind: str, objects: list[Any], resource_version: str) -> None:
        if kind == "Service":
            self._state.replace_services(objects)
        else:
            self._state.replace_endpoint_slices(objects)

    def upsert(self, kind: str, obj: Any) -> None:
        if kind == "Service":
            self._state.upsert_service(obj)
        else:
            self._state.upsert_endpoint_slice(obj)

    def delete(self, kind: str, obj: Any) -> None:
        if kind == "Service":
            self._state.delete_service(obj)
        else:
            self._state.delete_endpoint_slice(obj)


def _web_key() -> ServicePortKey:
    return ServicePortKey(4, "default", "web", "http", "TCP")


def _wait_for(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + HUNG_AFTER
    while time.monotonic() < deadline:
        with contextlib.suppress(KeyError):  # the port is not there yet
            if condition():
                return True
        time.sleep(0.01)
    return False


# ---- Nodes and NodeConfigs ----------------------------------------------------------------


def steady_inventory() -> WaoInventory:
    inventory = WaoInventory()
    inventory.replace("Node", [node("steady-node-a", cpu="4")], "1")
    inventory.replace("NodeConfig", [_steady_config()], "1")
    return inventory


def _steady_config() -> dict[str, Any]:
    return node_config("wao", "steady-config-a", "steady-node-a", "http://10.0.0.2:8080/infer")


@FUZZ
@given(mutated(node("target-node", cpu="3500m")))
def test_mutated_nodes(obj: Any) -> None:
    is_malformed = malformed(node_cpu_capacity, obj)
    inventory = steady_inventory()
    with capture_logs() as logs:
        inventory.replace("Node", [node("steady-node-a", cpu="4"), obj], "2")
        inventory.upsert("Node", obj)
    assert_skipped_and_named("Node", obj, logs, is_malformed=is_malformed)
    inventory.delete("Node", obj)
    assert inventory.cpu_capacity("steady-node-a") == 4.0


def test_a_large_node_is_no_malformed_node() -> None:
    """The bound on the cpuPerRequest setting is no bound on what a Node may have."""
    assert node_cpu_capacity(node("big-node", cpu="2048")) == ("big-node", 2048.0)


@FUZZ
@given(
    mutated(
        node_config(
            "wao", "target", "target-node", "https://10.0.0.3", type="Redfish", secret="bmc"
        )
    )
)
def test_mutated_node_configs(obj: Any) -> None:
    is_malformed = malformed(parse_node_config, obj)
    inventory = steady_inventory()
    with capture_logs() as logs:
        inventory.replace("NodeConfig", [_steady_config(), obj], "2")
        inventory.upsert("NodeConfig", obj)
    assert_skipped_and_named("NodeConfig", obj, logs, is_malformed=is_malformed)
    inventory.delete("NodeConfig", obj)
    steady = inventory.node_config("steady-node-a")
    assert steady.problem is None
    assert steady.config is not None and steady.config.name == "steady-config-a"


# ---- Secrets ------------------------------------------------------------------------------


def test_mutated_secrets(kube_api: KubeApiServer, kube_client: ApiClient) -> None:
    """Served by the test API server as they are: the reader returns credentials or raises
    PredictorError naming the Secret, nothing else."""
    rest = RestClient(kube_client)

    @FUZZ
    @given(mutated(secret("creds", "wao", data={"username": "root", "password": "calvin"})))
    def read(obj: Any) -> None:
        reader = SecretReader(rest, ttl=30.0, request_timeout=HUNG_AFTER)
        with kube_api.answering("/api/v1/namespaces/wao/secrets/creds", orjson.dumps(obj)):
            try:
                reader.basic_auth("wao", "creds")
            except PredictorError as error:
                assert error.kind == "secret"
                assert "Secret wao/creds" in str(error)

    read()


# ---- configuration files ------------------------------------------------------------------

CONFIG_FILE = yaml.safe_load(
    """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: 10.0.0.5
healthzBindAddress: 10.0.0.5:20256
metricsBindAddress: 0.0.0.0:20249
clusterCIDR: 10.244.0.0/16,fd00::/48
hostnameOverride: node-a
mode: nftables
nodePortAddresses: [primary]
featureGates: {SomeGate: true}
clientConnection: {kubeconfig: /var/lib/kube-proxy/kubeconfig.conf, qps: 50, burst: 100}
logging: {format: json, verbosity: 2}
nftables: {masqueradeBit: 14, masqueradeAll: true, syncPeriod: 60s, minSyncPeriod: 2s}
conntrack: {maxPerCore: 32768, tcpEstablishedTimeout: 24h}
waolb:
  tableName: wao-lb
  defaultPolicy: equal
  metricsCacheTTL: 10s
  requestTimeout: 2s
  parallelism: 8
  cpuPerRequest: 200m
  cpuUsageFormat: Raw
  scoringInterval: 5s
  minWeightChange: 0.1
  verifyTLS: true
"""
)


def test_mutated_configuration_files(tmp_path: Path) -> None:
    """A configuration file either loads or stops waolb with a message saying what to fix."""
    path = tmp_path / "config.yaml"

    @FUZZ
    @given(mutated(CONFIG_FILE, integers=ANY_INTEGERS))
    def load(document: Any) -> None:
        path.write_text(yaml.safe_dump(document))
        try:
            config = load_config_file(str(path))
            assert isinstance(apply_flags({}, config), ProxyConfig)
        except ConfigError as error:
            message = str(error)
            assert message and len(message) < 2000

    load()
