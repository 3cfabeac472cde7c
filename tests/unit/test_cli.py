"""The command line: kube-proxy's flags, their forms and errors, --cleanup, exit statuses."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from waolb.cli import COMPATIBILITY_FLAGS, main, parse_command_line


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """main() configures logging for the process; put it back for the other tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)


def flags_of(*argv: str) -> dict[str, Any]:
    return parse_command_line(argv).flags


@pytest.mark.parametrize(
    ("argv", "field", "value"),
    [
        (["--kubeconfig=/etc/kubeconfig"], "kubeconfig", "/etc/kubeconfig"),
        (["--master", "https://10.0.0.1:6443"], "master", "https://10.0.0.1:6443"),
        (["--hostname-override=Node-A "], "hostname_override", "node-a"),
        (["--v=3"], "verbosity", 3),
        (["--v", "3"], "verbosity", 3),
        (["-v", "4"], "verbosity", 4),
        (["-v=5"], "verbosity", 5),
        (["-v6"], "verbosity", 6),
        (["--log-format=json"], "log_format", "json"),
        (["--logging-format", "text"], "log_format", "console"),
        (["--bind-address=10.0.0.5"], "bind_address", "10.0.0.5"),
        (
            ["--cluster-cidr=10.244.0.0/16,fd00::/48"],
            "cluster_cidrs",
            ("10.244.0.0/16", "fd00::/48"),
        ),
        (["--proxy-mode", "iptables"], "mode", "iptables"),
        (["--healthz-bind-address=0.0.0.0:10256"], "healthz_bind_address", "0.0.0.0:10256"),
        (["--healthz-bind-address=127.0.0.1"], "healthz_bind_address", "127.0.0.1:10256"),
        (["--healthz-bind-address="], "healthz_bind_address", ""),
        (["--metrics-bind-address", "[::]:10249"], "metrics_bind_address", "[::]:10249"),
        (["--metrics-bind-address=::1"], "metrics_bind_address", "[::1]:10249"),
        (
            ["--nodeport-addresses=primary,10.0.0.0/8", "--nodeport-addresses", "fd00::/64"],
            "node_port_addresses",
            ("primary", "10.0.0.0/8", "fd00::/64"),
        ),
        (["--masquerade-all"], "masquerade_all", True),
        (["--masquerade-all=false"], "masquerade_all", False),
        (["--masquerade-all=T"], "masquerade_all", True),
        (["--kube-api-qps=20.5"], "qps", 20.5),
        (["--kube-api-burst", "40"], "burst", 40),
        (["--iptables-sync-period=1m"], "iptables_sync_period", 60.0),
        (["--iptables-min-sync-period=0s"], "iptables_min_sync_period", 0.0),
        (["--ipvs-sync-period=45s"], "ipvs_sync_period", 45.0),
        (["--ipvs-min-sync-period=2s"], "ipvs_min_sync_period", 2.0),
        # pflag accepts "_" for "-" in flag names.
        (["--hostname_override=x"], "hostname_override", "x"),
        (["--metrics_bind_address=1.2.3.4:5"], "metrics_bind_address", "1.2.3.4:5"),
    ],
)
def test_each_flag_sets_its_field(argv: list[str], field: str, value: object) -> None:
    assert flags_of(*argv) == {field: value}


def test_wao_flags_are_waolb_settings() -> None:
    command_line = parse_command_line(
        [
            *("--wao-scoring-interval=5s", "--wao-verify-tls", "true"),
            *("--wao-cpu-usage-format=Raw", "--wao-weights-bind-address="),
            "--wao-weight-metrics=none",
        ]
    )
    assert command_line.waolb_flags == {
        "scoring_interval": 5.0,
        "verify_tls": True,
        "cpu_usage_format": "Raw",
        "weights_bind_address": "",
        "weight_metrics": "none",
    }
    assert command_line.flags == {}


def test_config_and_cleanup_are_not_configuration_fields() -> None:
    command_line = parse_command_line(["--config=/etc/kube-proxy/config.conf", "--cleanup"])
    assert command_line.config_file == "/etc/kube-proxy/config.conf"
    assert command_line.cleanup is True
    assert command_line.flags == {}
    assert parse_command_line(["--cleanup=false"]).cleanup is False
    assert parse_command_line([]).cleanup is False


def test_a_kubeadm_command_line_parses() -> None:
    command_line = parse_command_line(
        ["--config=/var/lib/kube-proxy/config.conf", "--hostname-override=worker-1"]
    )
    assert command_line.config_file == "/var/lib/kube-proxy/config.conf"
    assert command_line.flags == {"hostname_override": "worker-1"}
    assert command_line.flag_names == {"hostname_override": "--hostname-override"}


def test_kube_proxy_flags_without_effect_are_accepted_and_reported() -> None:
    argv = [f"--{name}=1" if takes else f"--{name}" for name, takes in COMPATIBILITY_FLAGS.items()]
    command_line = parse_command_line(argv)
    assert command_line.flags == {}
    assert set(command_line.without_effect) == {f"--{name}" for name in COMPATIBILITY_FLAGS}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--healthz"], "unrecognized arguments: --healthz"),  # no prefix matching
        (["--v=x"], 'argument -v/--v: "x" is not an integer'),
        (["--v=-1"], "argument -v/--v: -1 must not be negative"),
        (["--masquerade-all=maybe"], 'argument --masquerade-all: "maybe" is not a boolean'),
        (["--healthz-bind-address=nonsense"], "argument --healthz-bind-address: "),
        (["--metrics-bind-address=host:1"], "argument --metrics-bind-address: "),
        (["--bind-address=node"], 'argument --bind-address: "node" is not an IP address'),
        (["--cluster-cidr=10.0.0.0/99"], "argument --cluster-cidr: "),
        (["--proxy-mode=userspace"], 'argument --proxy-mode: unknown proxy mode "userspace"'),
        (["--nodeport-addresses=eth0"], "argument --nodeport-addresses: "),
        (["--iptables-sync-period=0s"], 'argument --iptables-sync-period: "0s" must be greater'),
        (["--iptables-min-sync-period=-1s"], "argument --iptables-min-sync-period: "),
        (["--ipvs-sync-period=soon"], "argument --ipvs-sync-period: invalid duration"),
        (["--kube-api-qps=-3"], 'argument --kube-api-qps: "-3" must not be negative'),
        (["--kube-api-qps=fast"], 'argument --kube-api-qps: "fast" is not a number'),
        (["--kube-api-burst=1.5"], 'argument --kube-api-burst: "1.5" is not an integer'),
        (["--log-format=xml"], 'argument --log-format: "xml" is not a log format'),
        (["--logging-format=console"], "argument --logging-format: "),
        (["--hostname-override=  "], "argument --hostname-override: an empty hostname"),
        (["--kubeconfig"], "argument --kubeconfig: expected one argument"),
        (["positional"], "unrecognized arguments: positional"),
        (["--wao-parallelism=0"], "argument --wao-parallelism: 0 is not a whole number"),
        (["--wao-cpu-per-request=x"], 'argument --wao-cpu-per-request: "x" is not a CPU'),
        (["--wao-default-policy=fast"], "argument --wao-default-policy: 'fast' is not one of"),
        # Absurd values are refused at start, naming the limit, not hours later by a timer.
        (
            ["--iptables-sync-period=99999999999h"],
            'argument --iptables-sync-period: invalid duration "99999999999h": longer than',
        ),
        (
            ["--iptables-sync-period=100000h"],
            'argument --iptables-sync-period: "100000h" is too large: at most 24h is sane',
        ),
        (
            ["--ipvs-min-sync-period=25h"],
            'argument --ipvs-min-sync-period: "25h" is too large: at most 24h',
        ),
        (
            ["--iptables-sync-period=1m", "--iptables-min-sync-period=2m"],
            "the minimum sync period (2m) exceeds the sync period (1m)",
        ),
        (["--kube-api-qps=inf"], 'argument --kube-api-qps: "inf" is too large: at most 100000'),
        (["--kube-api-qps=nan"], 'argument --kube-api-qps: "nan" is not a number'),
        (["--kube-api-burst=1000000"], "argument --kube-api-burst: 1000000 is too large"),
        (["--v=99999999999"], "argument -v/--v: 99999999999 is too large"),
        (
            ["--wao-request-timeout=1h"],
            'argument --wao-request-timeout: "1h" is too large: at most 5m',
        ),
        (["--wao-scoring-interval=48h"], 'argument --wao-scoring-interval: "48h" is too large'),
        (["--wao-metrics-cache-ttl=0s"], 'argument --wao-metrics-cache-ttl: "0s" must be greater'),
        (["--wao-cpu-per-request=5000"], 'argument --wao-cpu-per-request: "5000" is too large'),
        (["--wao-parallelism=99999999999999"], "argument --wao-parallelism: 99999999999999 is not"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "--hostname-override" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("waolb ")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "waolb: error: --config: cannot read"),
        ("kind: [\n", "is not valid YAML"),
        ("apiVersion: v1\nkind: KubeProxyConfiguration\n", "apiVersion: expected"),
        (
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
            "nftables:\n  syncPeriod: 30\n",
            "nftables.syncPeriod: expected a duration",
        ),
    ],
)
def test_bad_config_files_exit_2_naming_the_field(
    tmp_path: Path, content: str | None, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    if content is not None:
        path.write_text(content)
    assert main([f"--config={path}", "--cleanup"]) == 2
    assert message in capsys.readouterr().err


def test_python_dash_m_waolb_is_the_same_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "waolb", "--no-such-flag"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in result.stderr
