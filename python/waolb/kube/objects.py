"""Reading Kubernetes objects as decoded JSON: typed field checks, metadata and quantities.

Every parser of an API object (Services, EndpointSlices, Nodes, NodeConfigs, metrics) reads its
fields through these helpers, so that a field of the wrong type, an unhashable value where a
name is expected or a number beyond reason becomes a :class:`MalformedObjectError` naming the
field, which the object's handler logs before skipping the object, never a TypeError escaping
the handler.

The exact-type tests are fast paths: decoded JSON holds exact dicts, lists, strs, ints and
bools, and these helpers run for every endpoint of the cluster.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any, Final, NamedTuple

SERVICE_PROXY_NAME_LABEL: Final = "service.kubernetes.io/service-proxy-name"
HEADLESS_LABEL: Final = "service.kubernetes.io/headless"


class MalformedObjectError(ValueError):
    """An API object this proxy cannot use; the message names the field."""


def expect_type(value: object, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    """``value`` if it is a ``kind``; else MalformedObjectError("where: expected what")."""
    if type(value) is kind:
        return value
    # bool is an int subclass; a JSON true is never a port number.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise MalformedObjectError(f"{where}: expected {what}, got {shown(value)}")
    return value


def optional_field(obj: Mapping[str, Any], key: str, kind: type, where: str, what: str) -> Any:
    """``obj[key]`` if it is a ``kind``, None if absent or null; else MalformedObjectError."""
    value = obj.get(key)
    if value is None or type(value) is kind:
        return value
    return expect_type(value, kind, f"{where}.{key}" if where else key, what)


def expect_choice(value: object, choices: Collection[str], where: str, what: str) -> str:
    """``value`` if it is one of the strings ``choices``; else MalformedObjectError.

    The type is checked first: a list or a map is unhashable, and testing it against a set of
    choices would raise TypeError instead of naming the field.
    """
    if type(value) is str and value in choices:
        return value
    raise MalformedObjectError(f"{where}: unknown {what} {shown(value)}")


def string_map(obj: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
    """A map of strings to strings such as labels or annotations; {} when absent."""
    value = optional_field(obj, key, dict, where, "a map")
    if not value:
        return {}
    for name, text in value.items():
        if type(text) is not str:
            expect_type(text, str, f"{where}.{key}[{name}]", "a string")
    return dict(value)


class ObjectMetadata(NamedTuple):
    namespace: str
    name: str
    resource_version: str
    labels: dict[str, str]
    annotations: dict[str, str]


def object_metadata(obj: object) -> ObjectMetadata:
    """The metadata of a namespaced object; its namespace and name must be non-empty."""
    document = expect_type(obj, dict, "object", "an object")
    meta = expect_type(document.get("metadata"), dict, "metadata", "an object")
    namespace = expect_type(meta.get("namespace"), str, "metadata.namespace", "a namespace")
    name = expect_type(meta.get("name"), str, "metadata.name", "a name")
    if not namespace or not name:
        raise MalformedObjectError("metadata: namespace and name must not be empty")
    version = meta.get("resourceVersion")
    return ObjectMetadata(
        namespace=namespace,
        name=name,
        # The API server always sends a string; anything else only identifies the version.
        resource_version=version if type(version) is str else shown(version) if version else "",
        labels=string_map(meta, "labels", "metadata"),
        annotations=string_map(meta, "annotations", "metadata"),
    )


class ObjectIdentity(NamedTuple):
    """Who an object is, as far as it can be read: "" for whatever is missing or mistyped."""

    namespace: str
    name: str
    resource_version: str


def object_identity(obj: object) -> ObjectIdentity:
    """The namespace, name and resourceVersion of any object, even a malformed one, for
    keying and for log lines."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict):
        return ObjectIdentity("", "", "")

    def text(key: str) -> str:
        value = meta.get(key)
        return value if isinstance(value, str) else ""

    return ObjectIdentity(text("namespace"), text("name"), text("resourceVersion"))


def parse_quantity(value: object) -> float:
    """A Kubernetes quantity ("22500m", "123456789n", "1.5", "2k", or a JSON number) as a
    finite float; ValueError otherwise."""
    # Lazy: the kubernetes package costs a third of a second, which --help need not pay.
    from kubernetes.utils.quantity import parse_quantity as decimal_quantity  # noqa: PLC0415

    # Go's Quantity decodes JSON numbers too, but never booleans.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{shown(value)} is not a quantity")
    try:
        number = float(decimal_quantity(value))  # type: ignore[no-untyped-call]
    # ArithmeticError: the decimal module's overflow and invalid operations; OverflowError is
    # one of them (a Decimal beyond the float range).
    except (ValueError, ArithmeticError):
        raise ValueError(f"{shown(value)} is not a quantity") from None
    if not math.isfinite(number):
        raise ValueError(f"{shown(value)} is not a finite quantity")
    return number


_SHOWN_LENGTH: Final = 80


def shown(value: object) -> str:
    """``repr(value)`` for messages, cut short: a hostile object must not become a megabyte
    log line (nor fail: Python refuses to print integers of more than 4300 digits)."""
    try:
        text = repr(value)
    except ValueError:
        return f"<a {type(value).__name__} too large to show>"
    return text if len(text) <= _SHOWN_LENGTH else f"{text[:_SHOWN_LENGTH]}...({len(text)} chars)"
