"""The lab leaves nothing behind: not after a failing test, not after a build that fails
halfway, and not (once swept) after a run killed with SIGKILL; and a sweep never touches
namespaces whose owner lives.

The runs under test are child processes building a two-node lab with a waolb process per
node (real proxies, which unlike the lab's servers do not notice their parent dying).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netns import requires_netns
from waolb.lab import HUNG_AFTER, Netns, multinode, ownership, sweep_stale, wait_until

pytestmark = requires_netns

SUPPORT = Path(__file__).resolve().parents[1] / "support"

# A run: builds the lab, starts a proxy per node, reports what it made, then fails at once
# ("fail") or waits to be killed ("wait").
RUN = r"""
import json, sys
sys.path.insert(0, sys.argv[2])
from multinode import kube_cluster

with kube_cluster(2, 1) as cluster:
    cluster.service("web", cluster.lab.pods)
    proxies = cluster.start_proxies()
    for proxy in proxies:
        proxy.wait_synced()
    lab = cluster.lab
    namespaces = [lab.fabric, lab.client.ns] + [n.ns for n in lab.nodes] + [p.ns for p in lab.pods]
    servers = [p.server for p in lab.pods] + [n.server for n in lab.nodes]
    print(json.dumps({
        "namespaces": [ns.name for ns in namespaces],
        "servers": [s.pid for s in servers],
        "proxies": [p.process.pid for p in proxies],
    }), flush=True)
    if sys.argv[1] == "fail":
        raise RuntimeError("the test failed")
    sys.stdin.read()
"""


def namespaces() -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in listing.stdout.splitlines() if line.strip()}


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


class Run:
    def __init__(self, mode: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", RUN, mode, str(SUPPORT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=HUNG_AFTER)
            assert self.process.stderr is not None
            pytest.fail(f"the run made nothing: {self.process.stderr.read()}")
        self.made: dict[str, Any] = json.loads(line)

    @property
    def pids(self) -> list[int]:
        return [*self.made["servers"], *self.made["proxies"]]

    def finish(self) -> int:
        self.process.communicate(timeout=HUNG_AFTER)
        return self.process.returncode


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    """Runs started by a test; any still alive at its end finish normally."""
    started: list[Run] = []
    yield started
    for run in started:
        if run.process.poll() is None:
            run.finish()


def test_a_failing_run_leaves_no_namespace_or_process(runs: list[Run]) -> None:
    run = Run("fail")
    runs.append(run)
    assert all(alive(pid) for pid in run.pids)
    assert set(run.made["namespaces"]) <= namespaces()
    assert run.finish() != 0
    assert set(run.made["namespaces"]).isdisjoint(namespaces())
    wait_until(lambda: not any(alive(pid) for pid in run.pids), what="the run's processes gone")
    assert not any((ownership.CLAIMS_DIR / name).exists() for name in run.made["namespaces"])


def test_an_interrupted_run_leaves_no_namespace_or_process(runs: list[Run]) -> None:
    """Ctrl-C (SIGINT to the run alone: the lab's children have sessions of their own)."""
    run = Run("wait")
    runs.append(run)
    run.process.send_signal(signal.SIGINT)
    # Only then close its stdin (finish): a run that reads EOF before it handles the signal
    # would end as if it had been let finish normally.
    wait_until(lambda: run.process.poll() is not None, what="the run ending on SIGINT")
    assert run.finish() != 0
    assert set(run.made["namespaces"]).isdisjoint(namespaces())
    wait_until(lambda: not any(alive(pid) for pid in run.pids), what="the run's processes gone")


def test_a_build_that_fails_halfway_removes_what_it_made(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str] = []
    enter = Netns.__enter__

    def recording(self: Netns) -> Netns:
        made.append(self.name)
        return enter(self)

    monkeypatch.setattr(Netns, "__enter__", recording)
    # The servers cannot bind port 70000: the build fails after every namespace exists.
    with pytest.raises(Exception, match="did not start"), multinode(2, 2, ports=(70000,)):
        pytest.fail("the lab was built")
    assert len(made) == 8
    assert set(made).isdisjoint(namespaces())


def test_a_sweep_removes_a_killed_runs_leftovers_and_nothing_alive(runs: list[Run]) -> None:
    killed, living = Run("wait"), Run("wait")
    runs += [killed, living]
    with Netns("own") as own:
        killed.process.send_signal(signal.SIGKILL)
        killed.process.wait(timeout=HUNG_AFTER)
        # Killed, nothing cleaned up: the namespaces and proxies are still there.
        assert set(killed.made["namespaces"]) <= namespaces()
        assert all(alive(pid) for pid in killed.made["proxies"])

        swept = sweep_stale()

        # (Another process's sweep may have been first: what counts is that they are gone.)
        assert set(killed.made["namespaces"]).isdisjoint(namespaces())
        wait_until(lambda: not any(alive(pid) for pid in killed.pids), what="leftovers gone")
        # The living run and this process keep theirs.
        assert set(living.made["namespaces"]) | {own.name} <= namespaces()
        assert all(alive(pid) for pid in living.pids)
        assert not set(living.made["namespaces"]) & set(swept)
    assert living.finish() == 0
    assert set(living.made["namespaces"]).isdisjoint(namespaces())


def test_a_namespace_without_a_claim_is_never_swept() -> None:
    """Namespaces made by other code (another branch's lab, say) have no claim."""
    name = f"waolb-t-unclaimed-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        sweep_stale()
        assert name in namespaces()
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)
