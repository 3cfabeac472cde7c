"""PowerPredictors against real V2 inference and Redfish servers on loopback (waoservers.py)."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from waolb.wao.nodeconfig import EndpointTerm
from waolb.wao.predictor import (
    ERROR_KINDS,
    FAKE_ENDPOINT,
    FAKE_WATTS,
    BasicAuth,
    PowerPredictors,
    PredictorError,
    inference_url,
)
from waoservers import (
    Fault,
    LinearPowerModel,
    RedfishServer,
    V2PredictorServer,
    redfish_power_model,
    self_signed_tls,
)

# Loopback answers take milliseconds, but this 2-core machine is shared with builds.
TIMEOUT = 2.0
# A timeout test only checks that the wait is bounded, not how precisely.
MARGIN = 1.5
MODEL = LinearPowerModel(80.0, cpu=1.5, inlet_temp=0.8, delta_p=-4.0)


def v2(endpoint: str) -> EndpointTerm:
    return EndpointTerm(type="V2InferenceProtocol", endpoint=endpoint)


def float32(value: float) -> float:
    return float(struct.unpack("f", struct.pack("f", value))[0])


@pytest.fixture
def predictors() -> Iterator[PowerPredictors]:
    with PowerPredictors(timeout=TIMEOUT, verify_tls=True) as client:
        yield client


@pytest.fixture
def predictor() -> Iterator[V2PredictorServer]:
    with V2PredictorServer(power_model=MODEL) as server:
        yield server


def expect_error(kind: str, call: object, *args: object) -> PredictorError:
    assert kind in ERROR_KINDS
    assert callable(call)
    with pytest.raises(PredictorError) as caught:
        call(*args)
    assert caught.value.kind == kind, str(caught.value)
    return caught.value


# ---- V2 inference protocol -------------------------------------------------------------------


def test_predict_posts_waos_request_and_returns_the_models_watts(
    predictors: PowerPredictors, predictor: V2PredictorServer
) -> None:
    inputs = [(10.1, 22.0, 0.2), (0.0, 18.5, 1.25), (87.3, 30.0, 0.0), (100.0, -5.0, 7.5)]
    for cpu, temp, pressure in inputs:
        watts = predictors.predict(v2(predictor.endpoint), None, cpu, temp, pressure)
        # The server computes on what it received: the inputs rounded to float32.
        assert watts == pytest.approx(MODEL(cpu, temp, pressure), rel=1e-6)
    # Sent as float32 in the shortest decimal that identifies it, as Go encodes a float32: for
    # inputs like these that is their own short decimal.
    assert predictor.inputs == inputs
    first = predictor.requests[0]
    assert (first.method, first.path) == ("POST", "/v2/models/power/versions/v0.1.0/infer")
    assert first.body == (
        b'{"inputs":[{"name":"predict-prob","shape":[1,3],"datatype":"FP32",'
        b'"data":[[10.1,22,0.2]]}]}'
    )
    assert first.authorization is None


def test_inputs_are_rounded_to_float32_as_waos_client_does(
    predictors: PowerPredictors, predictor: V2PredictorServer
) -> None:
    predictors.predict(v2(predictor.endpoint), None, 1 / 3, 21.000000001, 1e-7)
    ((cpu, temp, pressure),) = predictor.inputs
    assert (float32(cpu), temp, float32(pressure)) == (float32(1 / 3), 21.0, float32(1e-7))
    assert cpu != 1 / 3


def test_power_model_can_change_at_run_time(
    predictors: PowerPredictors, predictor: V2PredictorServer
) -> None:
    assert predictors.predict(v2(predictor.endpoint), None, 50, 20, 1) == MODEL(50, 20, 1)
    predictor.power_model = LinearPowerModel(200.0)
    assert predictors.predict(v2(predictor.endpoint), None, 50, 20, 1) == 200.0
    assert predictor.request_count == 2


@pytest.mark.parametrize(
    ("suffix", "path"),
    [
        ("/v2/models/power/versions/v0.1.0/infer", "/v2/models/power/versions/v0.1.0/infer"),
        ("/v2/models/power/infer", "/v2/models/power/infer"),
        ("/v2/models/power", "/v2/models/power/infer"),
        # As WAO: only the segments after "models" and "versions" survive.
        (
            "/prefix/models/power/versions/v0.1.0/x?debug=1#f",
            "/v2/models/power/versions/v0.1.0/infer",
        ),
    ],
)
def test_request_url_is_rebuilt_from_model_and_version(
    predictors: PowerPredictors, predictor: V2PredictorServer, suffix: str, path: str
) -> None:
    watts = predictors.predict(v2(predictor.url + suffix), None, 1, 2, 3)
    assert watts == MODEL(1, 2, 3)
    assert [request.path for request in predictor.requests] == [path]


def test_inference_url_drops_user_info_query_and_other_path() -> None:
    assert (
        inference_url("https://user:pw@[::1]:8443/a/v2/models/m/versions/1/infer?x=1")
        == "https://[::1]:8443/v2/models/m/versions/1/infer"
    )


@pytest.mark.parametrize(
    "endpoint",
    [
        "",
        "10.0.0.1:8080/v2/models/power/infer",
        "ftp://10.0.0.1/v2/models/power/infer",
        "http:///v2/models/power/infer",
        "http://10.0.0.1:99999/v2/models/power/infer",
        "http://10.0.0.1:8080/v2/infer",
        "http://10.0.0.1:8080/v2/models/",
    ],
)
def test_unusable_endpoint_urls_fail_before_any_request(
    predictors: PowerPredictors, endpoint: str
) -> None:
    error = expect_error("endpoint", predictors.predict, v2(endpoint), None, 1.0, 2.0, 3.0)
    assert repr(endpoint) in str(error)


def test_fake_predicts_upstreams_constant_without_a_request(predictors: PowerPredictors) -> None:
    term = EndpointTerm(type="Fake", endpoint="http://127.0.0.1:9/unused")
    assert predictors.predict(term, None, 10, 20, 30) == FAKE_WATTS == 3.14
    assert predictors.resolve_endpoint(term, None) == FAKE_ENDPOINT
    assert EndpointTerm(type="Fake", endpoint="https://fake-endpoint") == FAKE_ENDPOINT


@pytest.mark.parametrize("term_type", ["Redfish", "DifferentialPressureAPI", "Foo"])
def test_types_that_cannot_predict_are_unsupported(
    predictors: PowerPredictors, predictor: V2PredictorServer, term_type: str
) -> None:
    term = EndpointTerm(type=term_type, endpoint=predictor.endpoint)
    error = expect_error("unsupported", predictors.predict, term, None, 1.0, 2.0, 3.0)
    assert term_type in str(error)
    assert predictor.request_count == 0


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (Fault.NOT_JSON, "response"),
        (Fault.HTML_PAGE, "response"),
        (Fault.EMPTY_OUTPUTS, "response"),
        (Fault.EMPTY_DATA, "response"),
        (Fault.WRONG_SHAPE, "response"),
        (Fault.NAN, "value"),
        (Fault.HUGE_BODY, "response"),
        (401, "auth"),
        (403, "auth"),
        (404, "not_found"),
        (500, "http_status"),
        (503, "http_status"),
        (Fault.CLOSE, "connection"),
    ],
)
def test_bad_answers_are_predictor_errors_of_their_kind(
    predictors: PowerPredictors, predictor: V2PredictorServer, fault: Fault | int, kind: str
) -> None:
    with predictor.faulty(fault):
        error = expect_error(kind, predictors.predict, v2(predictor.endpoint), None, 1.0, 2.0, 3.0)
    assert predictor.url in str(error)
    # The same client still works afterwards (no poisoned pooled connection).
    assert predictors.predict(v2(predictor.endpoint), None, 1, 2, 3) == MODEL(1, 2, 3)


def test_negative_watts_are_returned_as_upstream_does(
    predictors: PowerPredictors, predictor: V2PredictorServer
) -> None:
    with predictor.faulty(Fault.NEGATIVE):
        assert predictors.predict(v2(predictor.endpoint), None, 1, 2, 3) == -MODEL(1, 2, 3)
    predictor.power_model = LinearPowerModel(-30.0, cpu=0.5)
    assert predictors.predict(v2(predictor.endpoint), None, 10, 0, 0) == -25.0


@pytest.mark.parametrize(
    "inputs", [(float("nan"), 20.0, 1.0), (10.0, float("inf"), 1.0), (10.0, 20.0, 1e39)]
)
def test_inputs_that_are_no_finite_fp32_are_value_errors(
    predictors: PowerPredictors, predictor: V2PredictorServer, inputs: tuple[float, float, float]
) -> None:
    expect_error("value", predictors.predict, v2(predictor.endpoint), None, *inputs)
    assert predictor.request_count == 0


def test_a_slow_predictor_times_out_within_the_timeout(
    predictors: PowerPredictors, predictor: V2PredictorServer
) -> None:
    with predictor.faulty(Fault.DELAY, delay=10 * TIMEOUT):
        start = time.monotonic()
        expect_error("timeout", predictors.predict, v2(predictor.endpoint), None, 1.0, 2.0, 3.0)
        assert time.monotonic() - start < TIMEOUT + MARGIN


def test_a_connect_that_is_never_accepted_times_out(predictors: PowerPredictors) -> None:
    # A listener with a full backlog drops further SYNs: connecting hangs, on loopback.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        queued = [socket.socket() for _ in range(4)]
        try:
            for client in queued:
                client.setblocking(False)
                client.connect_ex(("127.0.0.1", port))
            start = time.monotonic()
            term = v2(f"http://127.0.0.1:{port}/v2/models/power/infer")
            expect_error("timeout", predictors.predict, term, None, 1.0, 2.0, 3.0)
            assert time.monotonic() - start < TIMEOUT + MARGIN
        finally:
            for client in queued:
                client.close()


def test_a_refused_connection_is_a_connection_error(predictors: PowerPredictors) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    term = v2(f"http://127.0.0.1:{port}/v2/models/power/infer")
    expect_error("connection", predictors.predict, term, None, 1.0, 2.0, 3.0)


def test_servers_listen_on_a_socket_given_to_them(predictors: PowerPredictors) -> None:
    # As made inside a network namespace; IPv6 also checks the bracketed URLs on both sides.
    listener = socket.socket(socket.AF_INET6)
    listener.bind(("::1", 0))
    with V2PredictorServer(power_model=MODEL, sock=listener) as server:
        assert server.url == f"http://[::1]:{listener.getsockname()[1]}"
        assert predictors.predict(v2(server.endpoint), None, 1, 2, 3) == MODEL(1, 2, 3)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_self_signed_https_works_only_without_verification(tmp_path: Path) -> None:
    with V2PredictorServer(power_model=MODEL, tls=self_signed_tls(tmp_path)) as server:
        assert server.url.startswith("https://")
        with PowerPredictors(timeout=TIMEOUT, verify_tls=False) as insecure:
            assert insecure.predict(v2(server.endpoint), None, 1, 2, 3) == MODEL(1, 2, 3)
        with PowerPredictors(timeout=TIMEOUT, verify_tls=True) as verifying:
            expect_error("tls", verifying.predict, v2(server.endpoint), None, 1.0, 2.0, 3.0)
        assert server.request_count == 1


@pytest.mark.parametrize(
    ("auth", "header"),
    [
        (BasicAuth("wao", "s3cret:x"), "Basic d2FvOnMzY3JldDp4"),
        (BasicAuth("wao", ""), None),
        (BasicAuth("", "s3cret"), None),
        (BasicAuth("", ""), None),
        (None, None),
    ],
)
def test_basic_auth_is_sent_only_when_both_parts_are_non_empty(
    predictors: PowerPredictors,
    predictor: V2PredictorServer,
    auth: BasicAuth | None,
    header: str | None,
) -> None:
    predictors.predict(v2(predictor.endpoint), auth, 1, 2, 3)
    assert [request.authorization for request in predictor.requests] == [header]


def test_wrong_credentials_are_auth_errors(predictors: PowerPredictors) -> None:
    with V2PredictorServer(power_model=MODEL, credentials=("wao", "right")) as server:
        expect_error(
            "auth", predictors.predict, v2(server.endpoint), BasicAuth("wao", "wrong"), 1, 2, 3
        )
        assert predictors.predict(v2(server.endpoint), BasicAuth("wao", "right"), 1, 2, 3) == (
            MODEL(1, 2, 3)
        )
    assert "right" not in repr(BasicAuth("wao", "right"))


def test_concurrent_predictions_share_a_bounded_pool(predictor: V2PredictorServer) -> None:
    results: dict[int, float] = {}
    with PowerPredictors(timeout=5.0, verify_tls=True, max_connections=3) as client:

        def work(worker: int) -> None:
            for step in range(10):
                cpu = float(worker * 10 + step)
                results[worker * 10 + step] = client.predict(
                    v2(predictor.endpoint), None, cpu, 20.0, 1.0
                )

        threads = [threading.Thread(target=work, args=(worker,)) for worker in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert results == {n: MODEL(float(n), 20.0, 1.0) for n in range(80)}
    assert predictor.request_count == 80


# ---- Redfish endpoint provider ---------------------------------------------------------------


def redfish_term(server: RedfishServer, suffix: str = "") -> EndpointTerm:
    return EndpointTerm(type="Redfish", endpoint=server.url + suffix)


def test_redfish_resolves_the_power_model_and_it_predicts(
    predictors: PowerPredictors, predictor: V2PredictorServer
) -> None:
    with RedfishServer(
        power_model=redfish_power_model(predictor.url + "/", version="v0.2.0"),
        odata_id_key="@ODATA.ID",  # WAO matches it case-insensitively
        credentials=("root", "calvin"),
    ) as bmc:
        auth = BasicAuth("root", "calvin")
        term = predictors.resolve_endpoint(redfish_term(bmc, "/"), auth)
        assert term == EndpointTerm(
            type="V2InferenceProtocol",
            endpoint=f"{predictor.url}/v2/models/power/versions/v0.2.0/infer",
        )
        assert [request.path for request in bmc.requests] == [
            "/redfish/v1/Systems",
            "/redfish/v1/Systems/System.Embedded.1/MachineLearningModel",
        ]
        assert all(request.authorization == "Basic cm9vdDpjYWx2aW4=" for request in bmc.requests)
    predictor.model_version = "v0.2.0"
    assert predictors.predict(term, None, 1, 2, 3) == MODEL(1, 2, 3)


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (Fault.NO_MEMBERS, "response"),
        (Fault.WRONG_SHAPE, "response"),
        (Fault.INCOMPLETE_MODEL, "response"),
        (Fault.NOT_JSON, "response"),
        (Fault.HTML_PAGE, "response"),
        (401, "auth"),
        (403, "auth"),
        (404, "not_found"),
        (500, "http_status"),
        (Fault.CLOSE, "connection"),
    ],
)
def test_redfish_faults_are_predictor_errors_of_their_kind(
    predictors: PowerPredictors, fault: Fault | int, kind: str
) -> None:
    with RedfishServer(power_model=redfish_power_model("http://10.0.0.20")) as bmc:
        with bmc.faulty(fault):
            error = expect_error(kind, predictors.resolve_endpoint, redfish_term(bmc), None)
        assert bmc.url in str(error)
        assert predictors.resolve_endpoint(redfish_term(bmc), None).endpoint == (
            "http://10.0.0.20/v2/models/power/versions/v0.1.0/infer"
        )


@pytest.mark.parametrize("url", ["", "10.0.0.20:8080", "file:///model"])
def test_redfish_model_url_must_be_http(predictors: PowerPredictors, url: str) -> None:
    with RedfishServer(power_model=redfish_power_model(url)) as bmc:
        expect_error("response", predictors.resolve_endpoint, redfish_term(bmc), None)


def test_redfish_without_credentials_is_an_auth_error(predictors: PowerPredictors) -> None:
    with RedfishServer(
        power_model=redfish_power_model("http://10.0.0.20"), credentials=("root", "calvin")
    ) as bmc:
        expect_error("auth", predictors.resolve_endpoint, redfish_term(bmc), BasicAuth("root", ""))
        assert [request.authorization for request in bmc.requests] == [None]


def test_a_slow_redfish_times_out_within_the_timeout(predictors: PowerPredictors) -> None:
    bmc = RedfishServer(power_model=redfish_power_model("http://10.0.0.20"))
    with bmc, bmc.faulty(Fault.DELAY, delay=10 * TIMEOUT):
        start = time.monotonic()
        expect_error("timeout", predictors.resolve_endpoint, redfish_term(bmc), None)
        assert time.monotonic() - start < TIMEOUT + MARGIN


@pytest.mark.parametrize("term_type", ["V2InferenceProtocol", "DifferentialPressureAPI"])
def test_types_that_provide_no_endpoint_are_unsupported(
    predictors: PowerPredictors, term_type: str
) -> None:
    term = EndpointTerm(type=term_type, endpoint="http://127.0.0.1:9")
    expect_error("unsupported", predictors.resolve_endpoint, term, None)
