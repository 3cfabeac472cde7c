"""The test API server against the real Kubernetes client: it must behave as a real API server.

The tests that take ``api`` and ``client`` check protocol behaviour every API server has: they
also run against the real control plane (kube-apiserver v1.34, tests/support/controlplane), so
that a difference between the double and the real server fails a test. The others check what
only the double does on demand (compaction, dropped watches, injected faults) or rely on it
being the only writer (consecutive resourceVersions).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any
from unittest.mock import ANY
from urllib.parse import urlencode

import orjson
import pytest
import urllib3
from kubernetes.client import (
    ApiClient,
    ApisApi,
    Configuration,
    CoreApi,
    CoreV1Api,
    CustomObjectsApi,
    DiscoveryV1Api,
    V1DeleteOptions,
    V1Preconditions,
)
from kubernetes.client.exceptions import ApiException
from kubernetes.watch import Watch

from controlplane.api import RealApi
from kubeapi import NODE_CONFIGS, NODE_METRICS, SERVICES, KubeApiServer, objects
from kubeapi.custom_metrics import adapter_quantity
from kubeapi.objects import endpoint_slice, node, node_config, node_metrics, secret

SERVICES_PATH = SERVICES.collection_path()
# Objects a real API server has of its own, left out where tests compare listings: the
# kubernetes Service, and the Service of the metrics APIs registered for the session.
SYSTEM_OBJECTS = {("default", "kubernetes"), ("kube-system", "test-metrics")}

Api = KubeApiServer | RealApi


def service(name: str, namespace: str = "default", **fields: Any) -> dict[str, Any]:
    """A Service whose cluster IP the server allocates unless ``cluster_ip`` names one: a real
    API server refuses a second Service on an address already allocated (422)."""
    built = objects.service(name, namespace, **fields)
    if "cluster_ip" not in fields:
        del built["spec"]["clusterIP"], built["spec"]["clusterIPs"]
    return built


@pytest.fixture(params=["double", "real"])
def api(request: pytest.FixtureRequest) -> Iterator[Api]:
    """The test double, then the real control plane (emptied again after the test)."""
    if request.param == "double":
        yield request.getfixturevalue("kube_api")
        return
    real: RealApi = request.getfixturevalue("deployment").api()
    try:
        yield real
    finally:
        real.reset()


@pytest.fixture
def client(api: Api) -> Iterator[ApiClient]:
    """The real Kubernetes client for ``api`` (as the admin on the real server)."""
    configuration = Configuration()
    if isinstance(api, RealApi):
        configuration.host = api.plane.url
        configuration.ssl_ca_cert = str(api.plane.ca_cert)
        configuration.api_key = {"authorization": api.plane.admin_token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
    else:
        configuration.host = api.url
    with ApiClient(configuration) as result:
        yield result


def http(
    server: Api,
    method: str,
    path: str,
    body: Any = None,
    content_type: str = "application/json",
    **query: str,
) -> urllib3.BaseHTTPResponse:
    """A plain HTTP request, for what the typed client cannot send or hides."""
    if isinstance(server, RealApi):
        return server.plane.request(
            method, path, body, content_type=content_type, expect=None, query=query
        )
    url = server.url + path + ("?" + urlencode(query) if query else "")
    encoded = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
    return urllib3.request(
        method, url, body=encoded, headers={"Content-Type": content_type}, retries=False
    )


def json_of(response: urllib3.BaseHTTPResponse) -> dict[str, Any]:
    decoded: dict[str, Any] = orjson.loads(response.data)
    return decoded


def status_of(error: pytest.ExceptionInfo[ApiException]) -> dict[str, Any]:
    decoded: dict[str, Any] = orjson.loads(error.value.body)
    return decoded


def names(objects: Iterable[Any]) -> list[str]:
    return [
        obj.metadata.name
        for obj in objects
        if (obj.metadata.namespace, obj.metadata.name) not in SYSTEM_OBJECTS
    ]


def first_events(stream: Iterator[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    events = []
    for event in stream:
        events.append(event)
        if len(events) == count:
            break
    return events


def watch_lines(server: KubeApiServer, path: str = SERVICES_PATH, **query: str) -> Iterator[Any]:
    """Start a raw watch; returns its decoded lines as they arrive."""
    response = urllib3.request(
        "GET",
        server.url + path + "?" + urlencode({"watch": "true", **query}),
        preload_content=False,
        retries=False,
        timeout=10,
    )
    assert response.status == 200
    return _decoded_lines(response)


def _decoded_lines(response: urllib3.BaseHTTPResponse) -> Iterator[Any]:
    pending = b""
    for chunk in response.stream(amt=None):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (orjson.loads(line) for line in lines if line)


# Objects, resourceVersions and writes.


def test_create_read_replace_delete_through_the_typed_client(api: Api, client: ApiClient) -> None:
    core = CoreV1Api(client)
    created = core.create_namespaced_service("default", service("web", cluster_ip="10.96.0.10"))
    assert created.metadata.uid
    assert created.metadata.creation_timestamp is not None
    read = core.read_namespaced_service("web", "default")
    assert read.metadata.resource_version == created.metadata.resource_version
    assert read.spec.cluster_ip == "10.96.0.10"

    read.metadata.labels = {"tier": "front"}
    replaced = core.replace_namespaced_service("web", "default", read)
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)
    assert replaced.metadata.uid == created.metadata.uid
    assert replaced.metadata.labels == {"tier": "front"}

    # Deleting a Service answers with its last state; most other types answer with a Status.
    # The deletion is a write: the answer carries its resourceVersion.
    deleted = core.delete_namespaced_service("web", "default")
    assert deleted.metadata.uid == replaced.metadata.uid
    assert int(deleted.metadata.resource_version) > int(replaced.metadata.resource_version)
    assert core.delete_node(api.create(node("node-a"))["metadata"]["name"]) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": "node-a", "kind": "nodes", "uid": ANY},
    }
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_service("web", "default")
    assert missing.value.status == 404
    assert status_of(missing) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'services "web" not found',
        "reason": "NotFound",
        "details": {"name": "web", "kind": "services"},
        "code": 404,
    }


def test_one_resource_version_counter_orders_writes_of_all_types(kube_api: KubeApiServer) -> None:
    written = [
        kube_api.create(service("web")),
        kube_api.create(node("node-a")),
        kube_api.create(endpoint_slice("web-1", "web")),
    ]
    versions = [int(obj["metadata"]["resourceVersion"]) for obj in written]
    assert versions == sorted(set(versions))
    assert kube_api.resource_version == versions[-1]
    assert "namespace" not in written[1]["metadata"]  # nodes are cluster-scoped


def test_an_update_that_changes_nothing_keeps_the_resource_version(kube_api: KubeApiServer) -> None:
    created = kube_api.create(service("web"))
    assert kube_api.update(created) == created
    assert kube_api.resource_version == int(created["metadata"]["resourceVersion"])


def test_create_twice_is_409_already_exists(client: ApiClient) -> None:
    core = CoreV1Api(client)
    core.create_namespaced_service("default", service("web"))
    with pytest.raises(ApiException) as duplicate:
        core.create_namespaced_service("default", service("web"))
    assert duplicate.value.status == 409
    assert status_of(duplicate)["reason"] == "AlreadyExists"
    assert status_of(duplicate)["message"] == 'services "web" already exists'


def test_replace_from_a_stale_read_is_409_conflict(api: Api, client: ApiClient) -> None:
    core = CoreV1Api(client)
    core.create_namespaced_service("default", service("web"))
    stale = core.read_namespaced_service("web", "default")
    api.patch(SERVICES, "web", {"metadata": {"labels": {"changed": "yes"}}}, "default")
    stale.metadata.labels = {"mine": "yes"}
    with pytest.raises(ApiException) as conflict:
        core.replace_namespaced_service("web", "default", stale)
    assert conflict.value.status == 409
    assert status_of(conflict)["reason"] == "Conflict"
    assert "the object has been modified" in status_of(conflict)["message"]


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({}, "metadata.name"),
        ({"name": "Not_A_Name"}, "metadata.name"),
        ({"name": "9starts-with-digit"}, "metadata.name"),  # Services take DNS-1035 labels
        ({"name": "web", "labels": {"bad key!": "x"}}, "metadata.labels"),
        ({"name": "web", "labels": {"ok": "bad value!"}}, "metadata.labels"),
    ],
)
def test_invalid_objects_are_422_invalid(
    client: ApiClient, metadata: dict[str, Any], field: str
) -> None:
    body = {"apiVersion": "v1", "kind": "Service", "metadata": metadata}
    # Valid but for the metadata. Headless: kube-apiserver v1.34 allocates a cluster IP before
    # it validates the metadata, and with no name at all the allocation hangs until 504.
    body["spec"] = {"clusterIP": "None", "ports": [{"port": 80}]}
    with pytest.raises(ApiException) as invalid:
        CoreV1Api(client).create_namespaced_service("default", body)
    assert invalid.value.status == 422
    status = status_of(invalid)
    assert status["reason"] == "Invalid"
    assert status["details"]["kind"] == "Service"
    assert status["details"]["causes"][0]["field"] == field


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2]", orjson.dumps({"apiVersion": "v2", "kind": "Service"})],
)
def test_undecodable_bodies_are_400_bad_request(api: Api, body: bytes) -> None:
    response = http(api, "POST", "/api/v1/namespaces/default/services", body)
    assert response.status == 400
    assert json_of(response)["reason"] == "BadRequest"


def test_body_and_url_must_agree_on_namespace_and_name(api: Api) -> None:
    api.create(service("web"))
    wrong_namespace = http(
        api, "POST", "/api/v1/namespaces/default/services", service("db", "other")
    )
    wrong_name = http(api, "PUT", "/api/v1/namespaces/default/services/web", service("db"))
    assert (wrong_namespace.status, wrong_name.status) == (400, 400)
    assert "does not match the name on the URL" in json_of(wrong_name)["message"]


def test_paths_and_methods_not_served(kube_api: KubeApiServer) -> None:
    assert http(kube_api, "GET", "/api/v1/pods").status == 404
    assert http(kube_api, "GET", "/api/v1/namespaces/default/services/web/status").status == 404
    assert http(kube_api, "GET", "/api/v1/namespaces/default/nodes").status == 404
    assert http(kube_api, "POST", SERVICES_PATH, service("web")).status == 405
    assert json_of(http(kube_api, "GET", "/nowhere")) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "the server could not find the requested resource",
        "reason": "NotFound",
        "details": {},
        "code": 404,
    }


def test_merge_patch_with_resource_version_precondition(kube_api: KubeApiServer) -> None:
    created = kube_api.create(service("web", labels={"a": "1", "b": "2"}))
    path = SERVICES.object_path("web", "default")
    merge = "application/merge-patch+json"
    patched = http(kube_api, "PATCH", path, {"metadata": {"labels": {"a": None, "c": "3"}}}, merge)
    assert patched.status == 200
    assert json_of(patched)["metadata"]["labels"] == {"b": "2", "c": "3"}
    stale = {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}}
    assert http(kube_api, "PATCH", path, stale, merge).status == 409
    strategic = "application/strategic-merge-patch+json"
    assert http(kube_api, "PATCH", path, {"spec": {}}, strategic).status == 415


def test_generate_name_and_delete_preconditions(client: ApiClient) -> None:
    core = CoreV1Api(client)
    body = service("unused")
    body["metadata"] = {"generateName": "web-"}
    created = core.create_namespaced_service("default", body)
    name = created.metadata.name
    assert name.startswith("web-")
    assert len(name) == len("web-") + 5
    stale = V1DeleteOptions(preconditions=V1Preconditions(resource_version="1"))
    with pytest.raises(ApiException) as conflict:
        core.delete_namespaced_service(name, "default", body=stale)
    assert conflict.value.status == 409
    assert status_of(conflict)["message"].startswith(
        f'Operation cannot be fulfilled on Service "{name}": the ResourceVersion in the '
        "precondition (1) does not match the ResourceVersion in record ("
    )
    current = V1DeleteOptions(
        preconditions=V1Preconditions(resource_version=created.metadata.resource_version)
    )
    assert core.delete_namespaced_service(name, "default", body=current).metadata.name == name


# LIST.


def test_list_shape_namespaces_and_groups(kube_api: KubeApiServer, kube_client: ApiClient) -> None:
    kube_api.create(service("web", "other"))
    kube_api.create(service("web"))
    kube_api.create(service("db"))
    kube_api.create(endpoint_slice("web-abc", "web"))

    listed = json_of(http(kube_api, "GET", SERVICES_PATH))
    assert listed["kind"] == "ServiceList"
    assert listed["apiVersion"] == "v1"
    assert listed["metadata"] == {"resourceVersion": str(kube_api.resource_version)}
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in listed["items"]] == [
        ("default", "db"),
        ("default", "web"),
        ("other", "web"),
    ]
    # Built-in list items carry no apiVersion or kind, as from a real API server.
    assert all("kind" not in item and "apiVersion" not in item for item in listed["items"])

    core = CoreV1Api(kube_client)
    assert names(core.list_namespaced_service("other").items) == ["web"]
    slices = DiscoveryV1Api(kube_client).list_endpoint_slice_for_all_namespaces()
    assert names(slices.items) == ["web-abc"]
    assert slices.items[0].endpoints[0].conditions.ready is True


LABELLED = {
    "a": {"app": "web", "tier": "front"},
    "b": {"app": "db", "tier": "back"},
    "c": {"app": "web"},
    "d": {},
    "e": {"app": "web", "service.kubernetes.io/service-proxy-name": "waolb"},
    "f": {"app": "db", "service.kubernetes.io/headless": ""},
    "g": {"weight": "7"},
}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", "abcdefg"),
        ("app=web", "ace"),
        ("app==web", "ace"),
        ("app!=web", "bdfg"),
        ("app in (web, db)", "abcef"),
        ("app notin (web)", "bdfg"),
        ("tier", "ab"),
        ("!tier", "cdefg"),
        ("app=web,tier=front", "a"),
        ("app = web , !tier", "ce"),
        ("service.kubernetes.io/service-proxy-name=waolb", "e"),
        ("!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless", "abcdg"),
        ("service.kubernetes.io/headless=", "f"),
        ("weight>5", "g"),
        ("weight<5", ""),
        ("app in (), tier", ""),
    ],
)
def test_label_selectors(api: Api, client: ApiClient, selector: str, expected: str) -> None:
    for name, labels in LABELLED.items():
        api.create(service(name, labels=labels))
    listed = CoreV1Api(client).list_service_for_all_namespaces(label_selector=selector)
    assert "".join(names(listed.items)) == expected


@pytest.mark.parametrize(
    "selector", ["app in web", "=web", "app=(", "app notin (a b)", "bad key!=x", "app,", "x=a=b"]
)
def test_malformed_label_selectors_are_400(client: ApiClient, selector: str) -> None:
    with pytest.raises(ApiException) as bad:
        CoreV1Api(client).list_service_for_all_namespaces(label_selector=selector)
    assert bad.value.status == 400
    assert status_of(bad)["reason"] == "BadRequest"


def test_field_selectors(api: Api, client: ApiClient) -> None:
    for obj in (node("node-a"), node("node-b"), service("web"), service("web", "other")):
        api.create(obj)
    api.create(service("ip", cluster_ip="10.96.7.7"))
    api.create(secret("plain"))
    api.create(secret("cert", secret_type="kubernetes.io/tls", data={"tls.crt": "", "tls.key": ""}))
    core = CoreV1Api(client)
    assert names(core.list_node(field_selector="metadata.name=node-b").items) == ["node-b"]
    assert names(core.list_node(field_selector="metadata.name!=node-b").items) == ["node-a"]
    other = core.list_service_for_all_namespaces(field_selector="metadata.namespace==other")
    assert [s.metadata.namespace for s in other.items] == ["other"]
    both = "metadata.namespace=default,metadata.name=web"
    assert len(core.list_service_for_all_namespaces(field_selector=both).items) == 1
    tls = core.list_secret_for_all_namespaces(field_selector="type=kubernetes.io/tls")
    assert names(tls.items) == ["cert"]
    by_address = core.list_service_for_all_namespaces(field_selector="spec.clusterIP=10.96.7.7")
    assert names(by_address.items) == ["ip"]
    for unsupported, listing in (
        ("spec.ports=80", core.list_service_for_all_namespaces),
        ("metadata.namespace=default", core.list_node),  # nodes have no namespace
    ):
        with pytest.raises(ApiException) as bad:
            listing(field_selector=unsupported)
        assert bad.value.status == 400
        assert "field label not supported" in status_of(bad)["message"]


def test_pages_come_from_one_snapshot(kube_api: KubeApiServer, kube_client: ApiClient) -> None:
    for index in range(5):
        kube_api.create(service(f"s{index}"))
    core = CoreV1Api(kube_client)
    first = core.list_service_for_all_namespaces(limit=2)
    assert names(first.items) == ["s0", "s1"]
    assert first.metadata.remaining_item_count == 3
    kube_api.delete(SERVICES, "s2", "default")
    kube_api.create(service("s9"))
    second = core.list_service_for_all_namespaces(limit=2, _continue=first.metadata._continue)
    assert names(second.items) == ["s2", "s3"]
    last = core.list_service_for_all_namespaces(limit=2, _continue=second.metadata._continue)
    assert names(last.items) == ["s4"]
    assert last.metadata._continue is None
    assert first.metadata.resource_version == last.metadata.resource_version

    kube_api.compact()
    with pytest.raises(ApiException) as expired:
        core.list_service_for_all_namespaces(limit=2, _continue=first.metadata._continue)
    assert expired.value.status == 410
    status = status_of(expired)
    assert status["reason"] == "Expired"
    # The token in the answer continues inconsistently, from the current state.
    rest = core.list_service_for_all_namespaces(_continue=status["metadata"]["continue"])
    assert names(rest.items) == ["s3", "s4", "s9"]


def test_list_resource_version_semantics(kube_api: KubeApiServer) -> None:
    web = kube_api.create(service("web"))
    kube_api.create(service("db"))
    kube_api.delete(SERVICES, "web", "default")
    then = web["metadata"]["resourceVersion"]

    exact = json_of(
        http(kube_api, "GET", SERVICES_PATH, resourceVersion=then, resourceVersionMatch="Exact")
    )
    assert exact["metadata"]["resourceVersion"] == then
    assert [i["metadata"]["name"] for i in exact["items"]] == ["web"]
    # With limit and no match rule, a resourceVersion is exact too.
    paged = json_of(http(kube_api, "GET", SERVICES_PATH, resourceVersion=then, limit="10"))
    assert [i["metadata"]["name"] for i in paged["items"]] == ["web"]
    not_older = json_of(http(kube_api, "GET", SERVICES_PATH, resourceVersion=then))
    assert [i["metadata"]["name"] for i in not_older["items"]] == ["db"]
    any_version = json_of(http(kube_api, "GET", SERVICES_PATH, resourceVersion="0", limit="1"))
    assert len(any_version["items"]) == 1  # "0" is served from the cache, which ignores limit

    future = http(
        kube_api, "GET", SERVICES_PATH, resourceVersion=str(kube_api.resource_version + 5)
    )
    assert future.status == 504
    assert json_of(future)["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"

    kube_api.compact()
    gone = http(kube_api, "GET", SERVICES_PATH, resourceVersion=then, resourceVersionMatch="Exact")
    assert gone.status == 410
    assert json_of(gone)["reason"] == "Expired"


@pytest.mark.parametrize(
    "query",
    [
        {"resourceVersionMatch": "NotOlderThan"},
        {"resourceVersionMatch": "Exact", "resourceVersion": "0"},
        {"resourceVersionMatch": "Newest", "resourceVersion": "1"},
    ],
)
def test_invalid_list_options_are_422(api: Api, query: dict[str, str]) -> None:
    response = http(api, "GET", SERVICES_PATH, **query)
    assert response.status == 422
    assert json_of(response)["reason"] == "Invalid"


def test_continue_with_a_resource_version_is_400(api: Api) -> None:
    for index in range(2):
        api.create(service(f"s{index}"))
    token = json_of(http(api, "GET", SERVICES_PATH, limit="1"))["metadata"]["continue"]
    response = http(api, "GET", SERVICES_PATH, resourceVersion="1", **{"continue": token})
    assert response.status == 400
    assert json_of(response)["reason"] == "BadRequest"
    assert json_of(response)["message"] == (
        "specifying resource version is not allowed when using continue"
    )


# WATCH.


def test_watch_streams_every_change_after_a_resource_version(
    kube_api: KubeApiServer, kube_client: ApiClient
) -> None:
    start = kube_api.resource_version
    kube_api.create(service("web"))
    kube_api.patch(SERVICES, "web", {"metadata": {"labels": {"v": "2"}}}, "default")
    kube_api.create(node("node-a"))  # another type: not in this watch
    kube_api.delete(SERVICES, "web", "default")
    stream = Watch().stream(
        CoreV1Api(kube_client).list_service_for_all_namespaces,
        resource_version=str(start),
        timeout_seconds=5,
    )
    events = first_events(stream, 3)
    assert [event["type"] for event in events] == ["ADDED", "MODIFIED", "DELETED"]
    assert events[1]["object"].metadata.labels == {"v": "2"}
    deleted = events[2]["raw_object"]
    assert deleted["kind"] == "Service"
    assert deleted["metadata"]["resourceVersion"] == str(kube_api.resource_version)


def test_watch_without_resource_version_starts_with_the_current_state(
    kube_api: KubeApiServer, kube_client: ApiClient
) -> None:
    kube_api.create(service("b"))
    kube_api.create(service("a"))
    stream = Watch().stream(
        CoreV1Api(kube_client).list_service_for_all_namespaces, timeout_seconds=5
    )
    initial = first_events(stream, 2)
    assert [(e["type"], e["object"].metadata.name) for e in initial] == [
        ("ADDED", "a"),
        ("ADDED", "b"),
    ]
    kube_api.create(service("c"))
    (later,) = first_events(stream, 1)
    assert (later["type"], later["object"].metadata.name) == ("ADDED", "c")


def test_watch_filters_see_objects_leave_and_enter(
    kube_api: KubeApiServer, kube_client: ApiClient
) -> None:
    kube_api.create(service("web", labels={"app": "web"}))
    start = kube_api.resource_version
    kube_api.patch(SERVICES, "web", {"metadata": {"labels": {"app": "db"}}}, "default")
    kube_api.patch(SERVICES, "web", {"metadata": {"labels": {"app": "web"}}}, "default")
    kube_api.create(service("other"))
    kube_api.delete(SERVICES, "web", "default")
    stream = Watch().stream(
        CoreV1Api(kube_client).list_service_for_all_namespaces,
        resource_version=str(start),
        label_selector="app=web",
        timeout_seconds=5,
    )
    events = first_events(stream, 3)
    assert [event["type"] for event in events] == ["DELETED", "ADDED", "DELETED"]
    left = events[0]["raw_object"]["metadata"]
    # Leaving is reported with the last matching content at the change's resourceVersion.
    assert left["labels"] == {"app": "web"}
    assert left["resourceVersion"] == str(start + 1)


def test_watch_namespace_and_field_selector(api: Api, client: ApiClient) -> None:
    start = api.resource_version
    for name in ("node-a", "node-b"):
        api.create(node(name))
    api.create(service("web", "other"))
    api.create(service("web"))
    core = CoreV1Api(client)
    nodes = Watch().stream(
        core.list_node,
        resource_version=str(start),
        field_selector="metadata.name=node-b",
        timeout_seconds=5,
    )
    assert [e["object"].metadata.name for e in first_events(nodes, 1)] == ["node-b"]
    services = Watch().stream(
        core.list_namespaced_service, "default", resource_version=str(start), timeout_seconds=5
    )
    assert [e["object"].metadata.namespace for e in first_events(services, 1)] == ["default"]


def test_watch_from_a_compacted_version_gets_an_error_event_410(
    kube_api: KubeApiServer, kube_client: ApiClient
) -> None:
    kube_api.create(service("web"))
    old = kube_api.resource_version
    kube_api.create(service("db"))
    kube_api.compact()
    assert list(watch_lines(kube_api, resourceVersion=str(old))) == [
        {
            "type": "ERROR",
            "object": {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f"too old resource version: {old} ({old + 1})",
                "reason": "Expired",
                "code": 410,
            },
        }
    ]
    with pytest.raises(ApiException) as gone:
        list(
            Watch().stream(
                CoreV1Api(kube_client).list_service_for_all_namespaces,
                resource_version=str(old),
                timeout_seconds=5,
            )
        )
    assert gone.value.status == 410
    # The current version is still served: nothing happened since.
    assert list(watch_lines(kube_api, resourceVersion=str(old + 1), timeoutSeconds="1")) == []


def test_the_event_history_is_bounded() -> None:
    with KubeApiServer(history_limit=3) as server:
        versions = [
            int(server.create(service(f"s{i}"))["metadata"]["resourceVersion"]) for i in range(5)
        ]
        kept = list(watch_lines(server, resourceVersion=str(versions[1]), timeoutSeconds="1"))
        assert [e["object"]["metadata"]["name"] for e in kept] == ["s2", "s3", "s4"]
        (expired,) = watch_lines(server, resourceVersion=str(versions[0]), timeoutSeconds="1")
        assert expired["object"]["code"] == 410


def test_watch_from_the_future_gets_an_error_event_504(kube_api: KubeApiServer) -> None:
    future = str(kube_api.resource_version + 10)
    (error,) = watch_lines(kube_api, resourceVersion=future)
    assert error["type"] == "ERROR"
    assert (error["object"]["code"], error["object"]["reason"]) == (504, "Timeout")


def test_bookmarks_carry_only_the_resource_version_and_follow_other_types(
    kube_api: KubeApiServer, kube_client: ApiClient
) -> None:
    start = kube_api.resource_version
    stream = Watch().stream(
        CoreV1Api(kube_client).list_service_for_all_namespaces,
        resource_version=str(start),
        allow_watch_bookmarks=True,
        timeout_seconds=5,
    )
    (first,) = first_events(stream, 1)
    assert first["type"] == "BOOKMARK"
    assert first["raw_object"] == {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": str(start)},
    }
    kube_api.create(node("node-a"))
    (second,) = first_events(stream, 1)
    assert second["raw_object"]["metadata"]["resourceVersion"] == str(start + 1)


def test_watch_ends_cleanly_at_its_timeout_and_sends_no_unasked_bookmarks(
    kube_api: KubeApiServer,
) -> None:
    started = time.monotonic()
    events = list(
        watch_lines(kube_api, resourceVersion=str(kube_api.resource_version), timeoutSeconds="1")
    )
    assert events == []  # and no ProtocolError: the stream ended with its final chunk
    # It ends at its own 1 s timeout, not at the server's default of 30 minutes.
    assert 0.9 <= time.monotonic() - started < 60


def test_dropped_watches_end_without_the_final_chunk(kube_api: KubeApiServer) -> None:
    stream = watch_lines(kube_api, resourceVersion=str(kube_api.resource_version))
    kube_api.create(service("web"))
    assert next(stream)["type"] == "ADDED"
    assert kube_api.drop_watches() == 1
    with pytest.raises(urllib3.exceptions.ProtocolError):
        next(stream)
    assert kube_api.watch_count() == 0


def test_expired_watches_end_with_an_error_event_410(kube_api: KubeApiServer) -> None:
    stream = watch_lines(kube_api, resourceVersion=str(kube_api.resource_version))
    assert kube_api.wait_for_watches(SERVICES)
    assert kube_api.expire_watches() == 1
    (error,) = stream
    assert (error["type"], error["object"]["code"]) == ("ERROR", 410)


# Faults and observation.


def test_restart_keeps_state_and_port_but_not_history(kube_api: KubeApiServer) -> None:
    old = int(kube_api.create(service("web"))["metadata"]["resourceVersion"])
    kube_api.create(service("db"))
    port = kube_api.port
    kube_api.stop()
    with pytest.raises(urllib3.exceptions.NewConnectionError):
        http(kube_api, "GET", SERVICES_PATH)
    kube_api.start()
    assert kube_api.port == port
    listed = json_of(http(kube_api, "GET", SERVICES_PATH))
    assert len(listed["items"]) == 2
    assert listed["metadata"]["resourceVersion"] == str(old + 1)
    # A fresh watch cache: the current version can be watched from, older ones are gone.
    assert list(watch_lines(kube_api, resourceVersion=str(old + 1), timeoutSeconds="1")) == []
    (expired,) = watch_lines(kube_api, resourceVersion=str(old))
    assert expired["object"]["code"] == 410


def test_restart_without_state_is_a_new_cluster(kube_api: KubeApiServer) -> None:
    kube_api.create(service("web"))
    kube_api.restart(keep_state=False)
    listed = json_of(http(kube_api, "GET", SERVICES_PATH))
    assert listed["items"] == []
    assert listed["metadata"]["resourceVersion"] == "1"


def test_stop_cuts_open_watches(kube_api: KubeApiServer) -> None:
    stream = watch_lines(kube_api, resourceVersion=str(kube_api.resource_version))
    assert kube_api.wait_for_watches(SERVICES)
    kube_api.stop()
    with pytest.raises(urllib3.exceptions.ProtocolError):
        next(stream)


def test_injected_failures_and_request_counts(
    kube_api: KubeApiServer, kube_client: ApiClient
) -> None:
    core = CoreV1Api(kube_client)
    with kube_api.failing(429, count=2):
        for _ in range(2):
            throttled = http(kube_api, "GET", SERVICES_PATH)
            assert throttled.status == 429
            assert throttled.headers["Retry-After"] == "1"
            assert json_of(throttled)["reason"] == "TooManyRequests"
        core.list_service_for_all_namespaces()
    with kube_api.failing(500, verbs={"watch"}):
        core.list_service_for_all_namespaces()
        response = http(kube_api, "GET", SERVICES_PATH, watch="true")
        assert response.status == 500
        assert json_of(response)["reason"] == "InternalError"
    assert http(kube_api, "GET", SERVICES_PATH, watch="1", timeoutSeconds="1").status == 200

    lists = kube_api.requests(verb="list", path=SERVICES_PATH)
    assert [request.code for request in lists] == [429, 429, 200, 200]
    assert kube_api.count_requests(verb="watch") == 2
    assert kube_api.count_requests(path="/api/v1/nodes") == 0


def test_discovery_follows_registered_resources(
    kube_api: KubeApiServer, kube_client: ApiClient
) -> None:
    assert CoreApi(kube_client).get_api_versions().versions == ["v1"]
    core_resources = {r.name for r in CoreV1Api(kube_client).get_api_resources().resources}
    assert core_resources == {"services", "nodes", "secrets"}
    (discovery,) = DiscoveryV1Api(kube_client).get_api_resources().resources
    assert (discovery.name, discovery.kind, discovery.namespaced) == (
        "endpointslices",
        "EndpointSlice",
        True,
    )

    # A custom resource plugs in with one registration and is served like any other.
    kube_api.register(NODE_CONFIGS)
    groups = {g.name for g in ApisApi(kube_client).get_api_versions().groups}
    assert groups == {"discovery.k8s.io", "wao.bitmedia.co.jp"}
    custom = CustomObjectsApi(kube_client)
    custom.create_namespaced_custom_object(
        "wao.bitmedia.co.jp",
        "v1beta1",
        "wao-system",
        "nodeconfigs",
        node_config("wao-system", "node-a", "node-a", "http://10.0.0.1:8080/v2/models/m/infer"),
    )
    listed = custom.list_cluster_custom_object("wao.bitmedia.co.jp", "v1beta1", "nodeconfigs")
    assert listed["kind"] == "NodeConfigList"
    (item,) = listed["items"]
    # Unlike built-in types, custom resources keep apiVersion and kind on list items.
    assert (item["kind"], item["metadata"]["namespace"]) == ("NodeConfig", "wao-system")


# What WAO scoring reads: NodeMetrics, NodeConfigs, custom metrics.

CUSTOM_METRICS = "/apis/custom.metrics.k8s.io/v1beta2"


def test_node_metrics_are_served_as_metrics_server_serves_them(api: Api, client: ApiClient) -> None:
    api.register(NODE_METRICS)
    api.create(node_metrics("node-b", "123456789n"))
    api.create(node_metrics("node-a", "250m", "2Gi"))
    custom = CustomObjectsApi(client)
    listed = custom.list_cluster_custom_object("metrics.k8s.io", "v1beta1", "nodes")
    assert (listed["kind"], listed["apiVersion"]) == ("NodeMetricsList", "metrics.k8s.io/v1beta1")
    assert [item["metadata"]["name"] for item in listed["items"]] == ["node-a", "node-b"]
    first = listed["items"][0]
    assert "kind" not in first
    assert first["usage"] == {"cpu": "250m", "memory": "2Gi"}
    assert first["window"] == "15.004s"
    assert time.strptime(first["timestamp"], "%Y-%m-%dT%H:%M:%SZ")
    read = custom.get_cluster_custom_object("metrics.k8s.io", "v1beta1", "nodes", "node-b")
    assert (read["kind"], read["usage"]["cpu"]) == ("NodeMetrics", "123456789n")
    with pytest.raises(ApiException) as missing:
        custom.get_cluster_custom_object("metrics.k8s.io", "v1beta1", "nodes", "node-c")
    assert status_of(missing)["message"] == 'nodes.metrics.k8s.io "node-c" not found'


def test_node_configs_are_listed_and_watched(api: Api, client: ApiClient) -> None:
    api.register(NODE_CONFIGS)
    custom = CustomObjectsApi(client)
    group = ("wao.bitmedia.co.jp", "v1beta1", "nodeconfigs")
    version = custom.list_cluster_custom_object(*group)["metadata"]["resourceVersion"]
    api.create(node_config("wao-system", "nc-a", "node-a", "http://10.0.0.1:8080/v2/models/m"))
    provider = node_config(
        "wao-system", "nc-b", "node-b", "https://10.0.0.2", type="Redfish", secret="bmc"
    )
    api.create(provider)
    events = list(
        Watch().stream(
            custom.list_cluster_custom_object, *group, resource_version=version, timeout_seconds=1
        )
    )
    assert [(e["type"], e["object"]["spec"]["nodeName"]) for e in events] == [
        ("ADDED", "node-a"),
        ("ADDED", "node-b"),
    ]
    predictors = [event["object"]["spec"]["predictor"] for event in events]
    assert predictors == [
        {
            "powerConsumption": {
                "type": "V2InferenceProtocol",
                "endpoint": "http://10.0.0.1:8080/v2/models/m",
            }
        },
        {
            "powerConsumptionEndpointProvider": {
                "type": "Redfish",
                "endpoint": "https://10.0.0.2",
                "basicAuthSecret": {"name": "bmc"},
            }
        },
    ]


def test_secret_data_is_base64_encoded(kube_api: KubeApiServer, kube_client: ApiClient) -> None:
    kube_api.create(
        secret("bmc", "wao-system", data={"username": "admin", "password": b"s3cr\xc3t"})
    )
    read = CoreV1Api(kube_client).read_namespaced_secret("bmc", "wao-system")
    assert read.data == {"username": "YWRtaW4=", "password": "czNjcsN0"}


@pytest.mark.parametrize(
    ("value", "quantity"),
    [
        (22.5, "22500m"),
        (25, "25"),
        (0.0, "0"),
        (22.123456, "22123456u"),
        (0.1, "100m"),
        (1000.0, "1k"),
        (-3.5, "-3500m"),
        (1e-7, "0"),  # below the adapter's six decimals
    ],
)
def test_values_are_serialized_as_wao_metrics_adapter_does(value: float, quantity: str) -> None:
    assert adapter_quantity(value) == quantity


def test_custom_metric_of_one_node(kube_api: KubeApiServer) -> None:
    kube_api.serve_custom_metrics()
    kube_api.set_node_metric("node-a", "inlet_temp", 22.5)
    answer = http(kube_api, "GET", f"{CUSTOM_METRICS}/nodes/node-a/inlet_temp")
    assert answer.status == 200
    assert json_of(answer) == {
        "kind": "MetricValueList",
        "apiVersion": "custom.metrics.k8s.io/v1beta2",
        "metadata": {},
        "items": [
            {
                "describedObject": {"kind": "Node", "name": "node-a", "apiVersion": "/v1"},
                "metric": {"name": "inlet_temp", "selector": None},
                "timestamp": ANY,
                "value": "22500m",
            }
        ],
    }
    for path, described in (
        ("node-a/delta_p", "delta_p for nodes node-a"),
        ("node-z/inlet_temp", "inlet_temp for nodes node-z"),
    ):
        missing = http(kube_api, "GET", f"{CUSTOM_METRICS}/nodes/{path}")
        assert missing.status == 404
        assert json_of(missing) == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f"the server could not find the metric {described}",
            "reason": "NotFound",
            "code": 404,
        }
    kube_api.remove_node_metric("node-a", "inlet_temp")
    assert http(kube_api, "GET", f"{CUSTOM_METRICS}/nodes/node-a/inlet_temp").status == 404
    with pytest.raises(KeyError):
        kube_api.remove_node_metric("node-a", "inlet_temp")
    assert http(kube_api, "POST", f"{CUSTOM_METRICS}/nodes/node-a/inlet_temp", {}).status == 405


def test_custom_metric_wildcard_covers_node_objects_by_label(kube_api: KubeApiServer) -> None:
    kube_api.serve_custom_metrics()
    for name, labels in (("node-c", {}), ("node-a", {"wao": "yes"}), ("node-b", {"wao": "yes"})):
        kube_api.create(node(name, labels=labels))
    for name, value in (("node-a", 21.0), ("node-c", 23.25), ("node-x", 30.0)):
        kube_api.set_node_metric(name, "inlet_temp", value)

    def values(path: str, **query: str) -> list[tuple[str, str]]:
        answer = http(kube_api, "GET", path, **query)
        assert answer.status == 200
        return [(i["describedObject"]["name"], i["value"]) for i in json_of(answer)["items"]]

    # node-b has no value and node-x no Node object: neither is listed.
    everything = [("node-a", "21"), ("node-c", "23250m")]
    assert values(f"{CUSTOM_METRICS}/nodes/*/inlet_temp") == everything
    assert values(f"{CUSTOM_METRICS}/nodes/%2A/inlet_temp") == everything
    assert values(f"{CUSTOM_METRICS}/nodes/*/inlet_temp", labelSelector="wao=yes") == everything[:1]
    assert values(f"{CUSTOM_METRICS}/nodes/*/no_such_metric") == []
    bad = http(kube_api, "GET", f"{CUSTOM_METRICS}/nodes/*/inlet_temp", labelSelector="a in b")
    assert (bad.status, json_of(bad)["reason"]) == (400, "BadRequest")


def test_wao_metrics_adapter_fails_for_a_node_without_value(kube_api: KubeApiServer) -> None:
    kube_api.serve_custom_metrics(missing="error")
    for name in ("node-a", "node-b"):
        kube_api.create(node(name))
    kube_api.set_node_metric("node-a", "delta_p", 7.125)
    failure = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "metric delta_p for /nodes/node-b not found",
        "code": 500,
    }
    for name in ("node-b", "*"):  # one node missing fails the whole wildcard
        answer = http(kube_api, "GET", f"{CUSTOM_METRICS}/nodes/{name}/delta_p")
        assert (answer.status, json_of(answer)) == (500, failure)
    kube_api.set_node_metric("node-b", "delta_p", "bogus")  # sent as it is
    (item_a, item_b) = json_of(http(kube_api, "GET", f"{CUSTOM_METRICS}/nodes/*/delta_p"))["items"]
    assert (item_a["value"], item_a["windowSeconds"]) == ("7125m", 0)
    assert item_b["value"] == "bogus"


def test_custom_metrics_discovery(kube_api: KubeApiServer, kube_client: ApiClient) -> None:
    # Without an adapter the group does not exist.
    absent = http(kube_api, "GET", f"{CUSTOM_METRICS}/nodes/node-a/inlet_temp")
    assert absent.status == 404
    assert json_of(absent)["message"] == "the server could not find the requested resource"
    assert http(kube_api, "GET", CUSTOM_METRICS).status == 404
    kube_api.register_wao()
    kube_api.set_node_metric("node-a", "inlet_temp", 20.0)
    kube_api.set_node_metric("node-a", "delta_p", 5.0)
    groups = {
        g.name: g.preferred_version.version for g in ApisApi(kube_client).get_api_versions().groups
    }
    assert groups == {
        "custom.metrics.k8s.io": "v1beta2",
        "discovery.k8s.io": "v1",
        "metrics.k8s.io": "v1beta1",
        "wao.bitmedia.co.jp": "v1beta1",
    }
    resources = json_of(http(kube_api, "GET", CUSTOM_METRICS))["resources"]
    assert [(r["name"], r["kind"], r["namespaced"], r["verbs"]) for r in resources] == [
        ("nodes/delta_p", "MetricValueList", False, ["get"]),
        ("nodes/inlet_temp", "MetricValueList", False, ["get"]),
    ]


def test_faults_reach_the_metrics_apis(kube_api: KubeApiServer) -> None:
    kube_api.register_wao()
    kube_api.set_node_metric("node-a", "inlet_temp", 20.0)
    path = f"{CUSTOM_METRICS}/nodes/node-a/inlet_temp"
    with kube_api.failing(500, count=1, verbs={"get"}):
        assert json_of(http(kube_api, "GET", path))["reason"] == "InternalError"
        assert http(kube_api, "GET", path).status == 200
    with kube_api.failing(503):
        assert json_of(http(kube_api, "GET", path))["reason"] == "ServiceUnavailable"
    with kube_api.unavailable("custom.metrics.k8s.io"):
        for down in (path, CUSTOM_METRICS):
            answer = http(kube_api, "GET", down)
            assert (answer.status, answer.data) == (503, b"service unavailable\n")
            assert answer.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert http(kube_api, "GET", NODE_METRICS.collection_path()).status == 200
    assert [r.code for r in kube_api.requests(path=path)] == [500, 200, 503, 503]
    assert {r.verb for r in kube_api.requests(path=path)} == {"get"}

    with kube_api.slow(2.0, count=1):
        started = time.monotonic()
        with pytest.raises(urllib3.exceptions.ReadTimeoutError):
            urllib3.request("GET", kube_api.url + path, retries=False, timeout=0.2)
        # The client gave up long before the server would have answered.
        assert time.monotonic() - started < 2.0
        assert http(kube_api, "GET", path).status == 200
