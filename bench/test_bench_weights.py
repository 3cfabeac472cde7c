"""wao_scores for 100 000 endpoints in 10 000 services of 10, against the plain-Python reference."""

import math
import random
from array import array

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

import reference_weights as reference
from waolb._native import wao_scores

ENDPOINTS = 100_000
GROUP_SIZE = 10


def predicted_deltas() -> list[float]:
    # A fixed seed so every run scores the same input; 1 % NaN stand for failed predictions.
    rng = random.Random(20250226)
    return [math.nan if rng.random() < 0.01 else rng.uniform(-5.0, 400.0) for _ in range(ENDPOINTS)]


DELTAS = predicted_deltas()
OFFSETS = list(range(0, ENDPOINTS + 1, GROUP_SIZE))
EXPECTED = reference.wao_scores(DELTAS, OFFSETS)

pytestmark = pytest.mark.benchmark(group="wao_scores, 100k endpoints in 10k groups")


def test_native_from_array(benchmark: BenchmarkFixture) -> None:
    deltas = array("d", DELTAS)
    offsets = array("Q", OFFSETS)
    assert benchmark(wao_scores, deltas, offsets) == EXPECTED


def test_native_from_list(benchmark: BenchmarkFixture) -> None:
    assert benchmark(wao_scores, DELTAS, OFFSETS) == EXPECTED


def test_pure_python_reference(benchmark: BenchmarkFixture) -> None:
    assert benchmark(reference.wao_scores, DELTAS, OFFSETS) == EXPECTED
