"""The object store: etcd's global revision counter and event history plus the watch cache.

Every write takes the next value of one global resourceVersion counter, as etcd revisions do.
The history keeps the recent events (bounded); a watch or an exact list older than the history
is answered with 410 Expired, like a compacted etcd or an exhausted watch cache. Each open watch
gets its own queue of events, so compacting the history does not disturb watches already open.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from . import errors
from .errors import ApiError
from .resources import DNS1123_LABEL, ResourceType, name_problem
from .selectors import label_key_problem, label_value_problem

ObjectKey = tuple[str, str]  # (namespace, name); namespace is "" for cluster-scoped objects
JsonObject = dict[str, Any]

# The first revision of a fresh store: "0" means "any version" to clients, so none is ever 0.
INITIAL_RESOURCE_VERSION = 1
_GENERATED_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def deep_copy(obj: Mapping[str, Any]) -> JsonObject:
    copied: JsonObject = orjson.loads(orjson.dumps(obj))
    return copied


def object_key(obj: Mapping[str, Any]) -> ObjectKey:
    metadata = obj["metadata"]
    return metadata.get("namespace", ""), metadata["name"]


def _with_resource_version(obj: Mapping[str, Any], resource_version: int) -> JsonObject:
    return {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(resource_version)}}


@dataclass(frozen=True)
class StoredEvent:
    """One committed write. ``object`` is the new state (for DELETED: the last state stamped
    with the deletion's resourceVersion, as the real server sends it); ``previous`` is the state
    before the write."""

    resource_version: int
    resource: ResourceType
    type: str
    object: JsonObject
    previous: JsonObject | None


@dataclass(eq=False)
class Watch:
    """An open watch: its filter and the events committed for it but not yet sent."""

    resource: ResourceType
    matches: Callable[[Mapping[str, Any]], bool]
    pending: deque[StoredEvent] = field(default_factory=deque)
    # Set when the watch cannot start or must end: the Status goes out as an ERROR event.
    error: ApiError | None = None
    # Set to cut the connection without ending the stream properly.
    dropped: bool = False

    @property
    def ending(self) -> bool:
        return self.dropped or self.error is not None

    def wire_event(self, event: StoredEvent) -> tuple[str, JsonObject] | None:
        """The event as this watcher sees it through its filter, or None when it sees nothing.

        As the real watch cache does: an object that stops matching is DELETED (with its old
        content at the new resourceVersion) and one that starts matching is ADDED.
        """
        is_match = event.type != "DELETED" and self.matches(event.object)
        was_match = event.previous is not None and self.matches(event.previous)
        if event.type == "DELETED":
            return ("DELETED", event.object) if was_match else None
        if is_match:
            return ("MODIFIED" if was_match else "ADDED", event.object)
        if was_match:
            assert event.previous is not None
            return "DELETED", _with_resource_version(event.previous, event.resource_version)
        return None


class ObjectStore:
    def __init__(self, history_limit: int) -> None:
        self.condition = threading.Condition()
        self.history_limit = history_limit
        self._watches: set[Watch] = set()
        # False while the API server is down: a watch that slips in then is cut at once.
        self.accepting_watches = True
        self.reset()

    def reset(self) -> None:
        """Forget everything, as a brand-new cluster."""
        with self.condition:
            self.resource_version = INITIAL_RESOURCE_VERSION
            # Watches from this revision on can be served: history holds every later event.
            self.compacted_resource_version = INITIAL_RESOURCE_VERSION
            self._objects: defaultdict[ResourceType, dict[ObjectKey, JsonObject]] = defaultdict(
                dict
            )
            self._history: deque[StoredEvent] = deque()

    def compact(self) -> None:
        with self.condition:
            self.compacted_resource_version = self.resource_version
            self._history.clear()

    # Writes. Stored objects are never mutated: readers share them without copying.

    def create(
        self, resource: ResourceType, obj: Mapping[str, Any], namespace: str | None
    ) -> JsonObject:
        new = _validated(resource, obj, namespace, url_name=None)
        metadata = new["metadata"]
        with self.condition:
            if not metadata.get("name"):
                metadata["name"] = self._generated_name(resource, new)
            key = object_key(new)
            if key in self._objects[resource]:
                raise errors.already_exists(resource, metadata["name"])
            self.resource_version += 1
            metadata["uid"] = str(uuid.uuid4())
            metadata["resourceVersion"] = str(self.resource_version)
            metadata["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            self._objects[resource][key] = new
            self._record(StoredEvent(self.resource_version, resource, "ADDED", new, None))
            return new

    def update(
        self,
        resource: ResourceType,
        obj: Mapping[str, Any],
        namespace: str | None,
        url_name: str | None = None,
    ) -> JsonObject:
        """Replace an object; a metadata.resourceVersion in ``obj`` must be the current one."""
        new = _validated(resource, obj, namespace, url_name)
        metadata = new["metadata"]
        if not metadata.get("name"):
            raise errors.invalid(
                resource,
                "",
                "metadata.name",
                "FieldValueRequired",
                "Required value: name is required",
            )
        with self.condition:
            current = self.get(resource, metadata["name"], metadata.get("namespace"))
            current_metadata = current["metadata"]
            if metadata.get("resourceVersion") not in (
                None,
                "",
                current_metadata["resourceVersion"],
            ):
                raise errors.modified_since_read(resource, metadata["name"])
            for system_field in ("uid", "creationTimestamp", "resourceVersion"):
                metadata[system_field] = current_metadata[system_field]
            if new == current:
                # etcd keeps the revision of an unchanged write and watchers see nothing.
                return current
            self.resource_version += 1
            metadata["resourceVersion"] = str(self.resource_version)
            self._objects[resource][object_key(new)] = new
            self._record(StoredEvent(self.resource_version, resource, "MODIFIED", new, current))
            return new

    def merge_patch(
        self, resource: ResourceType, name: str, namespace: str | None, patch: Mapping[str, Any]
    ) -> JsonObject:
        """Apply an RFC 7386 JSON merge patch; a resourceVersion in it is a precondition."""
        with self.condition:
            current = self.get(resource, name, namespace)
            patched = _merged(current, patch)
            if not isinstance(patched, dict):
                raise errors.bad_request("a merge patch of an object must be a JSON object")
            return self.update(resource, patched, namespace, url_name=name)

    def delete(
        self,
        resource: ResourceType,
        name: str,
        namespace: str | None,
        preconditions: Mapping[str, Any] | None = None,
    ) -> JsonObject:
        """Delete at once (no finalizers); returns the object's last state, at the deletion's
        resourceVersion as a real server answers it."""
        with self.condition:
            current = self.get(resource, name, namespace)
            for precondition, label, then in (
                ("uid", "UID", "deleted and then recreated"),
                ("resourceVersion", "ResourceVersion", "modified"),
            ):
                wanted = (preconditions or {}).get(precondition)
                actual = current["metadata"][precondition]
                if wanted is not None and wanted != actual:
                    raise errors.precondition_failed(
                        resource,
                        name,
                        f"the {label} in the precondition ({wanted}) does not match the {label} "
                        f"in record ({actual}). The object might have been {then}",
                    )
            self.resource_version += 1
            deleted = _with_resource_version(current, self.resource_version)
            del self._objects[resource][object_key(current)]
            self._record(StoredEvent(self.resource_version, resource, "DELETED", deleted, current))
            return deleted

    def _record(self, event: StoredEvent) -> None:
        self._history.append(event)
        if len(self._history) > self.history_limit:
            self.compacted_resource_version = self._history.popleft().resource_version
        for watch in self._watches:
            if watch.resource == event.resource:
                watch.pending.append(event)
        self.condition.notify_all()

    def _generated_name(self, resource: ResourceType, obj: JsonObject) -> str:
        prefix = str(obj["metadata"]["generateName"])
        while True:
            name = prefix + "".join(random.choices(_GENERATED_NAME_ALPHABET, k=5))
            if (obj["metadata"].get("namespace", ""), name) not in self._objects[resource]:
                return name

    # Reads.

    def get(self, resource: ResourceType, name: str, namespace: str | None) -> JsonObject:
        with self.condition:
            found = self._objects[resource].get(
                ((namespace or "") if resource.namespaced else "", name)
            )
        if found is None:
            raise errors.not_found(resource, name)
        return found

    def snapshot(
        self, resource: ResourceType, at: int | None = None
    ) -> tuple[int, dict[ObjectKey, JsonObject]]:
        """The objects of ``resource`` at revision ``at`` (default: now) and that revision.

        Past states are rebuilt by undoing the history's later events, so they are available
        exactly as long as the history reaches back, as with etcd's compaction.
        """
        with self.condition:
            state = dict(self._objects[resource])
            if at is None:
                return self.resource_version, state
            if at < self.compacted_resource_version:
                raise errors.expired("The resourceVersion for the provided list is too old.")
            for event in reversed(self._history):
                if event.resource_version <= at:
                    break
                if event.resource != resource:
                    continue
                key = object_key(event.object)
                if event.previous is None:
                    del state[key]
                else:
                    state[key] = event.previous
            return at, state

    def wait_for_resource_version(self, resource_version: int, timeout: float) -> bool:
        """Wait until the store reaches ``resource_version``, as the watch cache waits to be
        fresh enough for a request from the future; False if it did not in ``timeout``."""
        with self.condition:
            return self.condition.wait_for(
                lambda: self.resource_version >= resource_version, timeout
            )

    # Watches.

    def open_watch(
        self,
        resource: ResourceType,
        start: int | None,
        matches: Callable[[Mapping[str, Any]], bool],
        future_wait: float,
    ) -> Watch:
        """Open a watch after revision ``start``; None starts with the current state as
        synthetic ADDED events (resourceVersion unset or "0")."""
        watch = Watch(resource, matches)
        with self.condition:
            if start is None:
                for key in sorted(self._objects[resource]):
                    obj = self._objects[resource][key]
                    watch.pending.append(
                        StoredEvent(
                            int(obj["metadata"]["resourceVersion"]), resource, "ADDED", obj, None
                        )
                    )
            elif start < self.compacted_resource_version:
                watch.error = errors.expired(
                    f"too old resource version: {start} ({self.compacted_resource_version})"
                )
                return watch
            elif not self.wait_for_resource_version(start, future_wait):
                watch.error = errors.resource_version_too_large(start, self.resource_version)
                return watch
            else:
                watch.pending.extend(
                    event
                    for event in self._history
                    if event.resource_version > start and event.resource == resource
                )
            watch.dropped = not self.accepting_watches
            self._watches.add(watch)
            self.condition.notify_all()
        return watch

    def next_events(self, watch: Watch, timeout: float) -> tuple[list[StoredEvent], int]:
        """Wait up to ``timeout`` for events; returns them and the revision the watch has
        caught up with (every event up to it is in the returned list or was sent before)."""
        with self.condition:
            self.condition.wait_for(lambda: watch.pending or watch.ending, timeout)
            events = list(watch.pending)
            watch.pending.clear()
            return events, self.resource_version

    def close_watch(self, watch: Watch) -> None:
        with self.condition:
            self._watches.discard(watch)
            self.condition.notify_all()

    def end_watches(
        self, resource: ResourceType | None, error: ApiError | None, timeout: float
    ) -> int:
        """End open watches, with an ERROR event carrying ``error`` or (None) by cutting the
        connection, and wait until their servers have done so; returns how many."""
        with self.condition:
            ended = [w for w in self._watches if resource is None or w.resource == resource]
            for watch in ended:
                if error is None:
                    watch.dropped = True
                else:
                    watch.error = error
            self.condition.notify_all()
            self.condition.wait_for(lambda: self._watches.isdisjoint(ended), timeout)
            return len(ended)

    def watch_count(self, resource: ResourceType | None = None) -> int:
        with self.condition:
            return sum(1 for w in self._watches if resource is None or w.resource == resource)


def _merged(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merged(result.get(key), value)
    return result


def _validated(
    resource: ResourceType, obj: Mapping[str, Any], url_namespace: str | None, url_name: str | None
) -> JsonObject:
    """A private copy of ``obj`` with apiVersion, kind and namespace settled, checked the way the
    real server decodes (400 Bad Request) and validates (422 Invalid) object metadata."""
    new = deep_copy(obj)
    for field_name, expected in (("apiVersion", resource.api_version), ("kind", resource.kind)):
        found = new.setdefault(field_name, expected)
        if found != expected:
            raise errors.bad_request(
                f"the {field_name} in the data ({found}) does not match the expected {field_name} "
                f"({expected})"
            )
    metadata = new.setdefault("metadata", {})
    if not isinstance(metadata, dict):
        raise errors.bad_request("json: cannot unmarshal metadata into Go struct field ObjectMeta")
    name = metadata.get("name") or ""
    if url_name is not None and name != url_name:
        raise errors.bad_request(
            f"the name of the object ({name}) does not match the name on the URL ({url_name})"
        )
    if resource.namespaced:
        namespace = metadata.get("namespace") or url_namespace or "default"
        if url_namespace is not None and namespace != url_namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the "
                "request"
            )
        problem = name_problem(namespace, DNS1123_LABEL)
        if problem:
            raise errors.invalid(
                resource,
                name,
                "metadata.namespace",
                "FieldValueInvalid",
                f'Invalid value: "{namespace}": {problem}',
            )
        metadata["namespace"] = namespace
    else:
        # The real server clears the namespace of cluster-scoped objects.
        metadata.pop("namespace", None)
    if name:
        problem = name_problem(name, resource.name_pattern)
        if problem:
            raise errors.invalid(
                resource,
                name,
                "metadata.name",
                "FieldValueInvalid",
                f'Invalid value: "{name}": {problem}',
            )
    elif not metadata.get("generateName") or url_name is not None:
        raise errors.invalid(
            resource,
            name,
            "metadata.name",
            "FieldValueRequired",
            "Required value: name or generateName is required",
        )
    _check_labels(resource, name, metadata.get("labels"))
    return new


def _check_labels(resource: ResourceType, name: str, labels: Any) -> None:
    if labels is None:
        return
    if not isinstance(labels, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in labels.items()
    ):
        raise errors.bad_request(
            "json: cannot unmarshal metadata.labels into Go struct field ObjectMeta.labels of "
            "type map[string]string"
        )
    for key, value in labels.items():
        problem = label_key_problem(key) or label_value_problem(value)
        if problem:
            raise errors.invalid(
                resource,
                name,
                "metadata.labels",
                "FieldValueInvalid",
                f'Invalid value: "{key}": {problem}',
            )
