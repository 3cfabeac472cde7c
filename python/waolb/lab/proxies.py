"""The real ``waolb`` process on a lab node, as a DaemonSet would run it: its command line is
the lab's only interface to it. Logs go to a file as JSON events; healthz and metrics are
read over HTTP inside the node's namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .netns import HUNG_AFTER, CommandError, entered, wait_until
from .topology import Node

#: kube-proxy's default ports; each node has its own namespace, so they never collide.
HEALTHZ_PORT = 10256
METRICS_PORT = 10249
PROXY_NAME_VARIABLE = "WAO_SERVICE_PROXY_NAME"
# Only a safety net: waolb stops in well under a second once told to.
STOP_GRACE = 30.0


def waolb_executable() -> Path:
    """The ``waolb`` entry point installed beside the running interpreter (the virtualenv's)."""
    path = Path(sys.executable).with_name("waolb")
    if not path.exists():
        raise CommandError(f"no waolb executable at {path}: run `make native` first")
    return path


@dataclass
class Proxy:
    """One node's waolb process. ``start()`` it (again after ``stop()`` to restart); every
    run appends to the same log file, ``logs()`` reads the current run's part."""

    node: Node
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    healthz_port: int = HEALTHZ_PORT
    metrics_port: int = METRICS_PORT
    process: subprocess.Popen[bytes] | None = None
    _log_offset: int = field(default=0, repr=False)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> Proxy:
        if self.running:
            raise CommandError(f"waolb on {self.node.name} is already running")
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.node.ns.name, *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # Ctrl-C reaches the lab's owner, which stops it
            )
        return self

    def stop(self, sig: int | None = None) -> int | None:
        """Stops the process (SIGTERM, or ``sig``), waits for it; returns its exit code."""
        if self.process is None:
            return None
        process = self.process
        if process.poll() is None:
            if sig is None:
                process.terminate()
            else:
                process.send_signal(sig)
            try:
                process.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=HUNG_AFTER)
        return process.returncode

    def restart(self) -> Proxy:
        self.stop()
        return self.start()

    # ---- what it says ----------------------------------------------------------------------------

    def logs(self, all_runs: bool = False) -> list[dict[str, Any]]:
        """The JSON log events of the current run (or every run)."""
        with self.log_path.open("rb") as log_file:
            log_file.seek(0 if all_runs else self._log_offset)
            lines = log_file.read().decode(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def events(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """Log events named ``event`` whose fields include ``fields``."""
        return [
            entry
            for entry in self.logs()
            if entry.get("event") == event and all(entry.get(k) == v for k, v in fields.items())
        ]

    def wait_for_event(self, event: str, **fields: Any) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            found = self.events(event, **fields)
            if not found and not self.running:
                raise CommandError(f"waolb on {self.node.name} exited: {self.logs()[-5:]}")
            return found[0] if found else None

        return wait_until(probe, interval=0.05, what=f"{event!r} logged by {self.node.name}")

    # ---- its servers ---------------------------------------------------------------------------

    def http(self, port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET ``path`` from its server on ``port`` (inside the node); (0, b"") if unreachable."""
        with entered(self.node.ns):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as error:
                return error.code, error.read()
            except OSError:
                return 0, b""

    def healthz(self) -> tuple[int, dict[str, Any] | None]:
        code, body = self.http(self.healthz_port, "/healthz")
        return code, (json.loads(body) if code else None)

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """Samples by name: ``{name: [(labels, value), ...]}``; empty if not reachable."""
        code, body = self.http(self.metrics_port, "/metrics")
        samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        if code != 200:
            return samples
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
        return samples

    def metric(self, name: str, **labels: str) -> float | None:
        """The sum of ``name``'s samples whose labels include ``labels``; None if none."""
        values = [
            value
            for sample_labels, value in self.metrics().get(name, [])
            if all(sample_labels.get(k) == v for k, v in labels.items())
        ]
        return sum(values) if values else None

    def wait_synced(self, since: float = 0.0) -> float:
        """Waits until a sync finished after ``since`` (time.time()) with nothing left queued;
        returns its time. It says nothing of changes the proxy has not seen yet: to wait for
        one change, wait for its effect (rules, traffic)."""

        def probe() -> float | None:
            if not self.running:
                raise CommandError(f"waolb on {self.node.name} exited: {self.logs()[-5:]}")
            last = self.metric("kubeproxy_sync_proxy_rules_last_timestamp_seconds")
            queued = self.metric("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds")
            if last and last > since and (queued is None or last >= queued):
                return last
            return None

        return wait_until(probe, interval=0.05, what=f"a sync by waolb on {self.node.name}")


def proxy_command(
    node: Node,
    connection: Sequence[str],
    flags: Sequence[str],
    *,
    healthz_port: int = HEALTHZ_PORT,
    metrics_port: int = METRICS_PORT,
) -> list[str]:
    """waolb's command line for ``node``: ``connection`` is ``--master=URL`` or
    ``--kubeconfig=PATH``; ``flags`` come last, so they win."""
    return [
        str(waolb_executable()),
        *connection,
        f"--hostname-override={node.name}",
        f"--healthz-bind-address=0.0.0.0:{healthz_port}",
        f"--metrics-bind-address=127.0.0.1:{metrics_port}",
        "--log-format=json",
        "--v=2",
        *flags,
    ]


def proxy_environment(
    proxy_name: str | None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """This process's environment without ``WAO_SERVICE_PROXY_NAME`` unless ``proxy_name``."""
    env = {k: v for k, v in os.environ.items() if k != PROXY_NAME_VARIABLE}
    if proxy_name is not None:
        env[PROXY_NAME_VARIABLE] = proxy_name
    env.update(extra or {})
    return env
