"""KubeProxyConfiguration parsing, flag precedence and the WAO_SERVICE_PROXY_NAME modes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog

from waolb.config import (
    NON_DEFAULT_HEALTHZ_ADDRESS,
    NON_DEFAULT_METRICS_ADDRESS,
    ConfigError,
    ProxyConfig,
    WaolbSettings,
    apply_flags,
    config_from_document,
    load_config_file,
    normalize_bind_address,
    parse_cidrs,
    parse_duration,
    parse_node_port_addresses,
    resolve_settings,
    service_label_selector,
    split_host_port,
)

HEADER = {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration"}
HEADER_TEXT = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"

# A kubeadm-style file with every field waolb reads set away from its default.
FULL_FILE = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: 10.0.0.5
healthzBindAddress: 10.0.0.5:20256
metricsBindAddress: 0.0.0.0:20249
clusterCIDR: 10.244.0.0/16,fd00::/48
hostnameOverride: Node-A
mode: nftables
nodePortAddresses: [primary, 192.168.0.0/16]
clientConnection:
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 50
  burst: 100
  contentType: application/vnd.kubernetes.protobuf
logging:
  format: json
  verbosity: 3
nftables:
  masqueradeBit: 15
  masqueradeAll: true
  syncPeriod: 1m0s
  minSyncPeriod: 500ms
iptables:
  masqueradeAll: false
  syncPeriod: 10s
conntrack:
  maxPerCore: 32768
  tcpEstablishedTimeout: 24h0m0s
featureGates:
  SomeGate: true
"""


def document(**fields: Any) -> dict[str, Any]:
    return {**HEADER, **fields}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


# ---- values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("1m0s", 60.0),
        ("2h22m", 8520.0),
        ("1.5h", 5400.0),
        ("300ms", 0.3),
        ("10us", 1e-5),
        ("10µs", 1e-5),
        ("5ns", 5e-9),
        ("0", 0.0),
        ("-1s", -1.0),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["30", "", "s", "1x", "1m 0s", "abc", "1.2.3s"])
def test_invalid_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_bind_addresses_get_the_default_port_and_keep_an_explicit_one() -> None:
    assert normalize_bind_address("1.2.3.4", 10256) == "1.2.3.4:10256"
    assert normalize_bind_address("::1", 10256) == "[::1]:10256"
    assert normalize_bind_address("[::]:99", 10256) == "[::]:99"
    assert split_host_port("[fd00::1]:8080") == ("fd00::1", 8080)
    for bad in ("localhost:80", "1.2.3.4:", "1.2.3.4:99999", "nonsense"):
        with pytest.raises(ValueError):
            normalize_bind_address(bad, 1)


def test_cluster_cidrs_are_one_per_family() -> None:
    assert parse_cidrs("10.0.0.0/8, fd00::/64") == ("10.0.0.0/8", "fd00::/64")
    with pytest.raises(ValueError, match="not a valid CIDR"):
        parse_cidrs("10.0.0.0/33")
    with pytest.raises(ValueError, match="dual-stack pair"):
        parse_cidrs("10.0.0.0/8,11.0.0.0/8")


def test_node_port_addresses_take_cidrs_and_keywords() -> None:
    assert parse_node_port_addresses(["primary", "10.0.0.0/8"]) == ("primary", "10.0.0.0/8")
    with pytest.raises(ValueError, match="neither a CIDR nor one of primary"):
        parse_node_port_addresses(["eth0"])


# ---- the file -----------------------------------------------------------------------------


def test_an_empty_configuration_gives_kube_proxy_defaults() -> None:
    config = config_from_document(document())
    assert config == ProxyConfig()
    assert config.healthz_bind_address == "0.0.0.0:10256"
    assert config.metrics_bind_address == "127.0.0.1:10249"
    assert (config.sync_period, config.min_sync_period, config.masquerade_bit) == (30.0, 1.0, 14)
    assert config.waolb == WaolbSettings()


def test_every_used_field_is_read(tmp_path: Path) -> None:
    config = load_config_file(write(tmp_path, FULL_FILE))
    assert config == ProxyConfig(
        bind_address="10.0.0.5",
        healthz_bind_address="10.0.0.5:20256",
        metrics_bind_address="0.0.0.0:20249",
        cluster_cidrs=("10.244.0.0/16", "fd00::/48"),
        hostname_override="node-a",
        mode="nftables",
        node_port_addresses=("primary", "192.168.0.0/16"),
        kubeconfig="/var/lib/kube-proxy/kubeconfig.conf",
        qps=50.0,
        burst=100,
        masquerade_bit=15,
        masquerade_all=True,
        sync_period=60.0,
        min_sync_period=0.5,
        verbosity=3,
        log_format="json",
    )


def test_json_files_are_read_too(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", '
        '"kind": "KubeProxyConfiguration", "mode": "nftables"}',
    )
    assert load_config_file(path).mode == "nftables"


@pytest.mark.parametrize(
    ("mode", "sync_period", "min_sync_period", "masquerade_all"),
    [
        # kube-proxy's v1alpha1 conversion reads the periods from the mode's own section.
        ("nftables", 3.0, 0.3, True),
        ("iptables", 2.0, 0.2, False),
        ("", 2.0, 0.2, False),
        ("ipvs", 4.0, 0.4, False),
    ],
)
def test_periods_and_masquerade_all_come_from_the_modes_section(
    mode: str, sync_period: float, min_sync_period: float, masquerade_all: bool
) -> None:
    config = config_from_document(
        document(
            mode=mode,
            iptables={"syncPeriod": "2s", "minSyncPeriod": "200ms", "masqueradeBit": 3},
            ipvs={"syncPeriod": "4s", "minSyncPeriod": "400ms"},
            nftables={"syncPeriod": "3s", "minSyncPeriod": "300ms", "masqueradeAll": True},
        )
    )
    assert (config.sync_period, config.min_sync_period) == (sync_period, min_sync_period)
    assert config.masquerade_all is masquerade_all
    # The nftables proxier always takes its mark bit from the nftables section.
    assert config.masquerade_bit == 14


def test_zero_periods_and_null_fields_mean_default() -> None:
    config = config_from_document(
        document(
            mode="nftables",
            nftables={"syncPeriod": "0s", "minSyncPeriod": "0s", "masqueradeBit": None},
            healthzBindAddress="",
            metricsBindAddress=None,
        )
    )
    assert (config.sync_period, config.min_sync_period, config.masquerade_bit) == (30.0, 1.0, 14)
    assert config.healthz_bind_address == "0.0.0.0:10256"
    assert config.metrics_bind_address == "127.0.0.1:10249"


def test_an_ipv6_bind_address_moves_the_default_servers_to_ipv6() -> None:
    config = config_from_document(document(bindAddress="fd00::5"))
    assert config.healthz_bind_address == "[::]:10256"
    assert config.metrics_bind_address == "[::1]:10249"


def test_addresses_without_a_port_get_the_default_port() -> None:
    config = config_from_document(document(healthzBindAddress="10.1.1.1", metricsBindAddress="::"))
    assert config.healthz_bind_address == "10.1.1.1:10256"
    assert config.metrics_bind_address == "[::]:10249"


def test_known_fields_waolb_ignores_are_logged_at_debug() -> None:
    with structlog.testing.capture_logs() as logs:
        config_from_document(document(conntrack={"maxPerCore": 0}, enableProfiling=True))
    ignored = {e["field"] for e in logs if e["event"] == "kube-proxy field has no effect in waolb"}
    assert ignored == {"conntrack.maxPerCore", "enableProfiling"}
    assert all(e["log_level"] == "debug" for e in logs)


def test_unknown_fields_are_ignored_with_a_warning() -> None:
    with structlog.testing.capture_logs() as logs:
        config = config_from_document(document(mode="nftables", nftables={"bogus": 1}, extra=2))
    assert config.mode == "nftables"
    warned = [(e["field"], e["log_level"]) for e in logs if e["event"].startswith("unknown field")]
    assert warned == [("nftables.bogus", "warning"), ("extra", "warning")]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"nftables": {"syncPeriod": 30}}, r"nftables\.syncPeriod: expected a duration string"),
        ({"nftables": {"syncPeriod": "30"}}, r"nftables\.syncPeriod: invalid duration"),
        (
            {"nftables": {"masqueradeAll": "yes"}},
            r"nftables\.masqueradeAll: expected true or false",
        ),
        ({"nftables": {"masqueradeBit": True}}, r"nftables\.masqueradeBit: expected an integer"),
        ({"nftables": {"masqueradeBit": 2**40}}, r"nftables\.masqueradeBit: .* 32-bit"),
        ({"nftables": []}, r"nftables: expected an object, got list"),
        ({"clientConnection": {"qps": "fast"}}, r"clientConnection\.qps: expected a number"),
        ({"clientConnection": {"burst": 1.5}}, r"clientConnection\.burst: expected an integer"),
        ({"clientConnection": {"kubeconfig": 7}}, r"clientConnection\.kubeconfig: expected a str"),
        ({"hostnameOverride": 12}, r"hostnameOverride: expected a string, got int"),
        ({"nodePortAddresses": "10.0.0.0/8"}, r"nodePortAddresses: expected a list of strings"),
        ({"featureGates": {"A": "on"}}, r"featureGates: expected a map of feature names"),
        ({"conntrack": {"min": "many"}}, r"conntrack\.min: expected an integer"),
        ({"ipvs": {"tcpTimeout": "forever"}}, r"ipvs\.tcpTimeout: invalid duration"),
        ({"logging": {"verbosity": "high"}}, r"logging\.verbosity: expected an integer"),
    ],
)
def test_wrong_types_are_rejected_naming_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_document(document(**fields))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"apiVersion": "kubeproxy.config.k8s.io/v1beta9"}, r"apiVersion: expected"),
        ({"apiVersion": None}, r"apiVersion: expected .*None"),
        ({"kind": "KubeletConfiguration"}, r'kind: expected "KubeProxyConfiguration"'),
        ({"mode": "userspace"}, r'mode: unknown proxy mode "userspace"'),
        ({"nftables": {"masqueradeBit": 32}}, r"nftables\.masqueradeBit: 32 is not within"),
        ({"nftables": {"masqueradeBit": -1}}, r"nftables\.masqueradeBit: -1 is not within"),
        (
            {"mode": "nftables", "nftables": {"syncPeriod": "-5s"}},
            r'nftables\.syncPeriod: "-5s" must be greater than 0',
        ),
        (
            {"iptables": {"minSyncPeriod": "-1s"}},
            r'iptables\.minSyncPeriod: "-1s" must not be negative',
        ),
        ({"healthzBindAddress": "nonsense"}, r"healthzBindAddress: .*not an IP:port"),
        ({"metricsBindAddress": "host:80"}, r"metricsBindAddress: .*valid IP address"),
        ({"bindAddress": "node-a"}, r"bindAddress: .*not an IP address"),
        ({"clusterCIDR": "10.0.0.0/40"}, r"clusterCIDR: .*not a valid CIDR"),
        ({"nodePortAddresses": ["eth0"]}, r"nodePortAddresses: .*neither a CIDR"),
        ({"hostnameOverride": "   "}, r"hostnameOverride: an empty hostname is invalid"),
        ({"clientConnection": {"qps": -1}}, r"clientConnection\.qps: -1.0 must not be negative"),
        ({"clientConnection": {"burst": -1}}, r"clientConnection\.burst: -1 must not be negative"),
        ({"logging": {"format": "xml"}}, r'logging\.format: unknown logging format "xml"'),
        ({"logging": {"verbosity": -2}}, r"logging\.verbosity: -2 must not be negative"),
        # Absurd values are refused at start, naming the limit.
        (
            {"iptables": {"syncPeriod": "99999999999h"}},
            r'iptables\.syncPeriod: invalid duration "99999999999h": longer than',
        ),
        (
            {"iptables": {"syncPeriod": "48h"}},
            r'iptables\.syncPeriod: "48h" is too large: at most 24h is sane',
        ),
        (
            {"iptables": {"syncPeriod": "10s", "minSyncPeriod": "1m"}},
            r"the minimum sync period \(1m\) exceeds the sync period \(10s\)",
        ),
        ({"clientConnection": {"qps": 1e300}}, r"clientConnection\.qps: 1e\+300 is too large"),
        (
            {"clientConnection": {"qps": float("inf")}},
            r"clientConnection\.qps: inf is not a finite",
        ),
        ({"clientConnection": {"qps": 10**5000}}, r"clientConnection\.qps: <a int too large"),
        ({"clientConnection": {"burst": 10**6}}, r"clientConnection\.burst: 1000000 is too large"),
        ({"logging": {"verbosity": 2**31}}, r"logging\.verbosity: 2147483648 does not fit"),
    ],
)
def test_invalid_values_are_rejected_naming_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_document(document(**fields))


def test_unreadable_and_invalid_files_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--config: cannot read .*missing\.yaml"):
        load_config_file(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match=r"--config: .* is not valid YAML"):
        load_config_file(write(tmp_path, "mode: [nftables\n"))
    with pytest.raises(ConfigError, match=r"does not hold a KubeProxyConfiguration"):
        load_config_file(write(tmp_path, "- just\n- a list\n"))
    # Python refuses to convert integers of more than 4300 digits: once a ValueError traceback.
    with pytest.raises(ConfigError, match=r"--config: .* is not valid YAML: .*digits"):
        load_config_file(write(tmp_path, f"{HEADER_TEXT}clientConnection:\n  qps: {'9' * 5000}\n"))


# ---- precedence ---------------------------------------------------------------------------


def test_flags_override_defaults_without_a_file() -> None:
    config = apply_flags(
        {"mode": "nftables", "masquerade_all": True, "healthz_bind_address": "", "verbosity": 2},
        None,
    )
    assert config.mode == "nftables"
    assert config.masquerade_all is True
    assert config.healthz_bind_address == ""  # an empty flag turns the server off
    assert config.metrics_bind_address == "127.0.0.1:10249"
    assert config.verbosity == 2


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("", (5.0, 0.5)), ("nftables", (5.0, 0.5)), ("iptables", (5.0, 0.5)), ("ipvs", (7.0, 0.7))],
)
def test_sync_period_flags_apply_by_mode_as_in_kube_proxy(
    mode: str, expected: tuple[float, float]
) -> None:
    flags = {
        "mode": mode,
        "iptables_sync_period": 5.0,
        "iptables_min_sync_period": 0.5,
        "ipvs_sync_period": 7.0,
        "ipvs_min_sync_period": 0.7,
    }
    config = apply_flags(flags, None)
    assert (config.sync_period, config.min_sync_period) == expected


def test_a_zero_rate_or_burst_means_client_gos_default() -> None:
    config = apply_flags({"qps": 0.0, "burst": 0}, None)
    assert (config.qps, config.burst) == (5.0, 10)
    config = config_from_document(document(clientConnection={"qps": 0, "burst": 0}))
    assert (config.qps, config.burst) == (5.0, 10)


def test_a_zero_min_sync_period_flag_is_kept() -> None:
    assert apply_flags({"iptables_min_sync_period": 0.0}, None).min_sync_period == 0.0


def test_an_ipv6_bind_address_flag_moves_the_default_servers() -> None:
    config = apply_flags({"bind_address": "fd00::1", "metrics_bind_address": "[::]:1"}, None)
    assert config.healthz_bind_address == "[::]:10256"
    assert config.metrics_bind_address == "[::]:1"


def test_with_a_file_only_logging_master_and_hostname_flags_apply(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_FILE)
    flags = {
        "verbosity": 5,
        "log_format": "console",
        "master": "https://10.0.0.1:6443",
        "hostname_override": "node-b",
        # kube-proxy ignores these when --config is given.
        "metrics_bind_address": "127.0.0.1:1",
        "kubeconfig": "/elsewhere",
        "masquerade_all": False,
        "iptables_sync_period": 1.0,
    }
    config = apply_flags(flags, load_config_file(path))
    assert (config.verbosity, config.log_format) == (5, "console")
    assert config.master == "https://10.0.0.1:6443"
    assert config.hostname_override == "node-b"
    assert config.metrics_bind_address == "0.0.0.0:20249"
    assert config.kubeconfig == "/var/lib/kube-proxy/kubeconfig.conf"
    assert config.masquerade_all is True
    assert config.sync_period == 60.0


def test_an_invalid_file_fails_whatever_the_flags(tmp_path: Path) -> None:
    path = write(tmp_path, "apiVersion: v1\nkind: KubeProxyConfiguration\n")
    with pytest.raises(ConfigError, match="apiVersion"):
        apply_flags({"verbosity": 1}, load_config_file(path))


# ---- the environment: default or non-default proxy ----------------------------------------


def test_default_proxy_mode_handles_unlabelled_services_on_configured_addresses() -> None:
    config = ProxyConfig(healthz_bind_address="1.1.1.1:1", metrics_bind_address="2.2.2.2:2")
    for environ in ({}, {"WAO_SERVICE_PROXY_NAME": ""}, {"WAO_SERVICE_PROXY_NAME": "  "}):
        settings = resolve_settings(config, environ, lambda: "node")
        assert settings.service_proxy_name is None
        assert settings.service_label_selector == (
            "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"
        )
        assert settings.healthz_bind_address == "1.1.1.1:1"
        assert settings.metrics_bind_address == "2.2.2.2:2"
        assert settings.table_name == "wao-loadbalancer"


def test_non_default_proxy_mode_selects_its_label_and_pins_the_addresses() -> None:
    config = ProxyConfig(healthz_bind_address="1.1.1.1:1", metrics_bind_address="")
    settings = resolve_settings(config, {"WAO_SERVICE_PROXY_NAME": "wao-loadbalancer"}, lambda: "n")
    assert settings.service_proxy_name == "wao-loadbalancer"
    assert settings.service_label_selector == (
        "service.kubernetes.io/service-proxy-name=wao-loadbalancer,!service.kubernetes.io/headless"
    )
    assert settings.healthz_bind_address == NON_DEFAULT_HEALTHZ_ADDRESS == "0.0.0.0:10356"
    assert settings.metrics_bind_address == NON_DEFAULT_METRICS_ADDRESS == "0.0.0.0:10349"
    assert service_label_selector("x") == (
        "service.kubernetes.io/service-proxy-name=x,!service.kubernetes.io/headless"
    )


def test_the_node_name_is_the_override_else_the_lowercased_os_hostname() -> None:
    assert resolve_settings(ProxyConfig(hostname_override="node-a"), {}, lambda: "X").node_name == (
        "node-a"
    )
    assert resolve_settings(ProxyConfig(), {}, lambda: " Worker-1 \n").node_name == "worker-1"
    with pytest.raises(ConfigError, match="cannot determine the node name"):
        resolve_settings(ProxyConfig(), {}, lambda: "")


# ---- waolb's own settings ------------------------------------------------------------------


def test_the_waolb_section_sets_every_wao_setting() -> None:
    config = config_from_document(
        {
            **HEADER,
            "waolb": {
                "tableName": "wao-lb-2",
                "defaultPolicy": "equal",
                "metricsCacheTTL": "10s",
                "predictorCacheTTL": "5m",
                "requestTimeout": "1500ms",
                "parallelism": 8,
                "cpuPerRequest": "250m",
                "cpuUsageFormat": "Raw",
                "scoringInterval": "2s",
                "minWeightChange": 0.1,
                "verifyTLS": True,
                "weightsBindAddress": "::1",
                "weightMetrics": "endpoint",
            },
        }
    )
    assert config.waolb == WaolbSettings(
        table_name="wao-lb-2",
        default_policy="equal",
        metrics_cache_ttl=10.0,
        predictor_cache_ttl=300.0,
        request_timeout=1.5,
        parallelism=8,
        cpu_per_request=0.25,
        cpu_usage_format="Raw",
        scoring_interval=2.0,
        min_weight_change=0.1,
        verify_tls=True,
        weights_bind_address="[::1]:10263",
        weight_metrics="endpoint",
    )
    off = config_from_document({**HEADER, "waolb": {"weightsBindAddress": ""}})
    assert off.waolb.weights_bind_address == ""


def test_wao_defaults_are_upstreams_constants() -> None:
    wao = config_from_document(HEADER).waolb
    assert (wao.table_name, wao.metrics_cache_ttl, wao.predictor_cache_ttl) == (
        "wao-loadbalancer",
        30.0,
        1800.0,
    )
    assert (wao.request_timeout, wao.parallelism, wao.cpu_per_request) == (3.0, 64, 0.1)
    assert (wao.cpu_usage_format, wao.verify_tls, wao.default_policy) == ("Percent", False, "wao")
    # waolb's own: the scorer's view stays on the node, /metrics has no per-endpoint series.
    assert (wao.weights_bind_address, wao.weight_metrics) == ("127.0.0.1:10263", "service")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"metricsCacheTtl": "30s"}, "waolb.metricsCacheTtl: unknown setting"),
        ({"metricsCacheTTL": 30}, "waolb.metricsCacheTTL: expected a duration string"),
        ({"requestTimeout": "0s"}, 'waolb.requestTimeout: "0s" must be greater than 0'),
        ({"parallelism": 0}, "waolb.parallelism: 0 is not a whole number from 1 to 1024"),
        ({"parallelism": True}, "waolb.parallelism: True is not a whole number"),
        ({"cpuPerRequest": "lots"}, 'waolb.cpuPerRequest: "lots" is not a CPU quantity'),
        ({"cpuPerRequest": "-100m"}, 'waolb.cpuPerRequest: "-100m" must be a CPU quantity above'),
        ({"cpuUsageFormat": "percent"}, "waolb.cpuUsageFormat: 'percent' is not one of Percent"),
        ({"defaultPolicy": "rap"}, "waolb.defaultPolicy: 'rap' is not one of equal, wao"),
        ({"minWeightChange": 1.5}, "waolb.minWeightChange: 1.5 is not a number from 0 to 1"),
        ({"verifyTLS": "maybe"}, 'waolb.verifyTLS: "maybe" is not a boolean'),
        ({"tableName": "bad name"}, "waolb.tableName: 'bad name' is not a table name"),
        ({"metricsCacheTTL": "25h"}, 'waolb.metricsCacheTTL: "25h" is too large: at most 24h'),
        ({"requestTimeout": "6m"}, 'waolb.requestTimeout: "6m" is too large: at most 5m'),
        ({"cpuPerRequest": 10**5000}, "waolb.cpuPerRequest: <a int too large to show> is not a"),
        ({"cpuPerRequest": 2048}, "waolb.cpuPerRequest: 2048 is too large: at most 1024 is sane"),
        ({"weightsBindAddress": "node:80"}, 'waolb.weightsBindAddress: "node:80" does not start'),
        ({"weightsBindAddress": 10263}, "waolb.weightsBindAddress: expected an IP:port address"),
        ({"weightMetrics": "all"}, "waolb.weightMetrics: 'all' is not one of none, service"),
    ],
)
def test_bad_wao_settings_name_the_field(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_from_document({**HEADER, "waolb": section})


def test_a_waolb_section_that_is_not_an_object_is_rejected() -> None:
    with pytest.raises(ConfigError, match="waolb: expected an object, got list"):
        config_from_document({**HEADER, "waolb": ["wao"]})


def test_wao_flags_override_the_file_even_with_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
        "waolb:\n  scoringInterval: 20s\n  parallelism: 4\n"
    )
    config = apply_flags({}, load_config_file(str(path)), {"parallelism": 16})
    assert (config.waolb.scoring_interval, config.waolb.parallelism) == (20.0, 16)
    assert apply_flags({}, None, {"default_policy": "equal"}).waolb.default_policy == "equal"
