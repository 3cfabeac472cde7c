"""Real HTTP servers in WAO's place: a V2 inference power predictor and a Redfish BMC.

Both are HTTP/1.1 servers (keep-alive, one thread per connection) running in a background thread,
for tests and end-to-end runs::

    with V2PredictorServer(power_model=LinearPowerModel(100.0, cpu=2.0)) as predictor:
        predictor.url                    # http://127.0.0.1:PORT
        predictor.endpoint               # .../v2/models/power/versions/v0.1.0/infer
        predictor.power_model = ...      # change the answers at run time
        with predictor.faulty(Fault.NAN):
            ...                          # every answer inside the block is NaN watts
        predictor.inputs                 # [(cpu, inlet_temp, delta_p), ...] as received

    with RedfishServer(power_model=redfish_power_model(predictor.url)) as bmc: ...

Either listens on ``host``/``port`` (port 0: any free one) or on an already bound socket given as
``sock`` (so that it can be made inside a network namespace); ``tls`` (see
:func:`self_signed_tls`) serves HTTPS. ``credentials=(username, password)`` makes every request
without that basic auth get 401. Faults (:class:`Fault`, or an HTTP status as an int) apply to
every request until cleared; ``requests`` records every request received.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import json
import math
import re
import socket
import ssl
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from httpserving import TrackedHTTPServer

PowerModel = Callable[[float, float, float], float]


class Fault(enum.Enum):
    """What a server does wrong. An int instead of a Fault answers with that HTTP status."""

    NOT_JSON = "not_json"  # 200 with a plain-text body
    HTML_PAGE = "html_page"  # 200 with an HTML page, as a captive proxy or a web UI sends
    EMPTY_OUTPUTS = "empty_outputs"  # V2: "outputs": []
    EMPTY_DATA = "empty_data"  # V2: outputs[0].data is []
    WRONG_SHAPE = "wrong_shape"  # V2: data is [[watts]]; Redfish: Members is an object
    NAN = "nan"  # V2: data is [NaN]
    NEGATIVE = "negative"  # V2: the model's watts, made negative
    NO_MEMBERS = "no_members"  # Redfish: Members is []
    INCOMPLETE_MODEL = "incomplete_model"  # Redfish: PowerConsumptionModel without Version
    HUGE_BODY = "huge_body"  # 200 with 2 MiB of JSON
    DELAY = "delay"  # wait ``delay`` seconds, then answer normally
    CLOSE = "close"  # close the connection without answering


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    authorization: str | None  # the Authorization header, if any
    body: bytes


@dataclass(frozen=True)
class LinearPowerModel:
    """watts = intercept + cpu * cpu_usage + inlet_temp * inlet_temp + delta_p * delta_p."""

    intercept: float
    cpu: float = 0.0
    inlet_temp: float = 0.0
    delta_p: float = 0.0

    def __call__(self, cpu_usage: float, inlet_temp: float, delta_p: float) -> float:
        return (
            self.intercept
            + self.cpu * cpu_usage
            + self.inlet_temp * inlet_temp
            + self.delta_p * delta_p
        )


def self_signed_tls(directory: Path, host: str = "127.0.0.1") -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate for ``host`` (openssl CLI)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=waolb-test"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-keyout", str(key), "-out", str(cert), "-addext", f"subjectAltName=IP:{host}"),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


class _HTTPServer(TrackedHTTPServer):
    def __init__(self, owner: _Server, address: tuple[str, int] | None, sock: socket.socket | None):
        self.owner = owner
        super().__init__(address, _Handler, sock=sock, tls=owner.tls)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes
    timeout = 30  # an idle keep-alive connection's thread ends after this
    server: _HTTPServer

    def do_GET(self) -> None:
        self.server.owner._handle(self)

    def do_POST(self) -> None:
        self.server.owner._handle(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    content_type: str = "application/json"


def _json(status: int, document: object) -> _Answer:
    return _Answer(status, json.dumps(document).encode())


class _Server:
    """The common part: lifecycle, credentials, faults and the request record."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        sock: socket.socket | None = None,
        tls: ssl.SSLContext | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.tls = tls
        self.credentials = credentials
        self.fault: Fault | int | None = None
        self.delay = 0.0
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._stopping = threading.Event()
        self._http = _HTTPServer(self, None if sock is not None else (host, port), sock)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = str(self._http.server_address[0]), self._http.server_address[1]
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}-{self._http.server_address[1]}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening, wake delayed answers and cut every open connection."""
        self._stopping.set()
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join()
            self._thread = None
        self._http.server_close()
        self._http.close_connections()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @contextlib.contextmanager
    def faulty(self, fault: Fault | int, *, delay: float = 0.0) -> Iterator[None]:
        """Apply ``fault`` to every request inside the block."""
        self.fault, self.delay = fault, delay
        try:
            yield
        finally:
            self.fault, self.delay = None, 0.0

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._requests)

    def _handle(self, handler: _Handler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        record = RecordedRequest(
            handler.command, handler.path, handler.headers.get("Authorization"), body
        )
        with self._lock:
            self._requests.append(record)
        fault = self.fault
        if fault is Fault.CLOSE:
            handler.close_connection = True
            return
        if fault is Fault.DELAY:
            self._stopping.wait(self.delay)
        answer = self._answer_with_faults(record, fault)
        handler.send_response(answer.status)
        handler.send_header("Content-Type", answer.content_type)
        handler.send_header("Content-Length", str(len(answer.body)))
        if answer.status == 401:
            handler.send_header("WWW-Authenticate", 'Basic realm="waolb-test"')
        handler.end_headers()
        handler.wfile.write(answer.body)

    def _answer_with_faults(self, request: RecordedRequest, fault: Fault | int | None) -> _Answer:
        if self.credentials is not None:
            expected = base64.b64encode(":".join(self.credentials).encode()).decode()
            if request.authorization != f"Basic {expected}":
                return _json(401, _error("Base.1.8.AccessDenied", "missing or wrong credentials"))
        if isinstance(fault, int):
            return _json(fault, _error("Base.1.8.GeneralError", f"injected HTTP {fault}"))
        if fault is Fault.NOT_JSON:
            return _Answer(200, b"this is not JSON", "text/plain")
        if fault is Fault.HTML_PAGE:
            page = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body></body></html>"
            return _Answer(200, page, "text/html")
        if fault is Fault.HUGE_BODY:
            return _Answer(200, b"[" + b"0," * (1 << 20) + b"0]")
        return self._answer(request, fault)

    def _answer(self, request: RecordedRequest, fault: Fault | None) -> _Answer:
        raise NotImplementedError


def _error(code: str, message: str) -> dict[str, Any]:
    # Redfish's error shape; MLServer's is {"error": "..."}: a client must read neither.
    return {"error": {"code": code, "message": message}}


_INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


class V2PredictorServer(_Server):
    """A V2 (Open Inference Protocol) power predictor answering WAO's request.

    ``power_model(cpu_usage, inlet_temp, delta_p)`` gives the watts; the request must be WAO's
    (one FP32 input of shape [1, 3]), else the answer is 400, as a real server's would be.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        power_model: PowerModel = LinearPowerModel(100.0, cpu=1.0),
        model_name: str = "power",
        model_version: str = "v0.1.0",
        sock: socket.socket | None = None,
        tls: ssl.SSLContext | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(host, port, sock=sock, tls=tls, credentials=credentials)
        self.power_model = power_model
        self.model_name = model_name
        self.model_version = model_version

    @property
    def endpoint(self) -> str:
        """The NodeConfig endpoint URL of this predictor."""
        return f"{self.url}/v2/models/{self.model_name}/versions/{self.model_version}/infer"

    @property
    def inputs(self) -> list[tuple[float, float, float]]:
        """The inputs of every well-formed inference request, oldest first."""
        found = []
        for request in self.requests:
            try:
                found.append(_inputs(json.loads(request.body)))
            except (ValueError, TypeError, KeyError, IndexError):
                continue
        return found

    def _answer(self, request: RecordedRequest, fault: Fault | None) -> _Answer:
        match = _INFER_PATH.fullmatch(request.path)
        if match is None or match.group(1) != self.model_name:
            return _json(404, {"error": f"Model {request.path} not found"})
        if match.group(2) not in (None, self.model_version):
            return _json(404, {"error": f"Model version {match.group(2)} not found"})
        if request.method != "POST":
            return _json(405, {"error": "Method Not Allowed"})
        try:
            cpu_usage, inlet_temp, delta_p = _inputs(json.loads(request.body))
        except (ValueError, TypeError, KeyError, IndexError) as error:
            return _json(400, {"error": f"not WAO's inference request: {error}"})
        watts: float = self.power_model(cpu_usage, inlet_temp, delta_p)
        data: list[Any] = [watts]
        if fault is Fault.NEGATIVE:
            data = [-abs(watts)]
        elif fault is Fault.NAN:
            data = [math.nan]
        elif fault is Fault.WRONG_SHAPE:
            data = [[watts]]
        elif fault is Fault.EMPTY_DATA:
            data = []
        output = {"name": "predict", "shape": [1, len(data)], "datatype": "FP64", "data": data}
        return _json(
            200,
            {
                "model_name": self.model_name,
                "model_version": self.model_version,
                "id": str(uuid.uuid4()),
                "parameters": {},
                "outputs": [] if fault is Fault.EMPTY_OUTPUTS else [output],
            },
        )


def _inputs(request: Any) -> tuple[float, float, float]:
    (tensor,) = request["inputs"]
    if (tensor["name"], tensor["shape"], tensor["datatype"]) != ("predict-prob", [1, 3], "FP32"):
        raise ValueError(f"unexpected tensor {tensor['name']} {tensor['shape']}")
    ((cpu_usage, inlet_temp, delta_p),) = tensor["data"]
    values = (cpu_usage, inlet_temp, delta_p)
    if not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values):
        raise TypeError(f"non-numeric input {values}")
    return float(cpu_usage), float(inlet_temp), float(delta_p)


def redfish_power_model(
    url: str, name: str = "power", version: str = "v0.1.0", model_type: str = "V2InferenceProtocol"
) -> dict[str, str]:
    """A MachineLearningModel's PowerConsumptionModel naming a V2 predictor at ``url``."""
    return {"Type": model_type, "Url": url, "Name": name, "Version": version}


class RedfishServer(_Server):
    """A BMC serving the NEDO Machine Learning Model Management API's Redfish resources.

    ``GET /redfish/v1/Systems`` lists one system, ``system_id``, under ``odata_id_key`` (set
    it to e.g. "@ODATA.ID" to check case-insensitive clients); its ``MachineLearningModel``
    carries ``power_model`` as PowerConsumptionModel.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        power_model: dict[str, str],
        system_id: str = "System.Embedded.1",
        odata_id_key: str = "@odata.id",
        sock: socket.socket | None = None,
        tls: ssl.SSLContext | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(host, port, sock=sock, tls=tls, credentials=credentials)
        self.power_model = power_model
        self.system_id = system_id
        self.odata_id_key = odata_id_key

    def _answer(self, request: RecordedRequest, fault: Fault | None) -> _Answer:
        systems = "/redfish/v1/Systems"
        system = f"{systems}/{self.system_id}"
        if request.method != "GET":
            return _json(405, _error("IDRAC.2.7.SYS402", "method not allowed"))
        if request.path == systems:
            members: Any = [{self.odata_id_key: system}]
            if fault is Fault.NO_MEMBERS:
                members = []
            elif fault is Fault.WRONG_SHAPE:
                members = members[0]
            return _json(
                200,
                {
                    "@odata.id": systems,
                    "Name": "Computer System Collection",
                    "Members": members,
                    "Members@odata.count": len(members),
                },
            )
        if request.path == f"{system}/MachineLearningModel":
            model = dict(self.power_model)
            if fault is Fault.INCOMPLETE_MODEL:
                model.pop("Version", None)
            return _json(
                200,
                {
                    "@odata.id": request.path,
                    "@odata.type": "#MachineLearningModel.v1_0_0.MachineLearningModel",
                    "Name": "Machine Learning Model",
                    "PowerConsumptionModel": model,
                    "ResponseTimeModel": {**self.power_model, "Name": "response-time"},
                },
            )
        return _json(
            404,
            _error("Base.1.12.ResourceMissingAtURI", f"The resource at {request.path} not found"),
        )
