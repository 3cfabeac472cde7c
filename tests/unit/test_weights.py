"""waolb._native.wao_scores and numgen_layout against the plain-Python reference of upstream."""

import math
from array import array
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

import reference_weights as reference
from waolb._native import numgen_layout, wao_scores

NAN = math.nan
INF = math.inf
U32_MAX = 2**32 - 1

# Mostly plausible watts, whole numbers for ties, and any float at all (NaN, infinities, huge).
deltas = st.one_of(
    st.floats(min_value=-50, max_value=5_000),
    st.integers(min_value=-5, max_value=300).map(float),
    st.floats(),
)
groups = st.lists(st.lists(deltas, max_size=12), max_size=8)


def flatten(groups: Sequence[Sequence[float]]) -> tuple[list[float], list[int]]:
    offsets = [0]
    for group in groups:
        offsets.append(offsets[-1] + len(group))
    return [delta for group in groups for delta in group], offsets


def one_group(delta_watts: Sequence[float]) -> list[int]:
    return wao_scores(list(delta_watts), [0, len(delta_watts)])


@pytest.mark.parametrize(
    ("delta_watts", "expected"),
    [
        # Upstream's own test vectors for normalizeScores.
        ([200, 250, 300], [100, 80, 67]),
        ([200, 200_000_000], [100, 0]),
        ([0], [100]),
        ([1], [100]),
        # Upstream's normalizeScores alone drops -123; ScoreNode has already made it 0 W.
        ([5, 2, -123, 0, 5, 0], [17, 33, 100, 100, 17, 100]),
    ],
)
def test_upstream_vectors(delta_watts: list[float], expected: list[int]) -> None:
    assert one_group(delta_watts) == expected
    assert reference.score_group(delta_watts) == expected


def test_fractions_truncate_and_halves_round_up() -> None:
    assert one_group([2.9, 0.99, -0.5]) == [33, 100, 100]
    assert one_group([0.0, 7.0]) == [100, 13]  # 100 * 1/8 = 12.5


def test_non_finite_deltas_are_left_out() -> None:
    assert one_group([NAN, 9.0, INF, -INF, 4.0]) == [0, 50, 0, 0, 100]


def test_group_without_scores_falls_back_to_equal_weights() -> None:
    assert wao_scores([NAN, INF, 1.0], [0, 2, 3]) == [1, 1, 100]


def test_huge_deltas() -> None:
    assert one_group([2.0**63, 2.0**64]) == [100, 50]
    assert one_group([1.7976931348623157e308, 0.0]) == [0, 100]


def test_empty_input() -> None:
    assert wao_scores([], [0]) == []
    assert wao_scores(array("d"), array("Q", [0, 0])) == []


def test_returns_plain_ints() -> None:
    scores = wao_scores(array("d", [1.0, 2.0]), [0, 2])
    assert type(scores) is list
    assert all(type(score) is int for score in scores)


@given(groups)
def test_scores_match_reference(groups: list[list[float]]) -> None:
    delta_watts, offsets = flatten(groups)
    expected = reference.wao_scores(delta_watts, offsets)
    assert wao_scores(delta_watts, offsets) == expected
    assert wao_scores(array("d", delta_watts), array("Q", offsets)) == expected
    assert wao_scores(memoryview(array("d", delta_watts)), array("i", offsets)) == expected


@pytest.mark.parametrize("typecode", ["I", "L", "Q", "i", "l", "q", "H"])
def test_integer_offsets_of_any_width(typecode: str) -> None:
    delta_watts = array("d", [3.0, 1.0, 0.0, 8.0])
    assert wao_scores(delta_watts, array(typecode, [0, 2, 4])) == [50, 100, 100, 11]


def test_other_buffers_are_read_as_sequences() -> None:
    # float32 and int buffers are not float64, so they take the sequence path.
    assert wao_scores(array("f", [3.0, 1.0]), [0, 2]) == [50, 100]
    assert wao_scores(array("q", [3, 1]), (0, 2)) == [50, 100]


@pytest.mark.parametrize(
    ("offsets", "message"),
    [
        ([], r"offsets is empty: .* \(use \[0\] for no groups\)"),
        ([1, 3], r"offsets must start at 0, but offsets\[0\] = 1"),
        ([0, 4, 3], r"offsets\[1\] = 4 is past the end of delta_watts \(length 3\)"),
        ([0, 2, 1, 3], r"must not decrease, but offsets\[2\] = 1 is less than offsets\[1\] = 2"),
        ([0, 2], r"must end at the length of delta_watts \(3\), but the last offset is 2"),
        ([0, -1, 3], r"offsets\[1\] = -1 is negative"),
        (array("q", [0, -1, 3]), r"offsets\[1\] = -1 is negative"),
    ],
)
def test_bad_offsets(offsets: Sequence[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        wao_scores([1.0, 2.0, 3.0], offsets)


def test_multidimensional_buffers_are_refused() -> None:
    square = memoryview(array("d", [1.0, 2.0, 3.0, 4.0])).cast("B").cast("d", [2, 2])
    with pytest.raises(ValueError, match="delta_watts must be one-dimensional"):
        wao_scores(square, [0, 4])
    offsets = memoryview(array("q", [0, 2, 2, 4])).cast("B").cast("q", [2, 2])
    with pytest.raises(ValueError, match="offsets must be one-dimensional"):
        wao_scores([1.0, 2.0, 3.0, 4.0], offsets)


def test_non_numbers_are_refused() -> None:
    with pytest.raises(TypeError):
        wao_scores(["1.0"], [0, 1])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        wao_scores([1.0], [0.0, 1.0])  # type: ignore[list-item]


def test_layout_of_upstream_readme_example() -> None:
    weights = [58, 100, 77, 80, 67, 77]
    expected = (459, [(0, 57), (58, 157), (158, 234), (235, 314), (315, 381), (382, 458)])
    assert numgen_layout(weights) == expected
    assert reference.numgen_layout(weights) == expected


def test_layout_leaves_out_weight_zero() -> None:
    assert numgen_layout([0, 3, 0, 1, 0]) == (4, [None, (0, 2), None, (3, 3), None])


def test_layout_of_largest_total() -> None:
    last = U32_MAX - 1
    assert numgen_layout([last, 1]) == (U32_MAX, [(0, last - 1), (last, last)])


@given(st.lists(st.integers(min_value=0, max_value=1_000_000), max_size=30))
def test_layout_matches_reference(weights: list[int]) -> None:
    if sum(weights) == 0:
        with pytest.raises(ValueError, match="needs at least one weight above 0"):
            numgen_layout(weights)
    else:
        assert numgen_layout(weights) == reference.numgen_layout(weights)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([], r"at least one weight above 0, but there are no weights"),
        ([0, 0], r"at least one weight above 0, but all 2 weights are 0"),
        ([U32_MAX, 1], r"add up to more than 4294967295, the largest modulus numgen takes"),
        ([3, -1], r"weights\[1\] = -1 is outside 0..=4294967295"),
        ([2**32], r"weights\[0\] = 4294967296 is outside 0..=4294967295"),
    ],
)
def test_bad_weights(weights: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        numgen_layout(weights)
