"""The sync loop, driven with a fake clock against the real dataplane core on a simulated kernel.

``Dataplane.simulated()`` (the fault-injection build ``make native`` makes) is the Rust dataplane
with its ledger, planning and batch writers, whose kernel takes every batch unless a test
injects a refusal: a batch either applies whole or changes nothing, as the kernel's. What the
kernel holds is read from the ledger; the kernel itself is covered by tests/kernel.
"""

from __future__ import annotations

import errno
import random
import threading
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import pytest
import structlog

from builders import endpoint, endpoint_slice, service
from netns import HUNG_AFTER, wait_until
from waolb import _native
from waolb.dataplane import DesiredPort, NftablesDataplane, SyncOutcome
from waolb.health import ProxierHealth
from waolb.metrics import ProxyMetrics
from waolb.policy import WeightsChanged
from waolb.policy.equal import EqualWeights
from waolb.state import ClusterState, EndpointInfo, ServiceName, ServicePortInfo, ServicePortKey
from waolb.sync import SyncLoop

WEB = ServiceName("default", "web")
API = ServiceName("default", "api")
WEB_KEY = ServicePortKey(4, "default", "web", "http", "TCP")


class RecordingDataplane(NftablesDataplane):
    """The adapter over a simulated kernel, recording each sync's kind and Services."""

    def __init__(self) -> None:
        super().__init__(_native.Dataplane.simulated())
        self.calls: list[tuple[str, frozenset[str] | None]] = []
        self.outcomes: list[SyncOutcome] = []

    def sync(
        self,
        ports: Mapping[ServicePortKey, DesiredPort],
        *,
        services: Collection[ServiceName] | None = None,
        hold: Collection[ServicePortKey] = (),
    ) -> SyncOutcome:
        names = None if services is None else frozenset(s.name for s in services)
        self.calls.append(("full" if services is None else "partial", names))
        outcome = super().sync(ports, services=services, hold=hold)
        self.outcomes.append(outcome)
        return outcome

    def inject(
        self,
        code: int,
        name: str | None = None,
        *,
        action: str | None = None,
        times: int | None = None,
    ) -> None:
        """The kernel refuses the batch as a whole, or the ``action`` messages of a port."""
        namespace = None if name is None else "default"
        self._native.inject_fault(code, namespace=namespace, name=name, action=action, times=times)

    def clear_faults(self) -> None:
        self._native.clear_faults()

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls]

    def endpoints(self, name: str = "web") -> list[str]:
        (port,) = [p for p in self.programmed() if p.name == name]
        return port.endpoint_ips

    def names(self) -> set[str]:
        return {p.name for p in self.programmed()}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class NoJitter(random.Random):
    """Backoff delays at their full length (the runner shortens them by up to half)."""

    def __init__(self, value: float = 0.0) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


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
        self.dataplane = RecordingDataplane()
        self.metrics = ProxyMetrics(weight_metrics="endpoint")
        self.health = ProxierHealth(2 * sync_period, self.metrics, clock=lambda: self.wall)
        self.weights = ScriptedWeights()
        self.state = ClusterState("node-a", wall_clock=lambda: self.wall)
        self.rng = NoJitter()
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
            rng=self.rng,
        )

    def add(self, name: str, *ips: str, cluster_ip: str = "10.96.0.10", rv: str = "1") -> None:
        self.state.upsert_service(service(name, cluster_ips=(cluster_ip,), rv=rv))
        self.state.upsert_endpoint_slice(
            endpoint_slice(f"{name}-a", name, rv=rv, endpoints=tuple(endpoint(ip) for ip in ips))
        )

    def at(self, now: float) -> bool:
        """Advance the clock to ``now`` and sync if due; True if a sync ran."""
        self.clock.now = now
        return self.loop.run_if_due()

    def next(self) -> bool:
        """Advance the clock to the next sync and run it."""
        return self.at(max(self.clock.now, self.loop.next_sync_at()))

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def port_errors(self, reason: str) -> float:
        return self.metric("waolb_sync_port_errors", reason=reason)

    def failures(self) -> float:
        return self.metric("kubeproxy_sync_proxy_rules_nftables_sync_failures_total")


@pytest.fixture
def harness() -> Harness:
    return Harness()


# ---- scheduling -----------------------------------------------------------------------------


def test_the_first_sync_is_full_and_immediate(harness: Harness) -> None:
    harness.add("web", "10.0.0.1", "10.0.0.2")
    assert harness.loop.next_sync_at() == 0.0
    assert harness.at(0.0)
    assert harness.dataplane.kinds() == ["full"]
    assert harness.dataplane.endpoints() == ["10.0.0.1", "10.0.0.2"]
    assert harness.dataplane.programmed()[0].weights == [1, 1]
    assert harness.metric("kubeproxy_sync_full_proxy_rules_duration_seconds_count") == 1
    assert harness.metric("kubeproxy_sync_proxy_rules_last_timestamp_seconds") == 5000.0
    assert harness.health.status().healthy


def test_an_empty_cluster_still_gets_its_first_full_sync(harness: Harness) -> None:
    assert harness.at(0.0)
    assert harness.dataplane.calls == [("full", None)]


def test_changes_coalesce_and_respect_the_minimum_period(harness: Harness) -> None:
    harness.at(0.0)
    harness.add("web", "10.0.0.1", cluster_ip="10.96.0.10")
    harness.clock.now = 0.2
    harness.add("api", "10.0.0.5", cluster_ip="10.96.0.11")
    harness.add("web", "10.0.0.1", "10.0.0.2", rv="2")
    assert harness.loop.next_sync_at() == 1.0
    assert not harness.at(0.9)
    assert harness.at(1.0)
    assert harness.dataplane.calls[1] == ("partial", frozenset({"api", "web"}))
    assert harness.dataplane.endpoints("web") == ["10.0.0.1", "10.0.0.2"]
    assert harness.metric("kubeproxy_sync_partial_proxy_rules_duration_seconds_count") == 1
    # Nothing more to do until the full resync.
    assert harness.loop.next_sync_at() == 31.0


def test_partial_syncs_send_only_the_changed_services(harness: Harness) -> None:
    harness.add("web", "10.0.0.1", cluster_ip="10.96.0.10")
    harness.add("api", "10.0.0.5", cluster_ip="10.96.0.11")
    harness.at(0.0)
    harness.state.upsert_endpoint_slice(
        endpoint_slice("api-a", "api", rv="2", endpoints=(endpoint("10.0.0.6"),))
    )
    harness.at(1.0)
    assert harness.dataplane.calls[-1] == ("partial", frozenset({"api"}))
    outcome = harness.dataplane.outcomes[-1]
    assert [key.name for key in outcome.changed] == ["api"]
    assert harness.dataplane.endpoints("api") == ["10.0.0.6"]

    harness.state.delete_service(service("web"))
    harness.at(2.0)
    outcome = harness.dataplane.outcomes[-1]
    assert (outcome.changed, [key.name for key in outcome.removed]) == ((), ["web"])
    assert harness.dataplane.names() == {"api"}


def test_a_change_that_changes_no_rule_sends_nothing(harness: Harness) -> None:
    harness.add("web", "10.0.0.1")
    harness.at(0.0)
    harness.state.upsert_service(
        service("web", rv="2", annotations={"waok8s.github.io/cpu-per-request": "1"})
    )
    harness.wall = 5010.0
    assert harness.at(1.0)
    assert harness.dataplane.outcomes[-1].messages == 0
    assert harness.metric("kubeproxy_sync_proxy_rules_last_timestamp_seconds") == 5010.0


def test_a_full_resync_runs_every_sync_period(harness: Harness) -> None:
    harness.add("web", "10.0.0.1")
    harness.at(0.0)
    assert not harness.at(29.9)
    assert harness.at(30.0)
    assert harness.dataplane.kinds() == ["full", "full"]
    assert harness.loop.next_sync_at() == 60.0


def test_a_zero_minimum_period_syncs_changes_at_once() -> None:
    harness = Harness(min_sync_period=0.0)
    harness.at(0.0)
    harness.add("web", "10.0.0.1")
    assert harness.at(0.0)
    assert harness.dataplane.kinds() == ["full", "partial"]


# ---- failures of the whole batch ------------------------------------------------------------


def test_failures_back_off_exponentially_and_never_wipe_rules(harness: Harness) -> None:
    harness.add("web", "10.0.0.1", cluster_ip="10.96.0.10")
    harness.at(0.0)
    programmed = harness.dataplane.programmed()
    # The transaction as a whole fails, three times.
    harness.dataplane.inject(errno.ENOBUFS, times=3)
    harness.add("api", "10.0.0.5", cluster_ip="10.96.0.11")
    healthy_before = harness.health.status().healthy

    assert harness.at(1.0)  # partial: fails
    assert harness.dataplane.programmed() == programmed
    assert harness.loop.next_sync_at() == 2.0  # 1 s
    harness.add("web", "10.0.0.1", "10.0.0.2", rv="2", cluster_ip="10.96.0.10")
    assert not harness.at(1.5)  # changes wait for the backoff
    assert harness.at(2.0)  # full: fails
    assert harness.dataplane.kinds()[-1] == "full"
    assert harness.loop.next_sync_at() == 4.0  # 2 s
    assert harness.at(4.0)  # full: fails
    assert harness.loop.next_sync_at() == 8.0  # 4 s
    assert harness.dataplane.programmed() == programmed
    assert harness.failures() == 3
    assert healthy_before

    assert harness.at(8.0)  # full: succeeds with everything
    assert harness.dataplane.kinds()[-1] == "full"
    assert harness.dataplane.names() == {"web", "api"}
    assert harness.dataplane.endpoints("web") == ["10.0.0.1", "10.0.0.2"]
    assert harness.loop.next_sync_at() == 38.0


def test_backoff_is_capped_by_the_sync_period_and_jittered() -> None:
    harness = Harness(sync_period=5.0)
    harness.dataplane.inject(errno.EPERM)
    delays = []
    for _ in range(5):
        harness.next()
        delays.append(harness.loop.next_sync_at() - harness.clock.now)
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]

    jittery = Harness(min_sync_period=0.1)
    jittery.rng.value = 0.999  # the short end: about half the delay
    jittery.dataplane.inject(errno.EPERM)
    jittery.at(0.0)
    assert jittery.loop.next_sync_at() == pytest.approx(0.5, abs=0.01)


def test_health_turns_bad_when_syncs_keep_failing(harness: Harness) -> None:
    harness.dataplane.inject(errno.EPERM)
    harness.add("web", "10.0.0.1")
    harness.at(0.0)
    assert harness.health.status().healthy
    harness.wall += 60.0  # 2 x sync period later, still nothing programmed
    assert not harness.health.status().healthy
    harness.dataplane.clear_faults()
    harness.next()
    assert harness.health.status().healthy


def test_a_crash_of_the_sync_thread_makes_health_fail() -> None:
    metrics = ProxyMetrics()
    health = ProxierHealth(60.0, metrics)
    state = ClusterState("n")
    loop = SyncLoop(RecordingDataplane(), state, EqualWeights(), metrics, health)
    # Something the work does not catch ends the thread (BaseException, as a SystemExit).
    state.take_changes = lambda: (_ for _ in ()).throw(SystemExit(3))  # type: ignore[method-assign]
    with structlog.testing.capture_logs() as logs:
        loop.start()
        wait_until(lambda: not loop.runner.alive, timeout=HUNG_AFTER, what="the thread's end")
    assert not health.status().healthy
    assert health.healthz().status == 503
    assert any(e["log_level"] == "critical" for e in logs), logs


# ---- refused ports --------------------------------------------------------------------------


def test_a_port_that_claims_a_programmed_address_is_refused_and_the_rest_commits(
    harness: Harness,
) -> None:
    harness.add("web", "10.0.0.1", cluster_ip="10.96.0.10")
    harness.at(0.0)
    harness.add("clash", "10.0.0.9", cluster_ip="10.96.0.10")
    harness.add("api", "10.0.0.5", cluster_ip="10.96.0.11")
    with structlog.testing.capture_logs() as logs:
        assert harness.at(1.0)
        assert harness.dataplane.names() == {"web", "api"}
        assert harness.port_errors("clash") == 1
        assert harness.failures() == 1
        # Retried with backoff (1 s, 2 s, ...), logged once while its state stays the same.
        for expected_delay in (1.0, 2.0, 4.0):
            at = harness.clock.now
            assert harness.next()
            assert harness.clock.now == at + expected_delay
            assert harness.dataplane.calls[-1] == ("partial", frozenset({"clash"}))
        # A full sync keeps it out too.
        harness.at(31.0)
        assert harness.dataplane.kinds()[-1] == "full"
        assert harness.dataplane.names() == {"web", "api"}
    refused = [e for e in logs if e["event"].startswith("a service port's new state is refused")]
    assert len(refused) == 1
    assert refused[0]["reason"] == "clash"
    assert "both claim 10.96.0.10 port 80/tcp" in refused[0]["error"]

    # Once it moves to an address of its own it is programmed, at once.
    harness.state.upsert_service(service("clash", cluster_ips=("10.96.0.12",), rv="2"))
    harness.at(32.0)
    assert harness.dataplane.names() == {"web", "api", "clash"}
    assert harness.port_errors("clash") == 0


def test_a_kernel_refusal_keeps_the_previous_rules_through_partial_and_full_syncs() -> None:
    harness = Harness(min_sync_period=0.1)
    harness.add("web", "10.0.0.1", cluster_ip="10.96.0.10")
    harness.add("api", "10.0.0.5", cluster_ip="10.96.0.11")
    harness.at(0.0)
    # The kernel refuses to rewrite web's chain (as when it is gone), until cleared.
    harness.dataplane.inject(errno.ENOENT, name="web", action="flush chain")
    harness.add("web", "10.0.0.1", "10.0.0.2", rv="2", cluster_ip="10.96.0.10")
    harness.add("api", "10.0.0.6", rv="2", cluster_ip="10.96.0.11")
    with structlog.testing.capture_logs() as logs:
        assert harness.at(1.0)
        # api's change committed; web keeps its endpoints.
        assert harness.dataplane.endpoints("api") == ["10.0.0.6"]
        assert harness.dataplane.endpoints("web") == ["10.0.0.1"]
        refusal = harness.dataplane.outcomes[-1].refused[0]
        assert (refusal.key, refusal.reason, refusal.errno, refusal.kept) == (
            WEB_KEY,
            "kernel",
            errno.ENOENT,
            True,
        )
        assert harness.port_errors("kernel") == 1
        # The kernel may have lost what the ledger says: the next sync is full, and comes
        # before web's retry is due, so it programs web as it was.
        assert harness.next()
        assert (harness.clock.now, harness.dataplane.calls[-1]) == (1.1, ("full", None))
        assert harness.dataplane.endpoints("web") == ["10.0.0.1"]
        # Its retries (partial) fail, with growing delays, each followed by a full sync
        # that holds it; none changes it.
        retried_at = []
        for _ in range(3):
            harness.next()
            retried_at.append(harness.clock.now)
            assert harness.dataplane.calls[-1] == ("partial", frozenset({"web"}))
            assert harness.dataplane.endpoints("web") == ["10.0.0.1"]
            harness.next()
            assert harness.dataplane.calls[-1] == ("full", None)
            assert harness.dataplane.endpoints("web") == ["10.0.0.1"]
        assert retried_at == [2.0, 4.0, 8.0]
    # Logged once for the refused state, however often it is retried.
    assert [e["event"] for e in logs if e["log_level"] != "debug"] == [
        "a service port's new state is refused; it keeps its previous rules"
    ]
    assert harness.port_errors("kernel") == 1
    # The cause goes: the retry after the next full sync programs the new endpoints.
    harness.dataplane.clear_faults()
    while harness.dataplane.endpoints("web") != ["10.0.0.1", "10.0.0.2"]:
        assert harness.clock.now < 30
        harness.next()
    assert harness.port_errors("kernel") == 0


def test_a_transient_error_on_every_attempt_keeps_the_old_rules_until_it_goes(
    harness: Harness,
) -> None:
    harness.add("web", "10.0.0.1")
    harness.at(0.0)
    # The batch as a whole fails four times in a row (the kernel out of memory, say).
    harness.dataplane.inject(errno.ENOMEM, times=4)
    harness.add("web", "10.0.0.2", rv="2")
    delays = []
    while harness.dataplane.endpoints() != ["10.0.0.2"]:
        assert harness.dataplane.endpoints() == ["10.0.0.1"]
        before = harness.clock.now
        harness.next()
        delays.append(harness.clock.now - before)
        assert len(delays) <= 5
    assert delays == [1.0, 1.0, 2.0, 4.0, 8.0]
    assert harness.failures() == 4
    assert harness.dataplane.kinds()[-1] == "full"


def test_a_port_refused_by_the_kernel_for_a_while_recovers_in_the_next_full_sync(
    harness: Harness,
) -> None:
    harness.add("web", "10.0.0.1")
    harness.at(0.0)
    harness.dataplane.inject(errno.EBUSY, name="web", action="flush chain", times=1)
    harness.add("web", "10.0.0.2", rv="2")
    harness.at(1.0)
    assert harness.dataplane.endpoints() == ["10.0.0.1"]
    assert harness.port_errors("kernel") == 1
    # The full sync that follows, once the port's retry is due, writes the new chain.
    harness.next()
    assert harness.dataplane.calls[-1] == ("full", None)
    assert harness.dataplane.endpoints() == ["10.0.0.2"]
    assert harness.port_errors("kernel") == 0
    assert harness.failures() == 1


def test_a_new_version_that_cannot_be_built_keeps_the_old_one(harness: Harness) -> None:
    harness.add("web", "10.0.0.1")
    harness.at(0.0)
    # Weights beyond u32 (and beyond 64 bits): the ServicePort constructor refuses them.
    harness.weights.table["web"] = [2**40, 1]
    harness.add("web", "10.0.0.1", "10.0.0.2", rv="2")
    harness.at(1.0)
    assert harness.dataplane.endpoints() == ["10.0.0.1"]
    assert harness.port_errors("invalid") == 1
    harness.weights.table["web"] = [2**70, 1]
    harness.weights.change([WEB])
    harness.at(2.0)
    assert harness.dataplane.endpoints() == ["10.0.0.1"]
    harness.at(30.0)  # a full resync keeps it too
    assert harness.dataplane.kinds()[-1] == "full"
    assert harness.dataplane.endpoints() == ["10.0.0.1"]
    assert harness.failures() == 0
    harness.weights.table["web"] = [1, 2]
    harness.weights.change([WEB])
    harness.next()
    assert harness.dataplane.programmed()[0].weights == [1, 2]
    assert harness.port_errors("invalid") == 0


def test_a_new_port_refused_is_not_programmed_until_it_can_be(harness: Harness) -> None:
    harness.at(0.0)
    harness.dataplane.inject(errno.EEXIST, name="web", action="add map element", times=1)
    harness.add("web", "10.0.0.1")
    with structlog.testing.capture_logs() as logs:
        harness.at(1.0)
    assert harness.dataplane.names() == set()
    [refused] = [e for e in logs if e["log_level"] == "error"]
    assert refused["event"] == "a service port's new state is refused; it is not programmed"
    harness.next()
    harness.next()
    assert harness.dataplane.names() == {"web"}


def test_sctp_ports_are_not_sent(harness: Harness) -> None:
    harness.state.upsert_service(service("sig", ports=(("sig", "SCTP", 3868),)))
    harness.at(0.0)
    assert harness.dataplane.programmed() == []
    assert harness.dataplane.outcomes[-1].refused == ()


# ---- weights and metrics --------------------------------------------------------------------


def test_weight_changes_resync_only_the_named_services(harness: Harness) -> None:
    harness.add("web", "10.0.0.1", "10.0.0.2", cluster_ip="10.96.0.10")
    harness.add("api", "10.0.0.5", cluster_ip="10.96.0.11")
    harness.at(0.0)
    harness.weights.table["web"] = [100, 50]
    harness.weights.change([WEB])
    assert harness.loop.next_sync_at() == 1.0
    harness.at(1.0)
    assert harness.dataplane.calls[-1] == ("partial", frozenset({"web"}))
    assert harness.dataplane.outcomes[-1].changed == (WEB_KEY,)
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
    assert harness.dataplane.programmed()[0].weights == [1, 1]
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
    dataplane = RecordingDataplane()
    metrics = ProxyMetrics(weight_metrics="endpoint")
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
        # The weight metric, not the ledger: the ledger is the sync thread's while it syncs.
        labels = {"namespace": "default", "service": "web", "port": "http"}
        wait_until(
            lambda: (
                metrics.registry.get_sample_value(
                    "waolb_endpoint_weight", {**labels, "endpoint": "10.0.0.1:8080"}
                )
                == 1
            ),
            timeout=HUNG_AFTER,
            what="the service programmed",
        )
    finally:
        loop.stop()
    assert not any(t.name == "waolb-sync" for t in threading.enumerate())
