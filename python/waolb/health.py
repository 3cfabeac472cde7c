"""The proxier health check kube-proxy serves on its healthz address.

``/healthz`` and ``/livez`` answer 200 while the rules keep up with the API and 503 once a
queued change has waited longer than the health timeout (2 x syncPeriod) without a successful
sync. Start-up counts as a queued change, so a proxy that never manages a first sync turns
unhealthy too. ``/healthz`` also reports 503 when this node is being deleted (deletion
timestamp, or the cluster autoscaler's ToBeDeleted taint), so that load balancers drain it;
``/livez`` ignores the node, so the kubelet does not restart a proxy for it. Both report 503
for good once a background thread the rules depend on has died (:meth:`ProxierHealth.crashed`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from waolb import logs
from waolb.httpserver import JSON, Response, Route
from waolb.metrics import ProxyMetrics

log = logs.get_logger(__name__)

TO_BE_DELETED_TAINT: Final = "ToBeDeletedByClusterAutoscaler"


@dataclass(frozen=True)
class HealthStatus:
    healthy: bool
    last_updated: float | None
    current_time: float
    node_eligible: bool


def go_time(timestamp: float | None) -> str:
    """A time as Go's time.Time prints it (kube-proxy's healthz body), in UTC."""
    if timestamp is None:
        return "0001-01-01 00:00:00 +0000 UTC"
    moment = datetime.fromtimestamp(timestamp, UTC)
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    return (
        moment.strftime("%Y-%m-%d %H:%M:%S") + (f".{fraction}" if fraction else "") + " +0000 UTC"
    )


class ProxierHealth:
    def __init__(
        self,
        health_timeout: float,
        metrics: ProxyMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._timeout = health_timeout
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        self._last_updated: float | None = None
        self._oldest_queued: float | None = clock()
        self._node_eligible = True
        self._crash: str | None = None

    def crashed(self, what: str, error: BaseException) -> None:
        """A thread the rules depend on died: unhealthy from now on, so that it is restarted."""
        log.critical("unhealthy: a background thread died", thread=what, error=repr(error))
        with self._lock:
            self._crash = f"{what}: {error!r}"

    def queued_update(self) -> None:
        """Changes arrived that the rules do not reflect yet."""
        with self._lock:
            if self._oldest_queued is None:
                self._oldest_queued = self._clock()

    def updated(self) -> None:
        """A sync succeeded: the rules reflect everything queued before it."""
        with self._lock:
            self._oldest_queued = None
            self._last_updated = self._clock()

    def sync_node(self, node: Mapping[str, Any] | None) -> None:
        """Follow this node's object; None means it was deleted."""
        eligible = node is not None and not (node.get("metadata") or {}).get("deletionTimestamp")
        if eligible and node is not None:
            taints = (node.get("spec") or {}).get("taints") or []
            eligible = not any(
                isinstance(t, dict) and t.get("key") == TO_BE_DELETED_TAINT for t in taints
            )
        with self._lock:
            if eligible != self._node_eligible:
                log.info("node eligibility changed", eligible=eligible)
            self._node_eligible = eligible

    def status(self) -> HealthStatus:
        with self._lock:
            now = self._clock()
            queued = self._oldest_queued
            return HealthStatus(
                healthy=self._crash is None and (queued is None or now - queued < self._timeout),
                last_updated=self._last_updated,
                current_time=now,
                node_eligible=self._node_eligible,
            )

    def healthz(self) -> Response:
        status = self.status()
        healthy = status.healthy and status.node_eligible
        self._metrics.healthz_responses.labels("200" if healthy else "503").inc()
        body = {**_times(status, healthy), "nodeEligible": status.node_eligible}
        return Response(200 if healthy else 503, json.dumps(body).encode(), JSON)

    def livez(self) -> Response:
        status = self.status()
        self._metrics.livez_responses.labels("200" if status.healthy else "503").inc()
        body = json.dumps(_times(status, status.healthy)).encode()
        return Response(200 if status.healthy else 503, body, JSON)

    def routes(self) -> dict[str, Route]:
        return {"/healthz": self.healthz, "/livez": self.livez}


def _times(status: HealthStatus, healthy: bool) -> dict[str, str]:
    # As kube-proxy: a healthy proxy reports lastUpdated as now, for older clients that read
    # it as "the sync loop is alive".
    last_updated = status.current_time if healthy else status.last_updated
    return {"lastUpdated": go_time(last_updated), "currentTime": go_time(status.current_time)}
