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
import binascii
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

import urllib3
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from waolb.wao.predictor import BasicAuth, PredictorError

USERNAME_KEY: Final = "username"
PASSWORD_KEY: Final = "password"


@dataclass
class _Entry:
    lock: threading.Lock
    expires: float = 0.0
    value: BasicAuth | PredictorError | None = None


class SecretReader:
    """Thread-safe; concurrent callers for one Secret share a single GET."""

    def __init__(
        self,
        api_client: ApiClient,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        request_timeout: float = 3.0,
    ) -> None:
        self.api_client = api_client
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
        method, url, headers, _, _ = self.api_client.param_serialize(
            method="GET",
            resource_path=f"/api/v1/namespaces/{quote(namespace, safe='')}/secrets/"
            f"{quote(name, safe='')}",
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        try:
            response: urllib3.BaseHTTPResponse = self.api_client.call_api(
                method, url, header_params=headers, _request_timeout=self.request_timeout
            ).response
            try:
                status, body = response.status, response.data
            finally:
                response.release_conn()
        except (urllib3.exceptions.HTTPError, OSError, ApiException) as error:
            raise _Transient(f"{where}: reading it failed: {error}") from None
        if status == 404:
            raise PredictorError("secret", f"{where} does not exist")
        if status in (401, 403):
            raise PredictorError("secret", f"{where}: not allowed to read it (HTTP {status})")
        if status != 200:
            raise _Transient(f"{where}: HTTP {status} from the API server")
        try:
            data = json.loads(body).get("data") or {}
            if not isinstance(data, dict):
                raise TypeError
        except (ValueError, TypeError, AttributeError):
            raise _Transient(f"{where}: the API server's answer is not a Secret") from None
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
    except (binascii.Error, UnicodeDecodeError):
        raise PredictorError("secret", f"{where}: {key!r} is not base64 of UTF-8 text") from None
