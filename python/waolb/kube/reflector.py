"""List and watch one resource type and feed a handler plain dicts (client-go calls this a
reflector).

The reflector LISTs (paged, consistent), hands the snapshot to ``handler.replace``, then WATCHes
from the list's resourceVersion and hands every change to ``upsert``/``delete``. A watch that ends
or breaks is resumed from the last resourceVersion seen (bookmarks included), so nothing is lost
and nothing is listed again; only 410 Gone, a protocol error or a failing handler cost a relist.
Failures back off exponentially with jitter, so an unreachable API server sees a trickle of
requests, not a busy loop.

Requests go through :class:`~waolb.kube.rest.RestClient`: rate-limited, decoded straight from
the raw HTTP body with orjson, and ended by a deadline (a list within ``list_timeout``, a watch
within its own timeout plus ``request_timeout``). While any reflector decodes and hands over a
list, Python's cyclic garbage collector is held off (see :class:`_CollectorPause`).
"""

from __future__ import annotations

import gc
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import orjson
import structlog

from waolb import httpclient
from waolb.kube.resources import Resource
from waolb.kube.rest import ApiError, RestClient, decode_json, read_body
from waolb.runner import Backoff

logger = structlog.get_logger(__name__)

JsonObject = dict[str, Any]
RestartCallback = Callable[[str, str], None]

# Why a reflector restarted its watch, as passed to on_restart and logged.
GONE = "gone"  # 410: the resourceVersion is no longer served; relisted
CLOSED = "closed"  # the server ended the watch (its timeout); resumed
DROPPED = "dropped"  # the watch connection broke mid-stream; resumed
ERROR = "error"  # a request failed, or the server sent an ERROR event or garbage
HANDLER_ERROR = "handler_error"  # the handler raised; relisted so it can start over

# A watch open this long is healthy even without events: the next restart needs no backoff.
_HEALTHY_WATCH_SECONDS = 1.0


class WatchHandler(Protocol):
    """Receives a resource type's state; called from the reflector's thread only."""

    def replace(self, kind: str, objects: list[JsonObject], resource_version: str) -> None:
        """The complete current set after a (re)list: anything not in it is gone."""

    def upsert(self, kind: str, obj: JsonObject) -> None:
        """An object was added or changed."""

    def delete(self, kind: str, obj: JsonObject) -> None:
        """An object was deleted (``obj`` is its last state)."""


class _CollectorPause:
    """Holds Python's cyclic garbage collector off while any thread is inside.

    A list of 10 000 EndpointSlices decodes into millions of dicts, lists and strings, and the
    handler builds hundreds of thousands of records from them. The collections that allocating
    them triggers find no garbage, yet walk ever more live objects: they tripled the decoding
    time and doubled the handler's. Reference counting frees what is dropped meanwhile.

    After the first lists, what is alive is frozen when the last thread leaves (``freeze_later``):
    the records the handlers keep are then left out of every later collection, instead of being
    walked again as they age (200 ms in the first sync at 10 000 Services). A cycle that is
    garbage at that moment is never freed, so this is done once per reflector, at start, not
    after relists or failed lists.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._resume = False
        self._freeze = False

    def __enter__(self) -> None:
        with self._lock:
            if self._inside == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._inside += 1

    def __exit__(self, *_: object) -> None:
        with self._lock:
            self._inside -= 1
            if self._inside == 0:
                if self._freeze:
                    self._freeze = False
                    gc.freeze()
                if self._resume:
                    gc.enable()

    def freeze_later(self) -> None:
        """Freeze what is alive when the last thread leaves."""
        with self._lock:
            self._freeze = True


_COLLECTOR_PAUSE = _CollectorPause()


class _Restart(Exception):
    """Ends the current list or watch; the run loop decides how soon to try again."""

    def __init__(self, reason: str, detail: str, *, relist: bool = False) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.relist = relist


class Reflector(threading.Thread):
    """A daemon thread that keeps ``handler`` in step with one resource type.

    ``label_selector`` and ``field_selector`` are applied by the API server. ``watch_timeout``
    is the least timeoutSeconds a watch asks for (each asks for a random value up to twice that,
    so that watches of many proxies do not restart together). ``request_timeout`` is how long
    a watch may last, or stay silent, past its own timeout; ``list_timeout`` the deadline of a
    list (or of each page): generous, as the first list of a large cluster is tens of megabytes.
    Call ``stop`` to end the thread.
    """

    def __init__(
        self,
        rest: RestClient,
        resource: Resource,
        handler: WatchHandler,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        on_restart: RestartCallback | None = None,
        backoff: Backoff | None = None,
        watch_timeout: float = 300.0,
        request_timeout: float = 60.0,
        list_timeout: float = 300.0,
        page_size: int = 500,
    ) -> None:
        super().__init__(name=f"reflector-{resource.kind}", daemon=True)
        self.rest = rest
        self.resource = resource
        self.handler = handler
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.on_restart = on_restart
        self.backoff = backoff or Backoff()
        self.watch_timeout = watch_timeout
        self.request_timeout = request_timeout
        self.list_timeout = list_timeout
        self.page_size = page_size
        self.synced = threading.Event()
        """Set once the first list has been handed to the handler."""
        self._stopping = threading.Event()
        self._resource_version: str | None = None
        self._rng = random.Random()
        self._response_lock = threading.Lock()
        self._open_response: httpclient.OpenResponse | None = None
        # A routine restart (closed or dropped stream, 410) right after a healthy watch is
        # retried at once; every other one backs off, longer with each in a row.
        self._watch_was_healthy = False
        self._backoffs_in_a_row = 0
        self._log = logger.bind(kind=resource.kind)

    @property
    def has_synced(self) -> bool:
        return self.synced.is_set()

    @property
    def resource_version(self) -> str | None:
        """The last resourceVersion seen, from a list, an event or a bookmark."""
        return self._resource_version

    def wait_for_sync(self, timeout: float | None = None) -> bool:
        return self.synced.wait(timeout)

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the thread, interrupting a watch it is blocked in, and wait for it to end."""
        self._stopping.set()
        # Under the lock: once the reflector has let go of the response, its connection may
        # already serve another request from the shared pool.
        with self._response_lock:
            if self._open_response is not None:
                self._open_response.interrupt()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def run(self) -> None:
        relist = True
        while not self._stopping.is_set():
            try:
                if relist:
                    # The pause covers the requests too: allocation, not time, triggers
                    # collections.
                    with _COLLECTOR_PAUSE:
                        self._list_and_replace()
                    relist = False
                self._watch()
            except _Restart as restart:
                if self._stopping.is_set():
                    break
                relist = relist or restart.relist
                self._restart(restart)
            except Exception as error:
                # A bug must not end the thread silently and freeze the proxy's view of the
                # cluster: log it, and start over from a fresh list after a backoff.
                self._log.exception("unexpected failure")
                relist = True
                self._restart(_Restart(ERROR, f"unexpected {error!r}", relist=True))

    def _restart(self, restart: _Restart) -> None:
        if restart.reason in (GONE, CLOSED, DROPPED) and self._watch_was_healthy:
            delay = 0.0
        else:
            delay = self.backoff.delay(self._backoffs_in_a_row, self._rng)
            self._backoffs_in_a_row += 1
        self._watch_was_healthy = False
        log = {CLOSED: self._log.debug, ERROR: self._log.warning}.get(
            restart.reason, self._log.info
        )
        log(
            "restarting list and watch",
            reason=restart.reason,
            detail=restart.detail,
            resource_version=self._resource_version,
            relist=restart.relist,
            delay=round(delay, 3),
        )
        if self.on_restart is not None:
            try:
                self.on_restart(self.resource.kind, restart.reason)
            except Exception:
                self._log.exception("on_restart callback failed")
        self._stopping.wait(delay)

    # Listing.

    def _list_and_replace(self) -> None:
        items: list[JsonObject] = []
        continue_token: str | None = None
        # The first list reads the API server's watch cache in one response (resourceVersion
        # 0), as client-go's reflectors do; the watch that follows catches up from there.
        # Relists, after history expired, read consistently in pages.
        from_cache = not self.synced.is_set()
        while True:
            query = [*self._selector_query()]
            query.append(("resourceVersion", "0") if from_cache else ("limit", str(self.page_size)))
            if continue_token:
                query.append(("continue", continue_token))
            page = self._get_json(query)
            try:
                page_items = page["items"] or []
                if type(page_items) is not list:
                    raise TypeError(f"items is a {type(page_items).__name__}")
                items.extend(page_items)
                metadata = page["metadata"]
                continue_token = metadata.get("continue")
                resource_version = str(metadata["resourceVersion"])
            except (KeyError, TypeError, AttributeError) as error:
                raise _Restart(ERROR, f"malformed list: {error!r}") from None
            if not continue_token:
                break
        # Built-in types omit apiVersion and kind on list items; give handlers uniform objects.
        # (An item that is no object at all is the handler's to skip and report.)
        for item in items:
            if type(item) is dict:
                item.setdefault("apiVersion", self.resource.api_version)
                item.setdefault("kind", self.resource.kind)
        self._call_handler(self.handler.replace, self.resource.kind, items, resource_version)
        self._resource_version = resource_version
        if not self.synced.is_set():
            _COLLECTOR_PAUSE.freeze_later()
            self._log.info("synced", objects=len(items), resource_version=resource_version)
            self.synced.set()
        else:
            self._log.info("relisted", objects=len(items), resource_version=resource_version)

    # Watching.

    def _watch(self) -> None:
        assert self._resource_version is not None
        timeout_seconds = int(self.watch_timeout * (1.0 + self._rng.random()))
        query = [
            *self._selector_query(),
            ("watch", "true"),
            ("resourceVersion", self._resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(max(timeout_seconds, 1))),
        ]
        # Silent that long, or open that long, the watch has outlived its own timeout.
        limit = timeout_seconds + self.request_timeout
        with self._open(query, limit, silence=limit) as response:
            opened = time.monotonic()
            try:
                for line in _lines(response):
                    self._apply(_decoded(line, "watch event"))
            except httpclient.HttpError as error:
                self._note_watch_lifetime(opened)
                raise _Restart(DROPPED, f"watch stream broke: {error!r}") from None
        self._note_watch_lifetime(opened)
        raise _Restart(CLOSED, "the server ended the watch")

    def _note_watch_lifetime(self, opened: float) -> None:
        if time.monotonic() - opened >= _HEALTHY_WATCH_SECONDS:
            self._watch_was_healthy = True

    def _apply(self, event: JsonObject) -> None:
        try:
            event_type, obj = event["type"], event["object"]
            if event_type == "ERROR":
                code, message = obj.get("code"), obj.get("message")
                if code == 410:
                    raise _Restart(GONE, f"watch expired: {message}", relist=True)
                raise _Restart(ERROR, f"watch error {code}: {message}", relist=True)
            resource_version = str(obj["metadata"]["resourceVersion"])
        except (KeyError, TypeError, AttributeError) as error:
            raise _Restart(ERROR, f"malformed watch event: {error!r}", relist=True) from None
        if event_type in ("ADDED", "MODIFIED"):
            self._call_handler(self.handler.upsert, self.resource.kind, obj)
        elif event_type == "DELETED":
            self._call_handler(self.handler.delete, self.resource.kind, obj)
        elif event_type != "BOOKMARK":
            raise _Restart(ERROR, f"unknown watch event type {event_type!r}", relist=True)
        self._resource_version = resource_version
        self._watch_was_healthy = True
        self._backoffs_in_a_row = 0

    # Plumbing.

    def _call_handler(self, method: Callable[..., None], *args: Any) -> None:
        try:
            method(*args)
        except Exception as error:
            self._log.exception("handler failed", method=method.__name__)
            raise _Restart(
                HANDLER_ERROR, f"{method.__name__} raised {error!r}", relist=True
            ) from None

    def _selector_query(self) -> list[tuple[str, str]]:
        query = []
        if self.label_selector:
            query.append(("labelSelector", self.label_selector))
        if self.field_selector:
            query.append(("fieldSelector", self.field_selector))
        return query

    def _get_json(self, query: list[tuple[str, str]]) -> JsonObject:
        """A page of the collection; any failure raises _Restart. stop() interrupts it."""
        path = self.resource.collection_path
        try:
            with self._open(query, self.list_timeout, silence=None) as response:
                page = decode_json(path, read_body(path, response))
        except ApiError as error:
            raise _restart_for(error) from None
        if not isinstance(page, dict):
            raise _Restart(ERROR, "the list is not a JSON object", relist=True)
        return page

    def _open(
        self, query: list[tuple[str, str]], limit: float, silence: float | None
    ) -> _TrackedResponse:
        try:
            response = self.rest.open(
                self.resource.collection_path,
                query,
                timeout=limit,
                read_timeout=silence,
                cancel=self._stopping,
            )
        except ApiError as error:
            raise _restart_for(error) from None
        return _TrackedResponse(self, response)

    def _track(self, response: httpclient.OpenResponse | None) -> None:
        with self._response_lock:
            self._open_response = response
            # stop() may have run between the request and now: it could not interrupt us then.
            if response is not None and self._stopping.is_set():
                response.interrupt()


class _TrackedResponse:
    """A list or watch the reflector reads from; stop() can interrupt it while it is open."""

    def __init__(self, reflector: Reflector, response: httpclient.OpenResponse) -> None:
        self._reflector = reflector
        self._response = response

    def __enter__(self) -> httpclient.OpenResponse:
        self._reflector._track(self._response)
        return self._response

    def __exit__(self, *_: object) -> None:
        self._reflector._track(None)
        self._response.close()


def _restart_for(error: ApiError) -> _Restart:
    if error.status == 410:
        return _Restart(GONE, str(error), relist=True)
    return _Restart(ERROR, str(error), relist=error.kind == "response")


def _decoded(data: bytes, what: str) -> JsonObject:
    try:
        decoded = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise _Restart(ERROR, f"undecodable {what}: {error}", relist=True) from None
    if not isinstance(decoded, dict):
        raise _Restart(ERROR, f"{what} is not a JSON object", relist=True)
    return decoded


def _lines(response: httpclient.OpenResponse) -> Iterator[bytes]:
    """The non-empty lines of a streamed body, each as soon as its newline arrives.

    A large object may arrive in many chunks: only each new chunk is searched for the newline,
    so the cost stays linear in the line's length.
    """
    pending = bytearray()
    for chunk in response.chunks():
        start = 0
        while (newline := chunk.find(b"\n", start)) != -1:
            pending += chunk[start:newline]
            if pending.strip():
                yield bytes(pending)
            pending.clear()
            start = newline + 1
        pending += chunk[start:]
    if pending.strip():
        yield bytes(pending)
