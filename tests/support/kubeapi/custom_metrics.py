"""custom.metrics.k8s.io/v1beta2 for root-scoped node metrics, as an adapter built on
kubernetes-sigs/custom-metrics-apiserver (wao-metrics-adapter is one) serves them.

``GET /apis/custom.metrics.k8s.io/v1beta2/nodes/{name}/{metric}`` answers a MetricValueList of
one item; ``nodes/*/{metric}`` one item per Node object matching ``labelSelector`` that has a
value. What a node without a value gets depends on the provider (``missing``):

- ``"not_found"``: the library's own providers (its test adapter, prometheus-adapter) answer
  404 NotFound ("the server could not find the metric inlet_temp for nodes node-a"), and the
  wildcard leaves such nodes out;
- ``"error"``: wao-metrics-adapter returns a plain Go error, which the library answers with 500
  and no reason ("metric inlet_temp for /nodes/node-a not found"), and its wildcard fails as a
  whole as soon as one listed node has no value.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from . import errors

GROUP = "custom.metrics.k8s.io"
VERSION = "v1beta2"
GROUP_VERSION = f"{GROUP}/{VERSION}"

MissingMetric = Literal["not_found", "error"]
JsonObject = dict[str, Any]

# Go's resource.Quantity suffixes for DecimalSI, by power of ten.
_SUFFIXES = {-9: "n", -6: "u", -3: "m", 0: "", 3: "k", 6: "M", 9: "G", 12: "T", 15: "P", 18: "E"}
_INT64_MAX = 2**63 - 1


def adapter_quantity(value: float) -> str:
    """``value`` as wao-metrics-adapter serializes it: truncated to six decimals, then written
    in the canonical form of a DecimalSI resource.Quantity (22.5 -> "22500m", 25 -> "25")."""
    mantissa, exponent = int(value * 10**6), -6
    if abs(mantissa) > _INT64_MAX:
        raise ValueError(f"{value} does not fit the adapter's int64 fixed-point value")
    if mantissa == 0:
        return "0"
    while mantissa % 10 == 0:
        mantissa //= 10
        exponent += 1
    # The canonical form only uses exponents that are multiples of three.
    shift = exponent % 3
    return f"{mantissa * 10**shift}{_SUFFIXES[exponent - shift]}"


class CustomMetrics:
    """The adapter's values, ``(node, metric) -> quantity``; ``served`` once installed."""

    def __init__(self) -> None:
        self.served = False
        self.missing: MissingMetric = "not_found"
        self._lock = threading.Lock()
        self._values: dict[tuple[str, str], str] = {}

    def set(self, node: str, metric: str, quantity: str) -> None:
        with self._lock:
            self._values[(node, metric)] = quantity

    def remove(self, node: str, metric: str) -> None:
        with self._lock:
            del self._values[(node, metric)]

    def discovery(self) -> JsonObject:
        """The group version's APIResourceList: the library lists what the provider's
        ListAllMetrics returns, which is nothing for wao-metrics-adapter."""
        with self._lock:
            metrics = sorted({metric for _, metric in self._values})
        if self.missing == "error":
            metrics = []
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": GROUP_VERSION,
            "resources": [
                {
                    "name": f"nodes/{metric}",
                    "singularName": "",
                    "namespaced": False,
                    "kind": "MetricValueList",
                    "verbs": ["get"],
                }
                for metric in metrics
            ],
        }

    def answer(
        self, resource: str, name: str, metric: str, list_nodes: Callable[[], list[str]]
    ) -> JsonObject:
        """The MetricValueList for ``{resource}/{name}/{metric}``; ``list_nodes`` gives the
        names of the Node objects a wildcard covers (the library lists them from the cluster)."""
        if resource != "nodes":
            if self.missing == "error":
                raise errors.unhandled(f"unsupported GroupResource: {resource}")
            raise errors.metric_not_found(resource, metric, None if name == "*" else name)
        if name != "*":
            quantity = self._quantity(name, metric)
            if quantity is None:
                raise self._missing(name, metric)
            return self._list([self._item(name, metric, quantity)])
        items = []
        for node in list_nodes():
            quantity = self._quantity(node, metric)
            if quantity is not None:
                items.append(self._item(node, metric, quantity))
            elif self.missing == "error":
                raise self._missing(node, metric)
        return self._list(items)

    def _quantity(self, node: str, metric: str) -> str | None:
        with self._lock:
            return self._values.get((node, metric))

    def _missing(self, node: str, metric: str) -> errors.ApiError:
        if self.missing == "error":
            return errors.unhandled(f"metric {metric} for /nodes/{node} not found")
        return errors.metric_not_found("nodes", metric, node)

    def _item(self, node: str, metric: str, quantity: str) -> JsonObject:
        item: JsonObject = {
            "describedObject": {"kind": "Node", "name": node, "apiVersion": "/v1"},
            "metric": {"name": metric, "selector": None},
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "value": quantity,
        }
        if self.missing == "error":
            # wao-metrics-adapter sets a zero window (instantaneous readings).
            item["windowSeconds"] = 0
        return item

    @staticmethod
    def _list(items: list[JsonObject]) -> JsonObject:
        return {
            "kind": "MetricValueList",
            "apiVersion": GROUP_VERSION,
            "metadata": {},
            "items": items,
        }
