"""``waolb --cleanup`` in a namespace: it deletes waolb's tables, and only those, and exits 0."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from netns import Netns, netns, requires_netns

__all__ = ["netns"]  # the fixture, imported for pytest

pytestmark = requires_netns

WAOLB = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "waolb"


def test_cleanup_deletes_waolbs_tables_and_exits_0(netns: Netns) -> None:
    program = "from waolb._native import Dataplane; Dataplane().sync_full([])"
    netns.run(sys.executable, "-c", program)
    tables = netns.nft("list", "tables").stdout
    assert "table ip wao-loadbalancer" in tables
    assert "table ip6 wao-loadbalancer" in tables

    cleanup = netns.run(
        str(WAOLB), "--cleanup", "--proxy-mode=iptables", "--log-format=json", check=False
    )
    assert cleanup.returncode == 0, cleanup.stderr
    assert "wao-loadbalancer" not in netns.nft("list", "tables").stdout
    warning = next(json.loads(line) for line in cleanup.stderr.splitlines() if "proxy mode" in line)
    assert warning["event"] == "proxy mode is always nftables in waolb"
    assert warning["configured_mode"] == "iptables"
    assert warning["level"] == "warning"

    # Nothing left to delete is no error either.
    assert netns.run(str(WAOLB), "--cleanup", check=False).returncode == 0
