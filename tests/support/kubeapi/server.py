"""A Kubernetes API server test double speaking the real REST protocol over HTTP/1.1.

It serves list, watch, get, create, update (PUT), merge patch and delete for the registered
resource types, with the real server's resourceVersion, selector, paging, watch and error
semantics, and once asked the node metrics of custom.metrics.k8s.io (see README.md beside this
file for what is and is not covered). Tests drive it through the real ``kubernetes`` client and
change state or inject faults through its Python API.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from httpserving import TrackedHTTPServer

from . import custom_metrics, errors
from .custom_metrics import CustomMetrics, MissingMetric, adapter_quantity
from .errors import ApiError
from .resources import DEFAULT_RESOURCES, NODE_CONFIGS, NODE_METRICS, NODES, ResourceType
from .selectors import (
    SelectorError,
    object_fields,
    parse_field_selector,
    parse_label_selector,
    supported_fields,
)
from .store import JsonObject, ObjectKey, ObjectStore, Watch, deep_copy, object_key

_TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})
_FALSE = frozenset({"0", "f", "F", "false", "FALSE", "False"})
_TYPE_META = frozenset({"apiVersion", "kind"})
_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
_CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can "
    "start a new list without the continue parameter, or use the continue token in this response "
    "to retrieve the remainder of the results. Continuing with the provided token results in an "
    "inconsistent list - objects that were created, modified, or deleted between the time the "
    "first chunk was returned and now may show up in the list."
)
# A continue token carrying this revision continues from the latest state (inconsistently).
_LATEST = -1
_CUSTOM_METRICS_VERSION = [custom_metrics.GROUP, custom_metrics.VERSION]


class RecordedRequest(NamedTuple):
    """One HTTP request as the server saw it; ``verb`` is the Kubernetes verb (list, watch,
    get, create, update, patch, delete, discovery) or "unknown" for paths it does not serve;
    ``headers`` are keyed in lower case."""

    method: str
    path: str
    query: dict[str, str]
    verb: str
    code: int
    headers: dict[str, str]
    # time.monotonic() when the server answered (a watch: when its stream opened), so tests can
    # check the gaps between requests.
    answered_at: float = 0.0


@dataclass
class _Fault:
    """An injected failure (``code``) or delay (``code`` None) for some requests."""

    code: int | None
    delay: float
    remaining: int | None
    verbs: frozenset[str] | None


@dataclass(frozen=True)
class _Target:
    """A resource path: a collection when ``name`` is None."""

    resource: ResourceType
    namespace: str | None
    name: str | None

    def verb(self, method: str, query: Mapping[str, str]) -> str:
        if self.name is not None:
            return {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
                method, method.lower()
            )
        if method == "GET":
            return "watch" if _bool_parameter(query, "watch") else "list"
        return {"POST": "create", "DELETE": "deletecollection"}.get(method, method.lower())


class KubeApiServer:
    """The test API server. Use as a context manager, or call start() and stop().

    ``bookmark_interval`` is how often watches that allow bookmarks get one;
    ``default_watch_timeout`` ends watches that give no timeoutSeconds; ``future_wait`` is how
    long a request for a resourceVersion the server has not reached yet waits before the
    "Too large resource version" answer; ``history_limit`` bounds the event history.
    ``watch_chunk_size``, when set, splits watch events into HTTP chunks of at most that many
    bytes, as a proxy between client and API server may re-chunk a stream. With ``tls`` (a
    server-side context) it serves HTTPS, as an aggregated API server behind a real
    kube-apiserver does.
    """

    def __init__(
        self,
        resources: Iterable[ResourceType] = DEFAULT_RESOURCES,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        history_limit: int = 1000,
        bookmark_interval: float = 60.0,
        default_watch_timeout: float = 1800.0,
        future_wait: float = 3.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.tls = tls
        self.port = port
        self.bookmark_interval = bookmark_interval
        self.default_watch_timeout = default_watch_timeout
        self.future_wait = future_wait
        self.watch_chunk_size: int | None = None
        self.store = ObjectStore(history_limit)
        self._resources: dict[tuple[str, str, str], ResourceType] = {}
        for resource in resources:
            self.register(resource)
        self._http: _HTTPServer | None = None
        self._has_served = False
        self._serve_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._unavailable_groups: list[str] = []
        self._canned: dict[str, tuple[int, bytes, str]] = {}
        self._requests: list[RecordedRequest] = []
        # Set by stop(), to release the requests slow() holds back.
        self._stopped = threading.Event()
        self.custom_metrics = CustomMetrics()

    def register(self, resource: ResourceType) -> None:
        """Serve one more resource type (before or after start)."""
        self._resources[(resource.group, resource.version, resource.plural)] = resource

    def serve_custom_metrics(self, missing: MissingMetric = "not_found") -> None:
        """Serve custom.metrics.k8s.io/v1beta2 node metrics from now on, as an installed
        adapter does; ``missing`` picks how a node without a value is answered (see
        custom_metrics.py): "not_found" as the library's providers, "error" as
        wao-metrics-adapter."""
        self.custom_metrics.missing = missing
        self.custom_metrics.served = True

    def register_wao(self, missing: MissingMetric = "not_found") -> None:
        """Serve everything WAO scoring reads besides the defaults: metrics-server's
        NodeMetrics, wao-core's NodeConfig resource and the custom metrics API."""
        self.register(NODE_METRICS)
        self.register(NODE_CONFIGS)
        self.serve_custom_metrics(missing)

    def set_node_metric(self, node: str, metric: str, value: float | str) -> None:
        """Give ``node`` a custom metric value: a number is serialized as wao-metrics-adapter
        does (22.5 -> "22500m"), a string is sent as it is (any quantity, or garbage)."""
        quantity = value if isinstance(value, str) else adapter_quantity(value)
        self.custom_metrics.set(node, metric, quantity)

    def remove_node_metric(self, node: str, metric: str) -> None:
        """Forget a value set by set_node_metric (KeyError if there is none)."""
        self.custom_metrics.remove(node, metric)

    # Lifecycle.

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def start(self) -> None:
        """Listen and serve in a background thread.

        After a stop it comes back on the same port with the objects and the resourceVersion
        (they live in etcd) but without the event history (the watch cache lived in the stopped
        process): a watch can resume from the current resourceVersion, older ones get 410.
        """
        if self._http is not None:
            return
        if self._has_served:
            self.store.compact()
        self._has_served = True
        self._stopped.clear()
        self._http = _HTTPServer((self.host, self.port), self)
        self.port = self._http.server_address[1]
        with self.store.condition:
            self.store.accepting_watches = True
        self._serve_thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"kubeapi-{self.port}",
            daemon=True,
        )
        self._serve_thread.start()

    def stop(self) -> None:
        """Go away as a crashed API server does: stop listening and cut every connection."""
        http, self._http = self._http, None
        if http is None:
            return
        self._stopped.set()
        http.shutdown()
        http.server_close()
        with self.store.condition:
            self.store.accepting_watches = False
        self.store.end_watches(None, None, timeout=5.0)
        http.close_connections()
        if self._serve_thread is not None:
            self._serve_thread.join()

    def restart(self, keep_state: bool = True) -> None:
        """Stop and start again (see start); without ``keep_state`` as a brand-new cluster."""
        self.stop()
        if not keep_state:
            self.store.reset()
        self.start()

    def __enter__(self) -> KubeApiServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # State, from the test side. Objects name their type with apiVersion and kind; namespaces
    # default to "default" and are ignored for cluster-scoped types.

    @property
    def resource_version(self) -> int:
        return self.store.resource_version

    def create(self, obj: Mapping[str, Any]) -> JsonObject:
        return deep_copy(self.store.create(self._resource_of(obj), obj, None))

    def update(self, obj: Mapping[str, Any]) -> JsonObject:
        """Replace; conditional on metadata.resourceVersion when ``obj`` carries one."""
        return deep_copy(self.store.update(self._resource_of(obj), obj, None))

    def patch(
        self,
        resource: ResourceType,
        name: str,
        patch: Mapping[str, Any],
        namespace: str = "default",
    ) -> JsonObject:
        """Apply a JSON merge patch (RFC 7386)."""
        return deep_copy(self.store.merge_patch(resource, name, namespace, patch))

    def delete(self, resource: ResourceType, name: str, namespace: str = "default") -> JsonObject:
        return deep_copy(self.store.delete(resource, name, namespace))

    def get(self, resource: ResourceType, name: str, namespace: str = "default") -> JsonObject:
        return deep_copy(self.store.get(resource, name, namespace))

    def list(self, resource: ResourceType) -> list[JsonObject]:
        """Every object of ``resource`` now, sorted by namespace and name."""
        _, state = self.store.snapshot(resource)
        return [deep_copy(state[key]) for key in sorted(state)]

    def _resource_of(self, obj: Mapping[str, Any]) -> ResourceType:
        for resource in self._resources.values():
            if (resource.api_version, resource.kind) == (obj.get("apiVersion"), obj.get("kind")):
                return resource
        raise ValueError(
            f"no resource registered for apiVersion {obj.get('apiVersion')!r} "
            f"kind {obj.get('kind')!r}"
        )

    # Faults and observation.

    def compact(self) -> None:
        """Drop the event history: the next watch from an older resourceVersion gets 410."""
        self.store.compact()

    def drop_watches(self, resource: ResourceType | None = None) -> int:
        """Cut open watch connections mid-stream (no final chunk); returns how many."""
        return self.store.end_watches(resource, None, timeout=5.0)

    def expire_watches(self, resource: ResourceType | None = None) -> int:
        """Compact the history and end open watches with an ERROR event carrying 410 Expired,
        as a watch served straight from etcd ends when etcd compacts past it."""
        self.store.compact()
        error = errors.expired("The resourceVersion for the provided watch is too old.")
        return self.store.end_watches(resource, error, timeout=5.0)

    def watch_count(self, resource: ResourceType | None = None) -> int:
        return self.store.watch_count(resource)

    def wait_for_watches(
        self, resource: ResourceType | None = None, count: int = 1, timeout: float = 120.0
    ) -> bool:
        """Wait until at least ``count`` watches are open; False on timeout."""
        with self.store.condition:
            return self.store.condition.wait_for(
                lambda: self.store.watch_count(resource) >= count, timeout
            )

    @contextlib.contextmanager
    def failing(
        self, code: int = 500, *, count: int | None = None, verbs: Collection[str] | None = None
    ) -> Iterator[None]:
        """Answer requests with ``code`` (500, 503 or 429 with Retry-After) inside the block,
        or only the next ``count`` of them; ``verbs`` limits it to list, watch and so on."""
        with self._injecting(_Fault(code, 0.0, count, _verb_set(verbs))):
            yield

    @contextlib.contextmanager
    def slow(
        self, seconds: float, *, count: int | None = None, verbs: Collection[str] | None = None
    ) -> Iterator[None]:
        """Hold requests back ``seconds`` before answering them inside the block (or only the
        next ``count`` of them, or only some verbs), as an overloaded server does."""
        with self._injecting(_Fault(None, seconds, count, _verb_set(verbs))):
            yield

    @contextlib.contextmanager
    def unavailable(self, group: str) -> Iterator[None]:
        """Inside the block the aggregated API of ``group`` (metrics.k8s.io,
        custom.metrics.k8s.io) is registered but down: the aggregator answers every request
        under /apis/{group}/ with 503 and a plain-text "service unavailable"."""
        with self._lock:
            self._unavailable_groups.append(group)
        try:
            yield
        finally:
            with self._lock:
                self._unavailable_groups.remove(group)

    @contextlib.contextmanager
    def answering(
        self, path: str, body: bytes, code: int = 200, content_type: str = "application/json"
    ) -> Iterator[None]:
        """Inside the block, answer requests for exactly ``path`` with these bytes, as a broken
        server (or a proxy in between) might: for bodies no real server would send."""
        with self._lock:
            self._canned[path] = (code, body, content_type)
        try:
            yield
        finally:
            with self._lock:
                del self._canned[path]

    @contextlib.contextmanager
    def _injecting(self, fault: _Fault) -> Iterator[None]:
        with self._lock:
            self._faults.append(fault)
        try:
            yield
        finally:
            with self._lock:
                self._faults.remove(fault)

    def requests(
        self, *, verb: str | None = None, path: str | None = None
    ) -> list[RecordedRequest]:
        """The requests served so far, oldest first, optionally only one verb or path."""
        with self._lock:
            return [
                request
                for request in self._requests
                if (verb is None or request.verb == verb) and (path is None or request.path == path)
            ]

    def count_requests(self, *, verb: str | None = None, path: str | None = None) -> int:
        return len(self.requests(verb=verb, path=path))

    def _record(
        self,
        handler: _Handler,
        method: str,
        path: str,
        query: dict[str, str],
        *,
        verb: str,
        code: int,
    ) -> None:
        headers = {key.lower(): value for key, value in handler.headers.items()}
        with self._lock:
            self._requests.append(
                RecordedRequest(method, path, query, verb, code, headers, time.monotonic())
            )

    def _injected(self, verb: str) -> tuple[float, ApiError | None]:
        """The delay and the failure injected for a request of ``verb``."""
        delay, failure = 0.0, None
        with self._lock:
            for fault in self._faults:
                if fault.remaining == 0 or (fault.verbs is not None and verb not in fault.verbs):
                    continue
                if fault.code is None:
                    delay = max(delay, fault.delay)
                elif failure is None:
                    failure = errors.injected(fault.code)
                else:
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
        return delay, failure

    def _is_unavailable(self, path: str) -> bool:
        with self._lock:
            return any(path.startswith(f"/apis/{group}/") for group in self._unavailable_groups)

    # HTTP.

    def _handle(self, handler: _Handler, method: str) -> None:
        split = urlsplit(handler.path)
        # Decoded as the real server does: clients may send "*" as %2A.
        path = unquote(split.path).rstrip("/") or "/"
        # Like Go's url.Values.Get: the first value of a repeated parameter wins.
        query = {
            key: values[0] for key, values in parse_qs(split.query, keep_blank_values=True).items()
        }
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        verb = "unknown"
        try:
            document = self._discovery_document(path)
            metric = None if document is not None else self._metric_path(path)
            target = None if document is not None or metric is not None else self._target(path)
            if target is not None:
                verb = target.verb(method, query)
            elif document is not None:
                verb = "discovery"
            elif metric is not None:
                # The request info of /nodes/{name}/{metric}: a get of a subresource.
                verb = "get"
            delay, fault = self._injected(verb)
            if delay:
                self._stopped.wait(delay)
            if fault is not None:
                raise fault
            with self._lock:
                canned = self._canned.get(path)
            if canned is None and self._is_unavailable(path):
                canned = (503, b"service unavailable\n", "text/plain; charset=utf-8")
            if canned is not None:
                self._record(handler, method, path, query, verb=verb, code=canned[0])
                _send_raw(handler, *canned)
                return
            if method != "GET" and (document is not None or metric is not None):
                raise errors.method_not_allowed()
            if document is not None:
                code, payload = 200, document
            elif metric is not None:
                code, payload = 200, self._metric_values(metric, query)
            elif target is None:
                raise errors.path_not_found()
            elif verb == "watch":
                self._serve_watch(handler, method, path, query, target)
                return
            else:
                content_type = handler.headers.get("Content-Type", "")
                code, payload = self._serve(verb, target, query, body, content_type)
        except ApiError as error:
            code, payload = error.code, error.status
        self._record(handler, method, path, query, verb=verb, code=code)
        _send_json(handler, code, payload)

    def _target(self, path: str) -> _Target | None:
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        if len(rest) > 2:  # subresources (status, scale, ...) are not served
            return None
        resource = self._resources.get((group, version, rest[0]))
        if resource is None or (namespace is not None and not resource.namespaced):
            return None
        name = rest[1] if len(rest) == 2 else None
        if resource.namespaced and namespace is None and name is not None:
            return None
        return _Target(resource, namespace, name)

    def _metric_path(self, path: str) -> tuple[str, str, str] | None:
        """(resource, name, metric) of a root-scoped custom metrics path, when they are served."""
        parts = path.strip("/").split("/")
        if not self.custom_metrics.served or parts[:3] != ["apis", *_CUSTOM_METRICS_VERSION]:
            return None
        if len(parts) != 6 or parts[3] == "namespaces":
            return None
        return parts[3], parts[4], parts[5]

    def _metric_values(self, metric: tuple[str, str, str], query: Mapping[str, str]) -> JsonObject:
        def selected_nodes() -> list[str]:
            # The library lists the objects a wildcard covers from the cluster, by label.
            try:
                labels = parse_label_selector(query.get("labelSelector", ""))
            except SelectorError as error:
                raise errors.bad_request(str(error)) from None
            _, nodes = self.store.snapshot(NODES)
            return [
                nodes[key]["metadata"]["name"]
                for key in sorted(nodes)
                if labels.matches(nodes[key]["metadata"].get("labels") or {})
            ]

        return self.custom_metrics.answer(*metric, selected_nodes)

    def _serve(
        self, verb: str, target: _Target, query: dict[str, str], body: bytes, content_type: str
    ) -> tuple[int, JsonObject]:
        resource, namespace, name = target.resource, target.namespace, target.name
        if verb == "list":
            return 200, self._list(target, query)
        if verb == "get":
            assert name is not None
            return 200, self.store.get(resource, name, namespace)
        if verb == "create" and (namespace is not None or not resource.namespaced):
            return 201, self.store.create(resource, _decode_object(body), namespace)
        if verb == "update":
            return 200, self.store.update(resource, _decode_object(body), namespace, name)
        if verb == "patch":
            assert name is not None
            if content_type.partition(";")[0].strip() != "application/merge-patch+json":
                raise errors.unsupported_media_type(content_type)
            return 200, self.store.merge_patch(resource, name, namespace, _decode_object(body))
        if verb == "delete":
            assert name is not None
            options = _decode_object(body) if body.strip() else {}
            deleted = self.store.delete(resource, name, namespace, options.get("preconditions"))
            if resource.returns_deleted_object:
                return 200, deleted
            return 200, _delete_success(resource, deleted)
        raise errors.method_not_allowed()

    def _list(self, target: _Target, query: dict[str, str]) -> JsonObject:
        resource = target.resource
        matches = self._object_filter(target, query)
        limit = max(_int_parameter(query, "limit") or 0, 0)
        requested, match_rule, token = (
            query.get("resourceVersion", ""),
            query.get("resourceVersionMatch", ""),
            query.get("continue", ""),
        )
        _check_list_options(requested, match_rule, token)
        start_after: ObjectKey | None = None
        if token:
            token_revision, start_after = _decode_continue(token)
            try:
                revision, state = self.store.snapshot(
                    resource, None if token_revision == _LATEST else token_revision
                )
            except ApiError as error:
                if error.code != 410:
                    raise
                raise errors.expired(
                    _CONTINUE_EXPIRED, list_continue=_encode_continue(_LATEST, start_after)
                ) from None
        elif requested in ("", "0"):
            # "0" is served from the watch cache, which ignores limit.
            limit = 0 if requested == "0" else limit
            revision, state = self.store.snapshot(resource)
        else:
            wanted = _resource_version_parameter(requested)
            if not self.store.wait_for_resource_version(wanted, self.future_wait):
                raise errors.resource_version_too_large(wanted, self.store.resource_version)
            # Without resourceVersionMatch, limit turns a resourceVersion into an exact one.
            exact = match_rule == "Exact" or (not match_rule and limit > 0)
            revision, state = self.store.snapshot(resource, wanted if exact else None)

        selected = [
            state[key]
            for key in sorted(state)
            if (start_after is None or key > start_after) and matches(state[key])
        ]
        page = selected[:limit] if limit else selected
        metadata: JsonObject = {"resourceVersion": str(revision)}
        if len(page) < len(selected):
            metadata["continue"] = _encode_continue(revision, object_key(page[-1]))
            # The real server can only count what is left when no selector filters it.
            if not query.get("labelSelector") and not query.get("fieldSelector"):
                metadata["remainingItemCount"] = len(selected) - len(page)
        # Built-in types leave apiVersion and kind off list items; custom resources keep them.
        items = page if resource.custom else [_without_type_meta(obj) for obj in page]
        return {
            "kind": f"{resource.kind}List",
            "apiVersion": resource.api_version,
            "metadata": metadata,
            "items": items,
        }

    def _object_filter(
        self, target: _Target, query: Mapping[str, str]
    ) -> Callable[[Mapping[str, Any]], bool]:
        resource, namespace = target.resource, target.namespace
        try:
            labels = parse_label_selector(query.get("labelSelector", ""))
            fields = parse_field_selector(
                query.get("fieldSelector", ""),
                supported_fields(resource.namespaced, resource.field_labels),
            )
        except SelectorError as error:
            raise errors.bad_request(str(error)) from None

        def matches(obj: Mapping[str, Any]) -> bool:
            metadata = obj["metadata"]
            return (
                (namespace is None or metadata.get("namespace") == namespace)
                and labels.matches(metadata.get("labels") or {})
                and fields.matches(object_fields(obj, resource.namespaced, resource.field_labels))
            )

        return matches

    def _serve_watch(
        self,
        handler: _Handler,
        method: str,
        path: str,
        query: dict[str, str],
        target: _Target,
    ) -> None:
        try:
            if query.get("resourceVersionMatch"):
                raise errors.invalid_parameter(
                    "resourceVersionMatch", "Forbidden: resourceVersionMatch is forbidden for watch"
                )
            if "sendInitialEvents" in query:
                raise errors.invalid_parameter(
                    "sendInitialEvents",
                    "Forbidden: sendInitialEvents is forbidden for watch unless the WatchList "
                    "feature gate is enabled",
                )
            requested = query.get("resourceVersion", "")
            start = None if requested in ("", "0") else _resource_version_parameter(requested)
            timeout = _int_parameter(query, "timeoutSeconds") or self.default_watch_timeout
            bookmarks = _bool_parameter(query, "allowWatchBookmarks")
            matches = self._object_filter(target, query)
        except ApiError as error:
            self._record(handler, method, path, query, verb="watch", code=error.code)
            _send_json(handler, error.code, error.status)
            return
        watch = self.store.open_watch(target.resource, start, matches, self.future_wait)
        self._record(handler, method, path, query, verb="watch", code=200)
        try:
            _stream_watch(handler, watch, self, timeout, bookmarks)
        except OSError:  # the client went away
            handler.close_connection = True
        finally:
            self.store.close_watch(watch)

    def _discovery_document(self, path: str) -> JsonObject | None:
        resources = list(self._resources.values())
        if path == "/api":
            return {
                "kind": "APIVersions",
                "versions": sorted({r.version for r in resources if not r.group}),
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}
                ],
            }
        if path == "/apis":
            groups: dict[str, list[str]] = {}
            for resource in resources:
                if resource.group:
                    groups.setdefault(resource.group, []).append(resource.version)
            if self.custom_metrics.served:
                groups.setdefault(custom_metrics.GROUP, []).append(custom_metrics.VERSION)
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [
                    {
                        "name": group,
                        "versions": [
                            {"groupVersion": f"{group}/{v}", "version": v}
                            for v in sorted(set(versions))
                        ],
                        "preferredVersion": {
                            "groupVersion": f"{group}/{max(versions)}",
                            "version": max(versions),
                        },
                    }
                    for group, versions in sorted(groups.items())
                ],
            }
        if self.custom_metrics.served and path == f"/apis/{custom_metrics.GROUP_VERSION}":
            return self.custom_metrics.discovery()
        served = [r for r in resources if r.group_version_path == path]
        if not served:
            return None
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": served[0].api_version,
            "resources": [
                {
                    "name": r.plural,
                    "singularName": r.kind.lower(),
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": _VERBS,
                }
                for r in served
            ],
        }


def _stream_watch(
    handler: _Handler, watch: Watch, server: KubeApiServer, timeout: float, bookmarks: bool
) -> None:
    """Send the watch as the real server does: JSON event lines in a chunked 200 response,
    until the timeout (clean end) or a drop (connection cut without the final chunk)."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.send_header("Cache-Control", "no-cache, private")
    handler.end_headers()
    resource = watch.resource
    now = time.monotonic()
    deadline, next_bookmark = now + timeout, now + server.bookmark_interval
    while not watch.ending and now < deadline:
        wake_up = min(deadline, next_bookmark) if bookmarks else deadline
        events, caught_up = server.store.next_events(watch, wake_up - now)
        if watch.ending:
            break
        for event in events:
            wire_event = watch.wire_event(event)
            if wire_event is not None:
                _send_event(handler, *wire_event, server.watch_chunk_size)
        now = time.monotonic()
        if bookmarks and now >= next_bookmark:
            # A bookmark carries only the resourceVersion the watch has caught up with.
            bookmark = {
                "kind": resource.kind,
                "apiVersion": resource.api_version,
                "metadata": {"resourceVersion": str(caught_up)},
            }
            _send_event(handler, "BOOKMARK", bookmark, server.watch_chunk_size)
            next_bookmark = now + server.bookmark_interval
    if watch.dropped:
        handler.close_connection = True
        handler.connection.shutdown(socket.SHUT_RDWR)
        return
    if watch.error is not None:
        _send_event(handler, "ERROR", watch.error.status, server.watch_chunk_size)
    handler.wfile.write(b"0\r\n\r\n")


def _send_event(
    handler: _Handler, event_type: str, obj: Mapping[str, Any], chunk_size: int | None
) -> None:
    # One chunk per event, newline included, as the real server's JSON encoder writes it.
    line = orjson.dumps({"type": event_type, "object": obj}) + b"\n"
    step = chunk_size or len(line)
    for start in range(0, len(line), step):
        piece = line[start : start + step]
        handler.wfile.write(b"%x\r\n%b\r\n" % (len(piece), piece))


def _send_json(handler: _Handler, code: int, payload: Mapping[str, Any]) -> None:
    retry_after = (payload.get("details") or {}).get("retryAfterSeconds")
    throttled = code in (429, 503, 504) and retry_after
    headers = {"Retry-After": str(retry_after)} if throttled else {}
    _send_raw(handler, code, orjson.dumps(payload), "application/json", headers)


def _send_raw(
    handler: _Handler,
    code: int,
    body: bytes,
    content_type: str,
    headers: Mapping[str, str] | None = None,
) -> None:
    handler.send_response(code)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


def _verb_set(verbs: Collection[str] | None) -> frozenset[str] | None:
    return frozenset(verbs) if verbs is not None else None


def _without_type_meta(obj: Mapping[str, Any]) -> JsonObject:
    return {key: value for key, value in obj.items() if key not in _TYPE_META}


def _delete_success(resource: ResourceType, deleted: Mapping[str, Any]) -> JsonObject:
    details: JsonObject = {"name": deleted["metadata"]["name"]}
    if resource.group:
        details["group"] = resource.group
    details["kind"] = resource.plural
    details["uid"] = deleted["metadata"]["uid"]
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    }


def _decode_object(body: bytes) -> JsonObject:
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise errors.bad_request(f"couldn't get version/kind; json parse error: {error}") from None
    if not isinstance(decoded, dict):
        raise errors.bad_request(
            "couldn't get version/kind; json parse error: cannot unmarshal "
            f"{type(decoded).__name__} into Go value of type struct"
        )
    return decoded


def _check_list_options(requested: str, match_rule: str, token: str) -> None:
    if token and requested:
        # Refused by the storage layer, not by validation: 400, not 422.
        raise errors.bad_request("specifying resource version is not allowed when using continue")
    if not match_rule:
        return
    if match_rule not in ("Exact", "NotOlderThan"):
        raise errors.invalid_parameter(
            "resourceVersionMatch",
            f'Unsupported value: "{match_rule}": supported values: "Exact", "NotOlderThan"',
        )
    if not requested:
        raise errors.invalid_parameter(
            "resourceVersionMatch",
            "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
        )
    if token:
        raise errors.invalid_parameter(
            "resourceVersionMatch",
            "Forbidden: resourceVersionMatch is forbidden when continue is provided",
        )
    if match_rule == "Exact" and requested == "0":
        raise errors.invalid_parameter(
            "resourceVersionMatch",
            'Forbidden: resourceVersionMatch "exact" is forbidden for resourceVersion "0"',
        )


def _encode_continue(revision: int, after: ObjectKey) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"rv": revision, "start": list(after)})).decode()


def _decode_continue(token: str) -> tuple[int, ObjectKey]:
    try:
        decoded = orjson.loads(base64.urlsafe_b64decode(token))
        revision, (namespace, name) = decoded["rv"], decoded["start"]
        if not (isinstance(revision, int) and isinstance(namespace, str) and isinstance(name, str)):
            raise TypeError("malformed continue token")
    except (binascii.Error, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise errors.bad_request(f"continue key is not valid: {error}") from None
    return revision, (namespace, name)


def _resource_version_parameter(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise errors.bad_request(f'invalid resource version "{value}"') from None


def _int_parameter(query: Mapping[str, str], name: str) -> int | None:
    value = query.get(name)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise errors.bad_request(f'invalid value for {name}: "{value}"') from None


def _bool_parameter(query: Mapping[str, str], name: str) -> bool:
    value = query.get(name, "")
    if value in _TRUE:
        return True
    if value in _FALSE or value == "":
        return False
    raise errors.bad_request(f'invalid value for {name}: "{value}"')


class _HTTPServer(TrackedHTTPServer):
    def __init__(self, address: tuple[str, int], api: KubeApiServer) -> None:
        self.api = api
        super().__init__(address, _Handler, tls=api.tls)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def do_GET(self) -> None:
        self.server.api._handle(self, "GET")

    def do_POST(self) -> None:
        self.server.api._handle(self, "POST")

    def do_PUT(self) -> None:
        self.server.api._handle(self, "PUT")

    def do_PATCH(self) -> None:
        self.server.api._handle(self, "PATCH")

    def do_DELETE(self) -> None:
        self.server.api._handle(self, "DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the server records requests itself (KubeApiServer.requests)."""
