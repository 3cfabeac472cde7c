"""The control plane end to end: the real ``waolb`` process against the test API server.

The cluster is the dataplane benchmarks' at its largest: 10 000 ClusterIP Services with one TCP
port and 10 000 EndpointSlices of 10 ready endpoints (100 000 endpoints), spread over 20
namespaces. As in tests/e2e/test_e2e_proxy.py, each run has a fresh "node" namespace, the API
server's listening socket is created inside it and ``waolb`` runs there with kube-proxy's flags.

* ``test_initial_sync_10000``: from starting the process until the kernel holds the ruleset.
  waolb's first sync creates its table in the same transaction as everything in it, so the
  table showing up in a netlink dump of the tables (20 us; ``nft list tables`` fetches the whole
  ruleset and takes seconds at this size) marks the end; the 10 000 elements of the
  service-ips map are counted once afterwards. extra_info splits the time with waolb's log
  timestamps and metrics (interpreter start, list+decode, sync, kernel commit, bookkeeping)
  and records the process's peak RSS.
* ``test_endpoint_slice_change_10000``: with that cluster programmed and a minimum sync period
  of 0, each round replaces one endpoint address of one slice through the API server and ends
  when a netlink dump of the Service's chain (polled in a tight loop) holds the new address.
  Cross-checks: the kernel's own nf_tables notifications (multicast once the transaction is
  live: no polling granularity) and waolb's network programming latency metric (the slice
  carries endpoints.kubernetes.io/last-change-trigger-time); the dataplane's commit of the same
  change is timed too, in a namespace of its own, after waolb has stopped.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import socket
import statistics
import struct
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from kubeapi import ENDPOINT_SLICES, KubeApiServer
from kubeapi import server as kubeapi_server
from netns import Netns, entered, requires_netns, stop_process, wait_until
from test_bench_dataplane import ENDPOINTS_PER_SERVICE, cluster_ip, endpoint_ip
from waolb._native import Dataplane, ServicePort

pytestmark = requires_netns

WAOLB = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "waolb"
SERVICES = 10_000
NAMESPACES = 20
NODE = "node-a"
TABLE = "wao-loadbalancer"
TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"
# How often the initial sync benchmark looks for the table, and the change benchmark's pause
# between two dumps of the changed chain (a dump itself takes about 0.1 ms).
TABLE_POLL_INTERVAL = 0.005
CHAIN_POLL_PAUSE = 0.0005
INITIAL_SYNC_ROUNDS = 3
CHANGE_ROUNDS = 10
CHANGE_WARMUP_ROUNDS = 2
CHANGED = 5000  # the Service whose slice changes
NEW_ADDRESSES = ("10.250.77.1", "10.250.77.2")  # alternated, so every round changes the rules
START_TIMEOUT = 60.0

# ---- the cluster ---------------------------------------------------------------------------


def namespace_of(index: int) -> str:
    return f"ns-{index % NAMESPACES}"


def service_object(index: int) -> dict[str, Any]:
    name = f"svc-{index}"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace_of(index), "labels": {"app": name}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip(index),
            "clusterIPs": [cluster_ip(index)],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster",
            "sessionAffinity": "None",
            "selector": {"app": name},
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}],
        },
    }


def slice_name(index: int) -> str:
    return f"svc-{index}-{index * 7919 % 1_048_576:05x}"


def slice_object(
    index: int, addresses: list[str] | None = None, trigger_time: str | None = None
) -> dict[str, Any]:
    """A slice as the EndpointSlice controller writes it: 10 ready endpoints on other nodes."""
    namespace, service = namespace_of(index), f"svc-{index}"
    first = index * ENDPOINTS_PER_SERVICE
    addresses = addresses or [endpoint_ip(first + j) for j in range(ENDPOINTS_PER_SERVICE)]
    metadata: dict[str, Any] = {
        "name": slice_name(index),
        "generateName": f"{service}-",
        "namespace": namespace,
        "labels": {
            "kubernetes.io/service-name": service,
            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
        },
    }
    if trigger_time is not None:
        metadata["annotations"] = {TRIGGER_TIME_ANNOTATION: trigger_time}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": metadata,
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": [address],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": f"node-{(index + j) % 100}",
                "zone": f"zone-{j % 3}",
                "targetRef": {
                    "kind": "Pod",
                    "namespace": namespace,
                    "name": f"{service}-pod-{j}",
                    "uid": f"00000000-0000-4000-8000-{first + j:012d}",
                },
            }
            for j, address in enumerate(addresses)
        ],
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
    }


def populated_api() -> tuple[KubeApiServer, float]:
    """A test API server (not started) holding the cluster, and how long filling it took."""
    api = KubeApiServer()
    started = time.perf_counter()
    for index in range(SERVICES):
        api.create(service_object(index))
        api.create(slice_object(index))
    return api, time.perf_counter() - started


@dataclass
class ListRequest:
    """One LIST the server answered: monotonic start and end of the request (reading it,
    building the answer, encoding and writing it) and the seconds spent building the answer."""

    resource: str
    started: float
    ended: float
    building: float


def record_lists(api: KubeApiServer) -> list[ListRequest]:
    """Record the LIST requests ``api`` serves from now on (watches are left alone).

    Wraps the server's request entry point and list builder on this instance only.
    """
    served: list[ListRequest] = []
    handle, build_list = api._handle, api._list
    building = threading.local()

    def timed_list(target: Any, query: dict[str, str]) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            return build_list(target, query)
        finally:
            building.seconds = time.perf_counter() - started

    def timed_handle(handler: Any, method: str) -> None:
        if "watch=" in handler.path:
            handle(handler, method)
            return
        building.seconds = 0.0
        started = time.monotonic()
        try:
            handle(handler, method)
        finally:
            resource = handler.path.partition("?")[0].rsplit("/", 1)[-1]
            served.append(ListRequest(resource, started, time.monotonic(), building.seconds))

    api._handle = timed_handle  # type: ignore[method-assign]
    api._list = timed_list  # type: ignore[method-assign]
    return served


@contextlib.contextmanager
def node_namespace(api: KubeApiServer) -> Iterator[Netns]:
    """A fresh node namespace with ``api`` listening inside it (moved there if it ran elsewhere:
    objects and resourceVersion stay, as after an API server restart)."""
    with Netns("node") as node:
        api.stop()
        with entered(node):
            api.start()
        try:
            yield node
        finally:
            api.stop()


def free_ports(node: Netns, count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        sockets = []
        with entered(node):
            for _ in range(count):
                sockets.append(stack.enter_context(socket.socket()))
                sockets[-1].bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


# ---- nf_tables over raw netlink --------------------------------------------------------------

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETTABLE = 1
NFT_MSG_NEWRULE = 6
NFT_MSG_GETRULE = 7
NFTA_RULE_TABLE = 1
NFTA_RULE_CHAIN = 2
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
NFPROTO_IPV4 = 2
_NLMSG_HEADER = struct.Struct("=IHHII")


def _attribute(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each netlink message in a datagram."""
    offset = 0
    while offset + _NLMSG_HEADER.size <= len(data):
        length, kind, _, _, _ = _NLMSG_HEADER.unpack_from(data, offset)
        if length < _NLMSG_HEADER.size:
            return
        yield kind, data[offset + _NLMSG_HEADER.size : offset + length]
        offset += (length + 3) & ~3


class NftNetlink:
    """A NETLINK_NETFILTER socket in the namespace where it is created: dumps of tables and of
    one chain's rules, or (``monitor``) the notifications nf_tables multicasts on commit."""

    def __init__(self, *, monitor: bool = False) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, 0))
        if monitor:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def dump(self, message: int, attributes: bytes = b"") -> list[bytes]:
        """The payloads of a dump request's answer; OSError if the kernel refuses it."""
        self._seq += 1
        body = struct.pack("=BBH", NFPROTO_IPV4, 0, 0) + attributes
        message_type = (NFNL_SUBSYS_NFTABLES << 8) | message
        header = _NLMSG_HEADER.pack(
            _NLMSG_HEADER.size + len(body), message_type, NLM_F_REQUEST | NLM_F_DUMP, self._seq, 0
        )
        self.sock.send(header + body)
        payloads = []
        while True:
            for kind, payload in _messages(self.sock.recv(1 << 20)):
                if kind == NLMSG_DONE:
                    return payloads
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", payload)
                    if code:
                        raise OSError(-code, f"nf_tables dump: {errno.errorcode.get(-code)}")
                    continue
                payloads.append(payload)

    def has_table(self, table: str) -> bool:
        name = table.encode() + b"\0"
        return any(name in payload for payload in self.dump(NFT_MSG_GETTABLE))

    def chain_rules(self, table: str, chain: str) -> bytes:
        """The raw rule messages of one chain (empty if it does not exist)."""
        attributes = _attribute(NFTA_RULE_TABLE, table.encode() + b"\0") + _attribute(
            NFTA_RULE_CHAIN, chain.encode() + b"\0"
        )
        try:
            return b"".join(self.dump(NFT_MSG_GETRULE, attributes))
        except FileNotFoundError:
            return b""


class RuleMonitor:
    """Notes when the kernel announces new rules in one chain of the node namespace.

    nf_tables multicasts a notification for each object of a transaction once the transaction
    is live; a thread blocked on the socket stamps each as it arrives. Open it only after the
    initial sync: a listener makes the kernel build 110 000 notifications for a full sync.
    """

    def __init__(self, node: Netns, chain: str) -> None:
        with entered(node):
            self._netlink = NftNetlink(monitor=True)
        self._netlink.sock.settimeout(0.1)
        self._chain = chain.encode() + b"\0"
        self._lock = threading.Lock()
        self._seen: list[tuple[float, bytes]] = []
        self.overflowed = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nft-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        new_rule = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE
        while not self._stopping.is_set():
            try:
                data = self._netlink.sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError as error:
                if error.errno == errno.ENOBUFS:  # notifications were lost; say so
                    self.overflowed = True
                    continue
                return  # closed
            arrived = time.monotonic()
            with self._lock:
                self._seen.extend(
                    (arrived, payload)
                    for message_type, payload in _messages(data)
                    if message_type == new_rule and self._chain in payload
                )

    def first(self, needle: bytes, after: float) -> float | None:
        """When a new rule of the chain holding ``needle`` was first announced after ``after``."""
        with self._lock:
            return next((t for t, payload in self._seen if t > after and needle in payload), None)

    def close(self) -> None:
        self._stopping.set()
        self._thread.join()
        self._netlink.close()


# ---- the waolb process ---------------------------------------------------------------------


@dataclass
class Proxy:
    """A running ``waolb`` in the node namespace, its JSON log, and when it was started."""

    node: Netns
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int
    started: float  # time.monotonic() just before the start
    started_wall: float  # time.time() at the same moment

    def log_entries(self, event: str) -> list[dict[str, Any]]:
        """The log entries of one event (the file is read whole: it stays small)."""
        quoted = json.dumps(event)
        return [
            json.loads(line)
            for line in self.log_path.read_text().splitlines()
            if quoted in line and line.startswith("{")
        ]

    def log_time(self, event: str, **fields: Any) -> float | None:
        """Seconds from the start to the first entry of ``event`` with ``fields``, if any."""
        for entry in self.log_entries(event):
            if all(entry.get(key) == value for key, value in fields.items()):
                stamp = datetime.fromisoformat(entry["timestamp"]).timestamp()
                return stamp - self.started_wall
        return None

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            tail = self.log_path.read_text()[-3000:]
            raise RuntimeError(f"waolb exited with status {code}; log tail:\n{tail}")

    def scrape(self) -> tuple[dict[str, float], float, int]:
        """The unlabelled metric series, how long the scrape took and its size in bytes."""
        started = time.perf_counter()
        with (
            entered(self.node),
            urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=30
            ) as r,
        ):
            body = r.read()
        seconds = time.perf_counter() - started
        values = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                if "{" not in name:
                    values[name] = float(value)
        return values, seconds, len(body)

    def cpu_seconds(self) -> float:
        """User plus system CPU time the process has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mib(self) -> float:
        """VmHWM: the process's peak resident set so far."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc/<pid>/status")


def start_proxy(
    node: Netns,
    server_flags: list[str],
    log_path: Path,
    ports: list[int],
    *flags: str,
    executable: Path = WAOLB,
) -> Proxy:
    """waolb in ``node``, reaching the API server as ``server_flags`` say (--master or
    --kubeconfig)."""
    metrics_port, healthz_port = ports
    started, started_wall = time.monotonic(), time.time()
    with log_path.open("wb") as log_file:
        # `ip netns exec` execs waolb: the child's pid is waolb's.
        process = subprocess.Popen(
            [
                "ip", "netns", "exec", node.name, str(executable),
                *server_flags,
                f"--hostname-override={NODE}",
                f"--metrics-bind-address=127.0.0.1:{metrics_port}",
                f"--healthz-bind-address=127.0.0.1:{healthz_port}",
                "--log-format=json",
                "--v=2",
                *flags,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    return Proxy(node, process, log_path, metrics_port, started, started_wall)


def wait_for_table(proxy: Proxy, netlink: NftNetlink) -> float:
    """Poll until waolb's table exists (its first sync committed); the monotonic time then."""
    deadline = time.monotonic() + START_TIMEOUT
    while not netlink.has_table(TABLE):
        proxy.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"no table {TABLE} within {START_TIMEOUT} s")
        time.sleep(TABLE_POLL_INTERVAL)
    return time.monotonic()


def wait_for_syncs(proxy: Proxy, count: int) -> None:
    """Wait until waolb has logged ``count`` successful syncs ("rules synced", debug level)."""

    def synced() -> bool:
        proxy.check_alive()
        return len(proxy.log_entries("rules synced")) >= count

    wait_until(synced, timeout=START_TIMEOUT, interval=0.005, what=f"{count} syncs logged")


def waolb_tables(poller: NftNetlink) -> list[str]:
    """The main table and its shard tables (the dataplane spreads service chains over them),
    from a netlink dump: `nft list tables` fetches the whole ruleset and takes minutes at this
    size on a busy machine."""
    shards = [f"{TABLE}-shard-{n}" for n in range(1, 64)]
    return [name for name in [TABLE, *shards] if poller.has_table(name)]


def programmed_services(node: Netns) -> int:
    """How many service ports have endpoint rules, read back over netlink."""
    with entered(node):
        endpoints = Dataplane().read_endpoints()
    return len({(e.family, e.namespace, e.name, e.port_name) for e in endpoints})


def mean_of(rounds: list[dict[str, float]], key: str) -> float:
    return round(statistics.fmean(r[key] for r in rounds), 4)


# ---- initial sync --------------------------------------------------------------------------


@pytest.mark.benchmark(group="control plane: initial sync, 10 000 services / 100 000 endpoints")
def test_initial_sync_10000(benchmark: BenchmarkFixture, tmp_path: Path) -> None:
    """Process start to the ruleset in the kernel; the first sync is full and immediate."""
    api, populate_seconds = populated_api()
    served = record_lists(api)
    rounds: list[dict[str, float]] = []
    round_number = itertools.count()

    with contextlib.ExitStack() as cleanup:
        current: dict[str, Any] = {}

        def setup() -> None:
            stack = contextlib.ExitStack()
            cleanup.callback(stack.close)
            node = stack.enter_context(node_namespace(api))
            with entered(node):
                netlink = NftNetlink()
            stack.callback(netlink.close)
            served.clear()
            current.update(
                stack=stack,
                node=node,
                netlink=netlink,
                ports=free_ports(node, 2),
                log_path=tmp_path / f"waolb-{next(round_number)}.log",
            )

        def start_and_wait() -> None:
            proxy = start_proxy(
                current["node"], [f"--master={api.url}"], current["log_path"], current["ports"]
            )
            current["stack"].callback(stop_process, proxy.process, 10.0)
            current["proxy"] = proxy
            current["kernel_at"] = wait_for_table(proxy, current["netlink"])

        def teardown() -> None:
            rounds.append(initial_sync_figures(current["proxy"], current["kernel_at"], served))
            current["stack"].close()

        benchmark.pedantic(
            start_and_wait, setup=setup, teardown=teardown, rounds=INITIAL_SYNC_ROUNDS
        )
        if benchmark.disabled:  # one run without teardown: nothing to report
            return

    benchmark.extra_info.update(
        {key: mean_of(rounds, key) for key in rounds[0]},
        peak_rss_mib=max(r["peak_rss_mib"] for r in rounds),
        populate_api_server_s=round(populate_seconds, 3),
        table_poll_interval_s=TABLE_POLL_INTERVAL,
    )


def initial_sync_figures(
    proxy: Proxy, kernel_at: float, served: list[ListRequest]
) -> dict[str, float]:
    """Where the time went, in seconds from the process start, and memory, in MiB."""
    wait_for_syncs(proxy, 1)
    cpu_synced = proxy.cpu_seconds()
    rss_synced = proxy.peak_rss_mib()
    metrics, scrape_seconds, scrape_bytes = proxy.scrape()
    elements = programmed_services(proxy.node)
    rss = proxy.peak_rss_mib()  # just before stopping: one /metrics scrape included
    assert elements == SERVICES, f"{elements} service ports programmed, expected {SERVICES}"
    assert metrics["kubeproxy_sync_full_proxy_rules_duration_seconds_count"] == 1
    assert metrics["kubeproxy_sync_proxy_rules_nftables_sync_failures_total"] == 0

    main = proxy.log_time("starting waolb")
    services_listed = proxy.log_time("synced", kind="Service")
    slices_listed = proxy.log_time("synced", kind="EndpointSlice")
    assert main is not None and services_listed is not None and slices_listed is not None
    full_sync = metrics["kubeproxy_sync_full_proxy_rules_duration_seconds_sum"]
    sync_end = metrics["kubeproxy_sync_proxy_rules_last_timestamp_seconds"] - proxy.started_wall
    sync_start = sync_end - full_sync
    kernel = kernel_at - proxy.started
    return {
        "interpreter_and_imports_s": main,
        "services_listed_s": services_listed,
        "slices_listed_s": slices_listed,
        # Both reflectors list at once; the slices' list (10 000 x 10 endpoints) ends last.
        "list_decode_and_state_s": max(services_listed, slices_listed) - main,
        **served_figures(proxy, served, "services"),
        **served_figures(proxy, served, "endpointslices"),
        "lists_to_sync_start_s": sync_start - max(services_listed, slices_listed),
        "sync_start_s": sync_start,
        "full_sync_s": full_sync,
        # Inside the sync: state -> ServicePorts -> netlink batch -> kernel commit ...
        "sync_start_to_kernel_s": kernel - sync_start,
        "kernel_programmed_s": kernel,
        # ... then the bookkeeping after the commit (weight gauges for 100 000 endpoints).
        "kernel_to_sync_end_s": sync_end - kernel,
        "sync_end_s": sync_end,
        "batch_messages": metrics["waolb_sync_batch_messages_sum"],
        "metrics_scrape_s": scrape_seconds,
        "metrics_scrape_mib": scrape_bytes / 2**20,
        "cpu_after_sync_s": cpu_synced,
        "peak_rss_after_sync_mib": rss_synced,
        "peak_rss_mib": rss,
    }


def served_figures(proxy: Proxy, served: list[ListRequest], resource: str) -> dict[str, float]:
    """When the server answered a resource's LIST pages (seconds from the process start), the
    seconds it spent on them in all and building the answers alone, and how many there were."""
    requests = [r for r in served if r.resource == resource]
    assert requests, f"no LIST of {resource} served"
    return {
        f"server_{resource}_first_list_s": requests[0].started - proxy.started,
        f"server_{resource}_last_list_s": requests[-1].ended - proxy.started,
        f"server_{resource}_handling_s": sum(r.ended - r.started for r in requests),
        f"server_{resource}_building_s": sum(r.building for r in requests),
        f"server_{resource}_pages": float(len(requests)),
    }


# ---- one EndpointSlice change --------------------------------------------------------------


@dataclass
class Change:
    """One round: the monotonic moments of the update, of the API server sending the event,
    of the kernel's notification and of the poll that saw the rule; the poll count."""

    address: str
    started: float
    updated: float
    polled: float
    polls: int
    sent: float | None = None
    announced: float | None = None


def changed_slice(address: str) -> dict[str, Any]:
    addresses = [endpoint_ip(CHANGED * ENDPOINTS_PER_SERVICE + j) for j in range(1, 10)]
    now = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return slice_object(CHANGED, [address, *addresses], trigger_time=now)


def service_port(index: int, addresses: list[str] | None = None) -> ServicePort:
    """A Service of the cluster as waolb hands it to the dataplane (equal weights, sorted IPs)."""
    first = index * ENDPOINTS_PER_SERVICE
    addresses = addresses or [endpoint_ip(first + j) for j in range(ENDPOINTS_PER_SERVICE)]
    return ServicePort(
        namespace_of(index),
        f"svc-{index}",
        "http",
        "tcp",
        4,
        cluster_ip(index),
        80,
        addresses,
        [8080] * ENDPOINTS_PER_SERVICE,
        [1] * ENDPOINTS_PER_SERVICE,
    )


@pytest.mark.benchmark(group="control plane: EndpointSlice change to kernel, 10 000 services")
def test_endpoint_slice_change_10000(
    benchmark: BenchmarkFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Update one slice (one address replaced) to the new rule in the kernel, minSyncPeriod 0."""
    api, _ = populated_api()
    name = slice_name(CHANGED)
    sent: list[float] = []
    send_event = kubeapi_server._send_event

    def recording_send_event(handler: Any, event_type: str, obj: Any, size: int | None) -> None:
        send_event(handler, event_type, obj, size)
        if event_type == "MODIFIED" and obj["metadata"]["name"] == name:
            sent.append(time.monotonic())

    monkeypatch.setattr(kubeapi_server, "_send_event", recording_send_event)
    chain = f"service-{namespace_of(CHANGED)}/svc-{CHANGED}/tcp/http"
    changes: list[Change] = []
    addresses = itertools.cycle(NEW_ADDRESSES)

    with contextlib.ExitStack() as cleanup:
        node = cleanup.enter_context(node_namespace(api))
        with entered(node):
            poller = NftNetlink()
        cleanup.callback(poller.close)
        proxy = start_proxy(
            node,
            [f"--master={api.url}"],
            tmp_path / "waolb.log",
            free_ports(node, 2),
            "--iptables-min-sync-period=0s",
            # No periodic full resync in the middle of the rounds.
            "--iptables-sync-period=1h",
        )
        cleanup.callback(stop_process, proxy.process, 10.0)
        wait_for_table(proxy, poller)
        wait_for_syncs(proxy, 1)
        assert api.wait_for_watches(ENDPOINT_SLICES, 1, timeout=10)
        # The chain's table is one of the shards; it stays put until the next full sync.
        table = next(t for t in waolb_tables(poller) if poller.chain_rules(t, chain))
        monitor = RuleMonitor(node, chain)
        cleanup.callback(monitor.close)

        def change_one(address: str) -> None:
            """Update the slice and poll the chain until it holds the new address."""
            packed = socket.inet_aton(address)
            obj = changed_slice(address)
            started = time.monotonic()
            api.update(obj)
            updated = time.monotonic()
            polls = 0
            while True:
                polls += 1
                if packed in poller.chain_rules(table, chain):
                    break
                if time.monotonic() - started > 10:
                    proxy.check_alive()
                    raise TimeoutError(f"{address} not in {chain} after 10 s")
                time.sleep(CHAIN_POLL_PAUSE)
            changes.append(Change(address, started, updated, time.monotonic(), polls))

        def next_change() -> tuple[tuple[str], dict[str, Any]]:
            return (next(addresses),), {}

        def settle() -> None:
            """After a round: its sync logged, its notification and send time matched."""
            change = changes[-1]
            wait_for_syncs(proxy, 1 + len(changes))
            packed = socket.inet_aton(change.address)
            change.announced = wait_until(
                lambda: monitor.first(packed, change.started),
                timeout=5,
                interval=0.001,
                what="the kernel's notification",
            )
            change.sent = next((t for t in sent if t > change.started), None)

        for _ in range(CHANGE_WARMUP_ROUNDS):
            change_one(*next_change()[0])
            settle()
        before, _, _ = proxy.scrape()
        warm = len(changes)
        benchmark.pedantic(
            change_one, setup=next_change, teardown=lambda _: settle(), rounds=CHANGE_ROUNDS
        )
        if benchmark.disabled:
            return
        after, scrape_seconds, _ = proxy.scrape()
        sync_seconds = [e["seconds"] for e in proxy.log_entries("rules synced")][-CHANGE_ROUNDS:]
        measured = changes[warm:]
        assert not monitor.overflowed
        # The last round's address is in the chain, the other one is not.
        rules = poller.chain_rules(table, chain)
        assert socket.inet_aton(measured[-1].address) in rules
        assert socket.inet_aton(measured[-2].address) not in rules

    def delta(name: str) -> float:
        return after[name] - before[name]

    assert delta("kubeproxy_sync_partial_proxy_rules_duration_seconds_count") == CHANGE_ROUNDS
    assert delta("kubeproxy_sync_full_proxy_rules_duration_seconds_count") == 0
    assert delta("kubeproxy_network_programming_duration_seconds_count") == CHANGE_ROUNDS
    programming = delta("kubeproxy_network_programming_duration_seconds_sum") / CHANGE_ROUNDS
    partial_sync = delta("kubeproxy_sync_partial_proxy_rules_duration_seconds_sum") / CHANGE_ROUNDS
    dataplane = dataplane_apply_seconds()

    def ms(values: list[float]) -> float:
        return round(1000 * statistics.fmean(values), 3)

    polled = [c.polled - c.started for c in measured]
    announced = [c.announced - c.started for c in measured if c.announced is not None]
    sent_after = [c.sent - c.started for c in measured if c.sent is not None]
    benchmark.extra_info.update(
        update_to_kernel_polled_ms=ms(polled),
        update_to_kernel_polled_max_ms=round(1000 * max(polled), 3),
        poll_period_ms=ms([(c.polled - c.updated) / c.polls for c in measured]),
        update_to_kernel_notified_ms=ms(announced),
        update_to_event_sent_ms=ms(sent_after),
        event_sent_to_kernel_notified_ms=ms(
            [c.announced - c.sent for c in measured if c.announced and c.sent]
        ),
        # Sent to notified, less the round's own sync (its log line): watch read and decode,
        # state update and the sync loop's wake-up (the sync's few microseconds after the
        # commit count on the other side).
        event_sent_to_sync_start_ms=ms(
            [
                c.announced - c.sent - seconds
                for c, seconds in zip(measured, sync_seconds, strict=True)
                if c.announced and c.sent
            ]
        ),
        network_programming_duration_ms=round(1000 * programming, 3),
        partial_sync_duration_ms=round(1000 * partial_sync, 3),
        # Trigger to sync end, less the sync itself: server delivery, watch decode, state and
        # the sync loop's wake-up.
        programming_minus_sync_ms=round(1000 * (programming - partial_sync), 3),
        batch_messages=delta("waolb_sync_batch_messages_sum")
        / delta("waolb_sync_batch_messages_count"),
        dataplane_apply_same_change_ms=round(1000 * dataplane, 3),
        metrics_scrape_s=round(scrape_seconds, 3),
        rounds_polled_ms=[round(1000 * value, 2) for value in polled],
        rounds_sync_ms=[round(1000 * seconds, 2) for seconds in sync_seconds],
    )


def dataplane_apply_seconds(rounds: int = 10) -> float:
    """The dataplane alone committing the rounds' change over the same 10 000 Services, in a
    namespace of its own (waolb has stopped by then)."""
    others = [endpoint_ip(CHANGED * ENDPOINTS_PER_SERVICE + j) for j in range(1, 10)]
    versions = [service_port(CHANGED, [*others, address]) for address in NEW_ADDRESSES]
    services = [service_port(index) for index in range(SERVICES)]
    with Netns() as ns, entered(ns):
        dataplane = Dataplane()
        dataplane.sync_full(services)
        times = []
        service = (namespace_of(CHANGED), f"svc-{CHANGED}")
        for index in range(rounds):
            started = time.perf_counter()
            dataplane.sync_services([service], [versions[index % 2]])
            times.append(time.perf_counter() - started)
    return statistics.fmean(times)
