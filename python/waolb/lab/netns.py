"""Network namespaces: create, enter, run commands in, and always remove."""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

from . import ownership

NETNS_PREFIX = "waolb-t-"
CLONE_NEWNET = 0x40000000
# How long a command or a wait may take before it counts as hung. Only a safety net: on an idle
# machine everything here takes a fraction of it, and a slow or busy one must not fail for it.
HUNG_AFTER = 300.0

_libc = ctypes.CDLL(None, use_errno=True)
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


def ip_batch(ns: Netns | str, commands: list[str]) -> None:
    """Runs ``ip`` commands (``link add ...``, one per item) in ``ns`` with one ``ip`` process."""
    name = ns if isinstance(ns, str) else ns.name
    host_run("ip", "-n", name, "-batch", "-", input="\n".join(commands) + "\n")


class Netns:
    """A network namespace with a unique ``waolb-t-`` name; deleted on exit, always.

    The name is claimed (see :mod:`waolb.lab.ownership`) before the namespace exists, so that if
    this process dies without cleaning up, a later :func:`~waolb.lab.ownership.sweep_stale`
    removes it, and never while this process lives.
    """

    def __init__(self, role: str = "") -> None:
        tag = f"{role}-" if role else ""
        self.name = f"{NETNS_PREFIX}{tag}{secrets.token_hex(4)}"
        self._processes: list[subprocess.Popen[str]] = []
        self._claim: ownership.Claim | None = None
        self._created = False

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    def __enter__(self) -> Netns:
        self._claim = ownership.claim(self.name)
        try:
            host_run("ip", "netns", "add", self.name)
            self._created = True
            host_run("ip", "-n", self.name, "link", "set", "lo", "up")
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
        if self._claim is not None:
            ownership.release(self._claim)
            self._claim = None

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
        """Starts ``cmd`` inside the namespace, in a session of its own; it is stopped when
        the namespace closes.

        stdin is a pipe the process may watch: it closes when the test process dies.
        """
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.name, *cmd],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # Not in the caller's process group: Ctrl-C reaches the caller alone, which then
            # stops everything in order.
            start_new_session=True,
        )
        self._processes.append(proc)
        return proc

    def forget(self, proc: subprocess.Popen[str]) -> None:
        """Stops tracking a process started by :meth:`popen` (the caller stopped it)."""
        with contextlib.suppress(ValueError):
            self._processes.remove(proc)

    def nft(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("nft", *args, check=check)

    def ruleset(self) -> str:
        """``nft list ruleset``, the text compared byte for byte."""
        return self.nft("list", "ruleset").stdout

    def sysctl(self, **settings: str | int) -> None:
        """Sets ``net.x.y=value`` (keyword ``net__x__y``: dots spelled ``__``) in the namespace."""
        write_sysctls(self, {key.replace("__", "."): value for key, value in settings.items()})


def write_sysctls(ns: Netns | str, settings: Mapping[str, str | int]) -> None:
    """Sets ``net.*`` sysctls in ``ns`` from this process: /proc/sys/net follows the netns of
    the thread that opens it, so no ``sysctl`` process is needed."""
    with entered(ns):
        for key, value in settings.items():
            with open(f"/proc/sys/{key.replace('.', '/')}", "w") as file:
                file.write(str(value))


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
            proc.wait(timeout=HUNG_AFTER)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def failure_output(proc: subprocess.Popen[str]) -> str:
    """What a process that failed to start wrote to stderr (killing it first if it hangs)."""
    if proc.poll() is None:
        proc.kill()
    _, error = proc.communicate(timeout=HUNG_AFTER)
    return str(error or "").strip()


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
