"""The sync loop, driven with a fake clock against a test double of the Rust dataplane.

The double keeps the real one's contract that matters here: a batch either applies whole or
raises and changes nothing. Kernel behaviour itself is covered by the end-to-end tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import pytest

from builders import endpoint, endpoint_slice, service
from waolb._native import NftError, ServicePort
from waolb.health import ProxierHealth
from waolb.metrics import ProxyMetrics
from waolb.policy import WeightsChanged
from waolb.policy.equal import EqualWeights
from waolb.state import ClusterState, EndpointInfo, ServiceName, ServicePortInfo
from waolb.sync import SyncLoop, blamed_port, dataplane_name

if TYPE_CHECKING:
    from waolb._native import SyncStats

WEB = ServiceName("default", "web")
API = ServiceName("default", "api")
Identity = tuple[int, str, str, str, str]


def identity(port: ServicePort) -> Identity:
    return (port.family, port.namespace, port.name, port.port_name, port.protocol)


class FakeDataplane:
    """Holds what a real Dataplane would have programmed; fails on request, atomically."""

    def __init__(self) -> None:
        self.ports: dict[Identity, ServicePort] = {}
        self.calls: list[tuple[str, list[ServicePort], list[ServicePort]]] = []
        self.failures: list[Exception] = []

    def _stats(self, count: int) -> SyncStats:
        return {"messages": count + 1, "bytes": 100 * count, "services": count, "seconds": 0.0}

    def replace(self, services: Sequence[ServicePort]) -> SyncStats:
        self.calls.append(("replace", list(services), []))
        if self.failures:
            raise self.failures.pop(0)
        self.ports = {identity(s): s for s in services}
        return self._stats(len(services))

    def apply(self, upsert: Sequence[ServicePort], remove: Sequence[ServicePort]) -> SyncStats:
        self.calls.append(("apply", list(upsert), list(remove)))
        if self.failures:
            raise self.failures.pop(0)
        for port in remove:
            self.ports.pop(identity(port), None)
        self.ports.update((identity(s), s) for s in upsert)
        return self._stats(len(upsert) + len(remove))

    def endpoints(self, name: str = "web") -> list[str]:
        (port,) = [p for p in self.ports.values() if p.name == name]
        return port.endpoint_ips

    def names(self) -> set[str]:
        return {p.name for p in self.ports.values()}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ScriptedWeights:
    """A weight provider answering from a table the test sets."""

    def __init__(self) -> None:
        self.table: dict[str, Any] = {}
        self.notify: WeightsChanged | None = None

    def weights(
        self, port: ServicePortInfo, endpoints: Sequence[EndpointInfo]
    ) -> Sequence[int] | None:
        answer = self.table.get(port.key.name)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]

    def subscribe(self, on_change: WeightsChanged) -> None:
        self.notify = on_change

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def change(self, services: Iterable[ServiceName]) -> None:
        assert self.notify is not None
        self.notify(services)


class Harness:
    def __init__(self, *, min_sync_period: float = 1.0, sync_period: float = 30.0) -> None:
        self.clock = FakeClock()
        self.wall = 5000.0
        self.dataplane = FakeDataplane()
        self.metrics = ProxyMetrics()
        self.health = ProxierHealth(2 * sync_period, self.metrics, clock=lambda: self.wall)
        self.weights = ScriptedWeights()
        self.state = ClusterState("node-a", wall_clock=lambda: self.wall)
        self.loop = SyncLoop(
            self.dataplane,
            self.state,
            self.weights,
            self.metrics,
            self.health,
            min_sync_period=min_sync_period,
            sync_period=sync_period,
            clock=self.clock,
            wall_clock=lambda: self.wall,
            jitter=lambda: 0.5,  # no jitter: the backoff factor is exactly 1
        )

    def add(self, name: str, *ips: str, cluster_ip: str = "10.96.0.10", rv: str = "1") -> None:
        self.state.upsert_service(service(name, cluster_ips=(cluster_ip,), rv=rv))
        self.state.upsert_endpoint_slice(
            endpoint_slice(f"{name}-a", name, rv=rv, endpoints=tuple(endpoint(ip) for ip in ips))
        )

    def at(self, now: float) -> bool:
        """Advance the clock to ``now`` and sync if due; True if a sync was attempted."""
        self.clock.now = now
        return self.loop.sync_if_due()

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@pytest.fixture
def harness() -> Harness:
    return Harness()


def test_the_first_sync_is_full_and_immediate(harness: Harness) -> None:
    harness.add("web", "10.0.0.1", "10.0.0.2")
    assert harness.loop.next_sync_at() == float("-inf")
    assert harness.at(0.0)
    assert [c[0] for c in harness.dataplane.calls] == ["replace"]
    assert harness.dataplane.endpoints() == ["10.0.0.1", "10.0.0.2"]
    assert harness.dataplane.ports[(4, "default", "web", "http", "tcp")].weights == [1, 1]
    assert harness.metric("kubeproxy_sync_full_proxy_rules_duration_seconds_count") == 1
    assert harness.metric("kubeproxy_sync_proxy_rules_last_timestamp_seconds") == 5000.0
    assert harness.health.status().healthy


def test_an_empty_cluster_still_gets_its_first_full_sync(harness: Harness) -> None:
    assert harness.at(0.0)
    assert harness.dataplane.calls == [("replace", [], [])]


def test_changes_coalesce_and_respect_the_minimum_period(harness: Harness) -> None:
    harness.at(0.0)
    harness.add("web", "10.0.0.1", cluster_ip="10.96.0.10")
    harness.clock.now = 0.2
    harness.add("api", "10.0.0.5", cluster_ip="10.96.0.11")
    harness.add("web", "10.0.0.1", "10.0.0.2", rv="2")
    assert harness.loop.next_sync_at() == 1.0
    assert not harness.at(0.9)
    assert harness.at(1.0)
    assert [c[0] for c in harness.dataplane.calls] == ["replace", "apply"]
    _, upsert, remove = harness.dataplane.calls[1]
    assert sorted(p.name for p in upsert) == ["api", "web"]
    assert remove == []
    assert harness.dataplane.endpoints("web") == ["10.0.0.1", "10.0.0.2"]
    assert harness.metric("kubeproxy_sync_partial_proxy_rules_duration_seconds_count") == 1
    # Nothing more to do until the full resync.
    assert harness.loop.next_sync_at() == 30.0


def test_partial_syncs_send_only_the_changed_services(harness: Harness) -> None:
    harness.add("web", "10.0.0.1", cluster_ip="10.96.0.10")
    harness.add("api", "10.0.0.5", cluster_ip="10.96.0.11")
    harness.at(0.0)
    harness.state.upsert_endpoint_slice(
        endpoint_slice("api-a", "api", rv="2", endpoints=(endpoint("10.0.0.6"),))
    )
    harness.at(1.0)
    _, upsert, remove = harness.dataplane.calls[-1]
    assert [(p.name, p.endpoint_ips) for p in upsert] == [("api", ["10.0.0.6"])]
    assert remove == []

    harness.state.delete_service(service("web"))
    harness.at(2.0)
    _, upsert, remove = harness.dataplane.calls[-1]
    assert upsert == []
    assert [p.name for p in remove] == ["web"]
    assert harness.dataplane.names() == {"api"}


def test_a_change_that_changes_no_rule_sends_nothing(harness: Harness) -> None:
    harness.add("web", "10.0.0.1")
    harness.at(0.0)
    harness.state.upsert_service(
        service("web", rv="2", annotations={"waok8s.github.io/cpu-per-request": "1"})
    )
    harness.wall = 5010.0
    assert harness.at(1.0)
    assert len(harness.dataplane.calls) == 1
    assert harness.metric("kubeproxy_sync_proxy_rules_last_timestamp_seconds") == 5010.0


def test_a_full_resync_runs_every_sync_period(harness: Harness) -> None:
    harness.add("web", "10.0.0.1")
    harness.at(0.0)
    assert not harness.at(29.9)
    assert harness.at(30.0)
    assert [c[0] for c in harness.dataplane.calls] == ["replace", "replace"]
    assert harness.loop.next_sync_at() == 60.0


def test_a_zero_minimum_period_syncs_changes_at_once() -> None:
    harness = Harness(min_sync_period=0.0)
    harness.at(0.0)
    harness.add("web", "10.0.0.1")
    assert harness.at(0.0)
    assert [c[0] for c in harness.dataplane.calls] == ["replace", "apply"]


def test_failures_back_off_exponentially_and_never_wipe_rules(harness: Harness) -> None:
    harness.add("web", "10.0.0.1", cluster_ip="10.96.0.10")
    harness.at(0.0)
    programmed = dict(harness.dataplane.ports)
    failure = NftError(105, "the kernel rejected the transaction as a whole (commit)")
    failure.object = "the transaction as a whole (commit)"
    harness.dataplane.failures = [failure, OSError(105, "netlink: No buffer space"), failure]
    harness.add("api", "10.0.0.5", cluster_ip="10.96.0.11")
    healthy_before = harness.health.status().healthy

    assert harness.at(1.0)  # partial: fails
    assert harness.dataplane.ports == programmed
    assert harness.loop.next_sync_at() == 2.0  # 1 s
    harness.add("web", "10.0.0.1", "10.0.0.2", rv="2", cluster_ip="10.96.0.10")
    assert not harness.at(1.5)  # changes wait for the backoff
    assert harness.at(2.0)  # full: fails
    assert harness.dataplane.calls[-1][0] == "replace"
    assert harness.loop.next_sync_at() == 4.0  # 2 s
    assert harness.at(4.0)  # full: fails
    assert harness.loop.next_sync_at() == 8.0  # 4 s
    assert harness.dataplane.ports == programmed
    assert harness.metric("kubeproxy_sync_proxy_rules_nftables_sync_failures_total") == 3
    assert healthy_before

    assert harness.at(8.0)  # full: succeeds with everything
    assert harness.dataplane.calls[-1][0] == "replace"
    assert harness.dataplane.names() == {"web", "api"}
    assert harness.dataplane.endpoints("web") == ["10.0.0.1", "10.0.0.2"]
    assert harness.loop.next_sync_at() == 38.0


def test_backoff_is_capped_by_the_sync_period_and_jittered() -> None:
    harness = Harness(sync_period=5.0)
    harness.dataplane.failures = [OSError(1, "EPERM")] * 5
    delays = []
    for _ in range(5):
        harness.at(max(harness.clock.now, harness.loop.next_sync_at()))
        delays.append(harness.loop.next_sync_at() - harness.clock.now)
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]

    jittery = Harness(min_sync_period=0.1)
    jittery.loop._jitter = lambda: 0.0  # the low end: 20 % early
    jittery.dataplane.failures = [OSError(1, "EPERM")]
    jittery.at(0.0)
    assert jittery.loop.next_sync_at() == pytest.approx(0.8)


def test_health_turns_bad_when_syncs_keep_failing(harness: Harness) -> None:
    harness.dataplane.failures = [OSError(1, "EPERM")] * 100
    harness.add("web", "10.0.0.1")
    harness.at(0.0)
    assert harness.health.status().healthy
    harness.wall += 60.0  # 2 x sync period later, still nothing programmed
    assert not harness.health.status().healthy
    harness.dataplane.failures.clear()
    harness.at(harness.loop.next_sync_at())
    assert harness.health.status().healthy


def test_a_port_the_dataplane_names_is_left_out_and_the_rest_is_programmed(
    harness: Harness,
) -> None:
    harness.add("web", "10.0.0.1", cluster_ip="10.96.0.10")
    harness.at(0.0)
    harness.add("clash", "10.0.0.9", cluster_ip="10.96.0.10")
    harness.add("api", "10.0.0.5", cluster_ip="10.96.0.11")
    harness.dataplane.failures = [
        ValueError(
            "service default/clash:http (tcp ip) and service default/web:http (tcp ip) both "
            "claim 10.96.0.10 port 80/tcp"
        )
    ]
    assert harness.at(1.0)
    # No backoff: the retry (full) comes after the minimum period, without the culprit.
    assert harness.loop.next_sync_at() == 2.0
    assert harness.at(2.0)
    assert harness.dataplane.calls[-1][0] == "replace"
    assert harness.dataplane.names() == {"web", "api"}

    # Once the culprit changes it is tried again.
    harness.state.upsert_service(service("clash", cluster_ips=("10.96.0.12",), rv="2"))
    harness.at(3.0)
    assert harness.dataplane.names() == {"web", "api", "clash"}


def test_a_kernel_error_naming_a_port_sets_that_port_aside(harness: Harness) -> None:
    harness.at(0.0)
    harness.add("web", "10.0.0.1", cluster_ip="10.96.0.10")
    harness.add("api", "10.0.0.5", cluster_ip="10.96.0.11")
    failure = NftError(22, "the kernel rejected add rule for service default/api:http (tcp ip)")
    failure.object = "add rule for service default/api:http (tcp ip)"
    harness.dataplane.failures = [failure]
    harness.at(1.0)
    harness.at(2.0)
    assert harness.dataplane.names() == {"web"}


def test_blame_goes_to_the_first_port_named_among_those_sent() -> None:
    web = next(iter(_keys("web")))
    api = next(iter(_keys("api")))
    assert dataplane_name(web) == "default/web:http (tcp ip)"
    error = ValueError("service default/api:http (tcp ip) and service default/web:http (tcp ip)")
    assert blamed_port(error, [web, api]) == api
    assert blamed_port(error, [web]) == web
    assert blamed_port(ValueError("a partial sync needs a full sync first"), [web, api]) is None


def _keys(name: str) -> set[Any]:
    state = ClusterState("n")
    state.upsert_service(service(name))
    return set(state.all_ports())


def test_a_new_version_that_cannot_be_built_keeps_the_old_one(harness: Harness) -> None:
    harness.add("web", "10.0.0.1")
    harness.at(0.0)
    # Weights beyond u32 (and beyond 64 bits): the ServicePort constructor refuses them.
    harness.weights.table["web"] = [2**40, 1]
    harness.add("web", "10.0.0.1", "10.0.0.2", rv="2")
    harness.at(1.0)
    assert harness.dataplane.endpoints() == ["10.0.0.1"]
    harness.weights.table["web"] = [2**70, 1]
    harness.weights.change([WEB])
    harness.at(2.0)
    assert harness.dataplane.endpoints() == ["10.0.0.1"]
    harness.at(30.0)  # a full resync keeps it too
    assert harness.dataplane.calls[-1][0] == "replace"
    assert harness.dataplane.endpoints() == ["10.0.0.1"]
    assert harness.metric("kubeproxy_sync_proxy_rules_nftables_sync_failures_total") == 0


def test_sctp_ports_are_not_sent(harness: Harness) -> None:
    harness.state.upsert_service(service("sig", ports=(("sig", "SCTP", 3868),)))
    harness.at(0.0)
    assert harness.dataplane.calls == [("replace", [], [])]


def test_weight_changes_resync_only_the_named_services(harness: Harness) -> None:
    harness.add("web", "10.0.0.1", "10.0.0.2", cluster_ip="10.96.0.10")
    harness.add("api", "10.0.0.5", cluster_ip="10.96.0.11")
    harness.at(0.0)
    harness.weights.table["web"] = [100, 50]
    harness.weights.change([WEB])
    assert harness.loop.next_sync_at() == 1.0
    harness.at(1.0)
    _, upsert, _ = harness.dataplane.calls[-1]
    assert [(p.name, p.weights) for p in upsert] == [("web", [100, 50])]
    labels = {"namespace": "default", "service": "web", "port": "http"}
    assert harness.metric("waolb_endpoint_weight", **labels, endpoint="10.0.0.1:8080") == 100
    assert harness.metric("waolb_endpoint_weight", **labels, endpoint="10.0.0.2:8080") == 50


@pytest.mark.parametrize(
    ("answer", "error_kind"),
    [
        ([1], "invalid_weights"),
        ([1, -1], "invalid_weights"),
        ([1, 1.5], "invalid_weights"),
        ([1, True], "invalid_weights"),
        (RuntimeError("scorer down"), "provider"),
        ([0, 0], None),
        (None, None),
    ],
)
def test_unusable_weights_fall_back_to_equal_shares(
    harness: Harness, answer: Any, error_kind: str | None
) -> None:
    harness.weights.table["web"] = answer
    harness.add("web", "10.0.0.1", "10.0.0.2")
    harness.at(0.0)
    assert harness.dataplane.ports[(4, "default", "web", "http", "tcp")].weights == [1, 1]
    if error_kind is not None:
        assert harness.metric("waolb_scoring_errors_total", kind=error_kind) == 1


def test_weight_metrics_follow_the_programmed_endpoints(harness: Harness) -> None:
    harness.add("web", "10.0.0.1", "10.0.0.2")
    harness.at(0.0)
    labels = {"namespace": "default", "service": "web", "port": "http"}
    assert harness.metric("waolb_endpoint_weight", **labels, endpoint="10.0.0.2:8080") == 1
    harness.add("web", "10.0.0.1", rv="2")
    harness.at(1.0)
    samples = {
        s.labels["endpoint"]
        for m in harness.metrics.registry.collect()
        if m.name == "waolb_endpoint_weight"
        for s in m.samples
    }
    assert samples == {"10.0.0.1:8080"}
    harness.state.delete_service(service("web"))
    harness.at(2.0)
    assert harness.metric("waolb_endpoint_weight", **labels, endpoint="10.0.0.1:8080") == 0


def test_change_and_latency_metrics(harness: Harness) -> None:
    harness.at(0.0)
    harness.state.upsert_service(service("web"))
    harness.wall = 6000.0
    harness.state.upsert_endpoint_slice(
        # Triggered 4 s before the sync that programs it (wall clock 6000 s).
        endpoint_slice(
            "web-a", trigger_time="1970-01-01T01:39:56Z", endpoints=(endpoint("10.0.0.1"),)
        )
    )
    assert harness.metric("kubeproxy_sync_proxy_rules_service_changes_total") == 1
    assert harness.metric("kubeproxy_sync_proxy_rules_endpoint_changes_total") == 1
    assert harness.metric("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds") == 6000.0
    harness.at(1.0)
    assert harness.metric("kubeproxy_network_programming_duration_seconds_count") == 1
    assert harness.metric("kubeproxy_network_programming_duration_seconds_sum") == 4.0
    assert harness.metric("kubeproxy_sync_proxy_rules_duration_seconds_count") == 2
    assert harness.metric("waolb_sync_batch_messages_count") == 2


def test_the_thread_syncs_changes_and_stops() -> None:
    dataplane = FakeDataplane()
    metrics = ProxyMetrics()
    state = ClusterState("n")
    loop = SyncLoop(
        dataplane,
        state,
        EqualWeights(),
        metrics,
        ProxierHealth(60.0, metrics),
        min_sync_period=0.01,
    )
    loop.start()
    try:
        state.upsert_service(service("web"))
        state.upsert_endpoint_slice(endpoint_slice("web-a", endpoints=(endpoint("10.0.0.1"),)))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (dataplane.ports and dataplane.endpoints()):
            time.sleep(0.01)
        assert dataplane.endpoints() == ["10.0.0.1"]
    finally:
        loop.stop()
    assert not any(t.name == "waolb-sync" for t in threading.enumerate())
