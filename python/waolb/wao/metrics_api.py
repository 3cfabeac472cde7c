"""The node inputs of WAO scoring, read from the Kubernetes metrics APIs.

CPU usage comes from metrics-server (``metrics.k8s.io/v1beta1`` NodeMetrics), inlet_temp and
delta_p from wao-metrics-adapter (``custom.metrics.k8s.io/v1beta2``, metrics of root-scoped
Node objects). Each is one request for all nodes where upstream WAO-LB sends one per node, made
through :class:`~waolb.kube.rest.RestClient` (the process's API rate limit, a hard deadline,
orjson without the client's model objects). One malformed item costs only its node: it is left
out and named in ``NodeValues.skipped``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, Final, Literal
from urllib.parse import quote

from waolb import logs
from waolb.kube.objects import parse_quantity
from waolb.kube.rest import ApiError, RestClient

log = logs.get_logger(__name__)

NODE_METRICS_PATH: Final = "/apis/metrics.k8s.io/v1beta1/nodes"
# Far above any real answer (about 1 KiB a node), far below what would strain memory.
MAX_ANSWER_BYTES: Final = 64 << 20
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
    """Reads node metrics through ``rest``; every request ends within ``timeout`` seconds,
    from connecting to the last byte."""

    def __init__(self, rest: RestClient, timeout: float) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be above zero, got {timeout}")
        self._rest = rest
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
        try:
            decoded = self._rest.get_json(path, timeout=self._timeout, max_body=MAX_ANSWER_BYTES)
        except ApiError as error:
            raise _metrics_error(error) from None
        items = decoded.get("items") if isinstance(decoded, dict) else None
        if not isinstance(items, list):
            raise MetricsApiError("response", f"{path}: the answer is not a list of items")
        return items


def _metric_path(node: str, metric: str) -> str:
    return f"{CUSTOM_METRICS_PATH}/nodes/{quote(node, safe='*')}/{quote(metric, safe='')}"


def _metrics_error(error: ApiError) -> MetricsApiError:
    if error.kind != "status":
        # A request the rate limit would hold past its deadline has timed out as surely.
        kind: ErrorKind = "timeout" if error.kind == "throttled" else error.kind
        return MetricsApiError(kind, str(error))
    status, reason = error.status, error.reason
    if status == 503 or (status == 404 and (reason is None or error.message == _NOT_SERVED)):
        kind = "unavailable"
    elif status == 404:
        kind = "not_found"
    else:
        kind = "http_status"
    return MetricsApiError(kind, str(error), status=status, reason=reason)


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
    cores = parse_quantity(item["usage"]["cpu"])
    if cores < 0:
        raise ValueError(f"negative CPU usage {cores}")
    return cores


def _metric_value(metric: str) -> Callable[[Any], float]:
    def read(item: Any) -> float:
        named = item["metric"]["name"]
        if named != metric:
            raise ValueError(f"is metric {named!r}, not {metric!r}")
        return parse_quantity(item["value"])

    return read


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
