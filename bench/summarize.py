"""Turns pytest-benchmark's JSON into bench/results/summary.json and a table on stdout.

Ratios compare benchmarks of the same run only: these machines are shared and noisy, so a
figure from another run is no baseline.
"""

import json
import sys
from pathlib import Path
from typing import Any

MB_IN_MIB = 1e6 / 2**20

# (target, benchmark, extra_info key or None for the mean in seconds, scale, unit, limit)
TARGETS: list[tuple[str, str, str | None, float, str, float]] = [
    ("full sync 10 000 x 10 < 1 s", "test_full_sync_10000", None, 1, "s", 1.0),
    ("partial sync, 1 of 10 000 < 5 ms", "test_partial_sync_one_of_10000", None, 1e3, "ms", 5),
    ("weights for 100 000 endpoints < 10 ms", "test_native_from_array", None, 1e3, "ms", 10),
    (
        "peak RSS of the 10 000-service sync < 200 MB",
        "test_peak_rss_full_sync_10000",
        "peak_rss_mib",
        1,
        "MiB",
        200 * MB_IN_MIB,
    ),
    (
        "initial sync of 10 000 services / 100 000 endpoints < 3 s",
        "test_initial_sync_10000",
        None,
        1,
        "s",
        3.0,
    ),
    (
        "peak RSS of waolb after the initial sync < 400 MB",
        "test_initial_sync_10000",
        "peak_rss_mib",
        1,
        "MiB",
        400 * MB_IN_MIB,
    ),
    (
        "EndpointSlice change to kernel < 50 ms",
        "test_endpoint_slice_change_10000",
        None,
        1e3,
        "ms",
        50,
    ),
    (
        "real API server: initial sync 10 000 x 10 < 2 s",
        "test_real_initial_sync_10000[waolb]",
        "first_sync_s",
        1,
        "s",
        2.0,
    ),
    (
        "real API server: slice change to new connection < 50 ms",
        "test_real_endpoint_slice_change[waolb]",
        "update_to_new_pod_ms",
        1,
        "ms",
        50,
    ),
    (
        "frozen waolb: start to a healthy /healthz < 1 s",
        "test_start_to_healthz[frozen]",
        "start_to_healthy_s",
        1,
        "s",
        1.0,
    ),
    (
        "frozen waolb: size < 40 MB",
        "test_start_to_healthz[frozen]",
        "size_mib",
        1,
        "MiB",
        40 * MB_IN_MIB,
    ),
    (
        "WAO scoring of 1 000 services / 100 nodes, warm caches < 50 ms",
        "test_scoring_round_warm",
        None,
        1e3,
        "ms",
        50,
    ),
    (
        "slowest GET /healthz under 340 stalled connections < 1 s",
        "test_healthz_under_stalled_connections",
        "max_seconds",
        1,
        "s",
        1.0,
    ),
    (
        "GET /metrics, 10 000 x 10, default weight series < 1 s",
        "test_scrape_10000_services[service]",
        None,
        1,
        "s",
        1.0,
    ),
    (
        "GET /metrics size, 10 000 x 10, default weight series < 4 MiB",
        "test_scrape_10000_services[service]",
        "bytes",
        1 / 2**20,
        "MiB",
        4,
    ),
]
# (baseline benchmark, waolb benchmark, services, minimum ratio or None)
RATIOS: list[tuple[str, str, int, float | None]] = [
    ("test_nft_text_kube_proxy_layout[1000]", "test_full_sync_1000", 1000, None),
    ("test_nft_text_waolb_layout[1000]", "test_full_sync_1000", 1000, None),
    ("test_nft_text_kube_proxy_layout[3000]", "test_full_sync_3000", 3000, 20.0),
    ("test_nft_text_waolb_layout[3000]", "test_full_sync_3000", 3000, None),
]

# kube-proxy v1.34 against waolb on the real API server, same run: (label, key in extra_info).
PROXY_RATIOS: list[tuple[str, str, str]] = [
    ("initial sync 10 000 x 10", "test_real_initial_sync_10000", "first_sync_s"),
    ("slice change to new connection", "test_real_endpoint_slice_change", "update_to_new_pod_ms"),
]


def figure(bench: dict[str, Any] | None, key: str | None) -> float | None:
    if bench is None:
        return None
    value = bench["stats"]["mean"] if key is None else bench["extra_info"].get(key)
    return None if value is None else float(value)


def main(source: Path, target: Path) -> None:
    report = json.loads(source.read_text())
    benches = {bench["fullname"].split("::")[-1]: bench for bench in report["benchmarks"]}
    rows: list[tuple[str, float | None, str, bool | None]] = []
    for label, name, key, scale, unit, limit in TARGETS:
        value = figure(benches.get(name), key)
        value = None if value is None else value * scale
        rows.append((label, value, unit, None if value is None else value < limit))
    cold = benches.get("test_scoring_round_cold")
    if cold is not None:
        info = cold["extra_info"]
        label = (
            f"predictor calls, upstream ({info['upstream_predictor_calls_per_sync']:g} per sync)"
            f" / waolb cold ({info['predictor_calls']:g})"
        )
        rows.append((label, info["upstream_to_waolb_calls"], "x", None))
    for baseline, ours, count, minimum in RATIOS:
        text, native = figure(benches.get(baseline), None), figure(benches.get(ours), None)
        ratio = None if text is None or native is None else text / native
        layout = "kube-proxy" if "kube_proxy" in baseline else "waolb"
        label = f"nft -f ({layout} layout) / waolb at {count} services"
        met = None if minimum is None or ratio is None else ratio >= minimum
        rows.append((label + (f" >= {minimum:g}" if minimum else ""), ratio, "x", met))
    for label, name, key in PROXY_RATIOS:
        theirs = figure(benches.get(f"{name}[kube-proxy]"), key)
        ours = figure(benches.get(f"{name}[waolb]"), key)
        ratio = None if theirs is None or not ours else theirs / ours
        rows.append((f"kube-proxy / waolb, real API server: {label}", ratio, "x", None))

    summary = {
        "machine_info": report.get("machine_info", {}),
        "benchmarks": {
            name: {
                "mean_s": bench["stats"]["mean"],
                "rounds": bench["stats"]["rounds"],
                **bench["extra_info"],
            }
            for name, bench in sorted(benches.items())
        },
        "targets": [
            {"target": label, "value": value, "unit": unit, "met": met}
            for label, value, unit, met in rows
        ],
    }
    target.write_text(json.dumps(summary, indent=2) + "\n")
    for label, value, unit, met in rows:
        shown = "n/a" if value is None else f"{value:.3f} {unit}"
        verdict = {True: "met", False: "MISSED", None: ""}[met]
        print(f"{label:<58} {shown:>14}  {verdict}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
