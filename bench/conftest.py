"""Lets benchmarks import the plain-Python reference implementations kept beside the tests."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))

# The real control plane (tests/support/controlplane), once per session, for the benchmarks
# against kube-apiserver.
from controlplane.fixtures import control_plane, deployment  # noqa: F401
