"""Programming the kernel: waolb's netlink batches against `nft -f` text, in one run.

Every benchmark works in a network namespace of its own. The `nft -f` baselines load the
same services twice: in kube-proxy's nftables layout (what kube-proxy does) and as the text
`nft list table` prints for waolb's own layout (same ruleset, text path).
"""

import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from netns import Netns, entered
from waolb._native import Dataplane, ServicePort, SyncResult

ENDPOINTS_PER_SERVICE = 10


def endpoint_ip(index: int) -> str:
    return f"10.{64 + index // 65536}.{(index // 256) % 256}.{index % 256}"


def cluster_ip(index: int) -> str:
    return f"10.{96 + index // 65536}.{(index // 256) % 256}.{index % 256}"


def make_services(count: int, weight_offset: int = 0) -> list[ServicePort]:
    per = ENDPOINTS_PER_SERVICE
    return [
        ServicePort(
            "bench",
            f"svc-{i}",
            "http",
            "tcp",
            4,
            cluster_ip(i),
            80,
            [endpoint_ip(i * per + j) for j in range(per)],
            [8080] * per,
            [weight_offset + 1 + j for j in range(per)],
        )
        for i in range(count)
    ]


def kube_proxy_layout(count: int) -> str:
    """kube-proxy's nftables layout: a chain per service with an anonymous numgen vmap and a
    chain per endpoint (masquerade check + dnat), reached through a service-ips map."""
    per = ENDPOINTS_PER_SERVICE
    lines = [
        "table ip kube-proxy {",
        "  map service-ips { type ipv4_addr . inet_proto . inet_service : verdict; }",
        "  chain mark-for-masquerade { meta mark set meta mark | 0x4000; }",
        "  chain services { ip daddr . meta l4proto . th dport vmap @service-ips; }",
        "  chain nat-prerouting { type nat hook prerouting priority dstnat; jump services; }",
    ]
    elements = []
    for i in range(count):
        service = f"service-{i:08X}-bench/svc-{i}/tcp/http"
        vmap = []
        for j in range(per):
            ip = endpoint_ip(i * per + j)
            endpoint = f"endpoint-{i:08X}{j:02X}-bench/svc-{i}/tcp/http__{ip}/8080"
            lines.append(
                f"  chain {endpoint} {{ ip saddr {ip} jump mark-for-masquerade; "
                f"meta l4proto tcp dnat to {ip}:8080; }}"
            )
            vmap.append(f"{j} : goto {endpoint}")
        lines.append(
            f"  chain {service} {{ numgen random mod {per} vmap {{ {', '.join(vmap)} }}; }}"
        )
        elements.append(f"{cluster_ip(i)} . tcp . 80 : goto {service}")
    lines.append("}")
    lines.append(f"add element ip kube-proxy service-ips {{ {', '.join(elements)} }}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def namespace() -> Iterator[Netns]:
    with Netns() as ns:
        yield ns


def full_sync(benchmark: BenchmarkFixture, namespace: Netns, count: int, rounds: int) -> None:
    services = make_services(count)
    with entered(namespace):
        dataplane = Dataplane()
        stats = benchmark.pedantic(
            dataplane.sync_full, args=(services,), rounds=rounds, iterations=1
        )
    # The main table and the shard tables the service chains are spread over.
    tables = namespace.nft("list", "tables", "ip").stdout.count("table ")
    benchmark.extra_info.update(messages=stats.messages, batch_bytes=stats.bytes, tables=tables)
    assert stats.services == count


@pytest.mark.benchmark(group="full sync, 1 000 services x 10 endpoints")
def test_full_sync_1000(benchmark: BenchmarkFixture, namespace: Netns) -> None:
    full_sync(benchmark, namespace, 1000, rounds=10)


@pytest.mark.benchmark(group="full sync, 3 000 services x 10 endpoints")
def test_full_sync_3000(benchmark: BenchmarkFixture, namespace: Netns) -> None:
    full_sync(benchmark, namespace, 3000, rounds=5)


@pytest.mark.benchmark(group="full sync, 10 000 services x 10 endpoints")
def test_full_sync_10000(benchmark: BenchmarkFixture, namespace: Netns) -> None:
    full_sync(benchmark, namespace, 10_000, rounds=3)


@pytest.mark.benchmark(group="partial sync, 1 service changed of 10 000")
def test_partial_sync_one_of_10000(benchmark: BenchmarkFixture, namespace: Netns) -> None:
    services = make_services(10_000)
    # Two versions of one service, alternated so every round really changes it.
    versions = [make_services(5001, offset)[5000] for offset in (10, 20)]
    rounds = iter(range(1_000_000))

    def change_one() -> SyncResult:
        return dataplane.sync_services([("bench", "svc-5000")], [versions[next(rounds) % 2]])

    with entered(namespace):
        dataplane = Dataplane()
        dataplane.sync_full(services)
        stats = benchmark.pedantic(change_one, rounds=30, iterations=1)
    assert stats.messages == 1 + ENDPOINTS_PER_SERVICE  # flush + one rule per endpoint


@pytest.mark.benchmark(group="read back 100 000 endpoint rules (waolb weights)")
def test_read_endpoints_10000(benchmark: BenchmarkFixture, namespace: Netns) -> None:
    with entered(namespace):
        dataplane = Dataplane()
        dataplane.sync_full(make_services(10_000))
        endpoints = benchmark.pedantic(dataplane.read_endpoints, rounds=3, iterations=1)
    assert len(endpoints) == 10_000 * ENDPOINTS_PER_SERVICE


def nft_load(benchmark: BenchmarkFixture, namespace: Netns, text: str, tmp_path: Path) -> None:
    ruleset = tmp_path / "ruleset.nft"
    ruleset.write_text(text)

    def load() -> None:
        # A fresh table each round, as at a proxy's first sync.
        subprocess.run(
            ["ip", "netns", "exec", namespace.name, "nft", "flush", "ruleset"], check=True
        )
        subprocess.run(
            ["ip", "netns", "exec", namespace.name, "nft", "-f", str(ruleset)], check=True
        )

    benchmark.pedantic(load, rounds=1, iterations=1)


@pytest.mark.parametrize("count", [1000, 3000])
def test_nft_text_kube_proxy_layout(
    benchmark: BenchmarkFixture, namespace: Netns, count: int, tmp_path: Path
) -> None:
    benchmark.group = f"full sync, {count:,} services x 10 endpoints".replace(",", " ")
    nft_load(benchmark, namespace, kube_proxy_layout(count), tmp_path)


@pytest.mark.parametrize("count", [1000, 3000])
def test_nft_text_waolb_layout(
    benchmark: BenchmarkFixture, namespace: Netns, count: int, tmp_path: Path
) -> None:
    benchmark.group = f"full sync, {count:,} services x 10 endpoints".replace(",", " ")
    with entered(namespace):
        Dataplane().sync_full(make_services(count))
    listing = subprocess.run(
        ["ip", "netns", "exec", namespace.name, "nft", "list", "table", "ip", "wao-loadbalancer"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    # nft's parser wants a protocol match before `dnat to addr:port`; the kernel does not,
    # so waolb's rules omit it and the text gets it back here.
    text = re.sub(r"(\s)dnat to ", r"\1meta l4proto tcp dnat to ", listing)
    nft_load(benchmark, namespace, text, tmp_path)


# VmHWM, not ru_maxrss: ru_maxrss survives exec, so a child forked from a large pytest
# process would report the parent's size; VmHWM belongs to the new address space.
PEAK_RSS_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path[:0] = {paths!r}
    from test_bench_dataplane import make_services
    from waolb._native import Dataplane
    Dataplane().sync_full(make_services(10_000))
    status = open("/proc/self/status").read()
    print(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    """
)


@pytest.mark.benchmark(group="peak RSS, full sync of 10 000 services x 10 endpoints")
def test_peak_rss_full_sync_10000(benchmark: BenchmarkFixture, namespace: Netns) -> None:
    """A child process does one full sync; its peak RSS includes Python and the batch."""
    paths = [str(Path(__file__).parent), str(Path(__file__).parent.parent / "tests" / "support")]
    script = PEAK_RSS_SCRIPT.format(paths=paths)
    command = ["ip", "netns", "exec", namespace.name, sys.executable, "-c", script]
    result = benchmark.pedantic(
        subprocess.run,
        args=(command,),
        kwargs={"check": True, "capture_output": True, "text": True},
        rounds=1,
        iterations=1,
    )
    peak_mib = int(result.stdout.strip()) / 1024
    benchmark.extra_info["peak_rss_mib"] = round(peak_mib, 1)
