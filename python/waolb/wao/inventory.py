"""What scoring knows of the cluster's nodes: CPU capacity (Nodes) and predictors (NodeConfigs).

It is a watch handler (see :class:`waolb.kube.WatchHandler`) for both kinds: the proxier's Node
and NodeConfig reflectors feed it plain dicts. A malformed object is logged once per
resourceVersion and skipped; its last good version, if any, stays in force, as in
:mod:`waolb.state`.

Two NodeConfigs naming one node are a configuration error that waolb will not guess its way
out of: the node is left unscored (reason ``ambiguous_nodeconfig``) until one is removed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from waolb import logs
from waolb.config.values import parse_cpu_quantity
from waolb.kube.objects import MalformedObjectError
from waolb.kube.resources import NODE_CONFIGS
from waolb.wao.nodeconfig import NodeConfig, parse_node_config

log = logs.get_logger(__name__)

NODE_KIND: Final = "Node"


@dataclass(frozen=True)
class NodeConfigLookup:
    """A node's NodeConfig, or why there is none to use (a fallback reason)."""

    config: NodeConfig | None
    problem: str | None


def node_cpu_capacity(obj: object) -> tuple[str, float | None]:
    """A Node's name and ``status.capacity.cpu`` in cores (None when absent or unreadable)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
        raise MalformedObjectError("object: expected a Node")
    name = obj["metadata"].get("name")
    if not isinstance(name, str) or not name:
        raise MalformedObjectError("metadata.name: expected a name")
    status = obj.get("status")
    capacity = status.get("capacity") if isinstance(status, dict) else None
    cpu = capacity.get("cpu") if isinstance(capacity, dict) else None
    if cpu is None:
        return name, None
    try:
        cores = parse_cpu_quantity(cpu)
    except ValueError as error:
        raise MalformedObjectError(f"status.capacity.cpu: {error}") from None
    return name, cores


class WaoInventory:
    """Node CPU capacities and NodeConfigs, thread-safe; fed by reflectors, read by scoring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._capacity: dict[str, float | None] = {}
        self._configs: dict[tuple[str, str], NodeConfig] = {}
        self._by_node: dict[str, list[NodeConfig]] | None = None
        self._reported: set[tuple[str, str, str, str]] = set()

    # ---- the watch handler ----

    def replace(self, kind: str, objects: list[dict[str, Any]], resource_version: str) -> None:
        if kind == NODE_KIND:
            capacity = dict(self._parsed_nodes(objects))
            with self._lock:
                self._capacity = capacity
            return
        configs = {}
        with self._lock:
            previous = dict(self._configs)
            # A relist starts the reports over, so that they cannot pile up forever.
            self._reported = {key for key in self._reported if key[0] != kind}
        for obj in objects:
            parsed = self._parsed_config(obj, previous)
            if parsed is not None:
                configs[(parsed.namespace, parsed.name)] = parsed
        with self._lock:
            self._configs = configs
            self._by_node = None

    def upsert(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == NODE_KIND:
            for name, cores in self._parsed_nodes([obj]):
                with self._lock:
                    self._capacity[name] = cores
            return
        with self._lock:
            previous = dict(self._configs)
        parsed = self._parsed_config(obj, previous)
        if parsed is not None:
            with self._lock:
                self._configs[(parsed.namespace, parsed.name)] = parsed
                self._by_node = None

    def delete(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if not isinstance(meta, dict):
            return
        with self._lock:
            if kind == NODE_KIND:
                self._capacity.pop(str(meta.get("name")), None)
            else:
                self._configs.pop((str(meta.get("namespace")), str(meta.get("name"))), None)
                self._by_node = None

    # ---- reads ----

    def cpu_capacity(self, node: str) -> float | None:
        with self._lock:
            return self._capacity.get(node)

    def node_config(self, node: str) -> NodeConfigLookup:
        with self._lock:
            if self._by_node is None:
                # Rebuilt after a change only: scoring asks for every node each round.
                self._by_node = {}
                for config in self._configs.values():
                    self._by_node.setdefault(config.node_name, []).append(config)
            matches = self._by_node.get(node, [])
        if not matches:
            return NodeConfigLookup(None, "no_nodeconfig")
        if len(matches) > 1:
            return NodeConfigLookup(None, "ambiguous_nodeconfig")
        return NodeConfigLookup(matches[0], None)

    # ---- parsing ----

    def _parsed_nodes(self, objects: Iterable[object]) -> Iterable[tuple[str, float | None]]:
        for obj in objects:
            try:
                yield node_cpu_capacity(obj)
            except MalformedObjectError as error:
                self._report(NODE_KIND, obj, error)

    def _parsed_config(
        self, obj: object, previous: Mapping[tuple[str, str], NodeConfig]
    ) -> NodeConfig | None:
        try:
            return parse_node_config(obj)
        except MalformedObjectError as error:
            namespace, name, _ = self._report(NODE_CONFIGS.kind, obj, error)
            return previous.get((namespace, name))

    def _report(self, kind: str, obj: object, error: MalformedObjectError) -> tuple[str, str, str]:
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        meta = meta if isinstance(meta, dict) else {}
        identity = tuple(str(meta.get(k) or "") for k in ("namespace", "name", "resourceVersion"))
        namespace, name, version = identity
        key = (kind, namespace, name, version)
        with self._lock:
            first = key not in self._reported
            self._reported.add(key)
        if first:
            log.error(
                "skipping a malformed object",
                kind=kind,
                namespace=namespace or None,
                name=name or None,
                resource_version=version or None,
                error=str(error),
            )
        return namespace, name, version
