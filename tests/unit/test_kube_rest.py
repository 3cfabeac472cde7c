"""kube.rest and kube.client's TokenBucket: one rate limit and a deadline for every API request.

Against the test API server (which counts what it receives) and hostile peers on loopback.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from kubernetes.client import ApiClient

from hostile import Trickle, TricklingServer
from kubeapi import NODE_METRICS, KubeApiServer
from kubeapi import SERVICES as SERVICE_TYPE
from kubeapi.objects import node_metrics, secret
from netns import HUNG_AFTER
from waolb.kube.client import TokenBucket, build_api_client
from waolb.kube.reflector import Reflector
from waolb.kube.resources import SERVICES
from waolb.kube.rest import ApiError, RestClient
from waolb.runner import Backoff
from waolb.wao.metrics_api import ClusterMetrics, MetricsApiError
from waolb.wao.predictor import PredictorError
from waolb.wao.secrets import SecretReader

WELL_WITHIN = 30.0
LIST_PATH = SERVICES.collection_path


class ManualTime:
    """A clock and a wait that only the test moves: the bucket's arithmetic, observable."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waiting: list[float] = []  # when each waiting caller may go
        self._condition = threading.Condition()

    def clock(self) -> float:
        with self._condition:
            return self.now

    def wait(self, delay: float, cancel: threading.Event | None) -> bool:
        with self._condition:
            until = self.now + delay
            self.waiting.append(until)
            self._condition.notify_all()
            self._condition.wait_for(lambda: self.now >= until)
            self.waiting.remove(until)
            self._condition.notify_all()
        return False

    def advance(self, seconds: float) -> None:
        with self._condition:
            self.now += seconds
            self._condition.notify_all()

    def wait_for(self, condition: Callable[[], bool]) -> bool:
        with self._condition:
            return self._condition.wait_for(condition, HUNG_AFTER)


@pytest.fixture
def client(kube_api: KubeApiServer) -> Iterator[ApiClient]:
    with build_api_client(master=kube_api.url) as api_client:
        yield api_client


def lists(server: KubeApiServer) -> int:
    return server.count_requests(verb="list", path=LIST_PATH)


def wait_until(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + HUNG_AFTER
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# ---- the token bucket ---------------------------------------------------------------------


def test_a_burst_of_requests_is_paced_by_the_bucket(
    kube_api: KubeApiServer, client: ApiClient
) -> None:
    """qps 2, burst 3: seven requests at once reach the server as 3, then one per half second
    of the bucket's clock, in the order they asked."""
    time_ = ManualTime()
    rest = RestClient(client, TokenBucket(2.0, 3, clock=time_.clock, wait=time_.wait))
    callers = [
        threading.Thread(target=rest.get, args=(LIST_PATH,), kwargs={"timeout": HUNG_AFTER})
        for _ in range(7)
    ]
    for caller in callers:
        caller.start()
    assert time_.wait_for(lambda: len(time_.waiting) == 4)
    assert wait_until(lambda: lists(kube_api) == 3)
    assert sorted(time_.waiting) == [0.5, 1.0, 1.5, 2.0]
    for now, served in ((0.5, 4), (1.5, 6), (2.0, 7)):
        time_.advance(now - time_.now)
        assert wait_until(lambda served=served: lists(kube_api) == served)
        assert time_.wait_for(lambda served=served: len(time_.waiting) == 7 - served)
        assert lists(kube_api) == served  # the callers still waiting cannot have gone
    for caller in callers:
        caller.join(HUNG_AFTER)


def test_the_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    time_ = ManualTime()
    bucket = TokenBucket(4.0, 2, clock=time_.clock, wait=time_.wait)
    assert bucket.acquire(within=0) and bucket.acquire(within=0)
    assert not bucket.acquire(within=0.2)  # the next token is 0.25 s away
    time_.advance(10.0)  # refills to the burst, no further
    assert bucket.acquire(within=0) and bucket.acquire(within=0)
    assert not bucket.acquire(within=0)


def test_a_cancelled_wait_gives_its_token_back() -> None:
    bucket = TokenBucket(0.001, 1)  # one token now, the next in 1000 s
    assert bucket.acquire()
    cancel = threading.Event()
    cancel.set()
    started = time.monotonic()
    assert not bucket.acquire(cancel=cancel)
    assert time.monotonic() - started < WELL_WITHIN
    assert not bucket.acquire(within=999.0)  # the token it gave back is still 1000 s away


@pytest.mark.parametrize(("qps", "burst"), [(0.0, 1), (float("inf"), 1), (1.0, 0)])
def test_a_bucket_needs_a_rate_and_a_burst(qps: float, burst: int) -> None:
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(qps, burst)


def test_one_bucket_paces_lists_watches_metrics_and_secrets(
    kube_api: KubeApiServer, client: ApiClient
) -> None:
    """A burst of 3 and one token per 1000 s: the Service list and watch and a metrics read
    take the three; the Secret read that follows is refused at once (its 1 s deadline cannot
    be met) without reaching the server, and the reflector, now waiting for a token to watch
    again, still stops at once."""
    kube_api.register(NODE_METRICS)
    kube_api.create(node_metrics("node-a", "250m"))
    kube_api.create(secret("creds", "wao", data={"username": "u", "password": "p"}))
    rest = RestClient(client, TokenBucket(0.001, 3))

    class Ignore:
        def replace(self, *_: object) -> None: ...
        def upsert(self, *_: object) -> None: ...
        def delete(self, *_: object) -> None: ...

    reflector = Reflector(rest, SERVICES, Ignore(), backoff=Backoff(initial=0.05, cap=0.2))
    reflector.start()
    try:
        assert reflector.wait_for_sync(HUNG_AFTER)
        assert kube_api.wait_for_watches(SERVICE_TYPE, timeout=HUNG_AFTER)
        assert ClusterMetrics(rest, timeout=1.0).node_cpu_usage() == {"node-a": 0.25}
        started = time.monotonic()
        with pytest.raises(PredictorError, match="rate limit"):
            SecretReader(rest, ttl=30.0, request_timeout=1.0).basic_auth("wao", "creds")
        assert time.monotonic() - started < WELL_WITHIN
        kube_api.drop_watches()
    finally:
        started = time.monotonic()
        reflector.stop(timeout=HUNG_AFTER)
    assert not reflector.is_alive()
    assert time.monotonic() - started < WELL_WITHIN
    seen = [(request.verb, request.path) for request in kube_api.requests()]
    assert seen == [
        ("list", LIST_PATH),
        ("watch", LIST_PATH),
        ("list", "/apis/metrics.k8s.io/v1beta1/nodes"),
    ]


# ---- deadlines ----------------------------------------------------------------------------


@pytest.fixture
def trickling_api() -> Iterator[RestClient]:
    """A RestClient whose "API server" trickles every answer's body, a byte per 0.5 s."""
    with TricklingServer(Trickle.BODY) as server, build_api_client(master=server.url) as client:
        yield RestClient(client)


def secret_read(rest: RestClient) -> object:
    return SecretReader(rest, ttl=30.0, request_timeout=1.0).basic_auth("wao", "creds")


@pytest.mark.parametrize(
    ("call", "error", "says"),
    [
        (lambda rest: rest.get_json(LIST_PATH, timeout=1.0), ApiError, "deadline"),
        (lambda rest: ClusterMetrics(rest, 1.0).node_cpu_usage(), MetricsApiError, "deadline"),
        (secret_read, PredictorError, "reading it failed"),
    ],
    ids=["get", "metrics", "secret"],
)
def test_a_trickling_api_server_cannot_hold_a_request_past_its_deadline(
    trickling_api: RestClient,
    call: Callable[[RestClient], object],
    error: type[Exception],
    says: str,
) -> None:
    started = time.monotonic()
    with pytest.raises(error, match=says):
        call(trickling_api)
    assert time.monotonic() - started < WELL_WITHIN


def test_a_trickled_list_restarts_the_reflector_by_its_deadline(
    trickling_api: RestClient,
) -> None:
    restarts: list[str] = []
    reflector = Reflector(
        trickling_api,
        SERVICES,
        handler=None,  # type: ignore[arg-type]  # never reached: no list completes
        list_timeout=1.0,
        backoff=Backoff(initial=0.05, cap=0.2),
        on_restart=lambda kind, reason: restarts.append(reason),
    )
    started = time.monotonic()
    reflector.start()
    try:
        assert wait_until(lambda: len(restarts) >= 2)
        assert time.monotonic() - started < WELL_WITHIN
        assert set(restarts) == {"error"}
        assert not reflector.has_synced
    finally:
        reflector.stop(timeout=HUNG_AFTER)


def test_status_errors_carry_the_status_objects_fields(
    kube_api: KubeApiServer, client: ApiClient
) -> None:
    rest = RestClient(client)
    with pytest.raises(ApiError) as missing:
        rest.get_json("/api/v1/namespaces/default/secrets/none", timeout=5.0)
    error = missing.value
    assert (error.kind, error.status, error.reason) == ("status", 404, "NotFound")
    assert error.message == 'secrets "none" not found'
    assert str(error).startswith("/api/v1/namespaces/default/secrets/none: HTTP 404 NotFound")


def test_stop_interrupts_a_list_being_read(trickling_api: RestClient) -> None:
    reflector = Reflector(
        trickling_api,
        SERVICES,
        handler=None,  # type: ignore[arg-type]  # never reached: the list never completes
        list_timeout=HUNG_AFTER,
    )
    reflector.start()
    assert wait_until(lambda: reflector._open_response is not None)
    started = time.monotonic()
    reflector.stop(timeout=HUNG_AFTER)
    assert not reflector.is_alive()
    assert time.monotonic() - started < WELL_WITHIN
