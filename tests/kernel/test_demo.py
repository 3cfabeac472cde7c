"""``make demo`` runs: weights from predicted watts, a programmed chain, traffic that follows."""

from __future__ import annotations

import re

import pytest

from netns import requires_netns
from waolb import demo

pytestmark = requires_netns


def test_demo_programs_the_weights_and_traffic_follows(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--connections", "600"]) == 0
    out = capsys.readouterr().out
    assert (
        'dnat to 10.244.0.10:8080 comment "endpoint 10.244.0.10:8080, weight 100 of 249 '
        '(40.2%), range 0-99"'
    ) in out
    assert "600 connections" in out and "errors: none" in out
    rows = re.findall(r"^(pod\d)\s+\S+\s+(\d+)\s+([\d.]+)%\s+([\d.]+)%$", out, re.MULTILINE)
    assert [row[1] for row in rows] == ["100", "81", "68"]
    for _pod, _score, expected, observed in rows:
        # 600 connections: a share's standard deviation is at most 2 points; allow 4 sigma.
        assert abs(float(expected) - float(observed)) < 8.0, rows
