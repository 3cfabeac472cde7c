"""Turns pytest-benchmark's JSON into bench/results/summary.json and a table on stdout.

Ratios compare benchmarks of the same run only: these machines are shared and noisy, so a
figure from another run is no baseline.
"""

import json
import sys
from pathlib import Path
from typing import Any


def load(path: Path) -> dict[str, dict[str, Any]]:
    report = json.loads(path.read_text())
    return {bench["fullname"].split("::")[-1]: bench for bench in report["benchmarks"]}


def mean(benches: dict[str, dict[str, Any]], name: str) -> float | None:
    bench = benches.get(name)
    return None if bench is None else float(bench["stats"]["mean"])


def main(source: Path, target: Path) -> None:
    benches = load(source)
    figures: dict[str, Any] = {
        name: {
            "mean_s": bench["stats"]["mean"],
            "rounds": bench["stats"]["rounds"],
            **bench["extra_info"],
        }
        for name, bench in sorted(benches.items())
    }
    checks: list[tuple[str, float | None, str, bool | None]] = []

    def check(label: str, value: float | None, unit: str, ok: bool | None) -> None:
        checks.append((label, value, unit, ok))

    full_10k = mean(benches, "test_full_sync_10000")
    check(
        "full sync 10 000 x 10 < 1 s", full_10k, "s", None if full_10k is None else full_10k < 1.0
    )
    for count in (1000, 3000):
        ours = mean(benches, f"test_full_sync_{count}")
        for layout in ("kube_proxy", "waolb"):
            text = mean(benches, f"test_nft_text_{layout}_layout[{count}]")
            ratio = None if ours is None or text is None else text / ours
            wanted = layout == "kube_proxy" and count == 3000
            check(
                f"nft -f ({layout} layout) / waolb at {count} services"
                + (" >= 20" if wanted else ""),
                ratio,
                "x",
                (ratio >= 20) if wanted and ratio is not None else None,
            )
    partial = mean(benches, "test_partial_sync_one_of_10000")
    check(
        "partial sync, 1 of 10 000 < 5 ms",
        partial and partial * 1000,
        "ms",
        None if partial is None else partial < 0.005,
    )
    weights = mean(benches, "test_native_from_array")
    check(
        "weights for 100 000 endpoints < 10 ms",
        weights and weights * 1000,
        "ms",
        None if weights is None else weights < 0.010,
    )
    rss = benches.get("test_peak_rss_full_sync_10000", {}).get("extra_info", {}).get("peak_rss_mib")
    check(
        "peak RSS of the 10 000-service sync < 200 MB",
        rss,
        "MiB",
        None if rss is None else rss < 200 * 1e6 / 2**20,
    )
    initial = mean(benches, "test_initial_sync_10000")
    check(
        "initial sync of 10 000 services / 100 000 endpoints < 3 s",
        initial,
        "s",
        None if initial is None else initial < 3.0,
    )
    proxy_rss = benches.get("test_initial_sync_10000", {}).get("extra_info", {}).get("peak_rss_mib")
    check(
        "peak RSS of waolb after the initial sync < 400 MB",
        proxy_rss,
        "MiB",
        None if proxy_rss is None else proxy_rss < 400 * 1e6 / 2**20,
    )
    change = mean(benches, "test_endpoint_slice_change_10000")
    check(
        "EndpointSlice change to kernel < 50 ms",
        change and change * 1000,
        "ms",
        None if change is None else change < 0.050,
    )

    summary = {
        "machine_info": json.loads(source.read_text()).get("machine_info", {}),
        "benchmarks": figures,
        "targets": [
            {"target": label, "value": value, "unit": unit, "met": ok}
            for label, value, unit, ok in checks
        ],
    }
    target.write_text(json.dumps(summary, indent=2) + "\n")
    for label, value, unit, ok in checks:
        shown = "n/a" if value is None else f"{value:.3f} {unit}"
        verdict = {True: "met", False: "MISSED", None: ""}[ok]
        print(f"{label:<58} {shown:>14}  {verdict}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
