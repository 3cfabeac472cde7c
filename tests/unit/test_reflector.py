"""The watch layer (waolb.kube) against the test API server, through the real Kubernetes client."""

from __future__ import annotations

import gc
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient

from kubeapi import ENDPOINT_SLICES as ENDPOINT_SLICE_TYPE
from kubeapi import NODES as NODE_TYPE
from kubeapi import SERVICES as SERVICE_TYPE
from kubeapi import KubeApiServer
from kubeapi.objects import endpoint_slice, node, service
from netns import HUNG_AFTER
from waolb.kube.client import KubeConfigError, build_api_client, load_configuration
from waolb.kube.reflector import Reflector
from waolb.kube.resources import ENDPOINT_SLICES, NODES, SERVICES, Resource
from waolb.kube.rest import RestClient
from waolb.runner import Backoff

PROXY_NAME = "service.kubernetes.io/service-proxy-name"
HEADLESS = "service.kubernetes.io/headless"
FAST_BACKOFF = Backoff(initial=0.05, cap=0.2)


def wait_until(condition: Callable[[], bool], timeout: float = HUNG_AFTER) -> bool:
    """Poll ``condition`` until it holds; False if it still does not after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class RecordingHandler:
    """Keeps the objects the reflector hands over, and the calls, for the test thread."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []  # (method, name or resourceVersion)
        self.replaced: list[list[dict[str, Any]]] = []
        self.fail_next_upsert = False
        self._changed = threading.Condition()

    def replace(self, kind: str, objects: list[dict[str, Any]], resource_version: str) -> None:
        with self._changed:
            self.objects = {_key(obj): obj for obj in objects}
            self.replaced.append(objects)
            self.calls.append(("replace", resource_version))
            self._changed.notify_all()

    def upsert(self, kind: str, obj: dict[str, Any]) -> None:
        if self.fail_next_upsert:
            self.fail_next_upsert = False
            raise RuntimeError("handler bug")
        with self._changed:
            self.objects[_key(obj)] = obj
            self.calls.append(("upsert", obj["metadata"]["name"]))
            self._changed.notify_all()

    def delete(self, kind: str, obj: dict[str, Any]) -> None:
        with self._changed:
            self.objects.pop(_key(obj), None)
            self.calls.append(("delete", obj["metadata"]["name"]))
            self._changed.notify_all()

    def names(self) -> set[str]:
        with self._changed:
            return {name for _, name in self.objects}

    def wait_for_names(self, *names: str, timeout: float = HUNG_AFTER) -> bool:
        with self._changed:
            return self._changed.wait_for(
                lambda: {name for _, name in self.objects} == set(names), timeout
            )


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


class Restarts:
    """An on_restart callback that remembers (kind, reason) pairs and when they came."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.times: list[float] = []

    def __call__(self, kind: str, reason: str) -> None:
        self.times.append(time.monotonic())
        self.seen.append((kind, reason))

    def reasons(self) -> list[str]:
        return [reason for _, reason in self.seen]


StartReflector = Callable[..., tuple[Reflector, RecordingHandler]]


@pytest.fixture
def api_client(kube_api: KubeApiServer) -> Iterator[ApiClient]:
    client = build_api_client(master=kube_api.url)
    yield client
    client.close()


@pytest.fixture
def start_reflector(api_client: ApiClient) -> Iterator[StartReflector]:
    """Starts reflectors (synced before it returns) and stops them after the test."""
    started: list[Reflector] = []

    def start(
        resource: Resource = SERVICES, handler: RecordingHandler | None = None, **options: Any
    ) -> tuple[Reflector, RecordingHandler]:
        handler = handler or RecordingHandler()
        options.setdefault("backoff", FAST_BACKOFF)
        reflector = Reflector(RestClient(api_client), resource, handler, **options)
        started.append(reflector)
        reflector.start()
        assert reflector.wait_for_sync(5.0)
        return reflector, handler

    yield start
    for reflector in started:
        reflector.stop()
        assert not reflector.is_alive()


def list_count(server: KubeApiServer) -> int:
    return server.count_requests(verb="list", path=SERVICES.collection_path)


# Listing and watching.


def test_initial_list_then_every_change(
    kube_api: KubeApiServer, start_reflector: StartReflector
) -> None:
    kube_api.create(service("web"))
    kube_api.create(service("db", "other"))
    kube_api.create(node("node-a"))
    reflector, handler = start_reflector()

    assert reflector.has_synced
    assert handler.calls == [("replace", str(kube_api.resource_version))]
    assert reflector.resource_version == str(kube_api.resource_version)
    # List items are completed with apiVersion and kind, like watch event objects.
    web = handler.objects[("default", "web")]
    assert (web["apiVersion"], web["kind"]) == ("v1", "Service")

    kube_api.create(service("cache"))
    kube_api.patch(SERVICE_TYPE, "web", {"metadata": {"labels": {"v": "2"}}}, "default")
    kube_api.delete(SERVICE_TYPE, "db", "other")
    assert handler.wait_for_names("web", "cache")
    assert handler.calls[1:] == [("upsert", "cache"), ("upsert", "web"), ("delete", "db")]
    assert handler.objects[("default", "web")]["metadata"]["labels"] == {"v": "2"}
    assert list_count(kube_api) == 1


def test_the_first_list_reads_the_cache_and_relists_read_pages_of_one_snapshot(
    kube_api: KubeApiServer, start_reflector: StartReflector
) -> None:
    for index in range(5):
        kube_api.create(endpoint_slice(f"web-{index}", "web"))
    _, handler = start_reflector(ENDPOINT_SLICES, page_size=2)
    assert handler.names() == {f"web-{index}" for index in range(5)}
    lists = kube_api.requests(verb="list", path=ENDPOINT_SLICES.collection_path)
    # One response from the API server's watch cache, as client-go's first list.
    assert [(r.query.get("resourceVersion"), r.query.get("limit")) for r in lists] == [("0", None)]
    assert handler.objects[("default", "web-0")]["kind"] == "EndpointSlice"

    # History expired: the relist is a consistent read, in pages of one snapshot.
    assert kube_api.wait_for_watches(ENDPOINT_SLICE_TYPE)
    kube_api.create(endpoint_slice("web-5", "web"))
    assert kube_api.expire_watches(ENDPOINT_SLICE_TYPE) == 1
    assert wait_until(lambda: sum(call[0] == "replace" for call in handler.calls) == 2)
    relists = kube_api.requests(verb="list", path=ENDPOINT_SLICES.collection_path)[1:]
    assert [request.query.get("limit") for request in relists] == ["2", "2", "2"]
    assert ["continue" in request.query for request in relists] == [False, True, True]
    assert handler.names() == {f"web-{index}" for index in range(6)}


def test_label_selector_for_a_named_proxy_is_applied_by_the_server(
    kube_api: KubeApiServer, start_reflector: StartReflector
) -> None:
    kube_api.create(service("mine", labels={PROXY_NAME: "waolb"}))
    kube_api.create(service("theirs", labels={PROXY_NAME: "other"}))
    kube_api.create(service("plain"))
    _, handler = start_reflector(label_selector=f"{PROXY_NAME}=waolb")
    assert handler.names() == {"mine"}

    # Relabelling moves a Service in and out of the proxy's view.
    kube_api.patch(SERVICE_TYPE, "plain", {"metadata": {"labels": {PROXY_NAME: "waolb"}}})
    kube_api.patch(SERVICE_TYPE, "mine", {"metadata": {"labels": {PROXY_NAME: None}}})
    assert handler.wait_for_names("plain")
    assert handler.calls[1:] == [("upsert", "plain"), ("delete", "mine")]
    requests = kube_api.requests(path=SERVICES.collection_path)
    selectors = {request.query.get("labelSelector") for request in requests}
    assert selectors == {f"{PROXY_NAME}=waolb"}


def test_the_default_proxy_selector_skips_named_proxies_and_headless_services(
    kube_api: KubeApiServer, start_reflector: StartReflector
) -> None:
    kube_api.create(service("mine", labels={PROXY_NAME: "waolb"}))
    kube_api.create(service("headless", labels={HEADLESS: ""}))
    kube_api.create(service("plain", labels={"app": "web"}))
    _, handler = start_reflector(label_selector=f"!{PROXY_NAME},!{HEADLESS}")
    assert handler.names() == {"plain"}
    kube_api.create(service("another"))
    kube_api.create(service("another-headless", labels={HEADLESS: ""}))
    assert handler.wait_for_names("plain", "another")


def test_field_selector_watches_one_node(
    kube_api: KubeApiServer, start_reflector: StartReflector
) -> None:
    for name in ("node-a", "node-b"):
        kube_api.create(node(name))
    _, handler = start_reflector(NODES, field_selector="metadata.name=node-b")
    assert handler.names() == {"node-b"}
    kube_api.patch(NODE_TYPE, "node-a", {"metadata": {"labels": {"x": "1"}}})
    kube_api.patch(NODE_TYPE, "node-b", {"metadata": {"labels": {"x": "1"}}})
    assert wait_until(lambda: len(handler.calls) == 2)
    assert handler.calls[1] == ("upsert", "node-b")
    assert handler.objects[("", "node-b")]["metadata"]["labels"] == {"x": "1"}


def test_events_split_across_many_chunks_are_reassembled(
    kube_api: KubeApiServer, start_reflector: StartReflector
) -> None:
    kube_api.watch_chunk_size = 7
    _, handler = start_reflector()
    big = service("big")
    big["metadata"]["annotations"] = {"note": "x" * 100_000}
    kube_api.create(big)
    kube_api.create(service("small"))
    assert handler.wait_for_names("big", "small")
    assert handler.objects[("default", "big")]["metadata"]["annotations"] == {"note": "x" * 100_000}


def test_bookmarks_advance_the_resource_version(
    kube_api: KubeApiServer, start_reflector: StartReflector
) -> None:
    reflector, handler = start_reflector()
    kube_api.create(node("node-a"))  # another type: no event for this reflector
    assert wait_until(lambda: reflector.resource_version == str(kube_api.resource_version))
    assert len(handler.calls) == 1


def test_watch_timeouts_resume_from_the_last_version_without_relisting(
    kube_api: KubeApiServer, start_reflector: StartReflector
) -> None:
    restarts = Restarts()
    _, handler = start_reflector(watch_timeout=1, on_restart=restarts)
    assert wait_until(lambda: kube_api.count_requests(verb="watch") >= 3)
    kube_api.create(service("web"))
    assert handler.wait_for_names("web")
    assert list_count(kube_api) == 1
    assert set(restarts.reasons()) == {"closed"}
    asked = [int(request.query["timeoutSeconds"]) for request in kube_api.requests(verb="watch")]
    assert all(1 <= seconds <= 2 for seconds in asked)


# Recovery.


def test_410_gone_mid_watch_relists_and_replaces(
    kube_api: KubeApiServer, start_reflector: StartReflector
) -> None:
    kube_api.create(service("web"))
    kube_api.create(service("db"))
    restarts = Restarts()
    _, handler = start_reflector(on_restart=restarts)
    kube_api.create(service("cache"))
    assert handler.wait_for_names("web", "db", "cache")

    with kube_api.failing(500, verbs={"list"}):
        assert kube_api.expire_watches(SERVICE_TYPE) == 1
        # While the relist fails nothing streams: these changes reach the handler only
        # through the replace that follows.
        assert wait_until(lambda: list_count(kube_api) >= 2)
        kube_api.delete(SERVICE_TYPE, "web", "default")
        kube_api.create(service("queue"))
    assert handler.wait_for_names("db", "cache", "queue")

    assert restarts.reasons()[0] == "gone"
    assert handler.calls[-1] == ("replace", str(kube_api.resource_version))
    assert {obj["metadata"]["name"] for obj in handler.replaced[-1]} == {"db", "cache", "queue"}
    assert kube_api.wait_for_watches(SERVICE_TYPE)
    last_watch = kube_api.requests(verb="watch")[-1]
    assert last_watch.query["resourceVersion"] == str(kube_api.resource_version)


def test_dropped_watches_resume_without_losing_events_or_relisting(
    kube_api: KubeApiServer, start_reflector: StartReflector
) -> None:
    kube_api.create(service("web"))
    restarts = Restarts()
    reflector, handler = start_reflector(on_restart=restarts)
    kube_api.create(service("db"))
    assert handler.wait_for_names("web", "db")
    last_seen = reflector.resource_version

    with kube_api.failing(503, verbs={"watch"}):
        assert kube_api.drop_watches() == 1
        # The reflector cannot watch again yet: every change now happens in the gap.
        assert wait_until(lambda: kube_api.count_requests(verb="watch") >= 3)
        kube_api.create(service("cache"))
        kube_api.patch(SERVICE_TYPE, "web", {"metadata": {"labels": {"v": "2"}}}, "default")
        kube_api.delete(SERVICE_TYPE, "db", "default")
    assert handler.wait_for_names("web", "cache")

    assert handler.calls[2:] == [("upsert", "cache"), ("upsert", "web"), ("delete", "db")]
    assert list_count(kube_api) == 1
    assert restarts.reasons()[0] == "dropped"
    assert set(restarts.reasons()[1:]) == {"error"}
    resumed = kube_api.requests(verb="watch")[1:]
    assert {request.query["resourceVersion"] for request in resumed} == {last_seen}


def shortest_backoffs(backoff: Backoff, count: int) -> list[float]:
    """The least wait before each of ``count`` retries in a row: each fully jittered down."""
    return [
        min(backoff.cap, backoff.initial * backoff.factor**attempt) * (1 - backoff.jitter)
        for attempt in range(count)
    ]


# A slow or busy machine only lengthens the gaps between retries, so the tests below check
# each gap against the least wait the backoff allows (a busy loop would fail that at once) and
# wait for a number of retries, never count what fits in a window of time.
CLOCK_SLACK = 0.05  # seconds: timer and clock granularity


def test_failing_api_server_gets_a_trickle_of_requests_not_a_busy_loop(
    kube_api: KubeApiServer, start_reflector: StartReflector
) -> None:
    backoff = Backoff()  # the default: 0.8 s doubling, jittered down by up to half
    _, handler = start_reflector(backoff=backoff)
    with kube_api.failing(500):
        before = kube_api.count_requests()
        kube_api.drop_watches()
        # The resume right after a healthy watch, then three retries after backoffs.
        assert wait_until(lambda: kube_api.count_requests() >= before + 4)
        failed = kube_api.requests()[before : before + 4]
    assert [request.code for request in failed] == [500] * 4
    gaps = [b.answered_at - a.answered_at for a, b in itertools.pairwise(failed)]
    for gap, least in zip(gaps, shortest_backoffs(backoff, 3), strict=True):
        assert gap >= least - CLOCK_SLACK, (gaps, least)
    assert kube_api.wait_for_watches(SERVICE_TYPE)
    kube_api.create(service("web"))
    assert handler.wait_for_names("web")


def test_stopped_api_server_backs_off_then_recovers_without_relisting(
    kube_api: KubeApiServer, start_reflector: StartReflector
) -> None:
    restarts = Restarts()
    backoff = Backoff(initial=0.2, cap=1.0)
    _, handler = start_reflector(backoff=backoff, on_restart=restarts)
    kube_api.stop()
    # Dropped, then connection refused after each backoff: 0.1-0.2, 0.2-0.4, 0.4-0.8, 0.5-1 s.
    assert wait_until(lambda: len(restarts.seen) >= 5)
    attempts = restarts.reasons()
    assert attempts[0] == "dropped"
    assert set(attempts[1:]) == {"error"}
    gaps = [b - a for a, b in itertools.pairwise(restarts.times[:5])]
    for gap, least in zip(gaps, shortest_backoffs(backoff, 4), strict=True):
        assert gap >= least - CLOCK_SLACK, (gaps, least)

    kube_api.start()
    assert kube_api.wait_for_watches(SERVICE_TYPE)
    kube_api.create(service("web"))
    assert handler.wait_for_names("web")
    # Nothing was written while it was down: the watch resumed where it stopped.
    assert list_count(kube_api) == 1


def test_writes_while_the_api_server_is_down_are_recovered_by_a_relist(
    kube_api: KubeApiServer, start_reflector: StartReflector
) -> None:
    kube_api.create(service("web"))
    restarts = Restarts()
    _, handler = start_reflector(on_restart=restarts)
    kube_api.stop()
    kube_api.delete(SERVICE_TYPE, "web", "default")
    kube_api.create(service("db"))
    kube_api.start()  # its watch cache starts after those writes: resuming gets 410
    assert handler.wait_for_names("db")
    assert "gone" in restarts.reasons()
    assert handler.calls[-1][0] == "replace"
    assert list_count(kube_api) == 2


def test_a_failing_handler_gets_a_fresh_replace(
    kube_api: KubeApiServer, start_reflector: StartReflector
) -> None:
    restarts = Restarts()
    _, handler = start_reflector(on_restart=restarts)
    handler.fail_next_upsert = True
    kube_api.create(service("web"))
    assert handler.wait_for_names("web")
    assert restarts.reasons() == ["handler_error"]
    assert handler.calls[-1][0] == "replace"


def test_stop_interrupts_a_blocked_watch(
    kube_api: KubeApiServer, start_reflector: StartReflector
) -> None:
    reflector, _ = start_reflector()
    assert kube_api.wait_for_watches(SERVICE_TYPE)
    started = time.monotonic()
    reflector.stop()
    assert not reflector.is_alive()
    # Interrupted: the watch itself would have lasted its timeout, 5 minutes or more.
    assert time.monotonic() - started < 60
    assert wait_until(lambda: kube_api.watch_count() == 0)


class GatedHandler(RecordingHandler):
    """A handler whose replace notes whether the garbage collector runs, between two gates."""

    def __init__(self, before: Callable[[], None], after: Callable[[], None]) -> None:
        super().__init__()
        self.before, self.after = before, after
        self.collector_enabled: list[bool] = []

    def replace(self, kind: str, objects: list[dict[str, Any]], resource_version: str) -> None:
        self.before()
        self.collector_enabled.append(gc.isenabled())
        super().replace(kind, objects, resource_version)
        self.after()


def test_the_collector_is_held_off_until_the_last_of_overlapping_lists_is_handed_over(
    kube_api: KubeApiServer, start_reflector: StartReflector
) -> None:
    kube_api.create(service("web"))
    kube_api.create(endpoint_slice("web-a", "web"))
    first_inside, second_inside = threading.Event(), threading.Event()

    def first_watch_sent() -> None:
        """The Service reflector is past its list (it watches): it was first in, first out."""
        first_inside.wait(5)
        second_inside.set()
        assert wait_until(lambda: kube_api.count_requests(verb="watch") > 0)

    services = GatedHandler(first_inside.set, lambda: second_inside.wait(5))
    slices = GatedHandler(first_watch_sent, lambda: None)
    assert gc.isenabled()
    with ThreadPoolExecutor(2) as pool:
        pool.submit(start_reflector, SERVICES, handler=services)
        pool.submit(start_reflector, ENDPOINT_SLICES, handler=slices)
    assert services.names() == {"web"}
    assert slices.names() == {"web-a"}
    assert (services.collector_enabled, slices.collector_enabled) == ([False], [False])
    assert gc.isenabled()


# Client configuration.


def write_kubeconfig(path: Path, server: str | None, token: str = "secret") -> Path:
    cluster: dict[str, Any] = {} if server is None else {"server": server}
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": cluster}],
                "users": [{"name": "test", "user": {"token": token}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
                "current-context": "test",
            }
        )
    )
    return path


def test_kubeconfig_reaches_the_server(kube_api: KubeApiServer, tmp_path: Path) -> None:
    kube_api.create(service("web"))
    kubeconfig = write_kubeconfig(tmp_path / "config", kube_api.url)
    client = build_api_client(kubeconfig)
    handler = RecordingHandler()
    reflector = Reflector(RestClient(client), SERVICES, handler)
    reflector.start()
    try:
        assert reflector.wait_for_sync(5.0)
        assert handler.names() == {"web"}
    finally:
        reflector.stop()
        client.close()
    assert client.configuration.api_key["BearerToken"] == "Bearer secret"


def test_master_overrides_the_kubeconfig_server(kube_api: KubeApiServer, tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "config", "https://nowhere.invalid:6443")
    assert load_configuration(kubeconfig, master=kube_api.url).host == kube_api.url
    # A kubeconfig without a server is fine when --master supplies one.
    serverless = write_kubeconfig(tmp_path / "serverless", None)
    assert load_configuration(serverless, master=kube_api.url + "/").host == kube_api.url


def test_master_alone_needs_no_kubeconfig(kube_api: KubeApiServer) -> None:
    configuration = load_configuration(master=kube_api.url)
    assert configuration.host == kube_api.url
    assert configuration.api_key == {}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("directory", "cannot read kubeconfig"),
        ("clusters: [unclosed", "is not valid YAML"),
        (f"port: {'9' * 5000}", "is not valid YAML"),
        ("just a string", "is not a kubeconfig"),
        ("clusters: []\ncontexts: []\nusers: []\ncurrent-context: missing", "is invalid"),
        ("serverless", "has no server"),
    ],
)
def test_unusable_kubeconfigs_raise_a_clear_error(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "config"
    if content == "directory":
        path.mkdir()
    elif content == "serverless":
        write_kubeconfig(path, None)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(KubeConfigError, match=message) as error:
        load_configuration(path)
    assert str(path) in str(error.value)


def test_a_kubeconfig_pointing_at_no_server_leaves_the_reflector_unsynced(
    tmp_path: Path, kube_api: KubeApiServer
) -> None:
    port = kube_api.port
    kube_api.stop()  # nothing listens on the port any more
    client = build_api_client(write_kubeconfig(tmp_path / "config", f"http://127.0.0.1:{port}"))
    restarts = Restarts()
    reflector = Reflector(
        RestClient(client), SERVICES, RecordingHandler(), backoff=FAST_BACKOFF, on_restart=restarts
    )
    reflector.start()
    try:
        assert wait_until(lambda: len(restarts.seen) >= 2)
        assert not reflector.has_synced
        assert set(restarts.reasons()) == {"error"}
    finally:
        reflector.stop()
        client.close()


@pytest.mark.parametrize("master", ["10.0.0.1:6443", "ftp://10.0.0.1", "https://"])
def test_a_malformed_master_url_raises_a_clear_error(master: str) -> None:
    with pytest.raises(KubeConfigError, match="is not an API server URL"):
        load_configuration(master=master)


def test_nothing_configured_outside_a_cluster_raises_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    with pytest.raises(KubeConfigError, match="pass --kubeconfig or --master"):
        load_configuration()
    # In-cluster variables without the service account files are no better.
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(KubeConfigError, match="token file does not exist"):
        load_configuration()
