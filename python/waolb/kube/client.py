"""The Kubernetes API client, configured the way kube-proxy picks its API server, and the
client-side rate limit every API request goes through.

``--kubeconfig`` names a kubeconfig file; ``--master`` names the API server URL and overrides the
kubeconfig's server. With neither, the in-cluster service account is used (KUBERNETES_SERVICE_HOST
and KUBERNETES_SERVICE_PORT plus the mounted token and CA).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import structlog
import yaml
from kubernetes import config as kube_config
from kubernetes.client import ApiClient, Configuration

from waolb import __version__

logger = structlog.get_logger(__name__)

USER_AGENT = f"waolb/{__version__}"


class KubeConfigError(ValueError):
    """No usable API server configuration; the message says what to fix."""


def load_configuration(
    kubeconfig: str | os.PathLike[str] | None = None,
    master: str | None = None,
    *,
    context: str | None = None,
) -> Configuration:
    """The client configuration from a kubeconfig file, a master URL, or the in-cluster account.

    Raises KubeConfigError when the kubeconfig is missing, unreadable or malformed, when the
    master URL is not an http(s) URL, or when nothing at all is configured.
    """
    configuration = Configuration()
    # Clients own their retry policy (the reflector backs off with jitter); urllib3's immediate
    # retries would only multiply requests against a struggling API server.
    configuration.retries = 0
    if kubeconfig is not None:
        _load_kubeconfig(Path(kubeconfig), context, configuration, master_given=master is not None)
    elif master is None:
        _load_in_cluster(configuration)
    if master is not None:
        configuration.host = _checked_master(master)
    return configuration


def build_api_client(
    kubeconfig: str | os.PathLike[str] | None = None,
    master: str | None = None,
    *,
    context: str | None = None,
) -> ApiClient:
    """An ApiClient for the configured API server (see load_configuration)."""
    api_client = ApiClient(load_configuration(kubeconfig, master, context=context))
    api_client.user_agent = USER_AGENT
    logger.info("kubernetes client configured", host=api_client.configuration.host)
    return api_client


def _load_kubeconfig(
    path: Path, context: str | None, configuration: Configuration, *, master_given: bool
) -> None:
    # The client's loader silently skips a missing file and lets parse errors of every kind
    # escape, so read and parse it here first for errors that say what is wrong.
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise KubeConfigError(
            f"kubeconfig {path} does not exist: fix --kubeconfig, or pass --master"
        ) from None
    except OSError as error:
        raise KubeConfigError(
            f"cannot read kubeconfig {path}: {error.strerror or error}; check the path and its "
            "permissions"
        ) from None
    try:
        document = yaml.safe_load(text)
    # ValueError: an integer of more than 4300 digits, which Python refuses to convert.
    except (yaml.YAMLError, ValueError) as error:
        raise KubeConfigError(f"kubeconfig {path} is not valid YAML: {error}") from None
    if not isinstance(document, dict):
        raise KubeConfigError(
            f"kubeconfig {path} is not a kubeconfig: expected a mapping with clusters, contexts "
            "and users"
        )
    # The loader only sets the host when the selected cluster names a server.
    configuration.host = ""
    try:
        kube_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(path),
            context=context,
            client_configuration=configuration,
            persist_config=False,
        )
    except (kube_config.ConfigException, KeyError, TypeError, AttributeError, ValueError) as error:
        raise KubeConfigError(f"kubeconfig {path} is invalid: {error}") from None
    if not configuration.host and not master_given:
        raise KubeConfigError(
            f"kubeconfig {path}: the current context's cluster has no server; set "
            "clusters[].cluster.server or pass --master"
        )


def _load_in_cluster(configuration: Configuration) -> None:
    try:
        kube_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except kube_config.ConfigException as error:
        raise KubeConfigError(
            f"neither --kubeconfig nor --master was given and the in-cluster configuration is "
            f"unusable ({error}); pass --kubeconfig or --master, or run in a pod with a service "
            "account"
        ) from None


def _checked_master(master: str) -> str:
    parts = urlsplit(master)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise KubeConfigError(
            f"--master {master!r} is not an API server URL; use e.g. https://10.0.0.1:6443"
        )
    return master.rstrip("/")


def _wait(delay: float, cancel: threading.Event | None) -> bool:
    """Sleep ``delay`` seconds; True if ``cancel`` was set meanwhile."""
    if cancel is None:
        time.sleep(delay)
        return False
    return cancel.wait(delay)


class TokenBucket:
    """client-go's request rate limiter (``--kube-api-qps``, ``--kube-api-burst``): ``burst``
    requests may go at once, then ``qps`` a second; one bucket is shared by every API request
    of the process, so that scoring's metrics and Secret reads count with the watches.

    Waiting callers are served in the order they asked: each takes a token, which may be one
    the bucket will only hold later, and waits until then. Thread-safe; the clock and the wait
    are injected for tests.
    """

    def __init__(
        self,
        qps: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float, threading.Event | None], bool] = _wait,
    ) -> None:
        if not (qps > 0 and math.isfinite(qps)) or burst < 1:
            raise ValueError(
                f"need a finite qps above 0 and a burst of 1 or more, got {qps}, {burst}"
            )
        self.qps = qps
        self.burst = burst
        self._clock = clock
        self._wait = wait
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._updated = clock()

    def acquire(self, within: float = math.inf, cancel: threading.Event | None = None) -> bool:
        """Wait for a token; False, without waiting or taking one, if the wait would exceed
        ``within`` seconds, or, having waited, if ``cancel`` was set meanwhile."""
        with self._lock:
            self._refill()
            delay = max(0.0, (1.0 - self._tokens) / self.qps)
            if delay > within:
                return False
            self._tokens -= 1.0
        if delay > 0 and self._wait(delay, cancel):
            with self._lock:  # cancelled: the token goes back for the next caller
                self._refill()
                self._tokens = min(float(self.burst), self._tokens + 1.0)
            return False
        return True

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.qps)
        self._updated = now
