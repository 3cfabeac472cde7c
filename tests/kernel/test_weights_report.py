"""``waolb weights``: the kernel's programmed weights, joined with the scorer's inputs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from netns import Netns, new_dataplane, requires_netns
from waolb._native import ProgrammedEndpoint, ServicePort
from waolb.weights_report import combine, render_table

pytestmark = requires_netns

WAOLB = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "waolb"

KERNEL_ROW = ProgrammedEndpoint(
    family=4,
    namespace="default",
    name="web",
    protocol="tcp",
    port_name="http",
    ip="10.244.0.10",
    port=8080,
    weight=100,
    total=179,
)
SCORER = {
    "nodes": [],
    "services": [
        {
            "family": 4,
            "namespace": "default",
            "name": "web",
            "port": "http",
            "protocol": "TCP",
            "cpu_per_request": 0.1,
            "fallback": False,
            "endpoints": [
                {
                    "ip": "10.244.0.10",
                    "port": 8080,
                    "node": "node-a",
                    "delta_watts": 10.0,
                    "weight": 100,
                    "share": 0.5,
                }
            ],
        }
    ],
}


def test_rows_take_the_share_from_the_kernel_and_the_node_from_the_scorer() -> None:
    [row] = combine([KERNEL_ROW], SCORER)
    assert row["node"] == "node-a"
    assert row["delta_watts"] == 10.0
    assert row["share"] == 100 / 179  # the kernel's, not the scorer's 0.5
    assert render_table([row]).splitlines() == [
        "SERVICE      PORT           ENDPOINT          NODE    DELTA_W  WEIGHT  SHARE",
        "default/web  http/TCP/ipv4  10.244.0.10:8080  node-a  10.0     100     55.9%",
    ]


def test_without_the_scorer_the_kernels_view_stands_alone() -> None:
    [row] = combine([KERNEL_ROW], None)
    assert (row["node"], row["delta_watts"], row["weight"]) == (None, None, 100)


def test_the_command_reads_the_live_table() -> None:
    with Netns() as netns:
        check_the_live_table(netns)


def check_the_live_table(netns: Netns) -> None:
    dataplane = new_dataplane(netns)
    dataplane.sync_full(
        [
            ServicePort(
                "default", "web", "http", "TCP", 4, "10.96.0.10", 80,
                ["10.244.0.10", "10.244.0.11"], [8080, 8080], [3, 1],
            ),
            ServicePort(
                "default", "web", "http", "TCP", 6, "fd00:96::10", 80,
                ["fd00:244::10"], [8080], [1],
            ),
        ]
    )  # fmt: skip
    command = ["ip", "netns", "exec", netns.name, str(WAOLB), "weights"]
    # Port 9 (discard) on loopback: no proxy answers, so only the kernel's view is shown.
    result = subprocess.run(
        [*command, "--weights-address=127.0.0.1:9"], capture_output=True, text=True, check=True
    )
    assert "showing the kernel's view only" in result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split() == [
        "default/web",
        "http/TCP/ipv4",
        "10.244.0.10:8080",
        "-",
        "-",
        "3",
        "75.0%",
    ]
    assert lines[2].split() == [
        "default/web",
        "http/TCP/ipv4",
        "10.244.0.11:8080",
        "-",
        "-",
        "1",
        "25.0%",
    ]
    assert lines[3].split() == [
        "default/web",
        "http/TCP/ipv6",
        "[fd00:244::10]:8080",
        "-",
        "-",
        "1",
        "100.0%",
    ]

    as_json = subprocess.run(
        [*command, "--json", "--weights-address=127.0.0.1:9"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    endpoints = json.loads(as_json.stdout)["endpoints"]
    assert [(e["endpoint"], e["weight"], e["share"]) for e in endpoints] == [
        ("10.244.0.10:8080", 3, 0.75),
        ("10.244.0.11:8080", 1, 0.25),
        ("[fd00:244::10]:8080", 1, 1.0),
    ]


def test_an_empty_node_says_so() -> None:
    with Netns() as netns:
        result = subprocess.run(
            ["ip", "netns", "exec", netns.name, str(WAOLB), "weights",
             "--weights-address=127.0.0.1:9"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    assert result.stdout.strip() == "no service endpoints are programmed"
