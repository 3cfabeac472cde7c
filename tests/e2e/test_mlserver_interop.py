"""PowerPredictors against a real MLServer serving a scikit-learn power model.

MLServer and scikit-learn live in their own virtualenv (``make`` installs it at .venv/mlserver
from tests/support/mlserver/requirements.txt; WAOLB_MLSERVER_VENV points elsewhere). The model is
trained in that virtualenv by tests/support/mlserver/train.py, which also prints its own
predictions;
MLServer serves it on a free loopback port and WAO's request must get the same watts back.

Tolerances: WAO sends FP32 inputs, so MLServer predicts on the inputs rounded to float32. Against
the in-process prediction on those same float32 inputs the watts agree to float64 precision
(relative 1e-12: only JSON's round trip of a float64 lies between them); against the prediction
on the unrounded float64 inputs they agree to float32 input precision (relative 1e-6).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from waolb.wao.nodeconfig import EndpointTerm
from waolb.wao.predictor import PowerPredictors

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("WAOLB_MLSERVER_VENV", REPO / ".venv" / "mlserver"))
TRAIN = REPO / "tests" / "support" / "mlserver" / "train.py"
START_TIMEOUT = 120.0  # MLServer takes several seconds on an idle machine; this one is shared
INPUTS = [
    [0.0, 20.0, 0.0],
    [12.5, 22.0, 0.2],
    [37.3, 25.5, 3.75],
    [66.6, 30.1, 7.0],
    [100.0, 34.9, 9.99],
]

pytestmark = pytest.mark.skipif(
    not (VENV / "bin" / "mlserver").exists(),
    reason=f"no MLServer virtualenv at {VENV} (make .venv/.stamps/mlserver installs it)",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"MLServer exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    pytest.fail(f"MLServer not ready at {url} in {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def served_model(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, dict[str, list[float]]]]:
    """(the predictor endpoint URL, train.py's own predictions for INPUTS)."""
    model_dir = tmp_path_factory.mktemp("mlserver")
    trained = subprocess.run(
        [VENV / "bin" / "python", TRAIN, model_dir],
        input=json.dumps(INPUTS).encode(),
        capture_output=True,
        check=True,
        timeout=120,
    )
    expected = json.loads(trained.stdout)
    http_port = free_port()
    settings = {
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": free_port(),
        "metrics_endpoint": None,
        "parallel_workers": 0,  # MLServer 1.7.1's workers crash with uvloop 0.23
    }
    (model_dir / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": "power",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "v0.1.0"},
    }
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings))
    log = model_dir / "mlserver.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [VENV / "bin" / "mlserver", "start", model_dir],
            cwd=model_dir,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, ended below whatever happens
        )
    try:
        base = f"http://127.0.0.1:{http_port}"
        wait_ready(f"{base}/v2/models/power/ready", process, log)
        yield f"{base}/v2/models/power/versions/v0.1.0/infer", expected
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_mlserver_returns_the_in_process_prediction(
    served_model: tuple[str, dict[str, list[float]]],
) -> None:
    endpoint, expected = served_model
    term = EndpointTerm(type="V2InferenceProtocol", endpoint=endpoint)
    with PowerPredictors(timeout=5.0, verify_tls=True) as predictors:
        watts = [predictors.predict(term, None, *row) for row in INPUTS]
    assert watts == pytest.approx(expected["float32"], rel=1e-12)
    assert watts == pytest.approx(expected["float64"], rel=1e-6)
    # Distinct inputs, distinct watts: equal ones would mean the inputs never reached the model.
    assert len(set(watts)) == len(INPUTS)


def test_unversioned_endpoint_reaches_the_same_model(
    served_model: tuple[str, dict[str, list[float]]],
) -> None:
    endpoint, expected = served_model
    term = EndpointTerm(
        type="V2InferenceProtocol", endpoint=endpoint.replace("/versions/v0.1.0", "")
    )
    with PowerPredictors(timeout=5.0, verify_tls=True) as predictors:
        assert predictors.predict(term, None, *INPUTS[2]) == pytest.approx(
            expected["float32"][2], rel=1e-12
        )
