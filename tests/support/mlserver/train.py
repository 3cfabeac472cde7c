"""Train a small power model and save it for MLServer; run with the MLServer virtualenv's Python.

    train.py MODEL_DIR < inputs.json > predictions.json

Fits a scikit-learn LinearRegression (cpu usage, inlet temperature, pressure difference ->
watts) on synthetic measurements of a plausible server, saves it as MODEL_DIR/model.joblib, and
prints its predictions for the [[cpu, inlet_temp, delta_p], ...] read from stdin: ``float32``
for the inputs rounded to float32 (what MLServer decodes WAO's FP32 request into) and
``float64`` for the inputs as given.
"""

import json
import sys
from pathlib import Path

import joblib
import numpy as np
from sklearn.linear_model import LinearRegression


def main() -> None:
    model_dir = Path(sys.argv[1])
    rng = np.random.default_rng(7)
    samples = 500
    features = np.column_stack(
        [rng.uniform(0, 100, samples), rng.uniform(15, 35, samples), rng.uniform(0, 10, samples)]
    )
    watts = (
        90.0
        + features @ np.array([1.8, 0.9, -2.5])
        + 0.004 * features[:, 0] ** 2  # some curvature the linear fit does not capture exactly
        + rng.normal(0.0, 2.0, samples)
    )
    model = LinearRegression().fit(features, watts)
    joblib.dump(model, model_dir / "model.joblib")
    inputs = np.array(json.load(sys.stdin), dtype=np.float64)
    json.dump(
        {
            "float32": model.predict(inputs.astype(np.float32)).tolist(),
            "float64": model.predict(inputs).tolist(),
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
