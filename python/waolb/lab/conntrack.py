"""A namespace's conntrack table, read with Debian's ``conntrack`` tool (over ctnetlink).

Tests read it (the product clears entries itself, over netlink); ``conntrack -L`` lists both
families.
"""

from __future__ import annotations

from dataclasses import dataclass

from .netns import Netns, run


@dataclass(frozen=True)
class ConntrackTuple:
    """One direction of an entry; ports are None for protocols without them (ICMP)."""

    src: str
    dst: str
    sport: int | None
    dport: int | None


@dataclass(frozen=True)
class ConntrackEntry:
    """An entry: ``original`` is the direction the first packet took, ``reply`` the one its
    answers take (after NAT: the backend's address as the source)."""

    protocol: str
    timeout: int
    state: str | None
    original: ConntrackTuple
    reply: ConntrackTuple
    flags: frozenset[str]


def _direction(fields: list[tuple[str, str]]) -> ConntrackTuple:
    values = dict(fields)
    sport, dport = values.get("sport"), values.get("dport")
    return ConntrackTuple(
        values["src"], values["dst"], int(sport) if sport else None, int(dport) if dport else None
    )


def parse_entry(line: str) -> ConntrackEntry:
    """Parses one line of ``conntrack -L`` output."""
    tokens = line.split()
    if len(tokens) < 3 or not tokens[2].isdigit():
        raise ValueError(f"not a conntrack entry: {line!r}")
    protocol, timeout = tokens[0], int(tokens[2])
    rest = tokens[3:]
    state = rest.pop(0) if rest and "=" not in rest[0] and not rest[0].startswith("[") else None
    directions: list[list[tuple[str, str]]] = []
    flags = set()
    for token in rest:
        if token.startswith("["):
            flags.add(token.strip("[]"))
            continue
        key, _, value = token.partition("=")
        if key == "src":  # each direction starts with its source
            directions.append([])
        if directions and len(directions) <= 2 and key in ("src", "dst", "sport", "dport"):
            directions[-1].append((key, value))
    if len(directions) < 2:
        raise ValueError(f"not a conntrack entry: {line!r}")
    return ConntrackEntry(
        protocol,
        timeout,
        state,
        _direction(directions[0]),
        _direction(directions[1]),
        frozenset(flags),
    )


def conntrack_entries(ns: Netns | str, *filters: str) -> list[ConntrackEntry]:
    """The entries of ``ns``, filtered as ``conntrack -L`` filters (``"-p", "udp"``,
    ``"--orig-dst", "10.96.0.10"``, ``"-f", "ipv6"``)."""
    output = run(ns, "conntrack", "-L", *filters).stdout
    return [parse_entry(line) for line in output.splitlines() if line.strip()]
