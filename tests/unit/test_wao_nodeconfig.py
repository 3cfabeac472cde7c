"""NodeConfig parsing, and the basic-auth Secrets its EndpointTerms name (tests/support/kubeapi)."""

from __future__ import annotations

import base64
import copy
import threading
from typing import Any

import pytest
from kubernetes.client import ApiClient

from kubeapi import KubeApiServer
from waolb.kube.objects import MalformedObjectError
from waolb.kube.rest import RestClient
from waolb.wao.nodeconfig import EndpointTerm, NodeConfig, parse_node_config
from waolb.wao.predictor import BasicAuth, PredictorError
from waolb.wao.secrets import SecretReader

NAMESPACE = "wao-system"


def node_config(**predictor: Any) -> dict[str, Any]:
    return {
        "apiVersion": "wao.bitmedia.co.jp/v1beta1",
        "kind": "NodeConfig",
        "metadata": {"namespace": NAMESPACE, "name": "worker-1", "resourceVersion": "42"},
        "spec": {
            "nodeName": "worker-1",
            "metricsCollector": {
                "inletTemp": {"type": "Redfish", "endpoint": "https://10.0.0.2"},
                "deltaP": {"type": "DifferentialPressureAPI", "endpoint": "http://10.0.0.2:5000"},
            },
            "predictor": predictor,
        },
    }


def test_parses_both_predictor_terms() -> None:
    parsed = parse_node_config(
        node_config(
            powerConsumption={
                "type": "V2InferenceProtocol",
                "endpoint": "http://10.0.0.2:8080/v2/models/power/versions/v0.1.0/infer",
            },
            powerConsumptionEndpointProvider={
                "type": "Redfish",
                "endpoint": "https://10.0.0.2",
                "basicAuthSecret": {"name": "worker-1-bmc"},
                "fetchInterval": "1m30s",
            },
        )
    )
    assert parsed == NodeConfig(
        namespace=NAMESPACE,
        name="worker-1",
        node_name="worker-1",
        power_consumption=EndpointTerm(
            "V2InferenceProtocol", "http://10.0.0.2:8080/v2/models/power/versions/v0.1.0/infer"
        ),
        power_consumption_endpoint_provider=EndpointTerm(
            "Redfish", "https://10.0.0.2", basic_auth_secret="worker-1-bmc", fetch_interval=90.0
        ),
        resource_version="42",
    )


def test_optional_parts_may_be_absent() -> None:
    document = node_config(powerConsumption={"type": "Fake", "endpoint": ""})
    del document["spec"]["metricsCollector"]  # not read by waolb
    del document["apiVersion"], document["kind"]
    parsed = parse_node_config(document)
    assert parsed.power_consumption == EndpointTerm("Fake", "")
    assert parsed.power_consumption_endpoint_provider is None
    assert parse_node_config(node_config()).power_consumption is None


@pytest.mark.parametrize("secret", [{}, {"name": ""}, None])
def test_a_secret_reference_without_a_name_means_none(secret: dict[str, str] | None) -> None:
    term = {"type": "Redfish", "endpoint": "https://bmc", "basicAuthSecret": secret}
    parsed = parse_node_config(node_config(powerConsumptionEndpointProvider=term))
    assert parsed.power_consumption_endpoint_provider == EndpointTerm("Redfish", "https://bmc")


def broken(path: str, value: Any) -> dict[str, Any]:
    """A valid NodeConfig with the field at dotted ``path`` set to ``value`` (DELETE: removed)."""
    document = node_config(powerConsumption={"type": "Fake", "endpoint": "http://x"})
    *parents, last = path.split(".")
    target = document
    for key in parents:
        target = target[key]
    if value is DELETE:
        del target[last]
    else:
        target[last] = copy.deepcopy(value)
    return document


DELETE: Any = object()
TERM = "spec.predictor.powerConsumption"


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("apiVersion", "wao.bitmedia.co.jp/v1alpha1", "apiVersion: expected"),
        ("kind", "NodeConfigTemplate", "kind: expected"),
        ("metadata", DELETE, "metadata: expected an object"),
        ("metadata.name", "", "metadata: namespace and name must not be empty"),
        ("spec", DELETE, "spec: expected an object"),
        ("spec", [], "spec: expected an object"),
        ("spec.nodeName", DELETE, "spec.nodeName: expected a node name, got None"),
        ("spec.nodeName", 7, "spec.nodeName: expected a node name, got 7"),
        ("spec.nodeName", "", "spec.nodeName: must not be empty"),
        ("spec.predictor", DELETE, "spec.predictor: expected an object"),
        ("spec.predictor.powerConsumption", "Fake", f"{TERM}: expected an EndpointTerm object"),
        (f"{TERM}.type", "Foo", f"{TERM}.type: unknown type 'Foo'"),
        (f"{TERM}.type", "fake", f"{TERM}.type: unknown type 'fake'"),
        (f"{TERM}.type", DELETE, f"{TERM}.type: expected an endpoint type, got None"),
        (f"{TERM}.endpoint", DELETE, f"{TERM}.endpoint: expected a URL, got None"),
        (f"{TERM}.endpoint", ["http://x"], f"{TERM}.endpoint: expected a URL"),
        (f"{TERM}.basicAuthSecret", "name", f"{TERM}.basicAuthSecret: expected an object"),
        (f"{TERM}.basicAuthSecret", {"name": 1}, f"{TERM}.basicAuthSecret.name: expected a"),
        (f"{TERM}.fetchInterval", 10, f"{TERM}.fetchInterval: expected a duration, got 10"),
        (f"{TERM}.fetchInterval", "10 parsecs", f"{TERM}.fetchInterval: invalid duration"),
        (f"{TERM}.fetchInterval", "-1s", f"{TERM}.fetchInterval: '-1s' is negative"),
    ],
)
def test_malformed_node_configs_name_the_field(path: str, value: Any, message: str) -> None:
    with pytest.raises(MalformedObjectError) as caught:
        parse_node_config(broken(path, value))
    assert str(caught.value).startswith(message), str(caught.value)


@pytest.mark.parametrize("document", [None, [], "NodeConfig"])
def test_non_objects_are_malformed(document: object) -> None:
    with pytest.raises(MalformedObjectError, match="object: expected an object"):
        parse_node_config(document)


# ---- basic-auth Secrets ----------------------------------------------------------------------


class FakeClock:
    """Time the test moves by hand (the reader takes any monotonic clock)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def secret(name: str, **values: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"namespace": NAMESPACE, "name": name},
        "type": "Opaque",
        "data": {key: base64.b64encode(value.encode()).decode() for key, value in values.items()},
    }


def gets(server: KubeApiServer, name: str) -> int:
    return server.count_requests(verb="get", path=f"/api/v1/namespaces/{NAMESPACE}/secrets/{name}")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def reader(kube_client: ApiClient, clock: FakeClock) -> SecretReader:
    return SecretReader(RestClient(kube_client), ttl=30.0, clock=clock)


def expect_secret_error(reader: SecretReader, name: str) -> str:
    with pytest.raises(PredictorError) as caught:
        reader.basic_auth(NAMESPACE, name)
    assert caught.value.kind == "secret"
    return str(caught.value)


def test_reads_and_caches_credentials_for_the_ttl(
    kube_api: KubeApiServer, reader: SecretReader, clock: FakeClock
) -> None:
    kube_api.create(secret("bmc", username="root", password="calvin"))
    for _ in range(3):
        assert reader.basic_auth(NAMESPACE, "bmc") == BasicAuth("root", "calvin")
    assert gets(kube_api, "bmc") == 1
    kube_api.update(secret("bmc", username="root", password="changed"))
    clock.now += 29.0
    assert reader.basic_auth(NAMESPACE, "bmc").password == "calvin"
    clock.now += 1.0
    assert reader.basic_auth(NAMESPACE, "bmc").password == "changed"
    assert gets(kube_api, "bmc") == 2
    assert kube_api.count_requests(verb="watch") == 0


def test_empty_values_are_read_and_then_not_sent(
    kube_api: KubeApiServer, reader: SecretReader
) -> None:
    kube_api.create(secret("half", username="root", password=""))
    auth = reader.basic_auth(NAMESPACE, "half")
    assert auth == BasicAuth("root", "")
    assert not auth.usable


def test_a_missing_secret_is_an_error_cached_for_the_ttl(
    kube_api: KubeApiServer, reader: SecretReader, clock: FakeClock
) -> None:
    assert f"Secret {NAMESPACE}/later does not exist" in expect_secret_error(reader, "later")
    kube_api.create(secret("later", username="root", password="calvin"))
    expect_secret_error(reader, "later")
    assert gets(kube_api, "later") == 1
    clock.now += 30.0
    assert reader.basic_auth(NAMESPACE, "later") == BasicAuth("root", "calvin")
    assert gets(kube_api, "later") == 2


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"username": "root"}, "has no 'password' key"),
        ({"password": "calvin"}, "has no 'username' key"),
    ],
)
def test_missing_keys_are_errors(
    kube_api: KubeApiServer, reader: SecretReader, values: dict[str, str], message: str
) -> None:
    kube_api.create(secret("partial", **values))
    assert message in expect_secret_error(reader, "partial")


def test_undecodable_values_are_errors(kube_api: KubeApiServer, reader: SecretReader) -> None:
    document = secret("garbled", username="root")
    document["data"]["password"] = "not base64!"
    kube_api.create(document)
    assert "'password' is not base64" in expect_secret_error(reader, "garbled")
    # Not even ASCII: base64 refuses it with a plain ValueError, which once escaped the reader.
    document = secret("accented", password="calvin")
    document["data"]["username"] = "\u00e9t\u00e9"
    kube_api.create(document)
    assert "'username' is not base64" in expect_secret_error(reader, "accented")


def test_forbidden_is_an_error(kube_api: KubeApiServer, reader: SecretReader) -> None:
    kube_api.create(secret("locked", username="root", password="calvin"))
    with kube_api.failing(403, verbs=["get"]):
        assert "not allowed to read it (HTTP 403)" in expect_secret_error(reader, "locked")


def test_server_errors_are_not_cached(kube_api: KubeApiServer, reader: SecretReader) -> None:
    kube_api.create(secret("flaky", username="root", password="calvin"))
    with kube_api.failing(500, verbs=["get"]):
        assert "HTTP 500" in expect_secret_error(reader, "flaky")
    assert reader.basic_auth(NAMESPACE, "flaky") == BasicAuth("root", "calvin")
    assert gets(kube_api, "flaky") == 2


def test_an_unreachable_api_server_is_an_error(
    kube_api: KubeApiServer, kube_client: ApiClient
) -> None:
    reader = SecretReader(RestClient(kube_client), ttl=30.0, request_timeout=1.0)
    kube_api.stop()
    assert "reading it failed" in expect_secret_error(reader, "any")


def test_concurrent_readers_share_one_get(kube_api: KubeApiServer, reader: SecretReader) -> None:
    kube_api.create(secret("shared", username="root", password="calvin"))
    results: list[BasicAuth] = []
    barrier = threading.Barrier(8)

    def read() -> None:
        barrier.wait()
        results.append(reader.basic_auth(NAMESPACE, "shared"))

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [BasicAuth("root", "calvin")] * 8
    assert gets(kube_api, "shared") == 1
