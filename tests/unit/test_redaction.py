"""No credential in what waolb logs or serves, wherever it came from."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest

from waolb import logs
from waolb.config import ProxyConfig, resolve_settings
from waolb.proxier import Proxier
from waolb.redaction import redact_text, redact_url, redact_value

SECRET = "hunter2xyz"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"POST http://admin:{SECRET}@10.0.0.1:8080/v2/models/p/infer: HTTP 401",
            "POST http://***@10.0.0.1:8080/v2/models/p/infer: HTTP 401",
        ),
        (f"https://u:{SECRET}@odd@bmc.example/redfish", "https://***@bmc.example/redfish"),
        (f"url=HTTPS://{SECRET}@[fd00::1]/x", "url=HTTPS://***@[fd00::1]/x"),
        ("Authorization: Basic dXNlcjpodW50ZXIy", "Authorization: Basic ***"),
        (f"Bearer {SECRET}.abc", "Bearer ***"),
        (f'HTTP 500: {{"password": "{SECRET}", "x": 1}}', 'HTTP 500: {"password": "***", "x": 1}'),
        (f"/infer?api_key={SECRET}&model=p", "/infer?api_key=***&model=p"),
        (f"access_token: {SECRET}", "access_token: ***"),
        (f"client secret={SECRET}", "client secret=***"),
        # Left alone: no credential in them.
        ("token bucket of 5 tokens", "token bucket of 5 tokens"),
        ("basic checks passed", "basic checks passed"),
        ("http://10.0.0.1:8080/v2/models/p/infer", "http://10.0.0.1:8080/v2/models/p/infer"),
        ("mailto:ops@example.com", "mailto:ops@example.com"),
    ],
)
def test_credentials_in_text_are_masked(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_a_single_url_loses_its_user_information() -> None:
    assert redact_url(f"http://a:{SECRET}@h:1/p?q") == "http://***@h:1/p?q"
    assert redact_url("http://h:1/p") == "http://h:1/p"


def test_documents_are_redacted_throughout() -> None:
    document = {
        "nodes": [{"predictor": f"http://a:{SECRET}@h/", "watts": 10.5, "ok": True}],
        "password": SECRET,
        "tokens": 3,  # a count, not a credential
        f"http://a:{SECRET}@h/": None,
        "error": ValueError(f"bad http://a:{SECRET}@h/"),
    }
    assert redact_value(document) == {
        "nodes": [{"predictor": "http://***@h/", "watts": 10.5, "ok": True}],
        "password": "***",
        "tokens": 3,
        "http://***@h/": None,
        "error": "bad http://***@h/",
    }


@pytest.fixture(params=["console", "json"])
def log_stream(request: pytest.FixtureRequest) -> Any:
    stream = io.StringIO()
    logs.configure_logging(0, request.param, stream=stream)
    yield stream
    logs.configure_logging()


def test_no_log_line_carries_a_credential(log_stream: io.StringIO) -> None:
    log = logs.get_logger("waolb.test")
    url = f"http://admin:{SECRET}@10.0.0.1/v2/models/p/infer"
    log.warning(f"predictor {url} failed", endpoint=url, errors=[url], detail={"password": SECRET})
    try:
        raise ConnectionError(f"cannot reach {url}")
    except ConnectionError:
        log.exception("scoring failed")
    # A library's record, through the standard library.
    logging.getLogger("urllib3.connectionpool").warning("retrying %s", url)
    text = log_stream.getvalue()
    assert SECRET not in text
    assert text.count("http://***@10.0.0.1/v2/models/p/infer") >= 5
    assert "ConnectionError" in text  # the traceback is still there


class LeakySnapshot:
    """What a scorer that forgot to redact would hand the weights route."""

    def snapshot(self) -> dict[str, Any]:
        return {
            "nodes": [
                {
                    "name": "node-a",
                    "predictor": f"http://admin:{SECRET}@10.0.0.1/v2/models/p/infer",
                    "by_cpu_per_request": [
                        {"detail": f'HTTP 500: {{"password": "{SECRET}"}}', "reason": "predictor"}
                    ],
                }
            ],
            "services": [],
        }


def test_the_weights_route_serves_no_credential() -> None:
    proxier = Proxier(resolve_settings(ProxyConfig(), {}, lambda: "node-a"))
    proxier.wao = LeakySnapshot()  # type: ignore[assignment]
    response = proxier._weights_route()
    assert response.status == 200
    assert SECRET.encode() not in response.body
    node = json.loads(response.body)["nodes"][0]
    assert node["predictor"] == "http://***@10.0.0.1/v2/models/p/infer"
    assert node["by_cpu_per_request"][0]["detail"] == 'HTTP 500: {"password": "***"}'
