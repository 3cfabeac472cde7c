"""A real Kubernetes control plane for the tests: Debian's etcd and kube-apiserver v1.34.

The pair runs in a network namespace of its own ("cp"), started once per test session
(``start_control_plane``). Nodes reach it over a veth pair each (:meth:`ControlPlane.attach`) at
``API_ADDRESS``; the test process reaches it through a relay on its own loopback
(:attr:`ControlPlane.url`). The setup makes a CA and certificates, an admin token (group
system:masters), and ServiceAccount tokens through the TokenRequest API; the API server authorizes
with RBAC and writes an audit log of what ServiceAccounts asked (:meth:`ControlPlane.audit`), so a
test can see every permission a process used or was refused.

kube-apiserver, kube-proxy and kubectl are built from Go modules (tools/kubernetes) by
``make kubernetes`` into ``KUBE_BIN``; etcd is Debian's etcd-server.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import urllib3
import yaml

from kubeapi import ResourceType
from netns import HUNG_AFTER, Netns, host_run, stop_process, wait_until

from .pki import KeyPair, Pki, new_pki, service_account_keys
from .relay import Relay

REPO = Path(__file__).resolve().parents[3]
KUBE_BIN = REPO / ".venv" / "kubernetes" / "bin"
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
# The control plane's own address inside its namespace (on its loopback device), routed to from
# every attached node. The namespace is private, so its ports are fixed.
API_ADDRESS = "172.30.255.1"
API_PORT = 6443
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
SERVICE_CIDR = "10.96.0.0/16"
ADMIN_USER = "test-admin"
# Admission plugins on by default that need controllers which do not run here (no
# controller-manager, no scheduler); NamespaceLifecycle stays.
DISABLED_ADMISSION = (
    "ServiceAccount,PodTopologyLabels,MutatingAdmissionPolicy,LimitRanger,Priority,"
    "TaintNodesByCondition,PodSecurity,DefaultTolerationSeconds,DefaultStorageClass,"
    "StorageObjectInUseProtection,PersistentVolumeClaimResize,RuntimeClass,CertificateApproval,"
    "CertificateSigning,ClusterTrustBundleAttest,CertificateSubjectRestriction,"
    "DefaultIngressClass,ResourceQuota,MutatingAdmissionWebhook,ValidatingAdmissionPolicy,"
    "ValidatingAdmissionWebhook"
)
# What the audit log records: every request a ServiceAccount makes, at Metadata level.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
"""
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def missing_prerequisite() -> str | None:
    """Why the real control plane cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "the real control plane runs in a network namespace: needs root"
    for binary in ("kube-apiserver", "kubectl"):
        if not (KUBE_BIN / binary).is_file():
            return f"{KUBE_BIN / binary} is missing: run `make kubernetes`"
    if not Path(ETCD).is_file():
        return "etcd is missing: install Debian's etcd-server (make deps)"
    if shutil.which("openssl") is None:
        return "openssl is missing (make deps)"
    return None


def _die_with_parent() -> None:
    """In the child before exec: killed if the test process dies without cleaning up."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ControlPlane:
    """etcd and kube-apiserver in namespace ``ns``, files in ``workdir``; see the module."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ns = Netns("cp")
        self.admin_token = secrets.token_urlsafe(24)
        self._processes: list[subprocess.Popen[bytes]] = []
        self._links = itertools.count(1)
        self._relay: Relay | None = None
        self._http: urllib3.PoolManager | None = None
        self.pki: Pki | None = None
        self.serving: KeyPair | None = None
        self.data_dir: Path | None = None
        self.startup_seconds = 0.0

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self.ns.__enter__()
        host_run("ip", "-n", self.ns.name, "addr", "add", f"{API_ADDRESS}/32", "dev", "lo")
        self.pki = new_pki(self.workdir / "pki")
        self.serving = self.pki.issue(
            "apiserver", "kubernetes.default.svc", ips=("127.0.0.1", API_ADDRESS, "10.96.0.1")
        )
        self._start_etcd()
        self._start_apiserver()
        self._relay = Relay(self.ns, ("127.0.0.1", API_PORT))
        self._http = urllib3.PoolManager(
            ca_certs=str(self.pki.ca.cert), retries=False, timeout=urllib3.Timeout(30, 120)
        )
        wait_until(self._ready, interval=0.2, what="kube-apiserver /readyz")

    def close(self) -> None:
        if self._relay is not None:
            self._relay.close()
        if self._http is not None:
            self._http.clear()
        for process in reversed(self._processes):
            stop_process(process, grace=10.0)  # type: ignore[arg-type]
        self._processes.clear()
        self.ns.close()

    def _spawn(self, name: str, *command: str) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        with log:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.ns.name, *command],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, no locks
            )
        self._processes.append(process)
        return process

    def _start_etcd(self) -> None:
        # On tmpfs: etcd fsyncs every write, and the benchmarks write 20 000 objects.
        shm = Path("/dev/shm")
        data = tempfile.mkdtemp(prefix="waolb-etcd-", dir=shm if shm.is_dir() else self.workdir)
        self.data_dir = Path(data)
        client = f"http://127.0.0.1:{ETCD_CLIENT_PORT}"
        peer = f"http://127.0.0.1:{ETCD_PEER_PORT}"
        self._spawn(
            "etcd", ETCD, "--name=test", f"--data-dir={data}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=test={peer}", "--log-level=warn",
            "--quota-backend-bytes=4294967296",
        )  # fmt: skip

    def _start_apiserver(self) -> None:
        assert self.pki is not None and self.serving is not None
        pki = self.pki.directory
        tokens = pki / "tokens.csv"
        tokens.write_text(f'{self.admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
        audit_policy = self.workdir / "audit-policy.yaml"
        audit_policy.write_text(AUDIT_POLICY)
        accounts = service_account_keys(pki)
        front_proxy = self.pki.issue("front-proxy-client", "front-proxy-client")
        self._spawn(
            "kube-apiserver", str(KUBE_BIN / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{ETCD_CLIENT_PORT}",
            "--bind-address=0.0.0.0", f"--secure-port={API_PORT}",
            f"--advertise-address={API_ADDRESS}", f"--cert-dir={pki}",
            f"--tls-cert-file={self.serving.cert}", f"--tls-private-key-file={self.serving.key}",
            f"--client-ca-file={self.pki.ca.cert}", f"--token-auth-file={tokens}",
            "--authorization-mode=RBAC", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",  # as every cluster running kube-proxy
            f"--service-account-key-file={accounts.cert}",
            f"--service-account-signing-key-file={accounts.key}",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--endpoint-reconciler-type=none", "--enable-aggregator-routing=true",
            f"--disable-admission-plugins={DISABLED_ADMISSION}",
            f"--requestheader-client-ca-file={self.pki.ca.cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={front_proxy.cert}",
            f"--proxy-client-key-file={front_proxy.key}",
            f"--audit-policy-file={audit_policy}", f"--audit-log-path={self.audit_log}",
            "--audit-log-maxsize=0", "--v=1",
        )  # fmt: skip

    def _ready(self) -> bool:
        for process in self._processes:
            if process.poll() is not None:
                name = Path(process.args[4]).name  # type: ignore[index]
                tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-4000:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")
        try:
            return self.request("GET", "/readyz", expect=None).status == 200
        except urllib3.exceptions.HTTPError:
            return False

    # ---- reaching it ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Where the test process reaches the API server."""
        assert self._relay is not None
        return f"https://127.0.0.1:{self._relay.port}"

    @property
    def address(self) -> str:
        """The control plane's address, inside its namespace and from attached nodes."""
        return API_ADDRESS

    @property
    def node_url(self) -> str:
        """Where an attached node reaches the API server."""
        return f"https://{API_ADDRESS}:{API_PORT}"

    @property
    def ca_cert(self) -> Path:
        assert self.pki is not None
        return self.pki.ca.cert

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    def attach(self, node: Netns | str) -> str:
        """A veth pair from ``node`` to the control plane; returns the API URL for ``node``."""
        name = node if isinstance(node, str) else node.name
        link = next(self._links)
        node_address = f"172.30.{link // 250}.{link % 250 + 2}"
        cp_end = f"cp{link}"
        host_run(
            "ip", "-n", self.ns.name, "link", "add", cp_end, "type", "veth",
            "peer", "name", "cp0", "netns", name,
        )  # fmt: skip
        host_run(
            "ip", "-n", self.ns.name, "-batch", "-",
            input=f"link set {cp_end} up\nroute add {node_address}/32 dev {cp_end}\n",
        )  # fmt: skip
        host_run(
            "ip", "-n", name, "-batch", "-",
            input=(
                f"addr add {node_address}/32 dev cp0\nlink set cp0 up\n"
                f"route add {API_ADDRESS}/32 dev cp0 src {node_address}\n"
            ),
        )  # fmt: skip
        return self.node_url

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        token: str | None = None,
        expect: int | tuple[int, ...] | None = (200, 201),
        query: Mapping[str, str] | None = None,
    ) -> urllib3.BaseHTTPResponse:
        """One request as the admin (or ``token``); raises ApiFailure unless ``expect``ed."""
        assert self._http is not None
        headers = {"Authorization": f"Bearer {token or self.admin_token}"}
        encoded = None
        if body is not None:
            encoded = body if isinstance(body, bytes) else orjson.dumps(body)
            headers["Content-Type"] = content_type
        url = self.url + path
        if query:
            url += "?" + urlencode(query)
        response = self._http.request(method, url, body=encoded, headers=headers)
        codes = (expect,) if isinstance(expect, int) else expect
        if codes is not None and response.status not in codes:
            raise ApiFailure(method, path, response.status, response.data)
        return response

    def json(self, method: str, path: str, body: Any = None, **options: Any) -> dict[str, Any]:
        decoded: dict[str, Any] = orjson.loads(self.request(method, path, body, **options).data)
        return decoded

    # ---- identities ---------------------------------------------------------------------------

    def service_account_token(self, namespace: str, name: str) -> str:
        """A token for the ServiceAccount (created if missing), from the TokenRequest API."""
        account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}
        self.request(
            "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", account,
            expect=(201, 409),
        )  # fmt: skip
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 86400},
        }
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"
        return str(self.json("POST", path, request)["status"]["token"])

    def kubeconfig(
        self, path: Path, *, token: str | None = None, server: str | None = None
    ) -> Path:
        """A kubeconfig for ``server`` (the test process's URL by default) as ``token``'s owner
        (the admin by default)."""
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {
                        "server": server or self.url,
                        "certificate-authority": str(self.ca_cert),
                    },
                }
            ],
            "users": [{"name": "user", "user": {"token": token or self.admin_token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
            "current-context": "test",
        }
        path.write_text(yaml.safe_dump(document))
        return path

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """kubectl (built from the same release) as the admin."""
        kubeconfig = self.workdir / "admin.kubeconfig"
        if not kubeconfig.exists():
            self.kubeconfig(kubeconfig)
        proc = subprocess.run(
            [str(KUBE_BIN / "kubectl"), f"--kubeconfig={kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=HUNG_AFTER,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def audit(self, user: str, *, since: float = 0.0) -> list[dict[str, Any]]:
        """The audit events of ``user``'s requests completed since ``since`` (time.time())."""
        events = []
        with contextlib.suppress(FileNotFoundError), self.audit_log.open("rb") as log:
            for line in log:
                event = orjson.loads(line)
                if event.get("user", {}).get("username") != user:
                    continue
                stamp = event.get("stageTimestamp", "")
                if since and _rfc3339_seconds(stamp) < since:
                    continue
                events.append(event)
        return events

    # ---- objects --------------------------------------------------------------------------------

    def ensure_namespace(self, name: str) -> None:
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        self.request("POST", "/api/v1/namespaces", namespace, expect=(201, 409))

    def delete_all(self, resource: ResourceType, *, keep: frozenset[tuple[str, str]]) -> None:
        """Delete every object of ``resource`` but the (namespace, name) pairs in ``keep``."""
        items = self.json("GET", resource.collection_path())["items"]
        for item in items:
            metadata = item["metadata"]
            namespace = metadata.get("namespace")
            if (namespace or "", metadata["name"]) in keep:
                continue
            path = resource.object_path(metadata["name"], namespace)
            self.request("DELETE", path, expect=(200, 202, 404))


def _rfc3339_seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else 0.0


class ApiFailure(RuntimeError):
    """The real API server answered with an unexpected status."""

    def __init__(self, method: str, path: str, status: int, body: bytes) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]!r}")
        self.status = status
        self.body = body


@contextlib.contextmanager
def start_control_plane() -> Iterator[ControlPlane]:
    """A running control plane; everything it started and wrote is gone after the block."""
    with tempfile.TemporaryDirectory(prefix="waolb-cp-") as workdir:
        plane = ControlPlane(Path(workdir))
        started = time.monotonic()
        try:
            plane.start()
            plane.startup_seconds = time.monotonic() - started
            yield plane
        finally:
            plane.close()
            if plane.data_dir is not None:
                shutil.rmtree(plane.data_dir, ignore_errors=True)
