"""waolb's settings: what the proxy runs with, and how flags, the file and defaults combine.

kube-proxy's own rules are kept so that a kube-proxy DaemonSet can start waolb unchanged:

* ``--config FILE`` replaces every flag value except the logging flags (``--v``), ``--master``
  and ``--hostname-override``; kube-proxy ignores the other flags then, and so does waolb (with
  a warning naming them, which kube-proxy does not give).
* Without ``--config``, flags override kube-proxy's defaults.
* waolb's own settings (the file's ``waolb`` section, the ``--wao-*`` flags) have no kube-proxy
  precedent: their flags override the file even with ``--config``.

The environment variable ``WAO_SERVICE_PROXY_NAME`` selects upstream WAO-LB's non-default proxy
mode, which pins the healthz and metrics addresses whatever the configuration says.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from waolb.config.values import (
    REFRESH_PERIOD,
    REQUEST_TIMEOUT,
    choice,
    duration_within,
    format_duration,
    optional_bind_address,
    parse_boolean,
    parse_cpu_per_request,
    parse_fraction,
    parse_hostname,
    parse_parallelism,
    parse_table_name,
)
from waolb.kube.objects import HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL

TABLE_NAME: Final = "wao-loadbalancer"
SERVICE_PROXY_NAME_ENV: Final = "WAO_SERVICE_PROXY_NAME"
HEALTHZ_PORT: Final = 10256
METRICS_PORT: Final = 10249
# waolb's own: the scorer's view (``waolb weights``), on loopback unless the operator says so.
WEIGHTS_PORT: Final = 10263
DEFAULT_WEIGHTS_ADDRESS: Final = f"127.0.0.1:{WEIGHTS_PORT}"
# Upstream WAO-LB's fixed addresses in non-default mode, so that it can run beside kube-proxy.
NON_DEFAULT_HEALTHZ_ADDRESS: Final = "0.0.0.0:10356"
NON_DEFAULT_METRICS_ADDRESS: Final = "0.0.0.0:10349"
POLICIES: Final = ("equal", "wao")
CPU_USAGE_FORMATS: Final = ("Percent", "Raw")
# What /metrics tells of the programmed weights: nothing, one series per service port, or
# also one per endpoint (10 MiB a scrape at 10 000 services of 10 endpoints).
WEIGHT_METRICS: Final = ("none", "service", "endpoint")
# client-go's defaults, which a qps or burst of 0 stands for.
DEFAULT_KUBE_API_QPS: Final = 5.0
DEFAULT_KUBE_API_BURST: Final = 10

LogFormat = Literal["console", "json"]


class ConfigError(ValueError):
    """The configuration is invalid; the message names the flag or file field."""


@dataclass(frozen=True)
class WaolbSettings:
    """waolb's own settings: the file's top-level ``waolb`` section and the ``--wao-*`` flags.

    Upstream WAO-LB hard-codes all of these; its values are the defaults.
    """

    table_name: str = TABLE_NAME
    # The policy of Services without the policy annotation.
    default_policy: str = "wao"
    metrics_cache_ttl: float = 30.0
    predictor_cache_ttl: float = 1800.0
    request_timeout: float = 3.0
    parallelism: int = 64
    cpu_per_request: float = 0.1  # cores
    cpu_usage_format: str = "Percent"
    scoring_interval: float = 10.0
    # The smallest change of any endpoint's share of traffic (0-1) that re-programs a Service.
    min_weight_change: float = 0.05
    # Upstream skips verification: BMC and in-cluster predictors mostly have self-signed certs.
    verify_tls: bool = False
    # Where /waolb/weights is served (predictor URLs, scores, errors); "" turns it off.
    weights_bind_address: str = DEFAULT_WEIGHTS_ADDRESS
    weight_metrics: str = "service"


@dataclass(frozen=True)
class ProxyConfig:
    """kube-proxy's configuration as waolb uses it: defaults, then the file or the flags."""

    bind_address: str = "0.0.0.0"
    # "" disables the server (kube-proxy's flag semantics); the file's "" means "default".
    healthz_bind_address: str = f"0.0.0.0:{HEALTHZ_PORT}"
    metrics_bind_address: str = f"127.0.0.1:{METRICS_PORT}"
    cluster_cidrs: tuple[str, ...] = ()
    hostname_override: str = ""
    # As configured; waolb always programs nftables whatever this says.
    mode: str = ""
    node_port_addresses: tuple[str, ...] = ()
    kubeconfig: str = ""
    master: str = ""
    # Every API request of the process shares one token bucket of this rate and size.
    qps: float = DEFAULT_KUBE_API_QPS
    burst: int = DEFAULT_KUBE_API_BURST
    masquerade_bit: int = 14
    masquerade_all: bool = False
    sync_period: float = 30.0
    min_sync_period: float = 1.0
    verbosity: int = 0
    log_format: LogFormat = "console"
    waolb: WaolbSettings = field(default_factory=WaolbSettings)


@dataclass(frozen=True)
class ProxySettings:
    """Everything the proxier needs, after the environment and the node name are resolved."""

    config: ProxyConfig
    node_name: str
    # None: the default proxy (Services without the service-proxy-name label).
    service_proxy_name: str | None
    service_label_selector: str
    healthz_bind_address: str
    metrics_bind_address: str

    @property
    def table_name(self) -> str:
        return self.config.waolb.table_name


def default_bind_addresses(bind_address: str) -> tuple[str, str]:
    """kube-proxy's default healthz and metrics addresses, which follow bindAddress's family."""
    if ipaddress.ip_address(bind_address).version == 6:
        return f"[::]:{HEALTHZ_PORT}", f"[::1]:{METRICS_PORT}"
    return f"0.0.0.0:{HEALTHZ_PORT}", f"127.0.0.1:{METRICS_PORT}"


# ---- waolb's own settings: the file's ``waolb`` section and the --wao-* flags ---------------


@dataclass(frozen=True)
class WaolbSetting:
    """One of waolb's settings: its field, its file key and flag, and how to read either."""

    field: str
    key: str
    flag: str
    parse: Callable[[object], Any]
    help: str


WAOLB_SECTION: Final = "waolb"
WAOLB_SETTINGS: Final = (
    WaolbSetting(
        "table_name", "tableName", "wao-table-name", parse_table_name, "nftables table name"
    ),
    WaolbSetting(
        "default_policy",
        "defaultPolicy",
        "wao-default-policy",
        choice(POLICIES),
        "policy of Services without the policy annotation: wao or equal",
    ),
    WaolbSetting(
        "metrics_cache_ttl",
        "metricsCacheTTL",
        "wao-metrics-cache-ttl",
        duration_within(REFRESH_PERIOD),
        "how long node metrics are reused (at most 24h)",
    ),
    WaolbSetting(
        "predictor_cache_ttl",
        "predictorCacheTTL",
        "wao-predictor-cache-ttl",
        duration_within(REFRESH_PERIOD),
        "how long a prediction for the same inputs is reused (at most 24h)",
    ),
    WaolbSetting(
        "request_timeout",
        "requestTimeout",
        "wao-request-timeout",
        duration_within(REQUEST_TIMEOUT),
        "deadline of each metrics, Secret and predictor request, from connecting to the last "
        f"byte (at most {format_duration(REQUEST_TIMEOUT.maximum)})",
    ),
    WaolbSetting(
        "parallelism",
        "parallelism",
        "wao-parallelism",
        parse_parallelism,
        "concurrent predictor calls (1-1024)",
    ),
    WaolbSetting(
        "cpu_per_request",
        "cpuPerRequest",
        "wao-cpu-per-request",
        parse_cpu_per_request,
        "CPU one more request costs, for Services without the annotation (at most 1024)",
    ),
    WaolbSetting(
        "cpu_usage_format",
        "cpuUsageFormat",
        "wao-cpu-usage-format",
        choice(CPU_USAGE_FORMATS),
        "predictor CPU input: Percent of capacity or Raw cores",
    ),
    WaolbSetting(
        "scoring_interval",
        "scoringInterval",
        "wao-scoring-interval",
        duration_within(REFRESH_PERIOD),
        "how often scores are recomputed (at most 24h)",
    ),
    WaolbSetting(
        "min_weight_change",
        "minWeightChange",
        "wao-min-weight-change",
        parse_fraction,
        "smallest change of an endpoint's traffic share (0-1) that re-programs a Service",
    ),
    WaolbSetting(
        "verify_tls",
        "verifyTLS",
        "wao-verify-tls",
        parse_boolean,
        "verify predictors' TLS certificates",
    ),
    WaolbSetting(
        "weights_bind_address",
        "weightsBindAddress",
        "wao-weights-bind-address",
        optional_bind_address(WEIGHTS_PORT),
        "ip:port serving the scorer's view for `waolb weights` (empty: off; default "
        f"{DEFAULT_WEIGHTS_ADDRESS}, this node only)",
    ),
    WaolbSetting(
        "weight_metrics",
        "weightMetrics",
        "wao-weight-metrics",
        choice(WEIGHT_METRICS),
        "weight series on /metrics: none, service (one per service port) or endpoint "
        "(also one per endpoint)",
    ),
)


# ---- flags over defaults or the file -----------------------------------------------------

# Flags that apply even with --config, as in kube-proxy (its logging flags, --master and
# --hostname-override); --log-format is waolb's own logging flag.
FLAGS_APPLIED_WITH_CONFIG_FILE: Final = frozenset(
    {"verbosity", "log_format", "master", "hostname_override"}
)


def apply_flags(
    flags: Mapping[str, Any],
    file_config: ProxyConfig | None,
    waolb_flags: Mapping[str, Any] | None = None,
) -> ProxyConfig:
    """Resolve the configuration from explicitly set flags (by ProxyConfig field) and the
    configuration file's settings (None: no ``--config``).

    ``flags`` holds only the flags given on the command line, already parsed and validated;
    the sync period flags arrive as ``iptables_sync_period`` and so on and are mapped by mode.
    ``waolb_flags`` (by WaolbSettings field) override the file's ``waolb`` section: kube-proxy
    has no such flags, so its rule of ignoring flags beside --config does not apply to them.
    """
    config = _apply_kube_proxy_flags(flags, file_config)
    if waolb_flags:
        config = dataclasses.replace(config, waolb=dataclasses.replace(config.waolb, **waolb_flags))
    check_sync_periods(config)
    return config


def check_sync_periods(config: ProxyConfig) -> None:
    """kube-proxy's rule: the minimum sync period must not exceed the sync period, which is
    the longest a change may wait."""
    if config.min_sync_period > config.sync_period:
        raise ConfigError(
            f"the minimum sync period ({format_duration(config.min_sync_period)}) exceeds the "
            f"sync period ({format_duration(config.sync_period)}): lower the minimum or raise "
            "the sync period"
        )


def _apply_kube_proxy_flags(
    flags: Mapping[str, Any], file_config: ProxyConfig | None
) -> ProxyConfig:
    if file_config is not None:
        kept = {name: flags[name] for name in FLAGS_APPLIED_WITH_CONFIG_FILE & set(flags)}
        return dataclasses.replace(file_config, **kept)

    overrides = dict(flags)
    mode = overrides.get("mode", "")
    # kube-proxy maps the mode-specific period flags onto the one period it uses.
    period_flags = ("ipvs",) if mode == "ipvs" else ("iptables",)
    for family in ("iptables", "ipvs"):
        for name in ("sync_period", "min_sync_period"):
            value = overrides.pop(f"{family}_{name}", None)
            if value is not None and family in period_flags:
                overrides[name] = value
    # client-go reads a rate or burst of 0 as its default.
    for name, default in (("qps", DEFAULT_KUBE_API_QPS), ("burst", DEFAULT_KUBE_API_BURST)):
        if overrides.get(name) == 0:
            overrides[name] = default
    config = dataclasses.replace(ProxyConfig(), **overrides)
    if "bind_address" in flags:
        default_healthz, default_metrics = default_bind_addresses(config.bind_address)
        config = dataclasses.replace(
            config,
            healthz_bind_address=flags.get("healthz_bind_address", default_healthz),
            metrics_bind_address=flags.get("metrics_bind_address", default_metrics),
        )
    return config


def service_label_selector(service_proxy_name: str | None) -> str:
    """The server-side selector for the Services this proxy handles."""
    if service_proxy_name:
        return f"{SERVICE_PROXY_NAME_LABEL}={service_proxy_name},!{HEADLESS_LABEL}"
    return f"!{SERVICE_PROXY_NAME_LABEL},!{HEADLESS_LABEL}"


def resolve_settings(
    config: ProxyConfig,
    environ: Mapping[str, str],
    os_hostname: Callable[[], str] = socket.gethostname,
) -> ProxySettings:
    """Apply WAO_SERVICE_PROXY_NAME and find the node name (flag, then file, then OS)."""
    proxy_name = environ.get(SERVICE_PROXY_NAME_ENV, "").strip() or None
    try:
        node_name = parse_hostname(config.hostname_override or os_hostname())
    except ValueError:
        raise ConfigError("cannot determine the node name: the hostname is empty") from None
    if proxy_name is not None:
        healthz, metrics = NON_DEFAULT_HEALTHZ_ADDRESS, NON_DEFAULT_METRICS_ADDRESS
    else:
        healthz, metrics = config.healthz_bind_address, config.metrics_bind_address
    return ProxySettings(
        config=config,
        node_name=node_name,
        service_proxy_name=proxy_name,
        service_label_selector=service_label_selector(proxy_name),
        healthz_bind_address=healthz,
        metrics_bind_address=metrics,
    )
