"""Network namespaces for kernel tests: the lab (waolb.lab) plus pytest fixtures and stats.

Import the fixtures into a test module (``from netns import netns``) and mark kernel tests
with ``pytestmark = requires_netns``.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from waolb.lab import (
    GATEWAY4,
    GATEWAY6,
    HUNG_AFTER,
    NETNS_PREFIX,
    NODE_BRIDGE,
    POD_SUBNET4,
    POD_SUBNET6,
    SERVER_PORT,
    Cluster,
    CommandError,
    Exchange,
    Netns,
    Pod,
    cluster,
    entered,
    exchange,
    host_run,
    run,
    stop_process,
    wait_until,
)

if TYPE_CHECKING:
    from waolb._native import Dataplane

__all__ = [
    "GATEWAY4",
    "GATEWAY6",
    "HUNG_AFTER",
    "NETNS_PREFIX",
    "NODE_BRIDGE",
    "POD_SUBNET4",
    "POD_SUBNET6",
    "SERVER_PORT",
    "Cluster",
    "CommandError",
    "Exchange",
    "Netns",
    "Pod",
    "chi_square",
    "chi_square_sf",
    "cluster",
    "entered",
    "exchange",
    "host_run",
    "kernel_test_skip_reason",
    "netns",
    "netns_pair",
    "new_dataplane",
    "requires_netns",
    "run",
    "stop_process",
    "wait_until",
]


def kernel_test_skip_reason() -> str | None:
    """Why kernel tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"needs the {tool!r} command"
    return None


_SKIP_REASON = kernel_test_skip_reason()
#: ``pytestmark = requires_netns`` in a module of kernel tests: marks and skips them.
requires_netns = [
    pytest.mark.netns,
    pytest.mark.skipif(_SKIP_REASON is not None, reason=_SKIP_REASON or ""),
]


def new_dataplane(ns: Netns | str, **kwargs: Any) -> Dataplane:
    """A ``waolb._native.Dataplane`` whose netlink socket lives in ``ns``."""
    from waolb._native import Dataplane  # noqa: PLC0415 - netns.py works without it

    with entered(ns):
        return Dataplane(**kwargs)


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A fresh, empty network namespace (loopback up), deleted after the test."""
    with Netns() as ns:
        yield ns


@pytest.fixture
def netns_pair() -> Iterator[tuple[Netns, Netns]]:
    """Two fresh namespaces, for isolation tests."""
    with Netns("a") as first, Netns("b") as second:
        yield first, second


# ---- statistics --------------------------------------------------------------------------


def chi_square(observed: list[int], weights: list[float]) -> float:
    """Pearson's statistic of ``observed`` counts against shares proportional to ``weights``."""
    total = sum(observed)
    weight_sum = sum(weights)
    expected = [total * w / weight_sum for w in weights]
    return sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))


def chi_square_sf(statistic: float, dof: int) -> float:
    """P(X >= statistic) for X chi-square with ``dof`` degrees of freedom (no scipy needed).

    Closed forms: for even ``dof`` the Poisson sum, for odd ``dof`` erfc plus a series.
    """
    half = statistic / 2
    if dof % 2 == 0:
        term, total = 1.0, 1.0
        for k in range(1, dof // 2):
            term *= half / k
            total += term
        return math.exp(-half) * total
    total = math.erfc(math.sqrt(half))
    term = math.sqrt(half) * math.exp(-half) / math.gamma(1.5)
    for k in range(1, (dof - 1) // 2 + 1):
        total += term
        term *= half / (k + 0.5)
    return min(1.0, total)
