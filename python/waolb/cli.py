"""The ``waolb`` (and ``kube-proxy``) command: kube-proxy's command line, waolb's proxy.

``waolb weights`` is the one subcommand: it shows the programmed weights (weights_report).

kube-proxy's flags are accepted in both the ``--flag=value`` and ``--flag value`` forms, with
``_`` and ``-`` interchangeable in names as pflag allows. Flags kube-proxy has but waolb cannot
honour (conntrack, IPVS, profiling...) are accepted with a warning, so that an unchanged
kube-proxy DaemonSet starts; anything else is an error (exit status 2).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from waolb import __version__, logs
from waolb.config.file import load_config_file
from waolb.config.settings import (
    FLAGS_APPLIED_WITH_CONFIG_FILE,
    HEALTHZ_PORT,
    METRICS_PORT,
    WAOLB_SETTINGS,
    ConfigError,
    ProxyConfig,
    apply_flags,
    resolve_settings,
)
from waolb.config.values import (
    KUBE_API_BURST,
    KUBE_API_QPS,
    MIN_SYNC_PERIOD,
    SYNC_PERIOD,
    VERBOSITY,
    duration_within,
    integer_flag,
    number_flag,
    optional_bind_address,
    parse_bind_ip,
    parse_cidrs,
    parse_go_bool,
    parse_hostname,
    parse_node_port_addresses,
    parse_proxy_mode,
)

log = logs.get_logger(__name__)

EXIT_USAGE: Final = 2

# kube-proxy flags that have no effect in waolb, and whether each takes a value.
COMPATIBILITY_FLAGS: Final = {
    "feature-gates": True,
    "kube-api-content-type": True,
    "bind-address-hard-fail": False,
    "profiling": False,
    "show-hidden-metrics-for-version": True,
    "iptables-masquerade-bit": True,
    "iptables-localhost-nodeports": False,
    "ipvs-scheduler": True,
    "ipvs-exclude-cidrs": True,
    "ipvs-strict-arp": False,
    "ipvs-tcp-timeout": True,
    "ipvs-tcpfin-timeout": True,
    "ipvs-udp-timeout": True,
    "detect-local-mode": True,
    "pod-bridge-interface": True,
    "pod-interface-name-prefix": True,
    "oom-score-adj": True,
    "conntrack-max-per-core": True,
    "conntrack-min": True,
    "conntrack-tcp-timeout-established": True,
    "conntrack-tcp-timeout-close-wait": True,
    "conntrack-tcp-be-liberal": False,
    "conntrack-udp-timeout": True,
    "conntrack-udp-timeout-stream": True,
    "config-sync-period": True,
    "vmodule": True,
    "log-flush-frequency": True,
}
_COMPATIBILITY_PREFIX: Final = "compatibility:"
_WAOLB_PREFIX: Final = "waolb:"


def _argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wrap a parser so that argparse reports its ValueError message for the flag."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def _log_format(text: str) -> str:
    if text not in ("json", "console"):
        raise ValueError(f'"{text}" is not a log format (use json or console)')
    return text


def _logging_format(text: str) -> str:
    """component-base's --logging-format: "text" or "json"."""
    if text not in ("text", "json"):
        raise ValueError(f'"{text}" is not a logging format (use text or json)')
    return "console" if text == "text" else "json"


def _node_port_addresses(text: str) -> list[str]:
    return list(parse_node_port_addresses(part.strip() for part in text.split(",") if part.strip()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="waolb",
        description="Energy-aware Kubernetes service proxy (nftables), a drop-in for kube-proxy.",
        allow_abbrev=False,
        # Only flags given on the command line appear in the result, so that precedence
        # between flags, the config file and defaults can be decided afterwards.
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--version", action="version", version=f"waolb {__version__}")
    _add_process_flags(parser)
    _add_proxy_flags(parser)

    wao = parser.add_argument_group(
        "waolb's own settings (override the config file's waolb section, even with --config)"
    )
    for setting in WAOLB_SETTINGS:
        wao.add_argument(
            f"--{setting.flag}",
            dest=f"{_WAOLB_PREFIX}{setting.field}",
            type=_argument_type(setting.parse),
            metavar="VALUE",
            help=setting.help,
        )

    compatibility = parser.add_argument_group("kube-proxy flags without effect in waolb")
    for name, takes_value in COMPATIBILITY_FLAGS.items():
        dest = f"{_COMPATIBILITY_PREFIX}{name}"
        if takes_value:
            compatibility.add_argument(f"--{name}", dest=dest, metavar="VALUE", help="ignored")
        else:
            compatibility.add_argument(
                f"--{name}", dest=dest, nargs="?", const="true", metavar="BOOL", help="ignored"
            )
    return parser


def _value_flag(
    parser: argparse.ArgumentParser,
    name: str,
    parse: Callable[[str], Any],
    help: str,
    dest: str,
    **extra: Any,
) -> None:
    parser.add_argument(
        f"--{name}", dest=dest, type=_argument_type(parse), metavar="VALUE", help=help, **extra
    )


def _bool_flag(parser: argparse.ArgumentParser, name: str, help: str, dest: str) -> None:
    # pflag booleans: "--flag" alone means true; "--flag=false" sets false.
    parser.add_argument(
        f"--{name}",
        dest=dest,
        nargs="?",
        const=True,
        type=_argument_type(parse_go_bool),
        metavar="BOOL",
        help=help,
    )


def _add_process_flags(parser: argparse.ArgumentParser) -> None:
    """kube-proxy's flags for the process: configuration, API server, node name, logging."""
    _value_flag(parser, "config", str, "path to a KubeProxyConfiguration file", "config_file")
    _bool_flag(parser, "cleanup", "delete waolb's nftables tables and exit", "cleanup")
    _value_flag(parser, "kubeconfig", str, "path to a kubeconfig file", "kubeconfig")
    _value_flag(parser, "master", str, "API server URL (overrides the kubeconfig's)", "master")
    _value_flag(
        parser, "hostname-override", parse_hostname, "this node's name", "hostname_override"
    )
    parser.add_argument(
        "-v",
        "--v",
        dest="verbosity",
        type=_argument_type(integer_flag(VERBOSITY)),
        metavar="LEVEL",
        help="log verbosity: 0-1 info, 2 and more debug",
    )
    _value_flag(parser, "log-format", _log_format, "log format: console or json", "log_format")
    _value_flag(
        parser,
        "logging-format",
        _logging_format,
        "kube-proxy's log format: text or json",
        "log_format",
    )


def _add_proxy_flags(parser: argparse.ArgumentParser) -> None:
    """kube-proxy's flags for the proxying that waolb honours."""
    _value_flag(parser, "bind-address", parse_bind_ip, "this node's primary IP", "bind_address")
    _value_flag(
        parser, "cluster-cidr", parse_cidrs, "the pods' CIDR(s), comma-separated", "cluster_cidrs"
    )
    _value_flag(
        parser, "proxy-mode", parse_proxy_mode, "accepted; waolb always uses nftables", "mode"
    )
    _value_flag(
        parser,
        "healthz-bind-address",
        optional_bind_address(HEALTHZ_PORT),
        "ip:port of the health server (empty: off)",
        "healthz_bind_address",
    )
    _value_flag(
        parser,
        "metrics-bind-address",
        optional_bind_address(METRICS_PORT),
        "ip:port of the metrics server (empty: off)",
        "metrics_bind_address",
    )
    _value_flag(
        parser,
        "nodeport-addresses",
        _node_port_addresses,
        "CIDRs or 'primary' for NodePorts (comma-separated, repeatable)",
        "node_port_addresses",
        action="extend",
    )
    _bool_flag(parser, "masquerade-all", "SNAT all traffic sent to cluster IPs", "masquerade_all")
    _value_flag(
        parser,
        "kube-api-qps",
        number_flag(KUBE_API_QPS),
        "API requests per second, shared by every request of the process (0: 5)",
        "qps",
    )
    _value_flag(
        parser,
        "kube-api-burst",
        integer_flag(KUBE_API_BURST),
        "API requests allowed at once above the rate (0: 10)",
        "burst",
    )
    for family in ("iptables", "ipvs"):
        _value_flag(
            parser,
            f"{family}-sync-period",
            duration_within(SYNC_PERIOD),
            "full resync period (at most 24h)",
            f"{family}_sync_period",
        )
        _value_flag(
            parser,
            f"{family}-min-sync-period",
            duration_within(MIN_SYNC_PERIOD),
            "minimum time between syncs (at most the sync period)",
            f"{family}_min_sync_period",
        )


def normalize_flag_names(argv: Sequence[str]) -> list[str]:
    """pflag treats "_" in flag names as "-"; values are left alone."""
    normalized = []
    for argument in argv:
        if argument.startswith("--"):
            name, separator, value = argument.partition("=")
            normalized.append(name.replace("_", "-") + separator + value)
        else:
            normalized.append(argument)
    return normalized


@dataclass(frozen=True)
class CommandLine:
    config_file: str | None
    cleanup: bool
    # ProxyConfig fields (and the per-mode period flags) given on the command line.
    flags: dict[str, Any]
    # The flag that set each of ``flags``, for messages.
    flag_names: dict[str, str]
    # kube-proxy flags given that waolb accepts but cannot honour.
    without_effect: tuple[str, ...]
    # waolb's own settings given as --wao-* flags, by WaolbSettings field.
    waolb_flags: dict[str, Any]


def parse_command_line(argv: Sequence[str]) -> CommandLine:
    """Parse kube-proxy's flags; argparse exits with status 2 on a bad or unknown flag."""
    parser = build_parser()
    namespace = vars(parser.parse_args(normalize_flag_names(argv)))
    compatibility = [key for key in namespace if key.startswith(_COMPATIBILITY_PREFIX)]
    for key in compatibility:
        del namespace[key]
    waolb_flags = {
        key.removeprefix(_WAOLB_PREFIX): namespace.pop(key)
        for key in list(namespace)
        if key.startswith(_WAOLB_PREFIX)
    }
    flag_names = {action.dest: action.option_strings[-1] for action in parser._actions}
    if "node_port_addresses" in namespace:
        namespace["node_port_addresses"] = tuple(namespace["node_port_addresses"])
    return CommandLine(
        config_file=namespace.pop("config_file", None),
        cleanup=namespace.pop("cleanup", False),
        flags=namespace,
        flag_names={dest: flag_names[dest] for dest in namespace},
        without_effect=tuple(flag_names[key] for key in compatibility),
        waolb_flags=waolb_flags,
    )


def cleanup(config: ProxyConfig) -> int:
    """``--cleanup``: delete waolb's tables (both families) and report."""
    from waolb.dataplane import NftablesDataplane  # noqa: PLC0415 - only here and in the proxier

    table = config.waolb.table_name
    try:
        NftablesDataplane.open(table, config.masquerade_bit).delete_tables()
    except OSError as error:
        log.error("cleanup failed", table=table, error=str(error))
        return 1
    log.info("deleted waolb's nftables tables", table=table)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["weights"]:
        from waolb import weights_report  # noqa: PLC0415 - a separate command

        try:
            return weights_report.main(arguments[1:])
        except SystemExit as exit_request:  # argparse's usage errors and --help
            return exit_request.code if isinstance(exit_request.code, int) else EXIT_USAGE
    try:
        command_line = parse_command_line(arguments)
    except SystemExit as exit_request:  # argparse's usage errors, --help and --version
        return exit_request.code if isinstance(exit_request.code, int) else EXIT_USAGE
    early = command_line.flags
    logs.configure_logging(early.get("verbosity", 0), early.get("log_format", "console"))
    if command_line.without_effect:
        log.warning("kube-proxy flags without effect in waolb", flags=command_line.without_effect)
    if command_line.config_file is not None:
        overridden = set(command_line.flags) - FLAGS_APPLIED_WITH_CONFIG_FILE
        if overridden:
            log.warning(
                "flags ignored because --config is given (as kube-proxy does)",
                flags=sorted(command_line.flag_names[dest] for dest in overridden),
            )
    try:
        file_config = (
            load_config_file(command_line.config_file)
            if command_line.config_file is not None
            else None
        )
        config = apply_flags(command_line.flags, file_config, command_line.waolb_flags)
        logs.configure_logging(config.verbosity, config.log_format)
        if config.mode and config.mode != "nftables":
            log.warning("proxy mode is always nftables in waolb", configured_mode=config.mode)
        if command_line.cleanup:
            return cleanup(config)
        settings = resolve_settings(config, os.environ)
    except ConfigError as error:
        print(f"waolb: error: {error}", file=sys.stderr)
        return EXIT_USAGE

    from waolb.proxier import Proxier  # noqa: PLC0415 - imports the Kubernetes client

    return Proxier(settings).run()
