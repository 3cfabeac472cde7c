"""Basic-auth credentials from the Secrets a NodeConfig's EndpointTerms name.

A Secret is read with a GET when first needed and kept for ``ttl`` seconds, not watched: a proxy
on every node watching Secrets would need list/watch rights on them cluster-wide, where a GET
needs only ``get`` on the few Secrets WAO names.

Differences from upstream WAO, which logs and carries on without credentials when the Secret is
missing or lacks a key: here that is an error (``PredictorError`` of kind ``secret``), so the
caller can say why a node is not scored instead of getting 401s from its predictor. Empty values
are not an error: WAO then sends no basic auth, and so does waolb (``BasicAuth.usable``).

Answers of the API server (the Secret, 404, 403, a Secret without the keys) are kept for ``ttl``;
transport failures and other statuses are not, so the next call asks again.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

from waolb.kube.rest import ApiError, RestClient
from waolb.wao.predictor import BasicAuth, PredictorError

USERNAME_KEY: Final = "username"
PASSWORD_KEY: Final = "password"
# The API server stores Secrets of up to 1 MiB.
MAX_SECRET_BYTES: Final = 2 << 20


@dataclass
class _Entry:
    lock: threading.Lock
    expires: float = 0.0
    value: BasicAuth | PredictorError | None = None


class SecretReader:
    """Thread-safe; concurrent callers for one Secret share a single GET."""

    def __init__(
        self,
        rest: RestClient,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        request_timeout: float = 3.0,
    ) -> None:
        self.rest = rest
        self.ttl = ttl
        self.request_timeout = request_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], _Entry] = {}

    def basic_auth(self, namespace: str, name: str) -> BasicAuth:
        """The Secret's ``username`` and ``password``; PredictorError(kind="secret") if unusable."""
        with self._lock:
            entry = self._entries.setdefault((namespace, name), _Entry(threading.Lock()))
        with entry.lock:
            if entry.value is None or self._clock() >= entry.expires:
                try:
                    entry.value = self._read(namespace, name)
                except _Transient as error:
                    entry.value = None
                    raise PredictorError("secret", str(error)) from None
                except PredictorError as error:
                    entry.value = error
                entry.expires = self._clock() + self.ttl
            value = entry.value
        if isinstance(value, PredictorError):
            raise PredictorError(value.kind, str(value))
        return value

    def _read(self, namespace: str, name: str) -> BasicAuth:
        where = f"Secret {namespace}/{name}"
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/secrets/{quote(name, safe='')}"
        try:
            secret = self.rest.get_json(
                path, timeout=self.request_timeout, max_body=MAX_SECRET_BYTES
            )
        except ApiError as error:
            if error.status == 404:
                raise PredictorError("secret", f"{where} does not exist") from None
            if error.status in (401, 403):
                raise PredictorError(
                    "secret", f"{where}: not allowed to read it (HTTP {error.status})"
                ) from None
            if error.kind == "status":
                raise _Transient(f"{where}: HTTP {error.status} from the API server") from None
            if error.kind == "response":
                raise _Transient(f"{where}: the API server's answer is not a Secret") from None
            raise _Transient(f"{where}: reading it failed: {error}") from None
        data = (secret.get("data") or {}) if isinstance(secret, dict) else None
        if not isinstance(data, dict):
            raise _Transient(f"{where}: the API server's answer is not a Secret")
        username, password = (_decoded(data, key, where) for key in (USERNAME_KEY, PASSWORD_KEY))
        return BasicAuth(username, password)


class _Transient(Exception):
    """A failure that says nothing about the Secret itself: not cached."""


def _decoded(data: dict[str, object], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise PredictorError("secret", f"{where} has no {key!r} key")
    try:
        return base64.b64decode(value, validate=True).decode()
    # ValueError: text that is not even ASCII (binascii.Error is one too).
    except (ValueError, UnicodeDecodeError):
        raise PredictorError("secret", f"{where}: {key!r} is not base64 of UTF-8 text") from None
