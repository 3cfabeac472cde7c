"""waolb's tables read back from the kernel, and what they should hold (kernel tests).

The ruleset is read with python-nftables from inside a test's namespace and compared object by
object with what the layout in rust/src/ruleset.rs promises. Large rulesets are read over
netlink (``Dataplane.read_endpoints``), never through the nft command line, which lists slowly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import nftables

from netns import Netns, entered
from waolb._native import Dataplane, ProgrammedEndpoint, ServicePort, SyncResult

TABLE = "wao-loadbalancer"
MARK = 1 << 14


def svc(
    name: str,
    cluster_ip: str,
    endpoints: Sequence[tuple[str, int, int]] = (),
    *,
    namespace: str = "default",
    port_name: str = "http",
    protocol: str = "tcp",
    port: int = 80,
) -> ServicePort:
    """A service port; the family follows the cluster IP."""
    family = 6 if ":" in cluster_ip else 4
    return ServicePort(
        namespace,
        name,
        port_name,
        protocol,
        family,
        cluster_ip,
        port,
        [addr for addr, _, _ in endpoints],
        [p for _, p, _ in endpoints],
        [w for _, _, w in endpoints],
    )


def apply(
    dp: Dataplane, upsert: Sequence[ServicePort], remove: Sequence[ServicePort] = ()
) -> SyncResult:
    """A partial sync that adds or changes ``upsert`` and removes ``remove``: the Services
    they belong to are synced with their other programmed ports as they are."""
    services = sorted({(p.namespace, p.name) for p in [*upsert, *remove]})
    given = {p.key for p in [*upsert, *remove]}
    others = [
        p for p in dp.programmed() if (p.namespace, p.name) in services and p.key not in given
    ]
    return dp.sync_services(services, [*upsert, *others])


def chain_of(service: ServicePort) -> str:
    return f"service-{service.namespace}/{service.name}/{service.protocol}/{service.port_name}"


# ---- reading the kernel's state back --------------------------------------------------------


def nft_json(ns: Netns, command: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
    """Runs a JSON command with python-nftables created inside ``ns``."""
    with entered(ns):
        nft = nftables.Nftables()
        rc, output, error = nft.json_cmd({"nftables": [command]})
    return rc, output or {}, error


@dataclass
class Listing:
    """One table as nft sees it, handles kept apart so objects compare by content."""

    chains: dict[str, dict[str, Any]] = field(default_factory=dict)
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    rules: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    handles: dict[str, list[int]] = field(default_factory=dict)

    def elements(self, name: str) -> list[Any]:
        return list(self.sets[name].get("elem", []))

    def verdict_map(self, name: str) -> dict[tuple[Any, ...], str]:
        """``service-ips`` / ``no-endpoint-services``: (vip, proto, port) -> goto target."""
        out: dict[tuple[Any, ...], str] = {}
        for key, verdict in self.elements(name):
            assert list(verdict) == ["goto"], verdict
            out[tuple(key["concat"])] = verdict["goto"]["target"]
        return out

    def hairpin(self) -> set[tuple[str, str]]:
        return {(e["concat"][0], e["concat"][1]) for e in self.elements("hairpin-endpoints")}


def read_table(ns: Netns, family: str = "ip", table: str = TABLE) -> Listing | None:
    """The table through python-nftables, or None if it does not exist."""
    rc, output, error = nft_json(ns, {"list": {"table": {"family": family, "name": table}}})
    if rc != 0:
        assert "No such file or directory" in error, error
        return None
    listing = Listing()
    for item in output["nftables"]:
        kind, body = next(iter(item.items()))
        body = dict(body)
        if kind in ("set", "map"):
            body.pop("handle")
            assert body.pop("family") == family and body.pop("table") == table
            name = body.pop("name")
            listing.sets[name] = {"kind": kind, **body}
        elif kind == "chain":
            body.pop("handle")
            assert body.pop("family") == family and body.pop("table") == table
            name = body.pop("name")
            listing.chains[name] = body
            listing.rules.setdefault(name, [])
            listing.handles.setdefault(name, [])
        elif kind == "rule":
            chain = body["chain"]
            listing.handles.setdefault(chain, []).append(body["handle"])
            rule = {"expr": body["expr"]}
            if "comment" in body:
                rule["comment"] = body["comment"]
            listing.rules.setdefault(chain, []).append(rule)
    return listing


def full_ruleset(ns: Netns) -> str:
    """``nft -a list ruleset``: the text with handles, so a re-created object shows."""
    return ns.nft("-a", "list", "ruleset").stdout


# ---- what the layout promises ---------------------------------------------------------------

BASE_CHAINS = {
    "nat-prerouting": {"type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"},
    "nat-output": {"type": "nat", "hook": "output", "prio": -100, "policy": "accept"},
    "nat-postrouting": {"type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"},
    "filter-input": {"type": "filter", "hook": "input", "prio": -110, "policy": "accept"},
    "filter-forward": {"type": "filter", "hook": "forward", "prio": -110, "policy": "accept"},
    "filter-output": {"type": "filter", "hook": "output", "prio": -110, "policy": "accept"},
}
REGULAR_CHAINS = [
    "services",
    "service-endpoints-check",
    "reject-chain",
    "mark-for-masquerade",
    "masquerading",
]
#: A shard table's own chains: it only dispatches new connections to its service chains.
SHARD_CHAINS = ["services", "nat-prerouting", "nat-output"]


def infrastructure_rules(family: str, mark: int = MARK) -> dict[str, list[dict[str, Any]]]:
    """The rules of every chain that is not a service chain, as nft's JSON spells them."""

    def key(field_: str) -> dict[str, Any]:
        return {"payload": {"protocol": family, "field": field_}}

    service_key = {"concat": [key("daddr"), {"meta": {"key": "l4proto"}}, {"payload": {
        "protocol": "th", "field": "dport"}}]}  # fmt: skip
    ct_new = {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}}
    meta_mark = {"meta": {"key": "mark"}}
    return {
        "services": [{"expr": [{"vmap": {"key": service_key, "data": "@service-ips"}}]}],
        "service-endpoints-check": [
            {"expr": [{"vmap": {"key": service_key, "data": "@no-endpoint-services"}}]}
        ],
        "reject-chain": [
            {
                "expr": [
                    {
                        "reject": {
                            "type": "icmp" if family == "ip" else "icmpv6",
                            "expr": "port-unreachable",
                        }
                    }
                ]
            }
        ],
        "mark-for-masquerade": [
            {"expr": [{"mangle": {"key": meta_mark, "value": {"|": [meta_mark, mark]}}}]}
        ],
        "masquerading": [
            {
                "expr": [
                    {
                        "match": {
                            "op": "==",
                            "left": {"concat": [key("saddr"), key("daddr")]},
                            "right": "@hairpin-endpoints",
                        }
                    },
                    {"jump": {"target": "mark-for-masquerade"}},
                ],
                "comment": "hairpin: a pod reached itself through a service",
            },
            {
                "expr": [
                    {"match": {"op": "==", "left": {"&": [meta_mark, mark]}, "right": 0}},
                    {"return": None},
                ]
            },
            {"expr": [{"mangle": {"key": meta_mark, "value": {"^": [meta_mark, mark]}}}]},
            {"expr": [{"masquerade": {"flags": "fully-random"}}]},
        ],
        "nat-prerouting": [{"expr": [{"jump": {"target": "services"}}]}],
        "nat-output": [{"expr": [{"jump": {"target": "services"}}]}],
        "nat-postrouting": [{"expr": [{"jump": {"target": "masquerading"}}]}],
        "filter-input": [{"expr": [ct_new, {"jump": {"target": "service-endpoints-check"}}]}],
        "filter-forward": [{"expr": [ct_new, {"jump": {"target": "service-endpoints-check"}}]}],
        "filter-output": [{"expr": [ct_new, {"jump": {"target": "service-endpoints-check"}}]}],
    }


def expected_service_rules(service: ServicePort) -> list[dict[str, Any]]:
    """The cascade ``numgen random mod R_i < w_i dnat to ...`` with its comments, computed
    here independently: endpoint i (weight > 0) keeps w_i of the R_i values still unassigned,
    and the last one needs no condition."""
    total = sum(service.weights)
    rules: list[dict[str, Any]] = []
    start = 0
    for addr, port, weight in zip(
        service.endpoint_ips, service.endpoint_ports, service.weights, strict=True
    ):
        if weight == 0:
            continue
        remaining = total - start
        expr: list[dict[str, Any]] = []
        if remaining != weight:
            numgen = {"numgen": {"mode": "random", "mod": remaining, "offset": 0}}
            expr.append({"match": {"op": "<", "left": numgen, "right": weight}})
        expr.append({"dnat": {"addr": addr, "port": port}})
        comment = (
            f"endpoint {endpoint_text(addr, port)}, "
            f"weight {weight} of {total} ({100 * weight / total:.1f}%), "
            f"range {start}-{start + weight - 1}"
        )
        rules.append({"expr": expr, "comment": comment})
        start += weight
    return rules


def endpoint_text(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def expected_endpoints(services: Sequence[ServicePort]) -> list[ProgrammedEndpoint]:
    """What ``read_endpoints`` must return: one entry per endpoint of weight > 0, services in
    (family, namespace, name, protocol, port name) order, endpoints in rule order."""
    ordered = sorted(services, key=lambda s: (s.family, s.namespace, s.name, s.protocol,
                                              s.port_name))  # fmt: skip
    expected = []
    for s in ordered:
        # Each column getter builds a new list: read them once per service.
        weights = s.weights
        total = sum(weights)
        for ip, port, weight in zip(s.endpoint_ips, s.endpoint_ports, weights, strict=True):
            if weight > 0:
                expected.append(
                    ProgrammedEndpoint(
                        s.family, s.namespace, s.name, s.protocol, s.port_name, ip, port,
                        weight, total,
                    )
                )  # fmt: skip
    return expected


def map_key(service: ServicePort) -> tuple[Any, ...]:
    return (service.cluster_ip, service.protocol, service.port)


def table_of(ns: Netns, family: str, chain: str) -> str:
    """The one of waolb's tables (main or shard) that holds ``chain``."""
    for table in [TABLE, *shard_names(ns, family)]:
        if ns.nft("list", "chain", family, table, chain, check=False).returncode == 0:
            return table
    raise AssertionError(f"no table of {family} holds {chain}")


def shard_names(ns: Netns, family: str, table: str = TABLE) -> list[str]:
    """The shard tables of ``table`` in ``family``, which must be numbered 1, 2, ... in turn."""
    listed = ns.nft("list", "tables", family).stdout.split()
    prefix = f"{table}-shard-"
    names = [name for name in listed if name.startswith(prefix)]
    assert names == [f"{prefix}{n}" for n in range(1, len(names) + 1)], names
    return names


def assert_tables_hold(
    ns: Netns, family: str, services: Sequence[ServicePort], table: str = TABLE
) -> Listing:
    """waolb's tables of ``family`` hold the infrastructure and exactly ``services``, nothing
    else: each balanced port's chain and ``service-ips`` element in the same table (the main
    table or a shard), everything else in the main table. Returns the main table."""
    main = read_table(ns, family, table)
    assert main is not None, f"table {family} {table} is missing"
    listings = {table: main}
    for name in shard_names(ns, family, table):
        shard = read_table(ns, family, name)
        assert shard is not None
        listings[name] = shard
    balanced = [s for s in services if any(w > 0 for w in s.weights)]
    rejected = [s for s in services if s not in balanced]
    addr_type = "ipv4_addr" if family == "ip" else "ipv6_addr"
    verdict_map = {"kind": "map", "type": [addr_type, "inet_proto", "inet_service"],
                   "map": "verdict"}  # fmt: skip
    infrastructure = infrastructure_rules(family)
    elements: dict[tuple[Any, ...], str] = {}
    for name, listing in listings.items():
        is_main = name == table
        own = listing.verdict_map("service-ips")
        elements.update(own)
        # A table's service chains are exactly those its own service-ips reaches.
        service_chains = sorted(chain for chain in listing.chains if "/" in chain)
        assert service_chains == sorted(own.values()), name
        expected_sets = {"service-ips", "no-endpoint-services", "hairpin-endpoints"}
        assert set(listing.sets) == (expected_sets if is_main else {"service-ips"}), name
        for map_name in set(listing.sets) - {"hairpin-endpoints"}:
            meta = {k: v for k, v in listing.sets[map_name].items() if k != "elem"}
            assert meta == verdict_map, (name, map_name)
        own_chains = REGULAR_CHAINS + list(BASE_CHAINS) if is_main else SHARD_CHAINS
        expected_chains = {chain: BASE_CHAINS.get(chain, {}) for chain in own_chains}
        assert listing.chains == expected_chains | {chain: {} for chain in service_chains}, name
        expected_rules = {chain: infrastructure[chain] for chain in own_chains}
        by_chain = {chain_of(s): s for s in balanced}
        expected_rules.update({c: expected_service_rules(by_chain[c]) for c in service_chains})
        assert listing.rules == expected_rules, name
    assert elements == {map_key(s): chain_of(s) for s in balanced}

    meta = {k: v for k, v in main.sets["hairpin-endpoints"].items() if k != "elem"}
    assert meta == {"kind": "set", "type": [addr_type, addr_type]}
    assert main.verdict_map("no-endpoint-services") == {
        map_key(s): "reject-chain" for s in rejected
    }
    hairpin = {
        (addr, addr)
        for s in balanced
        for addr, w in zip(s.endpoint_ips, s.weights, strict=True)
        if w > 0
    }
    assert main.hairpin() == hairpin
    return main


# ---- fixtures -------------------------------------------------------------------------------


def spread(count: int, weight_offset: int = 0) -> list[ServicePort]:
    """``count`` ports of 10 endpoints each; 1 490 of them (16 390 chains and rules) are more
    than one table takes, so the service chains spread over shard tables."""
    return [
        svc(
            f"s{i}",
            f"10.96.{i // 250}.{i % 250 + 1}",
            [
                (f"10.{64 + j}.{i // 250}.{i % 250 + 1}", 8080, weight_offset + 1 + j)
                for j in range(10)
            ],
        )
        for i in range(count)
    ]
