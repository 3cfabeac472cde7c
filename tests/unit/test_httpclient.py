"""httpclient: every request ends by its deadline, whatever the peer does (real loopback peers).

Each hostile peer would hold a request for HUNG_AFTER (300 s) if it could; the client's deadline
is 1 s, and each test asserts the request ended well within 30 s: orders of magnitude apart, so
a busy machine cannot make a test fail, nor a broken deadline pass.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import urllib3

from hostile import Trickle, TricklingServer, unaccepting_listener
from kubeapi import KubeApiServer
from netns import HUNG_AFTER
from waolb import httpclient

DEADLINE = 1.0
WELL_WITHIN = 30.0
HUNG = HUNG_AFTER


@pytest.fixture
def manager() -> Iterator[urllib3.PoolManager]:
    pools = httpclient.pool_manager(maxsize=4)
    yield pools
    pools.clear()


def ended_by_deadline(call: pytest.ExceptionInfo[httpclient.HttpError], started: float) -> None:
    assert call.value.kind == "timeout", call.value
    assert time.monotonic() - started < WELL_WITHIN


@pytest.mark.parametrize(
    "trickle", [Trickle.HEADERS, Trickle.BODY, Trickle.NOTHING, Trickle.TLS_HANDSHAKE]
)
def test_a_trickling_peer_cannot_hold_a_request_past_its_deadline(
    manager: urllib3.PoolManager, trickle: Trickle
) -> None:
    with TricklingServer(trickle) as server:
        started = time.monotonic()
        with pytest.raises(httpclient.HttpError) as trickled:
            httpclient.request(manager, "GET", f"{server.url}/", timeout=DEADLINE)
        ended_by_deadline(trickled, started)
        assert server.connections == 1  # and nothing retried behind the caller's back


def test_a_trickled_post_ends_by_its_deadline_too(manager: urllib3.PoolManager) -> None:
    with TricklingServer(Trickle.BODY) as server:
        started = time.monotonic()
        with pytest.raises(httpclient.HttpError) as trickled:
            httpclient.request(
                manager, "POST", f"{server.url}/infer", timeout=DEADLINE, body=b'{"inputs": []}'
            )
        ended_by_deadline(trickled, started)


def test_a_connection_never_accepted_ends_by_the_deadline(manager: urllib3.PoolManager) -> None:
    with unaccepting_listener() as url:
        started = time.monotonic()
        with pytest.raises(httpclient.HttpError) as unaccepted:
            httpclient.request(manager, "GET", f"{url}/", timeout=DEADLINE)
        ended_by_deadline(unaccepted, started)


def test_a_stream_ends_by_its_deadline_while_data_keeps_coming(
    manager: urllib3.PoolManager,
) -> None:
    """Watches keep their own liveness rule (read_timeout, here far above the trickle's
    interval) and still end by their deadline."""
    with TricklingServer(Trickle.BODY, interval=0.05) as server:
        started = time.monotonic()
        received = 0
        with (
            pytest.raises(httpclient.HttpError) as stream,
            httpclient.open_request(
                manager, "GET", f"{server.url}/watch", timeout=DEADLINE, read_timeout=HUNG
            ) as response,
        ):
            for chunk in response.chunks():
                received += len(chunk)
        ended_by_deadline(stream, started)
        assert received > 0


def test_interrupt_ends_a_blocked_read_from_another_thread(manager: urllib3.PoolManager) -> None:
    with TricklingServer(Trickle.BODY) as server:
        response = httpclient.open_request(manager, "GET", f"{server.url}/", timeout=HUNG)
        timer = threading.Timer(0.2, response.interrupt)
        started = time.monotonic()
        timer.start()
        with response, pytest.raises(httpclient.HttpError) as interrupted:
            response.read()
        assert interrupted.value.kind == "interrupted"
        assert time.monotonic() - started < WELL_WITHIN


def test_answers_within_the_deadline_reuse_their_connection(
    kube_api: KubeApiServer, manager: urllib3.PoolManager
) -> None:
    url = f"{kube_api.url}/api/v1/services"
    answers = [httpclient.request(manager, "GET", url, timeout=DEADLINE) for _ in range(5)]
    assert [answer.status for answer in answers] == [200] * 5
    assert b'"kind":"ServiceList"' in answers[0].body.replace(b" ", b"")
    # One connection served all five: deadlines that did not pass leave connections alone.
    assert manager.connection_from_url(url).num_connections == 1


def test_a_connection_whose_deadline_passed_is_never_reused(
    kube_api: KubeApiServer, manager: urllib3.PoolManager
) -> None:
    url = f"{kube_api.url}/api/v1/services"
    with kube_api.slow(HUNG, count=1), pytest.raises(httpclient.HttpError) as slow:
        httpclient.request(manager, "GET", url, timeout=DEADLINE)
    assert slow.value.kind == "timeout"
    assert httpclient.request(manager, "GET", url, timeout=DEADLINE).status == 200


def test_bodies_beyond_the_callers_limit_are_refused(
    kube_api: KubeApiServer, manager: urllib3.PoolManager
) -> None:
    url = f"{kube_api.url}/api/v1/services"
    body = httpclient.request(manager, "GET", url, timeout=DEADLINE).body
    with pytest.raises(httpclient.HttpError) as large:
        httpclient.request(manager, "GET", url, timeout=DEADLINE, max_body=len(body) - 1)
    assert large.value.kind == "too_large"
    assert httpclient.request(manager, "GET", url, timeout=DEADLINE, max_body=len(body)).body


def test_refused_connections_and_credentials_in_messages(manager: urllib3.PoolManager) -> None:
    with unaccepting_listener() as url:
        port = url.rpartition(":")[2]
    with pytest.raises(httpclient.HttpError) as refused:
        httpclient.request(
            manager, "GET", f"http://user:secret@127.0.0.1:{port}/", timeout=DEADLINE
        )
    assert refused.value.kind == "connection"
    assert "secret" not in str(refused.value)
    assert refused.value.url == f"http://***@127.0.0.1:{port}/"


def test_only_prepared_pool_managers_are_accepted() -> None:
    with pytest.raises(ValueError, match="install"):
        httpclient.request(urllib3.PoolManager(), "GET", "http://127.0.0.1:1/", timeout=1.0)
