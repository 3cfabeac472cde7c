"""The node inputs of WAO scoring, read from the Kubernetes metrics APIs.

CPU usage comes from metrics-server (``metrics.k8s.io/v1beta1`` NodeMetrics), inlet_temp and
delta_p from wao-metrics-adapter (``custom.metrics.k8s.io/v1beta2``, metrics of root-scoped
Node objects). Each is one request for all nodes where upstream WAO-LB sends one per node, made
with the API client's host, credentials and TLS settings; bodies are decoded with orjson, without
the client's model objects. One malformed item costs only its node: it is left out and named in
``NodeValues.skipped``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import quote

import orjson
import urllib3

from waolb import logs

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

log = logs.get_logger(__name__)

NODE_METRICS_PATH: Final = "/apis/metrics.k8s.io/v1beta1/nodes"
CUSTOM_METRICS_PATH: Final = "/apis/custom.metrics.k8s.io/v1beta2"
# How the kube-apiserver answers a path nothing serves, such as an API group without an
# APIService: a 404 carrying any other message comes from the group's own server.
_NOT_SERVED: Final = "the server could not find the requested resource"

ErrorKind = Literal["unavailable", "not_found", "http_status", "connection", "timeout", "response"]


class MetricsApiError(Exception):
    """A metrics request failed as a whole.

    ``kind`` is ``unavailable`` (the API group is not installed: 404, or its server is down:
    503), ``not_found`` (the group's server does not know the metric or node), ``http_status``
    (any other error answer), ``connection``, ``timeout`` or ``response`` (an answer that is not
    the expected JSON). ``status`` is the HTTP status and ``reason`` the Status object's reason
    ("" when it has none), when there was an answer.
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.status = status
        self.reason = reason


class NodeValues(dict[str, float]):
    """Values by node name. ``skipped`` maps every item left out to why: by node name, or as
    ``items[i]`` when the item does not even name its node."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped: dict[str, str] = {}


class ClusterMetrics:
    """Reads node metrics through ``api_client``; every request gives up after ``timeout``
    seconds (connecting, and then each wait for data)."""

    def __init__(self, api_client: ApiClient, timeout: float) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be above zero, got {timeout}")
        self._api_client = api_client
        self._timeout = timeout

    def node_cpu_usage(self) -> NodeValues:
        """CPU usage in cores of every node metrics-server has figures for (one LIST)."""
        values = NodeValues()
        _collect(values, self._items(NODE_METRICS_PATH), _node_name, _cpu_usage)
        _warn_skipped(values, "NodeMetrics")
        return values

    def node_metric(self, metric: str, nodes: Collection[str] = ()) -> NodeValues:
        """The custom metric ``metric`` of every node that has it, from one wildcard request.

        wao-metrics-adapter fails a wildcard request as a whole (500, a Status without reason)
        when any Node object has no value yet, such as a node without NodeConfig. Then, if
        ``nodes`` names the nodes wanted, each is asked for on its own and those without a value
        are skipped.
        """
        values = NodeValues()
        read_value = _metric_value(metric)
        try:
            items = self._items(_metric_path("*", metric))
        except MetricsApiError as error:
            if not (nodes and _is_provider_error(error)):
                raise
            log.debug("wildcard custom metric request failed; asking node by node", error=error)
            for node in nodes:
                try:
                    node_items = self._items(_metric_path(node, metric))
                except MetricsApiError as node_error:
                    if node_error.kind != "not_found" and not _is_provider_error(node_error):
                        raise
                    values.skipped[node] = str(node_error)
                else:
                    _collect(values, node_items, _described_node, read_value)
        else:
            _collect(values, items, _described_node, read_value)
        _warn_skipped(values, metric)
        return values

    def _items(self, path: str) -> list[Any]:
        """The ``items`` of the JSON list at ``path``."""
        body = self._get(path)
        try:
            decoded = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            raise MetricsApiError("response", f"{path}: undecodable answer: {error}") from None
        items = decoded.get("items") if isinstance(decoded, dict) else None
        if not isinstance(items, list):
            raise MetricsApiError("response", f"{path}: the answer is not a list of items")
        return items

    def _get(self, path: str) -> bytes:
        # Lazy: importing the kubernetes package costs a third of a second, and whoever built
        # the ApiClient has paid it already.
        from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

        method, url, headers, _, _ = self._api_client.param_serialize(
            method="GET",
            resource_path=path,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        try:
            response: urllib3.BaseHTTPResponse = self._api_client.call_api(
                method, url, header_params=headers, _request_timeout=self._timeout
            ).response
            try:
                body = response.data
            finally:
                response.release_conn()
        except ApiException as error:
            # The client raises it itself only for TLS failures and for answers it retried.
            if not error.status:
                raise MetricsApiError("connection", f"{path}: {error.reason}") from None
            raise _answer_error(path, error.status, error.body or b"") from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise _transport_error(path, error) from None
        if response.status != 200:
            raise _answer_error(path, response.status, body)
        return body


def _metric_path(node: str, metric: str) -> str:
    return f"{CUSTOM_METRICS_PATH}/nodes/{quote(node, safe='*')}/{quote(metric, safe='')}"


def _answer_error(path: str, status: int, body: bytes | str) -> MetricsApiError:
    reason: str | None = None
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:
        decoded = None
    if isinstance(decoded, dict) and decoded.get("kind") == "Status":
        reason = str(decoded.get("reason") or "")
        message = str(decoded.get("message") or "")
    else:
        # The aggregator's proxy errors are plain text ("service unavailable").
        text = body.decode(errors="replace") if isinstance(body, bytes) else body
        message = text.strip()[:200]
    if status == 503 or (status == 404 and (reason is None or message == _NOT_SERVED)):
        kind: ErrorKind = "unavailable"
    elif status == 404:
        kind = "not_found"
    else:
        kind = "http_status"
    said = f"HTTP {status} {reason}" if reason else f"HTTP {status}"
    return MetricsApiError(kind, f"{path}: {said}: {message}", status=status, reason=reason)


def _transport_error(path: str, error: Exception) -> MetricsApiError:
    # With retries enabled urllib3 wraps the last failure.
    cause = error.reason if isinstance(error, urllib3.exceptions.MaxRetryError) else error
    # A refused connection is a NewConnectionError, which urllib3 derives from its timeouts.
    timed_out = isinstance(cause, urllib3.exceptions.TimeoutError | TimeoutError) and not (
        isinstance(cause, urllib3.exceptions.NewConnectionError)
    )
    return MetricsApiError("timeout" if timed_out else "connection", f"{path}: {cause!r}")


def _is_provider_error(error: MetricsApiError) -> bool:
    """A 500 whose Status has no reason: the metrics provider failed with a plain error, as
    wao-metrics-adapter does for a node without a value."""
    return error.status == 500 and error.reason == ""


def _node_name(item: Any) -> object:
    return item["metadata"]["name"]


def _described_node(item: Any) -> object:
    described = item["describedObject"]
    if described.get("kind") != "Node":
        raise ValueError(f"describes a {described.get('kind')!r}, not a Node")
    return described["name"]


def _cpu_usage(item: Any) -> float:
    cores = _quantity(item["usage"]["cpu"])
    if cores < 0:
        raise ValueError(f"negative CPU usage {cores}")
    return cores


def _metric_value(metric: str) -> Callable[[Any], float]:
    def read(item: Any) -> float:
        named = item["metric"]["name"]
        if named != metric:
            raise ValueError(f"is metric {named!r}, not {metric!r}")
        return _quantity(item["value"])

    return read


def _quantity(value: object) -> float:
    """A Kubernetes quantity ("22500m", "123456789n", "1.5", "2k") as a finite float."""
    # Lazy, as in ClusterMetrics._get.
    from kubernetes.utils.quantity import parse_quantity  # noqa: PLC0415

    # Go's Quantity decodes JSON numbers too, but never booleans.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{value!r} is not a quantity")
    try:
        number = float(parse_quantity(value))  # type: ignore[no-untyped-call]
    except (ValueError, ArithmeticError):
        raise ValueError(f"{value!r} is not a quantity") from None
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite quantity")
    return number


def _collect(
    values: NodeValues,
    items: list[Any],
    name_of: Callable[[Any], object],
    value_of: Callable[[Any], float],
) -> None:
    for index, item in enumerate(items):
        try:
            name = name_of(item)
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            values.skipped[f"items[{index}]"] = _why(error)
            continue
        if not isinstance(name, str) or not name:
            values.skipped[f"items[{index}]"] = f"the node name is {name!r}"
            continue
        try:
            values[name] = value_of(item)
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            values.skipped[name] = _why(error)


def _why(error: Exception) -> str:
    return f"no {error.args[0]}" if isinstance(error, KeyError) else str(error)


def _warn_skipped(values: NodeValues, what: str) -> None:
    if values.skipped:
        log.warning("metrics items left out", metric=what, skipped=values.skipped)
