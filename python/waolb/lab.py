"""A laboratory of network namespaces: a tiny Kubernetes-like node on one machine.

Used by ``make demo`` and by the tests. Everything here works only inside namespaces it
creates (named ``waolb-t-<random>``) and removes them, with every process it started in
them, even when something fails halfway:

* :class:`Netns` - one namespace, a context manager.
* :func:`entered` - setns() the *current thread* into a namespace and back, so objects that
  open netlink sockets inside (``Dataplane()``, ``nftables.Nftables()``) bind to it.
* :func:`run` - a command inside a namespace (``ip netns exec``), failing loudly.
* :func:`cluster` - a "node" namespace with a bridge and N "pod" namespaces on veth pairs,
  each pod running a small TCP/UDP server that answers with its pod name and the source
  address it saw; :func:`exchange` runs many short connections from a namespace in one
  subprocess and returns per-pod counts.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import secrets
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

NETNS_PREFIX = "waolb-t-"
CLONE_NEWNET = 0x40000000
NODE_BRIDGE = "br0"
POD_SUBNET4 = "10.244.0.0/24"
POD_SUBNET6 = "fd00:244::/64"
GATEWAY4 = "10.244.0.1"
GATEWAY6 = "fd00:244::1"
SERVER_PORT = 8080

_libc = ctypes.CDLL(None, use_errno=True)
# How long a command or a wait may take before it counts as hung. Only a safety net: on an idle
# machine everything here takes a fraction of it, and a slow or busy one must not fail for it.
HUNG_AFTER = 300.0
T = TypeVar("T")


class CommandError(RuntimeError):
    """A command failed; the message carries its stderr."""


def _check(cmd: list[str], proc: subprocess.CompletedProcess[str]) -> None:
    if proc.returncode != 0:
        raise CommandError(
            f"{' '.join(cmd)!r} exited with {proc.returncode}: {proc.stderr.strip()}"
            f"{' / ' + proc.stdout.strip() if proc.stdout.strip() else ''}"
        )


def host_run(
    *cmd: str, check: bool = True, input: str | None = None, timeout: float = HUNG_AFTER
) -> subprocess.CompletedProcess[str]:
    """Runs a command in the test's own namespace; callers only pass ``ip netns ...`` and
    ``ip -n NS ...`` commands, which act on the namespaces created here."""
    proc = subprocess.run(
        list(cmd), capture_output=True, text=True, input=input, timeout=timeout, check=False
    )
    if check:
        _check(list(cmd), proc)
    return proc


class Netns:
    """A network namespace with a unique ``waolb-t-`` name; deleted on exit, always."""

    def __init__(self, role: str = "") -> None:
        tag = f"{role}-" if role else ""
        self.name = f"{NETNS_PREFIX}{tag}{secrets.token_hex(4)}"
        self._processes: list[subprocess.Popen[str]] = []
        self._created = False

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    def __enter__(self) -> Netns:
        host_run("ip", "netns", "add", self.name)
        self._created = True
        try:
            self.run("ip", "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stops this namespace's processes and deletes it; safe to call twice."""
        for proc in self._processes:
            stop_process(proc)
        self._processes.clear()
        if self._created:
            self._created = False
            host_run("ip", "netns", "delete", self.name, check=False)

    def run(
        self,
        *cmd: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = HUNG_AFTER,
    ) -> subprocess.CompletedProcess[str]:
        """Runs ``cmd`` inside the namespace and returns it; raises CommandError on failure."""
        return host_run(
            "ip", "netns", "exec", self.name, *cmd, check=check, input=input, timeout=timeout
        )

    def popen(self, *cmd: str) -> subprocess.Popen[str]:
        """Starts ``cmd`` inside the namespace; it is stopped when the namespace closes.

        stdin is a pipe the process may watch: it closes when the test process dies.
        """
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.name, *cmd],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._processes.append(proc)
        return proc

    def nft(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("nft", *args, check=check)

    def ruleset(self) -> str:
        """``nft list ruleset``, the text compared byte for byte."""
        return self.nft("list", "ruleset").stdout

    def sysctl(self, **settings: str | int) -> None:
        """Sets ``net.x.y=value`` (keyword ``net__x__y``: dots spelled ``__``) in the namespace."""
        args = [f"{key.replace('__', '.')}={value}" for key, value in settings.items()]
        self.run("sysctl", "-qw", *args)


def run(ns: Netns | str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Runs ``cmd`` inside namespace ``ns``; raises CommandError with its stderr on failure."""
    name = ns if isinstance(ns, str) else ns.name
    return host_run("ip", "netns", "exec", name, *cmd, check=check)


def stop_process(proc: subprocess.Popen[str], grace: float = 2.0) -> None:
    """Terminates a process (then kills it) and reaps it; closes its pipes."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(ns: Netns | str) -> Iterator[None]:
    """Moves the current thread into ``ns`` for the block, then back where it was.

    Sockets opened inside (a ``Dataplane``, an ``nftables.Nftables`` context, a plain
    ``socket.socket``) stay in ``ns`` after the block ends.
    """
    name = ns if isinstance(ns, str) else ns.name
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float = HUNG_AFTER,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    """Polls ``probe`` until it returns something truthy; returns it or fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s (last: {last!r})")
        time.sleep(interval)


# ---- the tiny cluster --------------------------------------------------------------------

# Answers every TCP line and every UDP datagram with "<pod name> <source address seen>".
# Exits when its stdin closes (the test process went away).
SERVER_SOURCE = r"""
import selectors, socket, sys

name, ports = sys.argv[1], [int(p) for p in sys.argv[2].split(",")]
sel = selectors.DefaultSelector()

def peer(addr):
    host = addr[0]
    return host[7:] if host.startswith("::ffff:") else host

for port in ports:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(socket.AF_INET6, kind)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::", port))
        if kind == socket.SOCK_STREAM:
            s.listen(4096)
        s.setblocking(False)
        role = "listen" if kind == socket.SOCK_STREAM else "udp"
        sel.register(s, selectors.EVENT_READ, (role, None))
sel.register(sys.stdin, selectors.EVENT_READ, ("stdin", None))
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        kind, state = key.data
        sock = key.fileobj
        if kind == "stdin":
            if not sys.stdin.readline():
                sys.exit(0)
        elif kind == "listen":
            try:
                conn, addr = sock.accept()
            except BlockingIOError:
                continue
            conn.setblocking(False)
            sel.register(conn, selectors.EVENT_READ, ("conn", [peer(addr), b""]))
        elif kind == "udp":
            try:
                data, addr = sock.recvfrom(2048)
            except BlockingIOError:
                continue
            sock.sendto(f"{name} {peer(addr)}".encode(), addr)
        else:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(sock)
                sock.close()
                continue
            *lines, state[1] = (state[1] + data).split(b"\n")
            try:
                for _ in lines:
                    sock.sendall(f"{name} {state[0]}\n".encode())
            except OSError:
                sel.unregister(sock)
                sock.close()
"""

# Runs COUNT short TCP connections (one request line each) or UDP exchanges (a new socket,
# so a new conntrack entry, each) to HOST:PORT and prints per-pod counts as JSON. Once
# BUDGET seconds have passed, the remaining attempts count as "over budget" errors.
CLIENT_SOURCE = r"""
import errno, json, socket, sys, time

proto, host, port, count, timeout, budget = sys.argv[1:7]
port, count, timeout, budget = int(port), int(count), float(timeout), float(budget)
family = socket.AF_INET6 if ":" in host else socket.AF_INET
counts, sources, errors = {}, {}, {}
start = time.monotonic()
for _ in range(count):
    if time.monotonic() - start > budget:
        errors["over budget"] = errors.get("over budget", 0) + 1
        continue
    try:
        if proto == "tcp":
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect((host, port))
                s.sendall(b"?\n")
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(256)
                    if not chunk:
                        raise ConnectionResetError(errno.ECONNRESET, "closed without an answer")
                    data += chunk
        else:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.settimeout(timeout)
                s.connect((host, port))
                for attempt in range(3):
                    s.send(b"?")
                    try:
                        data = s.recv(2048)
                        break
                    except TimeoutError:
                        if attempt == 2:
                            raise
        pod, source = data.decode().split()
        counts[pod] = counts.get(pod, 0) + 1
        sources.setdefault(pod, set()).add(source)
    except OSError as e:
        key = errno.errorcode.get(e.errno, type(e).__name__) if e.errno else type(e).__name__
        errors[key] = errors.get(key, 0) + 1
print(json.dumps({
    "counts": counts,
    "sources": {pod: sorted(s) for pod, s in sources.items()},
    "errors": errors,
    "seconds": time.monotonic() - start,
}))
"""


@dataclass
class Exchange:
    """What :func:`exchange` saw: answers per pod, source addresses the pods saw, errors."""

    counts: dict[str, int]
    sources: dict[str, list[str]]
    errors: dict[str, int]
    seconds: float

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def exchange(
    ns: Netns | str,
    host: str,
    port: int,
    *,
    proto: str = "tcp",
    count: int = 1,
    timeout: float = 2.0,
    budget: float = 30.0,
) -> Exchange:
    """``count`` short TCP connections or UDP exchanges from ``ns`` to ``host:port``.

    One subprocess does them all (2 000 take about a second). Errors are counted by errno
    name (``ECONNREFUSED``) or exception name (``TimeoutError``), not raised; attempts left
    when ``budget`` seconds have passed count as ``"over budget"``, so a broken dataplane
    fails a test in seconds rather than hours.
    """
    name = ns if isinstance(ns, str) else ns.name
    limit = budget + 3 * timeout + 30.0
    proc = host_run(
        "ip",
        "netns",
        "exec",
        name,
        sys.executable,
        "-S",
        "-c",
        CLIENT_SOURCE,
        proto,
        host,
        str(port),
        str(count),
        str(timeout),
        str(budget),
        timeout=limit,
    )
    result: dict[str, Any] = json.loads(proc.stdout)
    return Exchange(
        counts=result["counts"],
        sources=result["sources"],
        errors=result["errors"],
        seconds=result["seconds"],
    )


@dataclass
class Pod:
    """A pod: its own namespace on the node's bridge, with a server on ``ports``."""

    name: str
    ns: Netns
    ipv4: str
    ipv6: str | None
    ports: tuple[int, ...]
    server: subprocess.Popen[str] | None = None


@dataclass
class Cluster:
    """A node namespace with bridge ``br0`` (10.244.0.1/24, fd00:244::1/64) and its pods."""

    node: Netns
    pods: list[Pod] = field(default_factory=list)
    ipv6: bool = False
    gateway4: str = GATEWAY4
    gateway6: str = GATEWAY6

    def pod(self, name: str) -> Pod:
        return next(p for p in self.pods if p.name == name)


def _start_server(pod: Pod, timeout: float = HUNG_AFTER) -> None:
    ports = ",".join(str(p) for p in pod.ports)
    proc = pod.ns.popen(sys.executable, "-S", "-u", "-c", SERVER_SOURCE, pod.name, ports)
    pod.server = proc
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != "ready":
        stop_process(proc)
        assert proc.stderr is not None
        raise CommandError(f"server in {pod.name} did not start: {line!r} {proc.stderr.read()}")


def _answers(ns: Netns, addr: str, port: int) -> dict[str, int]:
    return exchange(ns, addr, port, timeout=0.5).counts


@contextlib.contextmanager
def cluster(
    pods: int = 3, *, ipv6: bool = False, ports: tuple[int, ...] = (SERVER_PORT,)
) -> Iterator[Cluster]:
    """Builds a node and ``pods`` pods; yields once every pod answers the node directly.

    Pod ``i`` is ``pod<i>`` at 10.244.0.<10+i> (and fd00:244::<10+i> with ``ipv6``), its
    bridge port in hairpin mode as CNI bridge plugins set it. The node forwards, sends no
    ICMP redirects, has br_netfilter on (the namespace default, as on a Kubernetes node) and
    a default route via the bridge so ClusterIPs (10.96.0.0/16, fd00:96::/112) route.
    Everything is removed on exit, including on errors halfway through.
    """
    with contextlib.ExitStack() as stack:
        node = stack.enter_context(Netns("node"))
        result = Cluster(node=node, ipv6=ipv6)
        if ipv6:
            node.sysctl(
                net__ipv6__conf__all__accept_dad=0,
                net__ipv6__conf__default__accept_dad=0,
                net__ipv6__conf__all__forwarding=1,
            )
        # No ICMP redirects: ClusterIPs route back out of br0, where packets from pods came
        # in, and every redirect resets the per-host ICMP rate limit, so the port-unreachable
        # of a reject would be dropped (a node's real default route leaves by its uplink).
        node.sysctl(
            net__ipv4__ip_forward=1,
            net__ipv4__conf__all__send_redirects=0,
            net__ipv4__conf__default__send_redirects=0,
        )
        commands = [
            f"link add {NODE_BRIDGE} type bridge forward_delay 0",
            f"addr add {GATEWAY4}/24 dev {NODE_BRIDGE}",
            f"link set {NODE_BRIDGE} up",
            f"route add default dev {NODE_BRIDGE}",
        ]
        if ipv6:
            commands += [
                f"addr add {GATEWAY6}/64 dev {NODE_BRIDGE} nodad",
                f"route add ::/0 dev {NODE_BRIDGE}",
            ]
        host_run("ip", "-n", node.name, "-batch", "-", input="\n".join(commands) + "\n")
        for i in range(pods):
            name = f"pod{i}"
            ns = stack.enter_context(Netns(name))
            pod = Pod(
                name=name,
                ns=ns,
                ipv4=f"10.244.0.{10 + i}",
                ipv6=f"fd00:244::{10 + i}" if ipv6 else None,
                ports=ports,
            )
            if ipv6:
                ns.sysctl(
                    net__ipv6__conf__all__accept_dad=0, net__ipv6__conf__default__accept_dad=0
                )
            port = f"veth{i}"
            host_run(
                "ip", "-n", node.name, "link", "add", port, "type", "veth",
                "peer", "name", "eth0", "netns", ns.name,
            )  # fmt: skip
            host_run(
                "ip",
                "-n",
                node.name,
                "-batch",
                "-",
                input=(
                    f"link set {port} master {NODE_BRIDGE}\n"
                    f"link set {port} type bridge_slave hairpin on\n"
                    f"link set {port} up\n"
                ),
            )
            pod_commands = [
                f"addr add {pod.ipv4}/24 dev eth0",
                "link set eth0 up",
                f"route add default via {GATEWAY4}",
            ]
            if pod.ipv6:
                pod_commands += [
                    f"addr add {pod.ipv6}/64 dev eth0 nodad",
                    f"route add ::/0 via {GATEWAY6}",
                ]
            host_run("ip", "-n", ns.name, "-batch", "-", input="\n".join(pod_commands) + "\n")
            _start_server(pod)
            result.pods.append(pod)
        for pod in result.pods:
            for addr in [pod.ipv4] + ([pod.ipv6] if pod.ipv6 else []):
                wait_until(
                    functools.partial(_answers, node, addr, pod.ports[0]),
                    interval=0.05,
                    what=f"{pod.name} answering at {addr}",
                )
        yield result
