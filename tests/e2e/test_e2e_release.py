"""What reaches users, end to end against the real control plane: the frozen executable
(``make binary``: dist/waolb) and the image (``make image``), each serving real traffic in a
node namespace.

The image runs as deploy/non-default's DaemonSet would run it: the container's command and
environment come from the rendered manifest, the API server from the in-cluster ServiceAccount
files (token, CA) and KUBERNETES_SERVICE_HOST, with runc and the node's network namespace.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from controlplane import API_PORT
from controlplane.fixtures import DEPLOY, Deployment
from e2e import (
    PROXY_NAME_LABEL,
    WEB_IP,
    Environment,
    endpoint_slice,
    environment,
    service,
    wait_for_traffic,
)
from netns import HUNG_AFTER, requires_netns, wait_until

pytestmark = requires_netns

REPO = Path(__file__).resolve().parents[2]
FROZEN = REPO / "dist" / "waolb"
IMAGE = os.environ.get("WAOLB_IMAGE", "localhost/waolb:0.1.0")
VERSION = "0.1.0"


@pytest.fixture
def env(deployment: Deployment) -> Iterator[Environment]:
    with environment(real=deployment) as result:
        yield result


def frozen() -> Path:
    if not FROZEN.is_file():
        pytest.skip(f"{FROZEN} is missing: run `make binary`")
    return FROZEN


def clean_environment() -> dict[str, str]:
    """No virtualenv, no Python on PATH: only what a node's shell would have."""
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}


def test_the_frozen_executable_answers_version_and_help_without_python() -> None:
    binary = frozen()
    with tempfile.TemporaryDirectory() as empty:
        run = {"env": clean_environment(), "cwd": empty, "capture_output": True, "text": True}
        version = subprocess.run([str(binary), "--version"], check=True, **run)  # type: ignore[call-overload]
        assert version.stdout.strip() == f"waolb {VERSION}"
        usage = subprocess.run([str(binary), "--help"], check=True, **run)  # type: ignore[call-overload]
        for flag in ("--kubeconfig", "--master", "--hostname-override", "--cleanup"):
            assert flag in usage.stdout
        bad = subprocess.run([str(binary), "--no-such-flag"], check=False, **run)  # type: ignore[call-overload]
        assert bad.returncode == 2
        assert "--no-such-flag" in bad.stderr


def test_the_frozen_executable_carries_the_release_build_without_fault_injection() -> None:
    """The tests' own build can make the kernel refuse ports on demand; what ships cannot."""
    from PyInstaller.archive.readers import CArchiveReader  # noqa: PLC0415 - packaging only

    archive = CArchiveReader(str(frozen()))
    (native,) = [name for name in archive.toc if name.startswith("waolb/_native")]
    assert b"inject_fault" not in archive.extract(native)


def test_the_frozen_executable_proxies_traffic(env: Environment) -> None:
    binary = frozen()
    env.api.create(service("web", WEB_IP))
    env.api.create(endpoint_slice("web-a", "web", {"pod0": True, "pod1": True}))
    proxy = env.start_proxy(executable=binary)
    wait_for_traffic(env, WEB_IP, {"pod0", "pod1"})
    assert env.http(10256, "/healthz")[0] == 200
    env.api.update(endpoint_slice("web-a", "web", {"pod0": False, "pod1": True}))
    wait_for_traffic(env, WEB_IP, {"pod1"})
    assert proxy.process.poll() is None


# ---- the image ----------------------------------------------------------------------------


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, check=check, timeout=HUNG_AFTER
    )


def image() -> str:
    if shutil.which("podman") is None or shutil.which("runc") is None:
        pytest.skip("podman and runc are needed (make deps)")
    if podman("image", "exists", IMAGE, check=False).returncode != 0:
        pytest.skip(f"image {IMAGE} is missing: run `make image`")
    return IMAGE


RUNTIME = (
    "--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
)  # fmt: skip


def test_the_image_is_slim_labelled_and_answers_as_kube_proxy() -> None:
    name = image()
    (inspected,) = json.loads(podman("image", "inspect", name).stdout)
    labels = inspected["Config"]["Labels"]
    assert labels["org.opencontainers.image.title"] == "waolb"
    assert labels["org.opencontainers.image.version"] == VERSION
    assert inspected["Config"]["Entrypoint"] == ["/usr/local/bin/waolb"]
    version = podman("run", "--rm", *RUNTIME, "--entrypoint", "/usr/local/bin/kube-proxy",
                     name, "--version")  # fmt: skip
    assert version.stdout.strip() == f"waolb {VERSION}"
    # No Python in the image: the executable carries its own.
    listing = podman("run", "--rm", *RUNTIME, "--entrypoint", "/bin/sh", name, "-c",
                     "command -v python3 || echo none; nft --version")  # fmt: skip
    assert listing.stdout.splitlines()[0] == "none"
    assert listing.stdout.splitlines()[1].startswith("nftables v")


def daemonset_container() -> dict[str, object]:
    text = subprocess.run(
        [str(REPO / ".venv/kubernetes/bin/kubectl"), "kustomize", str(DEPLOY / "non-default")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (daemonset,) = (d for d in yaml.safe_load_all(text) if d and d["kind"] == "DaemonSet")
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def test_the_image_runs_the_non_default_daemonset_container(
    env: Environment, deployment: Deployment
) -> None:
    name = image()
    container = daemonset_container()
    environment_ = {"NODE_NAME": "node-a"}
    for variable in container["env"]:  # type: ignore[attr-defined]
        if "value" in variable:
            environment_[variable["name"]] = variable["value"]
    # Kubernetes expands $(VAR) in a container's command from its environment.
    command = [
        re.sub(r"\$\((\w+)\)", lambda m: environment_[m.group(1)], part)
        for part in container["command"]  # type: ignore[attr-defined]
    ]
    # What the kubelet mounts for the pod's ServiceAccount, and the Service's address.
    account = env.workdir / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(deployment.waolb_token)
    (account / "namespace").write_text("kube-system")
    shutil.copy(deployment.plane.ca_cert, account / "ca.crt")
    environment_ |= {
        "KUBERNETES_SERVICE_HOST": deployment.plane.address,
        "KUBERNETES_SERVICE_PORT": str(API_PORT),
    }

    labels = {PROXY_NAME_LABEL: "wao-loadbalancer"}
    env.api.create(service("web", WEB_IP, labels=labels))
    env.api.create(endpoint_slice("web-a", "web", {"pod0": True, "pod2": True}))
    container_name = f"waolb-test-{secrets.token_hex(4)}"
    podman(
        "run", "--detach", "--name", container_name, *RUNTIME, "--privileged",
        "--network", f"ns:/run/netns/{env.node}",
        "--volume", f"{account}:/var/run/secrets/kubernetes.io/serviceaccount:ro",
        *(f"--env={key}={value}" for key, value in environment_.items()),
        "--entrypoint", command[0], name, *command[1:],
    )  # fmt: skip
    try:
        wait_for_traffic(env, WEB_IP, {"pod0", "pod2"})
        # The non-default proxy's ports, as the DaemonSet's probes expect them.
        probe = container["livenessProbe"]["httpGet"]  # type: ignore[index]
        assert env.http(probe["port"], probe["path"])[0] == 200
        assert "table ip wao-loadbalancer" in env.ruleset()
    except BaseException:
        print(podman("logs", container_name, check=False).stdout[-4000:])
        raise
    finally:
        podman("rm", "--force", "--time", "10", container_name, check=False)

    # restore-kube-proxy's init container: the image's `waolb --cleanup` removes the tables.
    cleanup = podman(
        "run", "--rm", *RUNTIME, "--privileged", "--network", f"ns:/run/netns/{env.node}",
        name, "--cleanup",
    )  # fmt: skip
    assert cleanup.returncode == 0
    wait_until(lambda: "wao-loadbalancer" not in env.ruleset(), what="tables removed")
