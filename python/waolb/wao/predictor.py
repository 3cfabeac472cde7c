"""WAO's power predictors and endpoint providers, spoken over HTTP as upstream WAO does.

:class:`PowerPredictors` asks a NodeConfig's predictor how many watts a node draws at a given
CPU usage, inlet temperature and pressure difference, and asks an endpoint provider (Redfish)
which predictor to use. It keeps no cache and never retries: the caller caches predictions and
falls back when a node's predictor fails.

Upstream behaviour reproduced (waok8s/wao-core):

* ``Fake`` predicts :data:`FAKE_WATTS` (3.14 W) for any input, and a ``Fake`` endpoint provider
  hands out :data:`FAKE_ENDPOINT`. Upstream's fakes also wait 50 ms first; waolb does not.
* ``V2InferenceProtocol``: the request goes to ``{scheme}://{host}/v2/models/{model}
  [/versions/{version}]/infer``, rebuilt from the endpoint URL as WAO does: the model is the path
  segment after ``models``, the version the one after ``versions`` (the last of each wins), and
  any other path, query or user info in the URL is dropped (see :func:`inference_url`). The body
  is WAO's: one FP32 input named ``predict-prob`` of shape [1, 3]; the inputs are rounded to
  float32 as WAO's client does. Only HTTP 200 is a success; the watts are
  ``outputs[0].data[0]``.
* ``Redfish`` endpoint provider: ``GET {endpoint}/redfish/v1/Systems``, the system id is the last
  path segment of ``Members[0]["@odata.id"]``, then ``GET .../Systems/{id}/MachineLearningModel``,
  whose ``PowerConsumptionModel`` must have ``Type``, ``Url``, ``Name`` and ``Version``; the
  predictor is ``{Url}/v2/models/{Name}/versions/{Version}/infer`` of type ``Type``. JSON keys
  are matched case-insensitively, as Go's decoder does.
* Basic auth is sent only when both username and password are non-empty.
* Negative watts are returned as they are: upstream checks neither sign nor range and clamps only
  the difference between two predictions (a fitted linear model may well go below zero at low
  load while its slope, which is what scoring uses, is right). NaN and infinities are errors
  (kind ``value``): WAO's JSON decoder would reject them too.

Deliberate differences: an unusable endpoint URL is reported before any request is made, a
trailing slash after the Redfish system id is ignored, and a response body is read up to
:data:`MAX_BODY` bytes only.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, get_args
from urllib.parse import SplitResult, quote, urlsplit, urlunsplit

import urllib3

from waolb.wao.nodeconfig import TYPE_FAKE, TYPE_REDFISH, TYPE_V2_INFERENCE_PROTOCOL, EndpointTerm

ErrorKind = Literal[
    "timeout",  # no answer within the timeout (connecting, or reading the response)
    "connection",  # refused, reset or closed before a complete answer; name resolution failed
    "tls",  # TLS handshake failed, e.g. an untrusted certificate with verify_tls
    "auth",  # HTTP 401 or 403
    "not_found",  # HTTP 404
    "http_status",  # any other status than 200
    "response",  # 200, but not JSON, or JSON of the wrong shape, or a required field missing
    "value",  # a prediction (or an input) that is NaN or infinite
    "unsupported",  # the term's type cannot do this (e.g. predict with a Redfish term)
    "endpoint",  # the term's URL is unusable: not http(s), no host, no model name
    "secret",  # the basic-auth Secret could not be read (see waolb.wao.secrets)
]
ERROR_KINDS: Final = frozenset(get_args(ErrorKind))

FAKE_WATTS: Final = 3.14
FAKE_ENDPOINT: Final = EndpointTerm(type=TYPE_FAKE, endpoint="https://fake-endpoint")
MAX_BODY: Final = 1 << 20
INPUT_NAME: Final = "predict-prob"
_READ_CHUNK: Final = 64 << 10
_MAX_REDIRECTS: Final = 5
# Distinct predictor and BMC hosts whose connections are kept; one per node is typical.
_HOST_POOLS: Final = 1024
_SNIPPET: Final = 120


class PredictorError(Exception):
    """A prediction or endpoint lookup failed; the message names the URL.

    ``kind`` is one of :data:`ERROR_KINDS` when raised here or by waolb.wao.secrets; callers may
    raise their own kinds (a plain string, as it labels metrics).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class BasicAuth:
    username: str
    password: str = field(repr=False)

    @property
    def usable(self) -> bool:
        """WAO sends basic auth only when both parts are non-empty."""
        return bool(self.username and self.password)


class PowerPredictors:
    """A thread-safe client for every predictor and endpoint provider, sharing one pool.

    ``timeout`` bounds connecting and each wait for data, and the body is read within it;
    ``max_connections`` bounds the connections open to one host at a time (a request waits up
    to ``timeout`` for one). ``verify_tls=False`` is upstream WAO's behaviour.
    """

    def __init__(self, *, timeout: float, verify_tls: bool, max_connections: int = 64) -> None:
        self.timeout = timeout
        self._pool = urllib3.PoolManager(
            num_pools=_HOST_POOLS,
            maxsize=max_connections,
            block=True,
            cert_reqs="CERT_REQUIRED" if verify_tls else "CERT_NONE",
            timeout=urllib3.Timeout(total=timeout),
            # No retries: the caller falls back at once and tries again on its own schedule.
            retries=urllib3.Retry(
                total=None,
                connect=0,
                read=0,
                status=0,
                other=0,
                redirect=_MAX_REDIRECTS,
                raise_on_redirect=False,
            ),
        )

    def close(self) -> None:
        """Close the pooled connections (a later request opens new ones)."""
        self._pool.clear()

    def __enter__(self) -> PowerPredictors:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def predict(
        self,
        term: EndpointTerm,
        auth: BasicAuth | None,
        cpu_usage: float,
        inlet_temp: float,
        delta_p: float,
    ) -> float:
        """Watts the predictor of ``term`` expects at these inputs; raises PredictorError."""
        if term.type == TYPE_FAKE:
            return FAKE_WATTS
        if term.type != TYPE_V2_INFERENCE_PROTOCOL:
            raise PredictorError(
                "unsupported",
                f"a {term.type} endpoint ({term.endpoint}) cannot predict power consumption",
            )
        url = inference_url(term.endpoint)
        body = _request_body(url, cpu_usage, inlet_temp, delta_p)
        return _watts(self._exchange("POST", url, auth, body), url)

    def resolve_endpoint(self, provider: EndpointTerm, auth: BasicAuth | None) -> EndpointTerm:
        """The power predictor ``provider`` hands out; raises PredictorError."""
        if provider.type == TYPE_FAKE:
            return FAKE_ENDPOINT
        if provider.type != TYPE_REDFISH:
            raise PredictorError(
                "unsupported",
                f"a {provider.type} endpoint ({provider.endpoint}) provides no predictor endpoints",
            )
        parts = _http_url(provider.endpoint)
        base = urlunsplit((parts.scheme, _host(parts), parts.path.rstrip("/"), "", ""))
        systems_url = f"{base}/redfish/v1/Systems"
        system_id = _system_id(self._exchange("GET", systems_url, auth), systems_url)
        models_url = f"{base}/redfish/v1/Systems/{_segment(system_id)}/MachineLearningModel"
        return _power_model(self._exchange("GET", models_url, auth), models_url)

    def _exchange(
        self, method: str, url: str, auth: BasicAuth | None, body: bytes | None = None
    ) -> object:
        """One request; the decoded JSON of a 200 answer, or PredictorError."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if auth is not None and auth.usable:
            token = base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        deadline = time.monotonic() + self.timeout
        try:
            response = self._pool.request(
                method,
                url,
                body=body,
                headers=headers,
                preload_content=False,
                pool_timeout=self.timeout,
            )
            try:
                data = _read_body(response, deadline, method, url)
            except BaseException:
                response.close()  # unread data: the connection cannot be reused
                raise
            finally:
                response.release_conn()
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as error:
            raise _transport_error(error, method, url) from None
        status = response.status
        if status != 200:
            kind: ErrorKind = (
                "auth" if status in (401, 403) else "not_found" if status == 404 else "http_status"
            )
            raise PredictorError(
                kind, f"{method} {url}: HTTP {status} {response.reason or ''}: {_snippet(data)}"
            )
        try:
            return json.loads(data)
        except (ValueError, RecursionError):
            content_type = response.headers.get("Content-Type", "no Content-Type")
            raise PredictorError(
                "response", f"{method} {url}: not JSON ({content_type}): {_snippet(data)}"
            ) from None


def inference_url(endpoint: str) -> str:
    """The URL WAO posts to for a V2InferenceProtocol endpoint (see the module docstring)."""
    parts = _http_url(endpoint)
    segments = parts.path.split("/")
    model = version = ""
    for index, segment in enumerate(segments[:-1]):
        if segment == "models":
            model = segments[index + 1]
        elif segment == "versions":
            version = segments[index + 1]
    if not model:
        raise PredictorError(
            "endpoint",
            f"{endpoint!r}: no model name in the URL (expected "
            ".../v2/models/NAME[/versions/VERSION]/infer)",
        )
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    return urlunsplit((parts.scheme, _host(parts), path, "", ""))


def _request_body(url: str, cpu_usage: float, inlet_temp: float, delta_p: float) -> bytes:
    """WAO's V2 inference request for one prediction, inputs rounded to float32."""
    values = []
    for name, value in (("cpu_usage", cpu_usage), ("inlet_temp", inlet_temp), ("delta_p", delta_p)):
        try:
            values.append(_float32_json(value))
        except (OverflowError, ValueError):
            raise PredictorError(
                "value", f"{url}: input {name}={value!r} is not a finite FP32"
            ) from None
    data = ",".join(values)
    return (
        f'{{"inputs":[{{"name":"{INPUT_NAME}","shape":[1,3],"datatype":"FP32","data":[[{data}]]}}]}}'
    ).encode()


def _float32_json(value: float) -> str:
    """The shortest decimal that reads back as the same float32, as Go encodes a float32."""
    if not math.isfinite(value):
        raise ValueError(value)
    (single,) = struct.unpack("f", struct.pack("f", value))  # OverflowError beyond FP32
    if not math.isfinite(single):
        raise OverflowError(value)
    for digits in range(1, 10):
        text = f"{single:.{digits}g}"
        if struct.unpack("f", struct.pack("f", float(text)))[0] == single:
            return text
    raise AssertionError("9 significant digits always identify a float32")


def _http_url(endpoint: str) -> SplitResult:
    try:
        parts = urlsplit(endpoint.strip())
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as error:
        raise PredictorError("endpoint", f"{endpoint!r} is not a URL: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PredictorError("endpoint", f"{endpoint!r} is not an http(s) URL with a host")
    return parts


def _host(parts: SplitResult) -> str:
    # Go's URL.Host: host and port, without user info.
    return parts.netloc.rpartition("@")[2]


def _segment(text: str) -> str:
    return quote(text, safe="!$&'()*+,;=:@")


def _read_body(response: urllib3.BaseHTTPResponse, deadline: float, method: str, url: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := response.read(_READ_CHUNK):
        size += len(chunk)
        if size > MAX_BODY:
            raise PredictorError("response", f"{method} {url}: body larger than {MAX_BODY} bytes")
        if time.monotonic() > deadline:
            raise PredictorError("timeout", f"{method} {url}: body not read within the timeout")
        chunks.append(chunk)
    return b"".join(chunks)


def _transport_error(error: Exception, method: str, url: str) -> PredictorError:
    cause: Exception = error
    if isinstance(error, urllib3.exceptions.MaxRetryError) and error.reason is not None:
        cause = error.reason
    kind: ErrorKind
    if isinstance(cause, urllib3.exceptions.SSLError):
        kind = "tls"
    elif isinstance(cause, urllib3.exceptions.NewConnectionError):
        kind = "connection"  # a subclass of ConnectTimeoutError, but a refusal
    elif isinstance(cause, (urllib3.exceptions.TimeoutError, urllib3.exceptions.EmptyPoolError)):
        kind = "timeout"
    elif isinstance(cause, urllib3.exceptions.DecodeError):
        kind = "response"
    else:
        kind = "connection"
    return PredictorError(kind, f"{method} {url}: {cause}")


def _snippet(data: bytes) -> str:
    text = " ".join(data[:_SNIPPET].decode(errors="replace").split())
    return text + ("..." if len(data) > _SNIPPET else "") if text else "(empty body)"


def _field(document: object, name: str) -> object:
    """``document[name]``, matching the key case-insensitively as Go's JSON decoder does."""
    if not isinstance(document, Mapping):
        return None
    if name in document:
        return document[name]
    folded = name.casefold()
    for key, value in document.items():
        if isinstance(key, str) and key.casefold() == folded:
            return value
    return None


def _watts(document: object, url: str) -> float:
    outputs = _field(document, "outputs")
    if not isinstance(outputs, list) or not outputs:
        raise PredictorError("response", f"POST {url}: no outputs in {_brief(document)}")
    data = _field(outputs[0], "data")
    if not isinstance(data, list) or not data:
        raise PredictorError("response", f"POST {url}: no outputs[0].data in {_brief(document)}")
    value = data[0]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PredictorError(
            "response", f"POST {url}: outputs[0].data[0] is {value!r}, not a number"
        )
    try:
        watts = float(value)
    except OverflowError:
        watts = math.inf
    if not math.isfinite(watts):
        raise PredictorError("value", f"POST {url}: predicted {watts} W")
    return watts


def _system_id(document: object, url: str) -> str:
    members = _field(document, "Members")
    if not isinstance(members, list) or not members:
        raise PredictorError("response", f"GET {url}: no Members in {_brief(document)}")
    odata_id = _field(members[0], "@odata.id")
    if not isinstance(odata_id, str):
        raise PredictorError("response", f"GET {url}: Members[0] has no @odata.id string")
    system_id = odata_id.rstrip("/").rpartition("/")[2]
    if not system_id:
        raise PredictorError("response", f"GET {url}: no system id in @odata.id {odata_id!r}")
    return system_id


def _power_model(document: object, url: str) -> EndpointTerm:
    model = _field(document, "PowerConsumptionModel")
    if not isinstance(model, Mapping):
        raise PredictorError("response", f"GET {url}: no PowerConsumptionModel object")
    fields: dict[str, str] = {}
    for name in ("Type", "Url", "Name", "Version"):
        value = _field(model, name)
        if not isinstance(value, str) or not value:
            raise PredictorError(
                "response", f"GET {url}: PowerConsumptionModel.{name} is {value!r}, not a string"
            )
        fields[name] = value
    try:
        parts = _http_url(fields["Url"])
    except PredictorError as error:
        raise PredictorError("response", f"GET {url}: PowerConsumptionModel.Url: {error}") from None
    base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
    endpoint = (
        f"{base}/v2/models/{_segment(fields['Name'])}/versions/{_segment(fields['Version'])}/infer"
    )
    return EndpointTerm(type=fields["Type"], endpoint=endpoint)


def _brief(document: object) -> str:
    text = json.dumps(document, default=str)
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "..."
