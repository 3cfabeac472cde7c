"""A point-to-point link between two namespaces that delays every packet, run as a script
(standard library only, ``python -S``).

``tunnel.py NS_A DEV_A NS_B DEV_B THERE BACK`` creates TUN device DEV_A in namespace NS_A and
DEV_B in NS_B, prints ``ready``, then copies each IP packet read from DEV_A to DEV_B after
THERE seconds and each from DEV_B to DEV_A after BACK seconds, in order. A line
``THERE BACK`` on stdin changes the delays; when stdin closes it exits, and the devices (with
every route through them) disappear with it.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import fcntl
import os
import select
import struct
import sys
import time

_TUNSETIFF = 0x400454CA
_IFF_TUN, _IFF_NO_PI = 0x0001, 0x1000
_CLONE_NEWNET = 0x40000000
_MAX_PACKET = 65536


def open_tun(netns: str, device: str) -> int:
    """A TUN device named ``device`` in ``netns``: a device belongs to the namespace of the
    thread that opened /dev/net/tun."""
    libc = ctypes.CDLL(None, use_errno=True)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(target, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
    finally:
        os.close(target)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", device.encode(), _IFF_TUN | _IFF_NO_PI))
    return fd


def run(a: int, b: int, there: float, back: float) -> None:
    peer = {a: b, b: a}
    delay = {a: there, b: back}
    queued: dict[int, collections.deque[tuple[float, bytes]]] = {
        a: collections.deque(),
        b: collections.deque(),
    }
    stdin = sys.stdin.fileno()
    while True:
        now = time.monotonic()
        for source, queue in queued.items():
            while queue and queue[0][0] <= now:
                # The far device is down: the packet is lost, as on a cut link.
                with contextlib.suppress(OSError):
                    os.write(peer[source], queue.popleft()[1])
        due = [queue[0][0] for queue in queued.values() if queue]
        wait = max(0.0, min(due) - now) if due else None
        readable, _, _ = select.select([a, b, stdin], [], [], wait)
        for fd in readable:
            if fd == stdin:
                line = os.read(stdin, 4096)
                if not line:
                    return
                there, back = (float(value) for value in line.split()[-2:])
                delay[a], delay[b] = there, back
                continue
            while True:
                try:
                    packet = os.read(fd, _MAX_PACKET)
                except BlockingIOError:
                    break
                queued[fd].append((time.monotonic() + delay[fd], packet))


def main(argv: list[str]) -> int:
    if len(argv) != 7:
        print(f"usage: {argv[0]} NS_A DEV_A NS_B DEV_B THERE BACK", file=sys.stderr)
        return 2
    a = open_tun(argv[1], argv[2])
    b = open_tun(argv[3], argv[4])
    print("ready", flush=True)
    run(a, b, float(argv[5]), float(argv[6]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
