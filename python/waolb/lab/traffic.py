"""Servers that answer with their identity, and the client that counts who answered.

Both are :mod:`waolb.lab.peer` run as a script inside a namespace. One client process makes all
the exchanges of one :func:`exchange` call (2 000 TCP connections take about a second).
"""

from __future__ import annotations

import json
import math
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from .netns import HUNG_AFTER, CommandError, Netns, failure_output, host_run, stop_process

PEER_SCRIPT = Path(__file__).with_name("peer.py")
SERVER_PORT = 8080
PROTOCOLS = ("tcp", "udp", "sctp")

#: Errors by errno name (as :attr:`Exchange.errors` counts them) -> the kind tests reason about.
ERROR_KINDS = {
    "ECONNREFUSED": "refused",
    "EHOSTUNREACH": "unreachable",
    "ENETUNREACH": "unreachable",
    "EACCES": "unreachable",  # ICMP "administratively prohibited"
    "TimeoutError": "timeout",
    "ETIMEDOUT": "timeout",
    "ECONNRESET": "reset",
    "EPIPE": "reset",
    "over budget": "over budget",
}


@dataclass(frozen=True)
class ServerSpec:
    """A server to start: in ``ns``, answering as ``identity`` on ``ports``."""

    ns: Netns
    identity: str
    ports: tuple[int, ...] = (SERVER_PORT,)
    protocols: tuple[str, ...] = PROTOCOLS


def start_servers(
    specs: Sequence[ServerSpec], timeout: float = HUNG_AFTER
) -> list[subprocess.Popen[str]]:
    """Starts every server at once, then waits until each listens; stops them all on failure.

    Each server stops with its namespace, or when this process dies (its stdin closes).
    """
    processes = [
        spec.ns.popen(
            sys.executable,
            "-S",
            "-u",
            str(PEER_SCRIPT),
            "serve",
            spec.identity,
            ",".join(map(str, spec.ports)),
            ",".join(spec.protocols),
        )
        for spec in specs
    ]
    try:
        deadline = time.monotonic() + timeout
        for spec, proc in zip(specs, processes, strict=True):
            assert proc.stdout is not None
            remaining = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([proc.stdout], [], [], remaining)
            line = proc.stdout.readline() if ready else ""
            if line.strip() != "ready":
                raise CommandError(
                    f"server {spec.identity} in {spec.ns.name} did not start: "
                    f"{line!r} {failure_output(proc)}"
                )
    except BaseException:
        for spec, proc in zip(specs, processes, strict=True):
            stop_process(proc)
            spec.ns.forget(proc)
        raise
    return processes


class ExchangeOptions(TypedDict, total=False):
    """The keyword arguments of :func:`exchange`, for methods that pass them on."""

    proto: str
    count: int
    timeout: float
    budget: float
    source: str | None


@dataclass
class Exchange:
    """What :func:`exchange` saw: answers per backend, the source addresses backends saw,
    errors by errno name (``ECONNREFUSED``) or exception name (``TimeoutError``), and the
    seconds each successful exchange took, per backend."""

    counts: dict[str, int]
    sources: dict[str, list[str]]
    errors: dict[str, int]
    seconds: float
    latencies: dict[str, list[float]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def error_kinds(self) -> dict[str, int]:
        """Errors grouped as refused, unreachable, timeout, reset (others keep their name)."""
        kinds: dict[str, int] = {}
        for name, count in self.errors.items():
            kind = ERROR_KINDS.get(name, name)
            kinds[kind] = kinds.get(kind, 0) + count
        return kinds

    def samples(self, backend: str | None = None) -> list[float]:
        """Latency samples (seconds), of one backend or all, sorted."""
        chosen = [backend] if backend is not None else list(self.latencies)
        return sorted(s for name in chosen for s in self.latencies.get(name, []))

    def percentile(self, q: float, backend: str | None = None) -> float:
        """The ``q``-th percentile (0-100, nearest rank) of the latency samples."""
        samples = self.samples(backend)
        if not samples:
            raise ValueError("no successful exchange to take a percentile of")
        rank = max(1, math.ceil(q / 100 * len(samples)))
        return samples[min(rank, len(samples)) - 1]


def exchange(
    ns: Netns | str,
    host: str,
    port: int,
    *,
    proto: str = "tcp",
    count: int = 1,
    timeout: float = 2.0,
    budget: float = 30.0,
    source: str | None = None,
) -> Exchange:
    """``count`` short TCP connections, UDP exchanges or SCTP handshakes from ``ns`` to
    ``host:port``, one after another, from ``source`` if given.

    ``timeout`` bounds each socket operation of one exchange (UDP and SCTP retry their first
    packet twice). ``budget`` is a safety net for the whole call: attempts left when it has
    passed count as ``"over budget"`` errors, so a broken dataplane fails a test in seconds
    rather than hours. Errors are counted, not raised.
    """
    name = ns if isinstance(ns, str) else ns.name
    options = {
        "proto": proto,
        "host": host,
        "port": port,
        "count": count,
        "timeout": timeout,
        "budget": budget,
        "source": source,
    }
    # The last attempt may start just before the budget runs out and take 4 timeouts (SCTP).
    limit = budget + 4 * timeout + HUNG_AFTER
    proc = host_run(
        "ip", "netns", "exec", name, sys.executable, "-S", str(PEER_SCRIPT), "exchange",
        json.dumps(options), timeout=limit,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(proc.stdout)
    return Exchange(
        counts=result["counts"],
        sources=result["sources"],
        errors=result["errors"],
        seconds=result["seconds"],
        latencies=result["latencies"],
    )
