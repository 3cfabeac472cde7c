"""Who owns a lab namespace, and the sweep of namespaces whose owner died.

Several people run tests on one machine at once, so a namespace may only be removed by the
process that made it, or once that process is gone. Each namespace the lab creates gets a claim
file in :data:`CLAIMS_DIR` that its creating process holds an ``flock`` on for the namespace's
whole life. The kernel drops the lock when the process dies, however it dies (SIGKILL
included), so a claim whose lock can be taken belongs to a dead run: :func:`sweep_stale` then
kills whatever still runs inside that namespace (a proxy the dead run started, say) and
deletes it. Namespaces without a claim (made by other code) are never touched.

A claim appears under its final name already locked (written under a temporary name, locked,
then renamed), so a sweep never sees a live claim unlocked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

CLAIMS_DIR = Path("/run/waolb-lab")
# Only a safety net: `ip` answers in milliseconds.
_IP_TIMEOUT = 300.0


@dataclass
class Claim:
    """This process's hold on a namespace name; :func:`release` it after deleting the namespace."""

    name: str
    path: Path
    fd: int


def claim(name: str) -> Claim:
    """Claims ``name`` for this process; the namespace may be created once this returns."""
    CLAIMS_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    temporary = CLAIMS_DIR / f".{name}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode())
        path = CLAIMS_DIR / name
        os.rename(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        os.close(fd)
        raise
    return Claim(name, path, fd)


def release(held: Claim) -> None:
    """Gives the name up (after the namespace is deleted); safe to call twice."""
    if held.fd < 0:
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(held.path)
    os.close(held.fd)
    held.fd = -1


def sweep_stale() -> list[str]:
    """Deletes the lab namespaces whose owning process is gone; returns their names.

    Processes still running inside such a namespace were started by the dead run: they get
    SIGKILL first. A live owner's namespaces are left alone, as are namespaces without a claim.
    """
    try:
        entries = sorted(os.listdir(CLAIMS_DIR))
    except FileNotFoundError:
        return []
    swept = []
    for entry in entries:
        path = CLAIMS_DIR / entry
        fd = _lock_if_abandoned(path)
        if fd is None:
            continue
        try:
            if not entry.startswith("."):  # a temporary file: no namespace was made for it
                _remove_namespace(entry)
                swept.append(entry)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        finally:
            os.close(fd)
    return swept


def _lock_if_abandoned(path: Path) -> int | None:
    """An fd holding ``path``'s lock if its owner is gone, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Still the file that was locked? Its owner may have released and removed it meanwhile.
        if os.fstat(fd).st_ino == os.stat(path).st_ino:
            return fd
    except (BlockingIOError, FileNotFoundError):
        pass
    os.close(fd)
    return None


def _remove_namespace(name: str) -> None:
    pids = subprocess.run(
        ["ip", "netns", "pids", name],
        capture_output=True,
        text=True,
        timeout=_IP_TIMEOUT,
        check=False,
    ).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(
        ["ip", "netns", "delete", name], capture_output=True, timeout=_IP_TIMEOUT, check=False
    )
