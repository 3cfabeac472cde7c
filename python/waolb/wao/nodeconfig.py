"""WAO NodeConfigs (``wao.bitmedia.co.jp/v1beta1``): which power predictor serves which node.

A NodeConfig names, for one node (``spec.nodeName``), a power predictor
(``spec.predictor.powerConsumption``) and/or an endpoint provider that hands one out
(``spec.predictor.powerConsumptionEndpointProvider``). Both are EndpointTerms.

Decisions, where the CRD leaves room:

* ``type`` must be one of WAO's four client types. The CRD accepts any string and WAO fails
  later, at prediction time; naming the field when the object arrives is more useful.
* ``spec.metricsCollector`` is required by the CRD but not read: waolb takes inlet temperature
  and pressure difference from the custom metrics API, as upstream WAO-LB does, and rejecting an
  object over a field it never uses would only turn a parser gap into an outage.
* A ``basicAuthSecret`` without a name, or with an empty one, means no Secret, as in WAO.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from waolb.config.values import parse_duration
from waolb.kube.objects import MalformedObjectError, expect_type, object_metadata, optional_field

API_VERSION: Final = "wao.bitmedia.co.jp/v1beta1"
KIND: Final = "NodeConfig"

TYPE_FAKE: Final = "Fake"
TYPE_REDFISH: Final = "Redfish"
TYPE_DIFFERENTIAL_PRESSURE_API: Final = "DifferentialPressureAPI"
TYPE_V2_INFERENCE_PROTOCOL: Final = "V2InferenceProtocol"
ENDPOINT_TYPES: Final = frozenset(
    {TYPE_FAKE, TYPE_REDFISH, TYPE_DIFFERENTIAL_PRESSURE_API, TYPE_V2_INFERENCE_PROTOCOL}
)


@dataclass(frozen=True)
class EndpointTerm:
    """Where a WAO client gets its data: ``type`` selects the client, ``endpoint`` is its URL."""

    type: str
    endpoint: str
    # The name of a Secret in the NodeConfig's namespace holding username and password.
    basic_auth_secret: str | None = None
    fetch_interval: float | None = None  # seconds


@dataclass(frozen=True)
class NodeConfig:
    namespace: str
    name: str
    node_name: str
    power_consumption: EndpointTerm | None
    power_consumption_endpoint_provider: EndpointTerm | None
    resource_version: str


def parse_node_config(obj: object) -> NodeConfig:
    """Parse a NodeConfig JSON object; MalformedObjectError names the offending field."""
    meta = object_metadata(obj)
    assert isinstance(obj, dict)  # object_metadata checked it
    for key, expected in (("apiVersion", API_VERSION), ("kind", KIND)):
        # List items of custom resources carry both; watch events and GETs do too.
        value = obj.get(key)
        if value is not None and value != expected:
            raise MalformedObjectError(f"{key}: expected {expected!r}, got {value!r}")
    spec = expect_type(obj.get("spec"), dict, "spec", "an object")
    node_name = expect_type(spec.get("nodeName"), str, "spec.nodeName", "a node name")
    if not node_name:
        raise MalformedObjectError("spec.nodeName: must not be empty")
    predictor = expect_type(spec.get("predictor"), dict, "spec.predictor", "an object")
    return NodeConfig(
        namespace=meta.namespace,
        name=meta.name,
        node_name=node_name,
        power_consumption=_endpoint_term(predictor, "powerConsumption", "spec.predictor"),
        power_consumption_endpoint_provider=_endpoint_term(
            predictor, "powerConsumptionEndpointProvider", "spec.predictor"
        ),
        resource_version=meta.resource_version,
    )


def _endpoint_term(parent: Mapping[str, Any], key: str, where: str) -> EndpointTerm | None:
    raw = optional_field(parent, key, dict, where, "an EndpointTerm object")
    if raw is None:
        return None
    at = f"{where}.{key}"
    term_type = expect_type(raw.get("type"), str, f"{at}.type", "an endpoint type")
    if term_type not in ENDPOINT_TYPES:
        raise MalformedObjectError(
            f"{at}.type: unknown type {term_type!r} (expected one of {sorted(ENDPOINT_TYPES)})"
        )
    endpoint = expect_type(raw.get("endpoint"), str, f"{at}.endpoint", "a URL")
    secret = optional_field(raw, "basicAuthSecret", dict, at, "an object") or {}
    secret_name = optional_field(secret, "name", str, f"{at}.basicAuthSecret", "a Secret name")
    return EndpointTerm(
        type=term_type,
        endpoint=endpoint,
        basic_auth_secret=secret_name or None,
        fetch_interval=_fetch_interval(raw, at),
    )


def _fetch_interval(term: Mapping[str, Any], where: str) -> float | None:
    text = optional_field(term, "fetchInterval", str, where, "a duration")
    if text is None:
        return None
    try:
        seconds = parse_duration(text)
    except ValueError as error:
        raise MalformedObjectError(f"{where}.fetchInterval: {error}") from None
    if seconds < 0:
        raise MalformedObjectError(f"{where}.fetchInterval: {text!r} is negative")
    return seconds
