"""ClusterState: Services and EndpointSlices (plain dicts) to service ports, as kube-proxy does."""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Callable
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from builders import endpoint, endpoint_slice, key, service
from waolb.state import (
    ClusterState,
    EndpointInfo,
    MalformedObjectError,
    PortEndpoints,
    ServiceName,
    parse_endpoint_slice,
    parse_service,
)

NODE = "node-a"
WEB = ServiceName("default", "web")


class Recorder:
    """The state's change listener, remembering what it was told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, kind: str, count: int) -> None:
        self.calls.append((kind, count))


@pytest.fixture
def changes() -> Recorder:
    return Recorder()


@pytest.fixture
def state(changes: Recorder) -> ClusterState:
    tracker = ClusterState(NODE, wall_clock=lambda: 1000.0)
    tracker.subscribe(changes)
    return tracker


def ips(port: PortEndpoints) -> list[tuple[str, int]]:
    return [(e.ip, e.port) for e in port.endpoints]


# ---- services and slices to ports ---------------------------------------------------------


def test_a_service_and_its_slice_make_a_service_port(state: ClusterState) -> None:
    state.upsert_service(service(sessionAffinity="ClientIP", externalTrafficPolicy="Local"))
    state.upsert_endpoint_slice(
        endpoint_slice("web-a", endpoints=(endpoint("10.0.0.2", node=NODE), endpoint("10.0.0.1")))
    )
    ports = state.all_ports()
    assert list(ports) == [key()]
    port = ports[key()]
    assert port.info.cluster_ip == "10.96.0.10"
    assert port.info.port == 80
    assert port.info.target_port == 8080
    assert port.info.node_port == 0
    assert port.info.session_affinity_timeout == 10800
    assert port.info.external_traffic_policy == "Local"
    assert port.info.internal_traffic_policy == "Cluster"
    assert port.endpoints == (
        EndpointInfo("10.0.0.1", 8080, "node-b", None, True, True, False, False),
        EndpointInfo("10.0.0.2", 8080, NODE, None, True, True, False, True),
    )


def test_service_port_fields() -> None:
    parsed = parse_service(
        service(
            ports=(("", "UDP", 53),),
            type="NodePort",
            sessionAffinity="ClientIP",
            sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}},
            internalTrafficPolicy="Local",
        )
    )
    assert parsed is not None
    (info,) = parsed.ports
    assert info.key == key("", "UDP")
    assert info.session_affinity_timeout == 60
    assert info.internal_traffic_policy == "Local"
    assert info.external_traffic_policy == "Cluster"
    no_affinity = parse_service(service())
    assert no_affinity is not None
    assert no_affinity.ports[0].session_affinity_timeout is None


def test_node_port_and_named_target_port_are_kept() -> None:
    obj = service()
    obj["spec"]["ports"][0].update(nodePort=30080, targetPort="http-alt")
    parsed = parse_service(obj)
    assert parsed is not None
    assert (parsed.ports[0].node_port, parsed.ports[0].target_port) == (30080, "http-alt")


def test_dual_stack_services_get_one_port_per_family(state: ClusterState) -> None:
    state.upsert_service(
        service(cluster_ips=("fd00:96::10", "10.96.0.10"), ipFamilies=["IPv6", "IPv4"])
    )
    state.upsert_endpoint_slice(endpoint_slice("web-v4", endpoints=(endpoint("10.0.0.1"),)))
    state.upsert_endpoint_slice(
        endpoint_slice("web-v6", family="IPv6", endpoints=(endpoint("fd00::1"),))
    )
    ports = state.all_ports()
    assert ports[key(family=4)].info.cluster_ip == "10.96.0.10"
    assert ips(ports[key(family=4)]) == [("10.0.0.1", 8080)]
    assert ports[key(family=6)].info.cluster_ip == "fd00:96::10"
    assert ips(ports[key(family=6)]) == [("fd00::1", 8080)]


def test_slices_of_a_service_merge_and_duplicates_collapse(state: ClusterState) -> None:
    state.upsert_service(service())
    state.upsert_endpoint_slice(
        endpoint_slice("web-b", endpoints=(endpoint("10.0.0.10"), endpoint("10.0.0.3")))
    )
    state.upsert_endpoint_slice(
        # 10.0.0.3 moving between slices: the local copy wins.
        endpoint_slice("web-a", endpoints=(endpoint("10.0.0.9"), endpoint("10.0.0.3", node=NODE)))
    )
    port = state.all_ports()[key()]
    # Sorted by address value, not text: 10.0.0.9 before 10.0.0.10.
    assert ips(port) == [("10.0.0.3", 8080), ("10.0.0.9", 8080), ("10.0.0.10", 8080)]
    assert port.endpoints[0].is_local


def test_duplicates_within_a_slice_collapse_like_duplicates_across_slices(
    state: ClusterState,
) -> None:
    state.upsert_service(service())
    state.upsert_endpoint_slice(
        endpoint_slice(
            "web-a",
            endpoints=(
                endpoint("10.0.0.10"),
                endpoint("10.0.0.2", node="node-c"),
                endpoint("10.0.0.2", node=NODE, ready=False),
                endpoint("10.0.0.9"),
                endpoint("10.0.0.9", node="node-c"),
            ),
        )
    )
    port = state.all_ports()[key()]
    # The local copy of 10.0.0.2 wins (and, not ready, is left out); else the first copy.
    assert [(e.ip, e.node_name) for e in port.endpoints] == [
        ("10.0.0.9", "node-b"),
        ("10.0.0.10", "node-b"),
    ]
    # A slice with the same endpoints in another order, and other copies, is no change.
    state.take_changes()
    state.upsert_endpoint_slice(
        endpoint_slice(
            "web-a",
            rv="2",
            endpoints=(
                endpoint("10.0.0.9"),
                endpoint("10.0.0.2", node=NODE, ready=False),
                endpoint("10.0.0.10"),
                endpoint("10.0.0.2", node="node-d"),
            ),
        )
    )
    assert state.take_changes().services == frozenset()


def test_ports_match_by_name_and_protocol(state: ClusterState) -> None:
    state.upsert_service(
        service(ports=(("dns", "UDP", 53), ("dns-tcp", "TCP", 53), ("metrics", "TCP", 9153)))
    )
    state.upsert_endpoint_slice(
        endpoint_slice(
            "web-a",
            ports=(
                ("dns", "UDP", 5353),
                ("dns-tcp", "TCP", 5354),
                ("dns", "TCP", 1),
                ("x", "TCP", 2),
            ),
            endpoints=(endpoint("10.0.0.1"),),
        )
    )
    ports = state.all_ports()
    assert ips(ports[key("dns", "UDP")]) == [("10.0.0.1", 5353)]
    assert ips(ports[key("dns-tcp", "TCP")]) == [("10.0.0.1", 5354)]
    # A service port no slice serves still exists, without endpoints (traffic is rejected).
    assert ips(ports[key("metrics", "TCP")]) == []


def test_slice_ports_default_like_the_api_server(state: ClusterState) -> None:
    state.upsert_service(service(ports=(("", "TCP", 80),)))
    unnamed = endpoint_slice("web-a", endpoints=(endpoint("10.0.0.1"),))
    unnamed["ports"] = [{"port": 8080}, {"name": "", "protocol": "TCP", "port": None}]
    state.upsert_endpoint_slice(unnamed)
    assert ips(state.all_ports()[key("")]) == [("10.0.0.1", 8080)]


@pytest.mark.parametrize(
    ("endpoints", "expected"),
    [
        # Ready endpoints only, when there are some.
        (
            [
                endpoint("10.0.0.1"),
                endpoint("10.0.0.2", ready=False, serving=True, terminating=True),
            ],
            ["10.0.0.1"],
        ),
        # No ready one: serving and terminating ones take over.
        (
            [
                endpoint("10.0.0.1", ready=False, serving=True, terminating=True),
                endpoint("10.0.0.2", ready=False, serving=False, terminating=True),
                endpoint("10.0.0.3", ready=False, serving=True, terminating=False),
            ],
            ["10.0.0.1"],
        ),
        # Unknown readiness counts as ready.
        ([endpoint("10.0.0.1", ready=None)], ["10.0.0.1"]),
        ([endpoint("10.0.0.1", ready=False)], []),
    ],
)
def test_ready_endpoints_else_serving_terminating_ones(
    state: ClusterState, endpoints: list[dict[str, Any]], expected: list[str]
) -> None:
    state.upsert_service(service())
    state.upsert_endpoint_slice(endpoint_slice("web-a", endpoints=tuple(endpoints)))
    assert [e.ip for e in state.all_ports()[key()].endpoints] == expected


def test_internal_traffic_policy_local_keeps_only_this_nodes_endpoints(state: ClusterState) -> None:
    state.upsert_service(service(internalTrafficPolicy="Local"))
    state.upsert_endpoint_slice(
        endpoint_slice(
            "web-a",
            endpoints=(
                endpoint("10.0.0.1", node=NODE, ready=False, serving=True, terminating=True),
                endpoint("10.0.0.2"),
                endpoint("10.0.0.3", node=None),
            ),
        )
    )
    # The local endpoint is terminating: the fallback applies among local endpoints.
    assert [e.ip for e in state.all_ports()[key()].endpoints] == ["10.0.0.1"]


@pytest.mark.parametrize(
    "ignored",
    [
        service(cluster_ips=("None",)),
        service(cluster_ips=()),
        service(type="ExternalName", externalName="example.com"),
        service(labels={"service.kubernetes.io/headless": ""}),
    ],
    ids=["headless", "no-cluster-ip", "external-name", "headless-label"],
)
def test_services_no_proxy_handles_are_ignored(
    state: ClusterState, changes: Recorder, ignored: dict[str, Any]
) -> None:
    state.upsert_service(ignored)
    assert state.all_ports() == {}
    assert changes.calls == []


def test_a_service_that_turns_headless_is_removed(state: ClusterState) -> None:
    state.upsert_service(service())
    state.take_changes()
    state.upsert_service(service(rv="2", labels={"service.kubernetes.io/headless": ""}))
    assert state.take_changes().services == {WEB}
    assert state.all_ports() == {}


def test_fqdn_slices_are_ignored(state: ClusterState) -> None:
    state.upsert_service(service())
    fqdn = endpoint_slice("web-a", endpoints=({"addresses": ["db.example.com"]},))
    fqdn["addressType"] = "FQDN"
    state.upsert_endpoint_slice(fqdn)
    assert ips(state.all_ports()[key()]) == []


# Dotted quads with and without leading zeros, too few or too many parts, and anything else.
ADDRESS_TEXTS = st.from_regex(r"\A[0-9]{1,4}(\.[0-9]{1,4}){2,4}\Z") | st.text(max_size=16)


@given(ADDRESS_TEXTS)
def test_endpoint_addresses_are_taken_exactly_as_ipaddress_takes_them(text: str) -> None:
    try:
        expected: str | None = str(ipaddress.IPv4Address(text))
    except ValueError:
        expected = None
    obj = endpoint_slice("web-a", endpoints=(endpoint(text),))
    try:
        parsed = parse_endpoint_slice(obj, NODE)
    except MalformedObjectError:
        assert expected is None
        return
    assert parsed is not None
    assert [e.ip for e in parsed.ports[0].endpoints] == [expected]


# ---- malformed objects --------------------------------------------------------------------


def mutate(obj: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    result = copy.deepcopy(obj)
    change(result)
    return result


BAD_SERVICES: dict[str, Callable[[dict[str, Any]], None]] = {
    "no spec": lambda s: s.pop("spec"),
    "bad cluster IP": lambda s: s["spec"].update(clusterIPs=["10.96.0.300"]),
    "two IPv4 cluster IPs": lambda s: s["spec"].update(clusterIPs=["10.96.0.1", "10.96.0.2"]),
    "port out of range": lambda s: s["spec"]["ports"][0].update(port=70000),
    "port is a string": lambda s: s["spec"]["ports"][0].update(port="80"),
    "port is a bool": lambda s: s["spec"]["ports"][0].update(port=True),
    "missing port": lambda s: s["spec"]["ports"][0].pop("port"),
    "unknown protocol": lambda s: s["spec"]["ports"][0].update(protocol="ICMP"),
    "ports not a list": lambda s: s["spec"].update(ports={"http": 80}),
    "duplicate port": lambda s: s["spec"]["ports"].append(dict(s["spec"]["ports"][0])),
    "bad node port": lambda s: s["spec"]["ports"][0].update(nodePort=-1),
    "bad target port": lambda s: s["spec"]["ports"][0].update(targetPort=0),
    "unknown type": lambda s: s["spec"].update(type="Magic"),
    "bad affinity": lambda s: s["spec"].update(sessionAffinity="Sticky"),
    "bad affinity timeout": lambda s: s["spec"].update(
        sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 0}}
    ),
    "bad traffic policy": lambda s: s["spec"].update(internalTrafficPolicy="Nearby"),
    "bad ip family": lambda s: s["spec"].update(ipFamilies=["IPv5"]),
    # Unhashable values where a name is expected: once a TypeError past the handler.
    "nested ip families": lambda s: s["spec"].update(ipFamilies=[["IPv4"]]),
    "ip family a map": lambda s: s["spec"].update(ipFamilies=[{"IPv4": True}]),
    "type a list": lambda s: s["spec"].update(type=["ClusterIP"]),
    "protocol a map": lambda s: s["spec"]["ports"][0].update(protocol={"TCP": 1}),
    "labels not a map": lambda s: s["metadata"].update(labels=["a"]),
    "empty name": lambda s: s["metadata"].update(name=""),
}


@pytest.mark.parametrize("change", BAD_SERVICES.values(), ids=BAD_SERVICES.keys())
def test_a_malformed_service_is_skipped_and_logged_once(
    state: ClusterState, change: Callable[[dict[str, Any]], None]
) -> None:
    other = service("other", cluster_ips=("10.96.0.20",))
    bad = mutate(service(rv="7"), change)
    with structlog.testing.capture_logs() as logs:
        state.replace_services([other, bad])
        state.upsert_service(bad)
        state.upsert_service(bad)
    errors = [e for e in logs if e["event"] == "skipping a malformed object"]
    assert len(errors) == 1
    assert errors[0]["kind"] == "Service"
    assert errors[0]["resource_version"] == "7"
    assert errors[0]["problem"]
    # Every other service keeps its rules.
    assert list(state.all_ports()) == [key(name="other")]


BAD_SLICES: dict[str, Callable[[dict[str, Any]], None]] = {
    "no service label": lambda s: s["metadata"].update(labels={}),
    "bad address type": lambda s: s.update(addressType="IPv5"),
    # Unhashable values where a name is expected: once a TypeError past the handler.
    "address type an empty list": lambda s: s.update(addressType=[]),
    "address type a map": lambda s: s.update(addressType={"IPv4": 1}),
    "port is false": lambda s: s["ports"][0].update(port=False),
    "bad address": lambda s: s["endpoints"][0].update(addresses=["10.0.0.256"]),
    "wrong family address": lambda s: s["endpoints"][0].update(addresses=["fd00::1"]),
    "no addresses": lambda s: s["endpoints"][0].update(addresses=[]),
    "addresses not a list": lambda s: s["endpoints"][0].update(addresses="10.0.0.1"),
    "port out of range": lambda s: s["ports"][0].update(port=65536),
    "port is a string": lambda s: s["ports"][0].update(port="8080"),
    "ready is a string": lambda s: s["endpoints"][0].update(conditions={"ready": "yes"}),
    "endpoints not a list": lambda s: s.update(endpoints={}),
    "node name not a string": lambda s: s["endpoints"][0].update(nodeName=5),
    "no metadata": lambda s: s.pop("metadata"),
}


@pytest.mark.parametrize("change", BAD_SLICES.values(), ids=BAD_SLICES.keys())
def test_a_malformed_slice_is_skipped_and_logged_once(
    state: ClusterState, change: Callable[[dict[str, Any]], None]
) -> None:
    state.upsert_service(service())
    good = endpoint_slice("web-a", endpoints=(endpoint("10.0.0.1"),))
    bad = mutate(endpoint_slice("web-b", rv="9", endpoints=(endpoint("10.0.0.2"),)), change)
    with structlog.testing.capture_logs() as logs:
        state.replace_endpoint_slices([good, bad])
        state.upsert_endpoint_slice(bad)
    errors = [e for e in logs if e["event"] == "skipping a malformed object"]
    assert len(errors) == 1
    assert errors[0]["kind"] == "EndpointSlice"
    assert ips(state.all_ports()[key()]) == [("10.0.0.1", 8080)]


def test_a_good_object_that_turns_bad_keeps_its_last_good_version(
    state: ClusterState, changes: Recorder
) -> None:
    state.upsert_service(service())
    state.upsert_endpoint_slice(endpoint_slice("web-a", endpoints=(endpoint("10.0.0.1"),)))
    state.take_changes()
    changes.calls.clear()
    bad_service = mutate(service(rv="2"), BAD_SERVICES["bad cluster IP"])
    bad_slice = mutate(
        endpoint_slice("web-a", rv="2", endpoints=(endpoint("10.0.0.5"),)),
        BAD_SLICES["bad address"],
    )
    with structlog.testing.capture_logs() as logs:
        state.upsert_service(bad_service)
        state.upsert_endpoint_slice(bad_slice)
        # A new resourceVersion that is still bad is logged again, once.
        state.upsert_service(mutate(service(rv="3"), BAD_SERVICES["bad cluster IP"]))
        state.upsert_service(mutate(service(rv="3"), BAD_SERVICES["bad cluster IP"]))
    assert [e["resource_version"] for e in logs] == ["2", "2", "3"]
    assert changes.calls == []
    assert state.take_changes().services == frozenset()
    port = state.all_ports()[key()]
    assert port.info.cluster_ip == "10.96.0.10"
    assert ips(port) == [("10.0.0.1", 8080)]
    # Deleting the object still removes it.
    state.delete_service(bad_service)
    assert state.all_ports() == {}


def test_a_fixed_object_is_logged_again_if_it_breaks_again(state: ClusterState) -> None:
    bad = mutate(service(rv="2"), BAD_SERVICES["bad cluster IP"])
    with structlog.testing.capture_logs() as logs:
        state.upsert_service(bad)
        state.upsert_service(service(rv="3"))
        state.upsert_service(bad)
    assert len(logs) == 2


def test_an_object_the_parser_fails_on_is_skipped_not_relisted_forever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A parser gap other than MalformedObjectError costs its object only: logged with the
    traceback once per version, never raised into the reflector (which would relist in a loop)."""

    def parse(obj: object) -> Any:
        if obj["metadata"]["name"] == "odd":  # type: ignore[index]
            raise KeyError("a parser bug")
        return parse_service(obj)

    monkeypatch.setattr("waolb.state.tracker.parse_service", parse)
    tracker = ClusterState(NODE)
    odd = service("odd", rv="4", cluster_ips=("10.96.0.30",))
    with structlog.testing.capture_logs() as logs:
        tracker.replace_services([service(), odd])
        tracker.upsert_service(odd)
    failures = [e for e in logs if e["event"] == "skipping an object the parser failed on"]
    assert [(e["name"], e["resource_version"], e["exc_info"]) for e in failures] == [
        ("odd", "4", True)
    ]
    assert list(tracker.all_ports()) == [key()]


# ---- change tracking ----------------------------------------------------------------------


def test_changes_are_tracked_per_service_until_taken(
    state: ClusterState, changes: Recorder
) -> None:
    state.upsert_service(service())
    state.upsert_service(service("api", cluster_ips=("10.96.0.11",)))
    state.upsert_endpoint_slice(endpoint_slice("web-a", endpoints=(endpoint("10.0.0.1"),)))
    assert changes.calls == [("service", 1), ("service", 1), ("endpoints", 1)]
    assert state.take_changes().services == {WEB, ServiceName("default", "api")}
    assert state.take_changes().services == frozenset()

    # The same content under a new resourceVersion is no change.
    state.upsert_service(service(rv="2"))
    state.upsert_endpoint_slice(endpoint_slice("web-a", rv="2", endpoints=(endpoint("10.0.0.1"),)))
    assert state.take_changes().services == frozenset()
    assert len(changes.calls) == 3

    state.upsert_endpoint_slice(endpoint_slice("web-a", rv="3", endpoints=(endpoint("10.0.0.2"),)))
    assert state.take_changes().services == {WEB}
    assert state.ports_of([WEB]) == {key(): state.all_ports()[key()]}


def test_slices_of_untracked_services_wait_for_their_service(
    state: ClusterState, changes: Recorder
) -> None:
    state.upsert_endpoint_slice(endpoint_slice("web-a", endpoints=(endpoint("10.0.0.1"),)))
    assert changes.calls == []
    assert state.take_changes().services == frozenset()
    state.upsert_service(service())
    assert state.take_changes().services == {WEB}
    assert ips(state.all_ports()[key()]) == [("10.0.0.1", 8080)]


def test_deletions_are_changes(state: ClusterState, changes: Recorder) -> None:
    state.upsert_service(service())
    state.upsert_endpoint_slice(endpoint_slice("web-a", endpoints=(endpoint("10.0.0.1"),)))
    state.take_changes()
    state.delete_endpoint_slice(endpoint_slice("web-a"))
    assert state.take_changes().services == {WEB}
    assert ips(state.all_ports()[key()]) == []
    state.delete_service(service())
    assert state.take_changes().services == {WEB}
    assert state.ports_of([WEB]) == {}
    # Deleting what is not there changes nothing.
    state.delete_service(service())
    state.delete_endpoint_slice(endpoint_slice("web-a"))
    assert state.take_changes().services == frozenset()
    assert changes.calls[-2:] == [("endpoints", 1), ("service", 1)]


def test_replace_drops_what_vanished(state: ClusterState, changes: Recorder) -> None:
    state.replace_services([service(), service("api", cluster_ips=("10.96.0.11",))])
    state.replace_endpoint_slices(
        [
            endpoint_slice("web-a", endpoints=(endpoint("10.0.0.1"),)),
            endpoint_slice("web-b", endpoints=(endpoint("10.0.0.2"),)),
        ]
    )
    assert changes.calls == [("service", 2), ("endpoints", 2)]
    state.take_changes()
    state.replace_services([service()])
    state.replace_endpoint_slices([endpoint_slice("web-b", endpoints=(endpoint("10.0.0.2"),))])
    assert changes.calls[2:] == [("service", 1), ("endpoints", 1)]
    assert state.take_changes().services == {WEB, ServiceName("default", "api")}
    assert list(state.all_ports()) == [key()]
    assert ips(state.all_ports()[key()]) == [("10.0.0.2", 8080)]


def test_a_slice_moving_to_another_service_changes_both(state: ClusterState) -> None:
    state.upsert_service(service())
    state.upsert_service(service("api", cluster_ips=("10.96.0.11",)))
    state.upsert_endpoint_slice(endpoint_slice("s", endpoints=(endpoint("10.0.0.1"),)))
    state.take_changes()
    state.upsert_endpoint_slice(
        endpoint_slice("s", "api", rv="2", endpoints=(endpoint("10.0.0.1"),))
    )
    assert state.take_changes().services == {WEB, ServiceName("default", "api")}
    assert ips(state.all_ports()[key()]) == []
    assert ips(state.all_ports()[key(name="api")]) == [("10.0.0.1", 8080)]


def test_annotation_changes_reach_the_weight_providers(state: ClusterState) -> None:
    state.upsert_service(service())
    before = state.all_ports()[key()]
    state.take_changes()
    state.upsert_service(service(rv="2", annotations={"waok8s.github.io/cpu-per-request": "500m"}))
    assert state.take_changes().services == {WEB}
    after = state.all_ports()[key()]
    assert after.info.annotations == {"waok8s.github.io/cpu-per-request": "500m"}
    # The rules themselves do not change.
    assert after == before


def test_trigger_times_of_changes_after_start_are_reported_once(state: ClusterState) -> None:
    state.upsert_service(service())
    # 1970-01-01T00:20:00Z is 1200 s, after the state's start (1000 s); 00:10:00 is before.
    state.upsert_endpoint_slice(
        endpoint_slice(
            "web-a", trigger_time="1970-01-01T00:20:00Z", endpoints=(endpoint("10.0.0.1"),)
        )
    )
    state.upsert_endpoint_slice(
        endpoint_slice(
            "web-b", trigger_time="1970-01-01T00:10:00Z", endpoints=(endpoint("10.0.0.2"),)
        )
    )
    state.upsert_endpoint_slice(endpoint_slice("web-c", trigger_time="garbage"))
    assert state.take_changes().trigger_times == (1200.0,)
    # Unchanged content with a new trigger time is no change to measure.
    state.upsert_endpoint_slice(
        endpoint_slice(
            "web-a", trigger_time="1970-01-01T00:30:00Z", endpoints=(endpoint("10.0.0.1"),)
        )
    )
    assert state.take_changes().trigger_times == ()
