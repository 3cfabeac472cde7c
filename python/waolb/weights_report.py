"""``waolb weights``: what each endpoint's traffic share is, and why.

The shares come from the live kernel table (the rule comments the dataplane writes, read back
over netlink), so they show what is programmed, not what waolb meant to program. The node,
the predicted delta and the score's inputs come from the running proxy's scorer, from its
weights listener (``/waolb/weights`` on ``weightsBindAddress``: 127.0.0.1:10263 by default, so
the command runs on the node, e.g. by ``kubectl exec`` in the node's waolb pod); when it
cannot be reached the kernel's view is shown alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from waolb.config import DEFAULT_WEIGHTS_ADDRESS, TABLE_NAME

if TYPE_CHECKING:
    from waolb.dataplane import ProgrammedEndpoint

# The scorer's last inputs and results as JSON, served where ``weightsBindAddress`` says.
WEIGHTS_PATH: Final = "/waolb/weights"
_COLUMNS: Final = ("SERVICE", "PORT", "ENDPOINT", "NODE", "DELTA_W", "WEIGHT", "SHARE")
Row = dict[str, Any]
# (family, namespace, name, port name, protocol, endpoint ip, endpoint port)
_EndpointKey = tuple[int, str, str, str, str, str, int]


def fetch_scorer_view(address: str, timeout: float = 3.0) -> dict[str, Any]:
    """The proxy's ``/waolb/weights`` document; OSError when it cannot be had."""
    url = f"http://{address}{WEIGHTS_PATH}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            document = json.load(response)
    except (urllib.error.URLError, ValueError) as error:
        raise OSError(f"cannot read {url}: {error}") from None
    if not isinstance(document, dict):
        raise OSError(f"{url} did not answer a JSON object")
    return document


def combine(kernel: Sequence[ProgrammedEndpoint], scorer: Mapping[str, Any] | None) -> list[Row]:
    """One row per programmed endpoint: the kernel's weight and share, the scorer's why."""
    known: dict[_EndpointKey, Mapping[str, Any]] = {}
    for service in (scorer or {}).get("services", []):
        for endpoint in service.get("endpoints", []):
            key = (
                service["family"],
                service["namespace"],
                service["name"],
                service["port"],
                service["protocol"],
                endpoint["ip"],
                endpoint["port"],
            )
            known[key] = {**endpoint, "cpu_per_request": service.get("cpu_per_request")}
    rows = []
    for entry in kernel:
        protocol = entry.protocol.upper()
        key = (
            entry.family,
            entry.namespace,
            entry.name,
            entry.port_name,
            protocol,
            entry.ip,
            entry.port,
        )
        scored = known.get(key, {})
        rows.append(
            {
                "family": entry.family,
                "namespace": entry.namespace,
                "service": entry.name,
                "port": entry.port_name,
                "protocol": protocol,
                "endpoint": _endpoint(entry.ip, entry.port),
                "node": scored.get("node"),
                "delta_watts": scored.get("delta_watts"),
                "cpu_per_request": scored.get("cpu_per_request"),
                "weight": entry.weight,
                "share": entry.weight / entry.total if entry.total else 0.0,
            }
        )
    rows.sort(key=lambda r: (r["namespace"], r["service"], r["port"], r["family"], r["endpoint"]))
    return rows


def render_table(rows: Sequence[Row]) -> str:
    lines = [_COLUMNS]
    for row in rows:
        delta = row["delta_watts"]
        lines.append(
            (
                f"{row['namespace']}/{row['service']}",
                f"{row['port'] or '-'}/{row['protocol']}/ipv{row['family']}",
                row["endpoint"],
                row["node"] or "-",
                "-" if delta is None else f"{delta:.1f}",
                str(row["weight"]),
                f"{100 * row['share']:.1f}%",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="waolb weights",
        description="Show each endpoint's programmed weight and traffic share, and its "
        "node's predicted power delta.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--table", default=TABLE_NAME, help="waolb's nftables table name")
    parser.add_argument(
        "--weights-address",
        default=DEFAULT_WEIGHTS_ADDRESS,
        help="ip:port where the proxy serves its weights (its weightsBindAddress)",
    )
    arguments = parser.parse_args(argv)

    from waolb.dataplane import NftablesDataplane  # noqa: PLC0415 - the CLI must start fast

    try:
        kernel = NftablesDataplane.open(arguments.table).read_endpoints()
    except OSError as error:
        print(f"waolb weights: cannot read the nftables table: {error}", file=sys.stderr)
        return 1
    scorer: dict[str, Any] | None
    try:
        scorer = fetch_scorer_view(arguments.weights_address)
    except OSError as error:
        print(f"waolb weights: {error}; showing the kernel's view only", file=sys.stderr)
        scorer = None
    rows = combine(kernel, scorer)
    if arguments.json:
        print(json.dumps({"endpoints": rows, "nodes": (scorer or {}).get("nodes", [])}, indent=2))
    else:
        print(render_table(rows) if rows else "no service endpoints are programmed")
    return 0
