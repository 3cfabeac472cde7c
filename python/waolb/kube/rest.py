"""The one way waolb reads the Kubernetes API: GETs and watches of raw JSON.

Requests go to the API client's server with its credentials and TLS settings (the URL and
headers come from the client; the Kubernetes client's model objects cost far more than the
proxy can afford, see bench/test_bench_decode.py). Every request

* first takes a token from the process's rate limit (:class:`~waolb.kube.client.TokenBucket`,
  ``--kube-api-qps`` and ``--kube-api-burst``), shared by lists, watches, metrics and Secrets;
* ends by a hard deadline, from connecting to the last byte (:mod:`waolb.httpclient`); a
  watch's deadline is its own timeout plus a margin, so that a server that never ends one
  cannot hold it forever;
* fails with :class:`ApiError`, whose attributes say what happened.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, Final, Literal

import orjson
from kubernetes.client import ApiClient

from waolb import httpclient
from waolb.kube.client import TokenBucket

ErrorKind = Literal["status", "timeout", "connection", "response", "throttled"]
Query = Sequence[tuple[str, str]]

# An error answer is a small Status object; a larger one is cut short, not read on.
_ERROR_BODY_LIMIT: Final = 1 << 20


class ApiError(Exception):
    """An API request without a usable answer.

    ``kind``: ``status`` (an answer other than 200: ``status`` is its HTTP status, ``reason``
    the Status object's reason, "" when it has none, or None when the body is not a Status,
    and ``message`` its message or the start of the body), ``timeout`` (no complete answer by
    the deadline), ``connection`` (refused, reset, TLS...), ``response`` (a 200 whose body is
    not JSON, or too large), ``throttled`` (the rate limit would hold the request past its
    deadline, or the caller gave up waiting for it).
    """

    def __init__(
        self,
        kind: ErrorKind,
        path: str,
        detail: str,
        *,
        status: int | None = None,
        reason: str | None = None,
        message: str = "",
    ) -> None:
        super().__init__(f"{path}: {detail}")
        self.kind: ErrorKind = kind
        self.path = path
        self.status = status
        self.reason = reason
        self.message = message


class RestClient:
    """GETs and watches through ``api_client``'s configuration; ``limiter`` None means no
    client-side rate limit. Thread-safe."""

    def __init__(self, api_client: ApiClient, limiter: TokenBucket | None = None) -> None:
        self.api_client = api_client
        self.limiter = limiter
        self._pools = httpclient.install(api_client.rest_client.pool_manager)

    def get(
        self, path: str, query: Query = (), *, timeout: float, max_body: int | None = None
    ) -> bytes:
        """The body of a 200 answer to GET ``path``, within ``timeout`` seconds."""
        with self.open(path, query, timeout=timeout) as response:
            return read_body(path, response, max_body)

    def get_json(
        self, path: str, query: Query = (), *, timeout: float, max_body: int | None = None
    ) -> Any:
        """The decoded JSON of a 200 answer to GET ``path``, within ``timeout`` seconds."""
        return decode_json(path, self.get(path, query, timeout=timeout, max_body=max_body))

    def open(
        self,
        path: str,
        query: Query = (),
        *,
        timeout: float,
        read_timeout: float | None = None,
        cancel: threading.Event | None = None,
    ) -> httpclient.OpenResponse:
        """An open 200 answer to GET ``path`` (a list to read, a watch to stream) that ends by
        ``timeout`` seconds from now, or once silent for ``read_timeout``; another thread may
        interrupt it. ``cancel`` ends a wait for the rate limit."""
        asked_at = time.monotonic()
        if self.limiter is not None and not self.limiter.acquire(within=timeout, cancel=cancel):
            raise ApiError(
                "throttled",
                path,
                "the client-side rate limit (--kube-api-qps, --kube-api-burst) would hold the "
                f"request past its {timeout:g} s deadline, or waiting for it was cancelled",
            )
        method, url, headers, _, _ = self.api_client.param_serialize(
            method="GET",
            resource_path=path,
            query_params=list(query),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        remaining = timeout - (time.monotonic() - asked_at)
        try:
            response = httpclient.open_request(
                self._pools,
                method,
                url,
                timeout=max(remaining, 0.001),
                headers=headers,
                read_timeout=read_timeout,
            )
        except httpclient.HttpError as error:
            raise _transport_error(path, error) from None
        if response.status != 200:
            with response:
                raise _status_error(path, response)
        return response


def read_body(path: str, response: httpclient.OpenResponse, max_body: int | None = None) -> bytes:
    """The whole body of an open answer; ApiError if it does not come in full."""
    try:
        return response.read(max_body)
    except httpclient.HttpError as error:
        raise _transport_error(path, error) from None


def decode_json(path: str, body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise ApiError("response", path, f"undecodable answer: {error}") from None


def _transport_error(path: str, error: httpclient.HttpError) -> ApiError:
    kind: ErrorKind = "connection"
    if error.kind == "timeout":
        kind = "timeout"
    elif error.kind == "too_large":
        kind = "response"
    return ApiError(kind, path, error.detail)


def _status_error(path: str, response: httpclient.OpenResponse) -> ApiError:
    status = response.status
    try:
        body = response.read(_ERROR_BODY_LIMIT)
    except httpclient.HttpError as error:
        body = f"({error.detail})".encode()
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
        message = body.decode(errors="replace").strip()[:200]
    said = f"HTTP {status} {reason}" if reason else f"HTTP {status}"
    return ApiError(
        "status", path, f"{said}: {message}", status=status, reason=reason, message=message
    )
