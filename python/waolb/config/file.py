"""The KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1) and its ``waolb`` section.

kube-proxy's reading rules are kept:

* ``syncPeriod``, ``minSyncPeriod`` and ``masqueradeAll`` are read from the section named by
  ``mode`` (``nftables``, ``ipvs``, else ``iptables``), as kube-proxy's v1alpha1 conversion
  does; ``masqueradeBit`` always comes from ``nftables``, as kube-proxy's nftables proxier takes
  it. A zero period in the file means "default", as in kube-proxy, and so does a zero
  ``clientConnection.qps`` or ``burst`` (client-go's defaults).
* Fields kube-proxy knows but waolb does not use are type-checked and otherwise ignored; fields
  unknown to kube-proxy are ignored with a warning (kube-proxy's lenient v1alpha1 decoding).
* The top-level ``waolb`` section holds waolb's own settings; its unknown keys are errors, as
  they can only be typos.

Every value waolb uses has the bounds its flag has (:mod:`waolb.config.values`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeAlias, TypeVar

import yaml

from waolb import logs
from waolb.config.settings import (
    DEFAULT_KUBE_API_BURST,
    DEFAULT_KUBE_API_QPS,
    HEALTHZ_PORT,
    METRICS_PORT,
    WAOLB_SECTION,
    WAOLB_SETTINGS,
    ConfigError,
    LogFormat,
    ProxyConfig,
    WaolbSettings,
    check_sync_periods,
    default_bind_addresses,
)
from waolb.config.values import (
    KUBE_API_BURST,
    KUBE_API_QPS,
    MIN_SYNC_PERIOD,
    SYNC_PERIOD,
    VERBOSITY,
    Bounds,
    normalize_bind_address,
    parse_bind_ip,
    parse_cidrs,
    parse_duration,
    parse_hostname,
    parse_node_port_addresses,
    parse_proxy_mode,
)
from waolb.kube.objects import shown

log = logs.get_logger(__name__)

API_VERSION: Final = "kubeproxy.config.k8s.io/v1alpha1"
KIND: Final = "KubeProxyConfiguration"


def parse_waolb_section(section: object) -> dict[str, Any]:
    """The file's ``waolb`` section as WaolbSettings fields; unknown keys are errors (typos)."""
    if not isinstance(section, dict):
        raise ConfigError(f"{WAOLB_SECTION}: expected an object, got {_type_name(section)}")
    by_key = {setting.key: setting for setting in WAOLB_SETTINGS}
    values = {}
    for key, value in section.items():
        setting = by_key.get(key) if isinstance(key, str) else None
        if setting is None:
            named = key if isinstance(key, str) else shown(key)
            raise ConfigError(
                f"{WAOLB_SECTION}.{named}: unknown setting (known: {', '.join(by_key)})"
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
            raise ConfigError(f"{path}: {shown(value)} does not fit a 32-bit integer")
        return value
    if kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer of hundreds of digits
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{path}: {shown(value)} is not a finite number")
        return number
    if kind == "duration" and isinstance(value, str):
        # Checked here, converted by whoever uses it (see _duration_field).
        try:
            parse_duration(value)
        except ValueError as error:
            raise ConfigError(f"{path}: {error}") from None
        return value
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
    raise ConfigError(f"{path}: expected {expected}, got {_type_name(value)} {shown(value)}")


def _flatten(document: Mapping[str, Any], schema: _Schema, prefix: str = "") -> dict[str, Any]:
    """Check ``document`` against ``schema``; return the set (non-null) fields by dotted path."""
    values: dict[str, Any] = {}
    for key, value in document.items():
        # YAML keys may be numbers, dates...: none is a field.
        path = f"{prefix}{key if isinstance(key, str) else shown(key)}"
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
            raise ConfigError(f"{path}: expected an object, got {_type_name(value)} {shown(value)}")
    return values


_T = TypeVar("_T")


def _parse_field(values: Mapping[str, Any], path: str, parse: Callable[[Any], _T]) -> _T | None:
    if path not in values:
        return None
    try:
        return parse(values[path])
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None


def _duration_field(values: Mapping[str, Any], path: str, bounds: Bounds) -> float | None:
    """A duration field in seconds; None when unset or zero, which mean "default"."""
    text = values.get(path)
    seconds = parse_duration(text) if text is not None else 0.0
    if seconds == 0:
        return None
    return _checked(path, seconds, f'"{text}"', bounds)


def _number_field(values: Mapping[str, Any], path: str, bounds: Bounds) -> Any:
    """A number field within bounds; None when unset."""
    value = values.get(path)
    return None if value is None else _checked(path, value, shown(value), bounds)


_Number = TypeVar("_Number", int, float)


def _checked(path: str, value: _Number, shown_as: str, bounds: Bounds) -> _Number:
    try:
        bounds.check(value, shown_as)
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None
    return value


def load_config_file(path: str) -> ProxyConfig:
    """Read a KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) YAML or JSON file."""
    try:
        with open(path, encoding="utf-8") as stream:
            document = yaml.safe_load(stream)
    except OSError as error:
        raise ConfigError(f"--config: cannot read {path}: {error.strerror or error}") from None
    # ValueError: an integer of more than 4300 digits, which Python refuses to convert.
    except (yaml.YAMLError, ValueError) as error:
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
        raise ConfigError(
            f'apiVersion: expected "{API_VERSION}", got {shown(values.get("apiVersion"))}'
        )
    if values.get("kind") != KIND:
        raise ConfigError(f'kind: expected "{KIND}", got {shown(values.get("kind"))}')

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
    sync_period = _duration_field(values, f"{section}.syncPeriod", SYNC_PERIOD)
    min_sync_period = _duration_field(values, f"{section}.minSyncPeriod", MIN_SYNC_PERIOD)
    # client-go reads a rate or burst of 0 as its default.
    qps = _number_field(values, "clientConnection.qps", KUBE_API_QPS) or DEFAULT_KUBE_API_QPS
    burst = _number_field(values, "clientConnection.burst", KUBE_API_BURST) or (
        DEFAULT_KUBE_API_BURST
    )
    verbosity = _number_field(values, "logging.verbosity", VERBOSITY) or defaults.verbosity
    log_format = _parse_field(values, "logging.format", _parse_logging_format)

    config = ProxyConfig(
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
        sync_period=sync_period or defaults.sync_period,
        min_sync_period=min_sync_period or defaults.min_sync_period,
        verbosity=verbosity,
        log_format=log_format or defaults.log_format,
        waolb=WaolbSettings(**waolb_values),
    )
    check_sync_periods(config)
    return config


def _parse_optional_hostname(value: str) -> str:
    return parse_hostname(value) if value else ""


def _parse_logging_format(value: str) -> LogFormat:
    """component-base's logging formats: "text" is waolb's console renderer."""
    if value == "json":
        return "json"
    if value in ("text", ""):
        return "console"
    raise ValueError(f'unknown logging format "{value}" (expected text or json)')
