"""Latency between two hosts of the lab, for experiments where inter-node latency matters.

``tc netem`` is the usual tool, but the kernels this project runs on have neither
``sch_netem`` built in nor module loading (``CONFIG_NET_SCH_NETEM`` and ``CONFIG_MODULES``
unset). So a delayed pair of hosts gets a link of its own instead: a TUN device in each
namespace, joined by a small process (:mod:`waolb.lab.tunnel`) that holds each packet for
the configured time, plus routes that prefer that link for the other host's addresses (and,
for a node, its pod CIDR). Addresses and the path's hops are unchanged: only the time differs.
Closing the link stops the process; its devices and routes vanish, and traffic takes the
fabric again. Only traffic addressed to the other host takes the link (its InternalIPs and,
for a node, its pod CIDR); what the client routes via a node to Service addresses does not.
"""

from __future__ import annotations

import select
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .netns import HUNG_AFTER, CommandError, failure_output, ip_batch, stop_process

if TYPE_CHECKING:
    from .topology import Host, Lab

TUNNEL_SCRIPT = Path(__file__).with_name("tunnel.py")
#: Routes through a delay link win over the lab's own routes, which have metric BASE_METRIC.
DELAY_METRIC = 10
BASE_METRIC = 100


@dataclass
class DelayLink:
    """A delayed link between hosts ``a`` and ``b`` (see :meth:`waolb.lab.Lab.delay`)."""

    a: Host
    b: Host
    there: float
    back: float
    process: subprocess.Popen[str]

    def set(self, there: float, back: float | None = None) -> None:
        """Changes the one-way delays (seconds); packets already held keep theirs."""
        self.there, self.back = there, there if back is None else back
        assert self.process.stdin is not None
        self.process.stdin.write(f"{self.there} {self.back}\n")
        self.process.stdin.flush()

    def close(self) -> None:
        """Removes the link; safe to call twice."""
        stop_process(self.process)


def _device(towards: Host) -> str:
    return f"to-{towards.name}"[:15]  # interface names have at most 15 characters


def _routes(device: str, here: Host, there: Host, families: tuple[int, ...]) -> list[str]:
    commands = [f"link set {device} up"]
    for family in families:
        host_prefix = 32 if family == 4 else 128
        source = here.address(family)
        destinations = [f"{there.address(family)}/{host_prefix}"]
        pod_cidr = getattr(there, "pod_cidr", None)
        if pod_cidr is not None:
            destinations.append(pod_cidr(family))
        commands += [
            f"route add {destination} dev {device} src {source} metric {DELAY_METRIC}"
            for destination in destinations
        ]
    return commands


def delay_link(lab: Lab, a: Host, b: Host, there: float, back: float) -> DelayLink:
    """Starts a delayed link between ``a`` and ``b``; the caller closes it."""
    families = (4, 6) if lab.ipv6 else (4,)
    process = subprocess.Popen(
        [
            sys.executable, "-S", "-u", str(TUNNEL_SCRIPT),
            a.ns.name, _device(b), b.ns.name, _device(a), str(there), str(back),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # Ctrl-C reaches the lab's owner, which stops it
    )  # fmt: skip
    link = DelayLink(a, b, there, back, process)
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], HUNG_AFTER)
        line = process.stdout.readline() if ready else ""
        if line.strip() != "ready":
            raise CommandError(
                f"delay link {a.name}-{b.name} did not start: {failure_output(process)}"
            )
        ip_batch(a.ns, _routes(_device(b), a, b, families))
        ip_batch(b.ns, _routes(_device(a), b, a, families))
    except BaseException:
        link.close()
        raise
    return link
