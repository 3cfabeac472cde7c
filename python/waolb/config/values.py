"""Value parsers shared by the command line and the configuration file.

Each takes a flag's text or a file's decoded value and returns the setting, or raises
ValueError with a message saying what is wrong; the caller prefixes the flag or field name.
Every number and duration has sane bounds (:class:`Bounds`): a value beyond them is refused at
start with a message naming the limit, rather than overflowing a timer hours later.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from waolb.kube.objects import parse_quantity, shown

MINUTE: Final = 60.0
HOUR: Final = 3600.0
DAY: Final = 86400.0
PROXY_MODES: Final = ("", "iptables", "ipvs", "nftables")
NODE_PORT_KEYWORDS: Final = ("primary", "localhost", "all")

# ---- durations ----------------------------------------------------------------------------

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
# Go's time.Duration is an int64 count of nanoseconds: about 292 years.
_GO_LONGEST_DURATION: Final = (2**63 - 1) / 1e9


def parse_duration(text: str) -> float:
    """Parse a Go duration ("30s", "1m0s", "1.5h", "300ms", "0") into seconds.

    Like Go's time.ParseDuration, a duration beyond about 292 years is invalid.
    """
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
    if not total <= _GO_LONGEST_DURATION:
        raise ValueError(f'invalid duration "{text}": longer than any duration (about 292 years)')
    return sign * total


def format_duration(seconds: float) -> str:
    """A duration limit as an operator would write it: "24h", "5m", "30s", "0"."""
    for unit, size in (("h", HOUR), ("m", MINUTE), ("s", 1.0)):
        if seconds and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s" if seconds else "0"


# ---- bounds -------------------------------------------------------------------------------


def _plain(number: float) -> str:
    return f"{number:g}"


@dataclass(frozen=True)
class Bounds:
    """A sane range for a number: from ``minimum`` (excluded if ``exclusive``) to ``maximum``.

    ``unit`` writes the limits in messages (``format_duration`` for durations).
    """

    minimum: float
    maximum: float
    exclusive: bool = False
    unit: Callable[[float], str] = _plain

    def check(self, value: float, shown_as: str) -> None:
        """Raise ValueError, naming the value as ``shown_as``, unless it is within bounds."""
        if math.isnan(value):
            raise ValueError(f"{shown_as} is not a number")
        if self.exclusive and not value > self.minimum:
            raise ValueError(f"{shown_as} must be greater than {self.unit(self.minimum)}")
        if value < self.minimum:
            if self.minimum == 0:
                raise ValueError(f"{shown_as} must not be negative")
            raise ValueError(f"{shown_as} must be at least {self.unit(self.minimum)}")
        if value > self.maximum:
            raise ValueError(f"{shown_as} is too large: at most {self.unit(self.maximum)} is sane")


SYNC_PERIOD: Final = Bounds(0, DAY, exclusive=True, unit=format_duration)
MIN_SYNC_PERIOD: Final = Bounds(0, DAY, unit=format_duration)
# Caches, scoring rounds: refreshed at least daily.
REFRESH_PERIOD: Final = Bounds(0, DAY, exclusive=True, unit=format_duration)
# One outside request; it also holds up whatever waits for it, such as a scoring round.
REQUEST_TIMEOUT: Final = Bounds(0, 5 * MINUTE, exclusive=True, unit=format_duration)
# API requests per second and burst (0: client-go's defaults of 5 and 10).
KUBE_API_QPS: Final = Bounds(0, 100_000)
KUBE_API_BURST: Final = Bounds(0, 100_000)
# klog's -v is an int32.
VERBOSITY: Final = Bounds(0, 2**31 - 1)
PARALLELISM: Final = Bounds(1, 1024)
CPU_PER_REQUEST: Final = Bounds(0, 1024, exclusive=True)  # cores


def duration_within(bounds: Bounds) -> Callable[[object], float]:
    """A parser of Go duration strings (flags and the file's ``waolb`` section) in seconds."""

    def parse(value: object) -> float:
        if not isinstance(value, str):
            raise ValueError(f'expected a duration string such as "30s", got {shown(value)}')
        seconds = parse_duration(value)
        bounds.check(seconds, f'"{value}"')
        return seconds

    return parse


def integer_flag(bounds: Bounds) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f'"{text}" is not an integer') from None
        bounds.check(value, shown(value))
        return value

    return parse


def number_flag(bounds: Bounds) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f'"{text}" is not a number') from None
        bounds.check(value, f'"{text}"')
        return value

    return parse


# ---- addresses and names ------------------------------------------------------------------


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


def optional_bind_address(default_port: int) -> Callable[[object], str]:
    """A server's "ip" or "ip:port" as a flag or a file gives it; "" turns the server off."""

    def parse(value: object) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected an IP:port address, got {shown(value)}")
        return normalize_bind_address(value, default_port) if value else ""

    return parse


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


# nft accepts more, but these survive every shell and tool an operator pastes them into.
_TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


def parse_table_name(value: object) -> str:
    if not isinstance(value, str) or not _TABLE_NAME.fullmatch(value):
        raise ValueError(
            f"{shown(value)} is not a table name (a letter, then up to 63 letters, digits, _ . -)"
        )
    return value


# ---- other values -------------------------------------------------------------------------


def parse_go_bool(text: str) -> bool:
    """Go's strconv.ParseBool, which pflag uses for --flag=value."""
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise ValueError(f'"{text}" is not a boolean (use true or false)')


def parse_boolean(value: object) -> bool:
    """A file's true/false, or a flag's Go boolean text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return parse_go_bool(value)
    raise ValueError(f"expected true or false, got {shown(value)}")


def parse_parallelism(value: object) -> int:
    number = value if isinstance(value, int) and not isinstance(value, bool) else None
    # The length check keeps int() away from numbers of thousands of digits, which it refuses.
    if isinstance(value, str) and value.strip().isdecimal() and len(value) < 10:
        number = int(value)
    if number is None or not PARALLELISM.minimum <= number <= PARALLELISM.maximum:
        low, high = _plain(PARALLELISM.minimum), _plain(PARALLELISM.maximum)
        as_written = value if isinstance(value, str) and len(value) < 20 else shown(value)
        raise ValueError(f"{as_written} is not a whole number from {low} to {high}")
    return number


def parse_cpu_quantity(value: object) -> float:
    """A Kubernetes CPU quantity ("100m", "0.5", "2") in cores, above zero (a Node's capacity,
    a Service's annotation)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f'expected a CPU quantity such as "100m", got {shown(value)}')
    as_written = f'"{value}"' if isinstance(value, str) else shown(value)
    try:
        cores = parse_quantity(value)
    except ValueError:
        raise ValueError(f'{as_written} is not a CPU quantity (e.g. "100m", "0.5")') from None
    if not cores > 0:
        raise ValueError(f"{as_written} must be a CPU quantity above zero")
    return cores


def parse_cpu_per_request(value: object) -> float:
    """The cpuPerRequest setting: a CPU quantity, at most 1024 cores."""
    cores = parse_cpu_quantity(value)
    CPU_PER_REQUEST.check(cores, f'"{value}"' if isinstance(value, str) else shown(value))
    return cores


def choice(options: tuple[str, ...]) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if not isinstance(value, str) or value not in options:
            raise ValueError(f"{shown(value)} is not one of {', '.join(options)}")
        return value

    return parse


def parse_fraction(value: object) -> float:
    try:
        number = float(value) if isinstance(value, str | int | float) else math.nan
    except (ValueError, OverflowError):
        number = math.nan
    if isinstance(value, bool) or not 0 <= number <= 1:
        raise ValueError(f"{shown(value)} is not a number from 0 to 1")
    return number
