"""Upstream WAO-LB's scores and numgen layout in plain Python, to check ``waolb._native`` against.

Written from upstream's Go (waok8s wao-loadbalancer, ``pkg/proxy/nftables``): ``ScoreNode``
makes the predicted increase whole watts with ``int()`` and counts a negative one as 0 W;
``normalizeScores`` adds 1 W, takes the minimum and scores ``math.Round(100 * (min / watts))``
clamped to [0, 100]; the proxier leaves out endpoints scoring 0, falls back to equal weights when
none scores above 0, and gives each remaining endpoint a numgen range as wide as its score.

Python ints do what Go's ``int`` does here, without Go's 64-bit limit, which is the same reading
of the formula that the Rust code documents for deltas of 2**63 W and more.
"""

import math
from collections.abc import Sequence
from itertools import pairwise

SCORE_MAX = 100
FALLBACK_WEIGHT = 1


def go_round(value: float) -> int:
    """Go's ``math.Round`` for the non-negative values scores take: halves go up.

    Python's ``round()`` rounds halves to even, so it would score 12.5 as 12 where Go says 13.
    """
    fraction, whole = math.modf(value)
    return int(whole) + (1 if fraction >= 0.5 else 0)


def upstream_watts(delta_watts: float) -> int | None:
    """Whole watts plus one, as upstream divides by; ``None`` when the endpoint can't be scored."""
    if not math.isfinite(delta_watts):
        return None
    return max(math.trunc(delta_watts), 0) + 1


def score_group(delta_watts: Sequence[float]) -> list[int]:
    """Scores for one service's endpoints."""
    watts = [upstream_watts(delta) for delta in delta_watts]
    known = [w for w in watts if w is not None]
    scores = [0] * len(watts)
    if known:
        lowest = float(min(known))
        for index, w in enumerate(watts):
            if w is not None:
                scores[index] = min(max(go_round(SCORE_MAX * (lowest / float(w))), 0), SCORE_MAX)
    if not any(scores):
        return [FALLBACK_WEIGHT] * len(scores)
    return scores


def wao_scores(delta_watts: Sequence[float], offsets: Sequence[int]) -> list[int]:
    """Scores for every group ``delta_watts[offsets[g]:offsets[g + 1]]``, concatenated."""
    scores: list[int] = []
    for start, end in pairwise(offsets):
        scores.extend(score_group(delta_watts[start:end]))
    return scores


def numgen_layout(weights: Sequence[int]) -> tuple[int, list[tuple[int, int] | None]]:
    """The total weight and, per endpoint, its inclusive numgen range (``None`` for weight 0)."""
    total = 0
    ranges: list[tuple[int, int] | None] = []
    for weight in weights:
        if weight == 0:
            ranges.append(None)
        else:
            ranges.append((total, total + weight - 1))
            total += weight
    return total, ranges
