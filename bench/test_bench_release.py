"""The frozen executable (``make binary``): its size, and process start to a healthy /healthz,
against the virtualenv's ``waolb`` measured in the same run.

Each round starts the program in a fresh node namespace with the test API server listening
there (an empty cluster: the first sync is immediate) and polls /healthz until it answers 200.
The frozen file unpacks itself into a temporary directory at every start; that cost is in the
figure.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from kubeapi import KubeApiServer
from netns import Netns, entered, requires_netns, stop_process, wait_until
from test_bench_control_plane import WAOLB, free_ports, start_proxy

pytestmark = requires_netns

FROZEN = Path(__file__).resolve().parents[1] / "dist" / "waolb"
ROUNDS = 5


def healthz_status(node: Netns, port: int) -> int:
    """The status of one GET /healthz inside ``node`` (0 if nothing answered)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        with entered(node):  # the socket is made by the request
            connection.request("GET", "/healthz")
        return connection.getresponse().status
    except OSError:
        return 0
    finally:
        connection.close()


@contextlib.contextmanager
def node_with_api() -> Iterator[tuple[Netns, KubeApiServer]]:
    with Netns("node") as node:
        api = KubeApiServer()
        with entered(node):
            api.start()
        try:
            yield node, api
        finally:
            api.stop()


@pytest.mark.parametrize("program", ["frozen", "virtualenv"])
@pytest.mark.benchmark(group="release: process start to a healthy /healthz")
def test_start_to_healthz(benchmark: BenchmarkFixture, tmp_path: Path, program: str) -> None:
    executable = FROZEN if program == "frozen" else WAOLB
    if not executable.is_file():
        pytest.skip(f"{executable} is missing: run `make binary`")
    names = itertools.count()
    answered: list[float] = []
    healthy_at: list[float] = []

    def start_and_wait() -> None:
        with node_with_api() as (node, api):
            ports = free_ports(node, 2)
            proxy = start_proxy(
                node, [f"--master={api.url}"], tmp_path / f"{next(names)}.log", ports,
                executable=executable,
            )  # fmt: skip
            try:
                first: list[float] = []

                def healthy() -> bool:
                    status = healthz_status(node, ports[1])
                    if status and not first:
                        first.append(time.monotonic() - proxy.started)
                    return status == 200

                wait_until(healthy, timeout=120, interval=0.005, what="healthz 200")
                healthy_at.append(time.monotonic() - proxy.started)
                answered.append(first[0])
            finally:
                stop_process(proxy.process, 10.0)  # type: ignore[arg-type]

    benchmark.pedantic(start_and_wait, rounds=ROUNDS, iterations=1)
    if benchmark.disabled:
        return
    # The rounds' own time includes making the namespace and the API server; these do not.
    benchmark.extra_info.update(
        start_to_healthy_s=round(statistics.fmean(healthy_at), 3),
        start_to_healthy_max_s=round(max(healthy_at), 3),
        first_answer_s=round(statistics.fmean(answered), 3),
        size_mib=round(executable.stat().st_size / 2**20, 1) if program == "frozen" else None,
    )
