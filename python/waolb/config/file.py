"""waolb's configuration: kube-proxy's KubeProxyConfiguration file and flags, resolved.

kube-proxy's own rules are kept so that a kube-proxy DaemonSet can start waolb unchanged:

* ``--config FILE`` replaces every flag value except the logging flags (``--v``), ``--master``
  and ``--hostname-override``; kube-proxy ignores the other flags then, and so does waolb (with
  a warning naming them, which kube-proxy does not give).
* Without ``--config``, flags override kube-proxy's defaults.
* In the file, ``syncPeriod``, ``minSyncPeriod`` and ``masqueradeAll`` are read from the section
  named by ``mode`` (``nftables``, ``ipvs``, else ``iptables``), as kube-proxy's v1alpha1
  conversion does; ``masqueradeBit`` always comes from ``nftables``, as kube-proxy's nftables
  proxier takes it. A zero period in the file means "default", as in kube-proxy.
* Fields kube-proxy knows but waolb does not use are type-checked and otherwise ignored; fields
  unknown to kube-proxy are ignored with a warning (kube-proxy's lenient v1alpha1 decoding).

The environment variable ``WAO_SERVICE_PROXY_NAME`` selects upstream WAO-LB's non-default proxy
mode, which pins the healthz and metrics addresses whatever the configuration says.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias, TypeVar

import yaml

from waolb import logs

log = logs.get_logger(__name__)

API_VERSION: Final = "kubeproxy.config.k8s.io/v1alpha1"
KIND: Final = "KubeProxyConfiguration"
TABLE_NAME: Final = "wao-loadbalancer"
SERVICE_PROXY_NAME_ENV: Final = "WAO_SERVICE_PROXY_NAME"
SERVICE_PROXY_NAME_LABEL: Final = "service.kubernetes.io/service-proxy-name"
HEADLESS_LABEL: Final = "service.kubernetes.io/headless"
HEALTHZ_PORT: Final = 10256
METRICS_PORT: Final = 10249
# Upstream WAO-LB's fixed addresses in non-default mode, so that it can run beside kube-proxy.
NON_DEFAULT_HEALTHZ_ADDRESS: Final = "0.0.0.0:10356"
NON_DEFAULT_METRICS_ADDRESS: Final = "0.0.0.0:10349"
PROXY_MODES: Final = ("", "iptables", "ipvs", "nftables")
NODE_PORT_KEYWORDS: Final = ("primary", "localhost", "all")

LogFormat = Literal["console", "json"]


class ConfigError(ValueError):
    """The configuration is invalid; the message names the flag or file field."""


POLICIES: Final = ("equal", "wao")
CPU_USAGE_FORMATS: Final = ("Percent", "Raw")


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
    qps: float = 5.0
    burst: int = 10
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


# ---- value parsers shared by flags and the file -----------------------------------------

_DURATION_UNITS: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Parse a Go duration ("30s", "1m0s", "1.5h", "300ms", "0") into seconds."""
    body = text.strip()
    sign = -1.0 if body.startswith("-") else 1.0
    body = body.lstrip("+-")
    if body == "0":
        return 0.0
    total = 0.0
    position = 0
    while position < len(body):
        match = _DURATION_PART.match(body, position)
        if match is None:
            raise ValueError(f'invalid duration "{text}" (expected e.g. "30s", "1m0s", "2h22m")')
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position == 0:
        raise ValueError(f'invalid duration "{text}" (expected e.g. "30s", "1m0s", "2h22m")')
    return sign * total


def split_host_port(address: str) -> tuple[str, int]:
    """Split "ip:port" or "[ipv6]:port"; the IP must be literal, as kube-proxy requires."""
    host, separator, port_text = address.rpartition(":")
    if not separator or not port_text.isdigit():
        raise ValueError(f'"{address}" is not an IP:port address')
    host = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f'"{address}" does not start with a valid IP address') from None
    port = int(port_text)
    if port > 65535:
        raise ValueError(f'"{address}" has a port out of range')
    return host, port


def normalize_bind_address(address: str, default_port: int) -> str:
    """Accept "ip" or "ip:port" (kube-proxy's IPPortVar); return "ip:port"."""
    try:
        ip = ipaddress.ip_address(address.removeprefix("[").removesuffix("]"))
    except ValueError:
        split_host_port(address)
        return address
    return f"[{ip}]:{default_port}" if ip.version == 6 else f"{ip}:{default_port}"


def parse_cidrs(text: str) -> tuple[str, ...]:
    """A comma-separated list of CIDRs, at most one per IP family (kube-proxy's clusterCIDR)."""
    cidrs = tuple(part.strip() for part in text.split(",") if part.strip())
    families = []
    for cidr in cidrs:
        try:
            families.append(ipaddress.ip_network(cidr, strict=False).version)
        except ValueError:
            raise ValueError(f'"{cidr}" is not a valid CIDR') from None
    if len(cidrs) > 2 or len(set(families)) != len(families):
        raise ValueError(f'"{text}" must be one CIDR or a dual-stack pair')
    return cidrs


def parse_node_port_addresses(values: Iterable[str]) -> tuple[str, ...]:
    """CIDRs and the keywords kube-proxy accepts for nodePortAddresses."""
    result = []
    for value in values:
        if value not in NODE_PORT_KEYWORDS:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(
                    f'"{value}" is neither a CIDR nor one of {", ".join(NODE_PORT_KEYWORDS)}'
                ) from None
        result.append(value)
    return tuple(result)


def parse_proxy_mode(value: str) -> str:
    if value not in PROXY_MODES:
        raise ValueError(
            f'unknown proxy mode "{value}" (kube-proxy accepts iptables, ipvs, nftables)'
        )
    return value


def parse_bind_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f'"{value}" is not an IP address') from None


def parse_hostname(value: str) -> str:
    """kube-proxy trims and lowercases node names and rejects blank ones."""
    hostname = value.strip().lower()
    if not hostname:
        raise ValueError("an empty hostname is invalid")
    return hostname


def default_bind_addresses(bind_address: str) -> tuple[str, str]:
    """kube-proxy's default healthz and metrics addresses, which follow bindAddress's family."""
    if ipaddress.ip_address(bind_address).version == 6:
        return f"[::]:{HEALTHZ_PORT}", f"[::1]:{METRICS_PORT}"
    return f"0.0.0.0:{HEALTHZ_PORT}", f"127.0.0.1:{METRICS_PORT}"


def parse_go_bool(text: str) -> bool:
    """Go's strconv.ParseBool, which pflag uses for --flag=value."""
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise ValueError(f'"{text}" is not a boolean (use true or false)')


# ---- waolb's own settings: the file's ``waolb`` section and the --wao-* flags ---------------

# nft accepts more, but these survive every shell and tool an operator pastes them into.
_TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


def _table_name(value: object) -> str:
    if not isinstance(value, str) or not _TABLE_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a table name (a letter, then up to 63 letters, digits, _ . -)"
        )
    return value


def _positive_duration(value: object) -> float:
    if not isinstance(value, str):
        raise ValueError(f'expected a duration string such as "30s", got {value!r}')
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f'"{value}" must be greater than 0')
    return seconds


def _parallelism(value: object) -> int:
    number = value if isinstance(value, int) and not isinstance(value, bool) else None
    if isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    if number is None or not 1 <= number <= 1024:
        raise ValueError(f"{value} is not a whole number from 1 to 1024")
    return number


def parse_cpu_quantity(value: object) -> float:
    """A Kubernetes CPU quantity ("100m", "0.5", "2") in cores; it must be above zero."""
    # Lazy: the kubernetes package costs a third of a second, which --help need not pay.
    from kubernetes.utils.quantity import parse_quantity  # noqa: PLC0415

    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f'expected a CPU quantity such as "100m", got {value!r}')
    try:
        cores = float(parse_quantity(value))  # type: ignore[no-untyped-call]
    except (ValueError, ArithmeticError):
        raise ValueError(f'"{value}" is not a CPU quantity (e.g. "100m", "0.5")') from None
    if not math.isfinite(cores) or cores <= 0:
        raise ValueError(f'"{value}" must be a CPU quantity above zero')
    return cores


def _choice(options: tuple[str, ...]) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if value not in options:
            raise ValueError(f"{value!r} is not one of {', '.join(options)}")
        return str(value)

    return parse


def _fraction(value: object) -> float:
    try:
        number = float(value) if isinstance(value, str | int | float) else math.nan
    except ValueError:
        number = math.nan
    if isinstance(value, bool) or not 0 <= number <= 1:
        raise ValueError(f"{value!r} is not a number from 0 to 1")
    return number


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return parse_go_bool(value)
    raise ValueError(f"expected true or false, got {value!r}")


@dataclass(frozen=True)
class WaolbSetting:
    """One of waolb's settings: its field, its file key and flag, and how to read either."""

    field: str
    key: str
    flag: str
    parse: Callable[[object], Any]
    help: str


WAOLB_SETTINGS: Final = (
    WaolbSetting("table_name", "tableName", "wao-table-name", _table_name, "nftables table name"),
    WaolbSetting(
        "default_policy",
        "defaultPolicy",
        "wao-default-policy",
        _choice(POLICIES),
        "policy of Services without the policy annotation: wao or equal",
    ),
    WaolbSetting(
        "metrics_cache_ttl",
        "metricsCacheTTL",
        "wao-metrics-cache-ttl",
        _positive_duration,
        "how long node metrics are reused",
    ),
    WaolbSetting(
        "predictor_cache_ttl",
        "predictorCacheTTL",
        "wao-predictor-cache-ttl",
        _positive_duration,
        "how long a prediction for the same inputs is reused",
    ),
    WaolbSetting(
        "request_timeout",
        "requestTimeout",
        "wao-request-timeout",
        _positive_duration,
        "timeout of each metrics, Secret and predictor request",
    ),
    WaolbSetting(
        "parallelism", "parallelism", "wao-parallelism", _parallelism, "concurrent predictor calls"
    ),
    WaolbSetting(
        "cpu_per_request",
        "cpuPerRequest",
        "wao-cpu-per-request",
        parse_cpu_quantity,
        "CPU one more request costs, for Services without the annotation",
    ),
    WaolbSetting(
        "cpu_usage_format",
        "cpuUsageFormat",
        "wao-cpu-usage-format",
        _choice(CPU_USAGE_FORMATS),
        "predictor CPU input: Percent of capacity or Raw cores",
    ),
    WaolbSetting(
        "scoring_interval",
        "scoringInterval",
        "wao-scoring-interval",
        _positive_duration,
        "how often scores are recomputed",
    ),
    WaolbSetting(
        "min_weight_change",
        "minWeightChange",
        "wao-min-weight-change",
        _fraction,
        "smallest change of an endpoint's traffic share (0-1) that re-programs a Service",
    ),
    WaolbSetting(
        "verify_tls", "verifyTLS", "wao-verify-tls", _boolean, "verify predictors' TLS certificates"
    ),
)
WAOLB_SECTION: Final = "waolb"


def parse_waolb_section(section: object) -> dict[str, Any]:
    """The file's ``waolb`` section as WaolbSettings fields; unknown keys are errors (typos)."""
    if not isinstance(section, dict):
        raise ConfigError(f"{WAOLB_SECTION}: expected an object, got {_type_name(section)}")
    by_key = {setting.key: setting for setting in WAOLB_SETTINGS}
    values = {}
    for key, value in section.items():
        setting = by_key.get(key)
        if setting is None:
            raise ConfigError(
                f"{WAOLB_SECTION}.{key}: unknown setting (known: {', '.join(by_key)})"
            )
        if value is None:
            continue
        try:
            values[setting.field] = setting.parse(value)
        except ValueError as error:
            raise ConfigError(f"{WAOLB_SECTION}.{key}: {error}") from None
    return values


# ---- the KubeProxyConfiguration file -----------------------------------------------------

# The v1alpha1 schema: a type name per field, or a nested schema. "any" is not checked.
_Schema: TypeAlias = Mapping[str, "str | _Schema"]
_FILE_SCHEMA: Final[_Schema] = {
    "apiVersion": "str",
    "kind": "str",
    "featureGates": "bool_map",
    "clientConnection": {
        "kubeconfig": "str",
        "acceptContentTypes": "str",
        "contentType": "str",
        "qps": "float",
        "burst": "int",
    },
    "logging": {
        "format": "str",
        "flushFrequency": "any",
        "verbosity": "int",
        "vmodule": "any",
        "options": "any",
    },
    "hostnameOverride": "str",
    "bindAddress": "str",
    "healthzBindAddress": "str",
    "metricsBindAddress": "str",
    "bindAddressHardFail": "bool",
    "enableProfiling": "bool",
    "showHiddenMetricsForVersion": "str",
    "mode": "str",
    "iptables": {
        "masqueradeBit": "int",
        "masqueradeAll": "bool",
        "localhostNodePorts": "bool",
        "snatNodeInternalIP": "bool",
        "syncPeriod": "duration",
        "minSyncPeriod": "duration",
    },
    "ipvs": {
        "syncPeriod": "duration",
        "minSyncPeriod": "duration",
        "scheduler": "str",
        "excludeCIDRs": "str_list",
        "strictARP": "bool",
        "tcpTimeout": "duration",
        "tcpFinTimeout": "duration",
        "udpTimeout": "duration",
    },
    "nftables": {
        "masqueradeBit": "int",
        "masqueradeAll": "bool",
        "syncPeriod": "duration",
        "minSyncPeriod": "duration",
    },
    "winkernel": {
        "networkName": "str",
        "sourceVip": "str",
        "enableDSR": "bool",
        "rootHnsEndpointName": "str",
        "forwardHealthCheckVip": "bool",
    },
    "detectLocalMode": "str",
    "detectLocal": {"bridgeInterface": "str", "interfaceNamePrefix": "str"},
    "clusterCIDR": "str",
    "nodePortAddresses": "str_list",
    "oomScoreAdj": "int",
    "conntrack": {
        "maxPerCore": "int",
        "min": "int",
        "tcpEstablishedTimeout": "duration",
        "tcpCloseWaitTimeout": "duration",
        "tcpBeLiberal": "bool",
        "udpTimeout": "duration",
        "udpStreamTimeout": "duration",
    },
    "configSyncPeriod": "duration",
    "portRange": "str",
    "windowsRunAsService": "bool",
}

# The fields waolb acts on; every other known field is accepted and ignored.
_USED_FIELDS: Final = frozenset(
    {
        "apiVersion",
        "kind",
        "clientConnection.kubeconfig",
        "clientConnection.qps",
        "clientConnection.burst",
        "logging.format",
        "logging.verbosity",
        "hostnameOverride",
        "bindAddress",
        "healthzBindAddress",
        "metricsBindAddress",
        "mode",
        "iptables.masqueradeAll",
        "iptables.syncPeriod",
        "iptables.minSyncPeriod",
        "ipvs.syncPeriod",
        "ipvs.minSyncPeriod",
        "nftables.masqueradeBit",
        "nftables.masqueradeAll",
        "nftables.syncPeriod",
        "nftables.minSyncPeriod",
        "clusterCIDR",
        "nodePortAddresses",
    }
)

_INT32_RANGE: Final = (-(2**31), 2**31 - 1)


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _check_value(path: str, kind: str, value: object) -> object:
    """Type-check one scalar field the way Go's JSON decoding would; return it converted."""
    if kind == "any":
        return value
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "bool" and isinstance(value, bool):
        return value
    # bool is an int subclass in Python, but not in Go's decoder.
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        if not _INT32_RANGE[0] <= value <= _INT32_RANGE[1]:
            raise ConfigError(f"{path}: {value} does not fit a 32-bit integer")
        return value
    if kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{path}: {value} is not a finite number")
        return float(value)
    if kind == "duration" and isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as error:
            raise ConfigError(f"{path}: {error}") from None
    if kind == "str_list" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    if (
        kind == "bool_map"
        and isinstance(value, dict)
        and all(isinstance(k, str) and isinstance(v, bool) for k, v in value.items())
    ):
        return value
    expected = {
        "str": "a string",
        "bool": "true or false",
        "int": "an integer",
        "float": "a number",
        "duration": 'a duration string such as "30s"',
        "str_list": "a list of strings",
        "bool_map": "a map of feature names to true/false",
    }[kind]
    raise ConfigError(f"{path}: expected {expected}, got {_type_name(value)} {value!r}")


def _flatten(document: Mapping[str, Any], schema: _Schema, prefix: str = "") -> dict[str, Any]:
    """Check ``document`` against ``schema``; return the set (non-null) fields by dotted path."""
    values: dict[str, Any] = {}
    for key, value in document.items():
        path = f"{prefix}{key}"
        kind = schema.get(key) if isinstance(key, str) else None
        if kind is None:
            log.warning("unknown field in the configuration file, ignored", field=path)
            continue
        if value is None:  # null: unset, as for Go's pointer and zero-value fields
            continue
        if isinstance(kind, str):
            values[path] = _check_value(path, kind, value)
            if path not in _USED_FIELDS:
                log.debug("kube-proxy field has no effect in waolb", field=path)
        elif isinstance(value, dict):
            values.update(_flatten(value, kind, f"{path}."))
        else:
            raise ConfigError(f"{path}: expected an object, got {_type_name(value)} {value!r}")
    return values


_T = TypeVar("_T")


def _parse_field(values: Mapping[str, Any], path: str, parse: Callable[[Any], _T]) -> _T | None:
    if path not in values:
        return None
    try:
        return parse(values[path])
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None


def load_config_file(path: str) -> ProxyConfig:
    """Read a KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) YAML or JSON file."""
    try:
        with open(path, encoding="utf-8") as stream:
            document = yaml.safe_load(stream)
    except OSError as error:
        raise ConfigError(f"--config: cannot read {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"--config: {path} is not valid YAML: {error}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"--config: {path} does not hold a {KIND} object")
    return config_from_document(document)


def config_from_document(document: Mapping[str, Any]) -> ProxyConfig:
    """Build a ProxyConfig from a decoded KubeProxyConfiguration document."""
    waolb_values = parse_waolb_section(document.get(WAOLB_SECTION) or {})
    values = _flatten(
        {key: value for key, value in document.items() if key != WAOLB_SECTION}, _FILE_SCHEMA
    )
    if values.get("apiVersion") != API_VERSION:
        raise ConfigError(f'apiVersion: expected "{API_VERSION}", got {values.get("apiVersion")!r}')
    if values.get("kind") != KIND:
        raise ConfigError(f'kind: expected "{KIND}", got {values.get("kind")!r}')

    mode = _parse_field(values, "mode", parse_proxy_mode) or ""
    # kube-proxy's v1alpha1 conversion reads these from the section named by mode.
    section = mode if mode in ("nftables", "ipvs") else "iptables"
    masquerade_section = "nftables" if mode == "nftables" else "iptables"
    defaults = ProxyConfig()

    bind_address = _parse_field(values, "bindAddress", parse_bind_ip) or defaults.bind_address
    default_healthz, default_metrics = default_bind_addresses(bind_address)
    healthz = _parse_field(
        values, "healthzBindAddress", lambda v: normalize_bind_address(v, HEALTHZ_PORT) if v else ""
    )
    metrics = _parse_field(
        values, "metricsBindAddress", lambda v: normalize_bind_address(v, METRICS_PORT) if v else ""
    )
    masquerade_bit = values.get("nftables.masqueradeBit", defaults.masquerade_bit)
    if not 0 <= masquerade_bit <= 31:
        raise ConfigError(f"nftables.masqueradeBit: {masquerade_bit} is not within [0, 31]")
    sync_period = values.get(f"{section}.syncPeriod") or defaults.sync_period
    min_sync_period = values.get(f"{section}.minSyncPeriod") or defaults.min_sync_period
    if sync_period <= 0:
        raise ConfigError(f"{section}.syncPeriod: must be greater than 0")
    if min_sync_period < 0:
        raise ConfigError(f"{section}.minSyncPeriod: must not be negative")
    qps = values.get("clientConnection.qps") or defaults.qps
    burst = values.get("clientConnection.burst") or defaults.burst
    if qps < 0:
        raise ConfigError(f"clientConnection.qps: {qps} must not be negative")
    if burst < 0:
        raise ConfigError(f"clientConnection.burst: {burst} must not be negative")
    verbosity = values.get("logging.verbosity", defaults.verbosity)
    if verbosity < 0:
        raise ConfigError(f"logging.verbosity: {verbosity} must not be negative")
    log_format = _parse_field(values, "logging.format", _parse_logging_format)

    return ProxyConfig(
        bind_address=bind_address,
        healthz_bind_address=healthz or default_healthz,
        metrics_bind_address=metrics or default_metrics,
        cluster_cidrs=_parse_field(values, "clusterCIDR", parse_cidrs) or (),
        hostname_override=_parse_field(values, "hostnameOverride", _parse_optional_hostname) or "",
        mode=mode,
        node_port_addresses=_parse_field(values, "nodePortAddresses", parse_node_port_addresses)
        or (),
        kubeconfig=values.get("clientConnection.kubeconfig", ""),
        qps=qps,
        burst=burst,
        masquerade_bit=masquerade_bit,
        masquerade_all=values.get(f"{masquerade_section}.masqueradeAll", False),
        sync_period=sync_period,
        min_sync_period=min_sync_period,
        verbosity=verbosity,
        log_format=log_format or defaults.log_format,
        waolb=WaolbSettings(**waolb_values),
    )


def _parse_optional_hostname(value: str) -> str:
    return parse_hostname(value) if value else ""


def _parse_logging_format(value: str) -> LogFormat:
    """component-base's logging formats: "text" is waolb's console renderer."""
    if value == "json":
        return "json"
    if value in ("text", ""):
        return "console"
    raise ValueError(f'unknown logging format "{value}" (expected text or json)')


# ---- flags over defaults or the file -----------------------------------------------------

# Flags that apply even with --config, as in kube-proxy (its logging flags, --master and
# --hostname-override); --log-format is waolb's own logging flag.
FLAGS_APPLIED_WITH_CONFIG_FILE: Final = frozenset(
    {"verbosity", "log_format", "master", "hostname_override"}
)


def apply_flags(
    flags: Mapping[str, Any],
    config_file: str | None,
    waolb_flags: Mapping[str, Any] | None = None,
) -> ProxyConfig:
    """Resolve the configuration from explicitly set flags (by ProxyConfig field) and the file.

    ``flags`` holds only the flags given on the command line, already parsed and validated;
    the sync period flags arrive as ``iptables_sync_period`` and so on and are mapped by mode.
    ``waolb_flags`` (by WaolbSettings field) override the file's ``waolb`` section: kube-proxy
    has no such flags, so its rule of ignoring flags beside --config does not apply to them.
    """
    config = _apply_kube_proxy_flags(flags, config_file)
    if waolb_flags:
        config = dataclasses.replace(config, waolb=dataclasses.replace(config.waolb, **waolb_flags))
    return config


def _apply_kube_proxy_flags(flags: Mapping[str, Any], config_file: str | None) -> ProxyConfig:
    if config_file is not None:
        base = load_config_file(config_file)
        kept = {name: flags[name] for name in FLAGS_APPLIED_WITH_CONFIG_FILE & set(flags)}
        return dataclasses.replace(base, **kept)

    overrides = dict(flags)
    mode = overrides.get("mode", "")
    # kube-proxy maps the mode-specific period flags onto the one period it uses.
    period_flags = ("ipvs",) if mode == "ipvs" else ("iptables",)
    for family in ("iptables", "ipvs"):
        for name in ("sync_period", "min_sync_period"):
            value = overrides.pop(f"{family}_{name}", None)
            if value is not None and family in period_flags:
                overrides[name] = value
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
