"""waolb._native.Dataplane against the kernel: what nft reads back, without traffic.

Every test works in namespaces of its own (tests/support/netns.py). The ruleset is read back with
python-nftables from inside the namespace and compared object by object with what the
layout in rust/src/ruleset.rs promises.
"""

from __future__ import annotations

import errno
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from netns import (
    HUNG_AFTER,
    Netns,
    entered,
    netns,
    netns_pair,
    new_dataplane,
    requires_netns,
    stop_process,
)
from rulesets import (
    TABLE,
    apply,
    assert_tables_hold,
    chain_of,
    expected_endpoints,
    expected_service_rules,
    full_ruleset,
    infrastructure_rules,
    map_key,
    read_table,
    shard_names,
    spread,
    svc,
    table_of,
)
from waolb._native import Dataplane, NftError, ProgrammedEndpoint, ServicePort, SyncResult

# The fixtures netns and netns_pair live in tests/support/netns.py; exporting them keeps the
# imports "used" for linters, and pytest finds them here by name.
__all__ = ["netns", "netns_pair"]

pytestmark = requires_netns


@dataclass
class Programmed:
    ns: Netns
    dp: Dataplane
    services: list[ServicePort]


WEB = svc(
    "web",
    "10.96.0.10",
    [("10.244.0.10", 8080, 100), ("10.244.0.11", 8080, 80), ("10.244.0.12", 8080, 67)],
)
METRICS = svc("web", "10.96.0.10", [("10.244.0.10", 9100, 1)], port_name="metrics", port=9100)
DNS = svc(
    "dns", "10.96.0.53", [], namespace="kube-system", port_name="dns", protocol="udp", port=53
)
API = svc("api", "10.96.0.1", [("10.244.0.20", 6443, 1), ("10.244.0.21", 6443, 1)])


@pytest.fixture
def programmed(netns: Netns) -> Programmed:
    """A namespace where a Dataplane has replaced its tables with WEB, METRICS, DNS, API."""
    dp = new_dataplane(netns)
    services = [WEB, METRICS, DNS, API]
    dp.sync_full(services)
    return Programmed(netns, dp, services)


# ---- full sync ------------------------------------------------------------------------------


def test_replace_programs_exactly_the_expected_objects(netns: Netns) -> None:
    with_zero = svc(
        "zero",
        "10.96.0.20",
        [("10.244.0.30", 80, 3), ("10.244.0.31", 80, 0), ("10.244.0.32", 80, 1)],
        port_name="",
    )
    services = [WEB, METRICS, DNS, API, with_zero]
    stats = new_dataplane(netns).sync_full(services)
    assert stats.services == len(services)
    assert stats.messages > 0 and stats.bytes > 0
    assert_tables_hold(netns, "ip", services)
    # Rules spelled out once by hand, so a shared mistake in the helper cannot hide.
    rules = read_table(netns, "ip").rules  # type: ignore[union-attr]
    assert rules["service-default/web/tcp/http"] == [
        {
            "expr": [
                {"match": {"op": "<", "left": {"numgen": {"mode": "random", "mod": 247,
                                                          "offset": 0}}, "right": 100}},
                {"dnat": {"addr": "10.244.0.10", "port": 8080}},
            ],
            "comment": "endpoint 10.244.0.10:8080, weight 100 of 247 (40.5%), range 0-99",
        },
        {
            "expr": [
                {"match": {"op": "<", "left": {"numgen": {"mode": "random", "mod": 147,
                                                          "offset": 0}}, "right": 80}},
                {"dnat": {"addr": "10.244.0.11", "port": 8080}},
            ],
            "comment": "endpoint 10.244.0.11:8080, weight 80 of 247 (32.4%), range 100-179",
        },
        {
            "expr": [{"dnat": {"addr": "10.244.0.12", "port": 8080}}],
            "comment": "endpoint 10.244.0.12:8080, weight 67 of 247 (27.1%), range 180-246",
        },
    ]  # fmt: skip
    # The weight-0 endpoint owns no range and no rule, and no hairpin pair.
    assert [r["comment"] for r in rules["service-default/zero/tcp/"]] == [
        "endpoint 10.244.0.30:80, weight 3 of 4 (75.0%), range 0-2",
        "endpoint 10.244.0.32:80, weight 1 of 4 (25.0%), range 3-3",
    ]
    # Only the families in use get services; the other table is there, empty.
    assert_tables_hold(netns, "ip6", [])


def test_ipv6_services_land_in_the_ip6_table(netns: Netns) -> None:
    web6 = svc("web", "fd00:96::10", [("fd00:244::10", 8080, 2), ("fd00:244::11", 8080, 1)])
    dns6 = svc(
        "dns", "fd00:96::a", [], namespace="kube-system", port_name="dns", protocol="udp", port=53
    )
    new_dataplane(netns).sync_full([WEB, web6, dns6])
    assert_tables_hold(netns, "ip6", [web6, dns6])
    assert_tables_hold(netns, "ip", [WEB])
    text = netns.nft("list", "table", "ip6", TABLE).stdout
    assert (
        'dnat to [fd00:244::10]:8080 comment "endpoint [fd00:244::10]:8080, weight 2 of 3 '
        '(66.7%), range 0-1"' in text
    )


def test_the_longest_chain_name_the_kernel_takes_is_programmed(netns: Netns) -> None:
    # service-<ns>/<name>/tcp/<port name>: 8 + 200 + 1 + 37 + 5 + 4 = 255 bytes, the limit.
    longest = svc("n" * 37, "10.96.0.77", [("10.244.0.77", 80, 1)], namespace="a" * 200,
                  port_name="p" * 4)  # fmt: skip
    assert len(chain_of(longest)) == 255
    new_dataplane(netns).sync_full([longest])
    assert_tables_hold(netns, "ip", [longest])
    with pytest.raises(ValueError, match="longer than 255 bytes"):
        svc("n" * 38, "10.96.0.77", [], namespace="a" * 200, port_name="p" * 4)


def test_custom_table_name_and_masquerade_bit(netns: Netns) -> None:
    dp = new_dataplane(netns, table="lb-test", masquerade_bit=3)
    assert dp.table == "lb-test"
    dp.sync_full([WEB])
    assert read_table(netns, "ip") is None
    listing = read_table(netns, "ip", table="lb-test")
    assert listing is not None
    assert (
        listing.rules["mark-for-masquerade"] == infrastructure_rules("ip", 8)["mark-for-masquerade"]
    )
    assert listing.rules["masquerading"] == infrastructure_rules("ip", 8)["masquerading"]
    for bad in ({"table": ""}, {"table": "two words"}, {"table": "x" * 256},
                {"masquerade_bit": 32}):  # fmt: skip
        with pytest.raises(ValueError):
            new_dataplane(netns, **bad)


def test_many_services_round_trip_in_one_transaction(netns: Netns) -> None:
    """3 000 services: element lists split over several messages, all committed at once."""
    services = [
        svc(
            f"s{i}",
            f"10.96.{i // 250}.{i % 250 + 1}",
            [(f"10.244.{i // 200}.{i % 200 + 1}", 8080, 1), ("10.245.0.1", 8080, 2)],
        )
        for i in range(3000)
    ]
    stats = new_dataplane(netns).sync_full(services)
    assert stats.services == 3000
    main = assert_tables_hold(netns, "ip", services)
    assert len(main.hairpin()) == 3001


def test_the_largest_service_allowed_is_programmed(netns: Netns) -> None:
    """100 000 endpoints, the limit: one chain of 100 000 rules (a 48 MB batch), read back over
    netlink: nft 1.0.6 takes minutes to list a ruleset this large."""
    count = 100_000
    ips = [f"10.{i >> 16}.{i >> 8 & 255}.{i & 255}" for i in range(1, count + 1)]
    weights = [1 + i % 100 for i in range(count)]
    big = svc("big", "10.96.0.10", list(zip(ips, [8080] * count, weights, strict=True)))
    dp = new_dataplane(netns)
    stats = dp.sync_full([big])
    assert stats.messages > count
    assert dp.read_endpoints() == expected_endpoints([big])
    # Shrinking it again is a partial sync like any other.
    small = svc("big", "10.96.0.10", [("10.0.0.1", 8080, 1)])
    apply(dp, [small], [])
    assert dp.read_endpoints() == expected_endpoints([small])
    assert_tables_hold(netns, "ip", [small])


def test_partial_apply_touches_only_the_changed_service(programmed: Programmed) -> None:
    ns, dp = programmed.ns, programmed.dp
    before = read_table(ns, "ip")
    assert before is not None
    # Unchanged services cost nothing: no message, not even a new generation.
    text = full_ruleset(ns)
    assert apply(dp, [WEB, METRICS, DNS, API], []).messages == 0
    assert full_ruleset(ns) == text

    web2 = svc("web", "10.96.0.10", [("10.244.0.10", 8080, 1), ("10.244.0.12", 8080, 3)])
    stats = apply(dp, [web2, API], [])
    assert stats.services == 1  # API was unchanged and skipped
    after = read_table(ns, "ip")
    assert after is not None
    assert after.rules[chain_of(web2)] == expected_service_rules(web2)
    # Every other chain kept its rules and their handles: nothing was re-added.
    for chain in before.chains:
        if chain != chain_of(WEB):
            assert after.rules[chain] == before.rules[chain], chain
            assert after.handles[chain] == before.handles[chain], chain
    assert after.sets["service-ips"] == before.sets["service-ips"]
    # 10.244.0.11 served only WEB; 10.244.0.10 still serves METRICS.
    assert ("10.244.0.11", "10.244.0.11") not in after.hairpin()
    assert after.hairpin() == before.hairpin() - {("10.244.0.11", "10.244.0.11")}
    assert_tables_hold(ns, "ip", [web2, METRICS, DNS, API])


def test_partial_apply_removes_what_it_should(programmed: Programmed) -> None:
    ns, dp = programmed.ns, programmed.dp
    before = read_table(ns, "ip")
    assert before is not None
    apply(dp, [], [WEB, DNS])
    after = assert_tables_hold(ns, "ip", [METRICS, API])
    # The address WEB shared with METRICS keeps its hairpin pair.
    assert ("10.244.0.10", "10.244.0.10") in after.hairpin()
    for chain in (chain_of(METRICS), chain_of(API)):
        assert after.handles[chain] == before.handles[chain]
    # Removing what is not there is a no-op, not an error.
    text = full_ruleset(ns)
    assert apply(dp, [], [WEB]).messages == 0
    assert full_ruleset(ns) == text


def test_service_moves_between_maps_as_endpoints_come_and_go(programmed: Programmed) -> None:
    ns, dp = programmed.ns, programmed.dp
    api_empty = svc("api", "10.96.0.1", [])
    apply(dp, [api_empty], [])
    listing = read_table(ns, "ip")
    assert listing is not None
    assert map_key(API) not in listing.verdict_map("service-ips")
    assert listing.verdict_map("no-endpoint-services")[map_key(API)] == "reject-chain"
    assert chain_of(API) not in listing.chains
    assert_tables_hold(ns, "ip", [WEB, METRICS, DNS, api_empty])

    dns_back = svc("dns", "10.96.0.53", [("10.244.0.53", 53, 1)], namespace="kube-system",
                   port_name="dns", protocol="udp", port=53)  # fmt: skip
    api_back = svc("api", "10.96.0.1", [("10.244.0.22", 6443, 5)])
    apply(dp, [dns_back, api_back], [])
    assert_tables_hold(ns, "ip", [WEB, METRICS, dns_back, api_back])

    # A new cluster IP moves the element; the old key is gone.
    api_moved = svc("api", "10.96.0.2", [("10.244.0.22", 6443, 5)])
    apply(dp, [api_moved], [])
    assert_tables_hold(ns, "ip", [WEB, METRICS, dns_back, api_moved])


def test_cluster_ips_can_swap_in_one_partial_apply(programmed: Programmed) -> None:
    ns, dp = programmed.ns, programmed.dp
    web_at_api = svc("web", "10.96.0.1", [("10.244.0.10", 8080, 1)])
    api_at_web = svc("api", "10.96.0.10", [("10.244.0.20", 6443, 1)])
    apply(dp, [web_at_api, api_at_web], [])
    assert_tables_hold(ns, "ip", [web_at_api, api_at_web, METRICS, DNS])


# ---- tables over shards ---------------------------------------------------------------------


def table_texts(ns: Netns, family: str) -> dict[str, str]:
    """Each of waolb's tables as ``nft -a`` prints it (with handles), by name."""
    return {
        name: ns.nft("-a", "list", "table", family, name).stdout
        for name in [TABLE, *shard_names(ns, family)]
    }


def test_service_chains_spread_over_shard_tables_by_load(netns: Netns) -> None:
    dp = new_dataplane(netns)
    dp.sync_full([WEB, API])
    assert shard_names(netns, "ip") == []
    services = spread(3000)  # 33 000 chains and rules: three tables
    dp.sync_full(services)
    assert shard_names(netns, "ip") == [f"{TABLE}-shard-1", f"{TABLE}-shard-2"]
    assert shard_names(netns, "ip6") == []
    assert_tables_hold(netns, "ip", services)
    per_table = {
        table: sum(name.startswith("chain service-") for name in text.split("\t"))
        for table, text in table_texts(netns, "ip").items()
    }
    assert all(800 < chains < 1200 for chains in per_table.values()), per_table

    # A change rewrites its own table only: the others keep every handle.
    before = table_texts(netns, "ip")
    changed = spread(1500, weight_offset=5)[1499]
    home = table_of(netns, "ip", chain_of(changed))
    assert apply(dp, [changed], []).messages == 1 + 10
    after = table_texts(netns, "ip")
    assert {t for t in before if after[t] != before[t]} == {home}
    assert_tables_hold(netns, "ip", [*services[:1499], changed, *services[1500:]])

    # Fewer services, fewer tables; a Dataplane that did not create the shards (a restarted
    # process) deletes them too.
    new_dataplane(netns).sync_full([WEB])
    assert shard_names(netns, "ip") == []
    assert_tables_hold(netns, "ip", [WEB])
    dp.sync_full(services)
    new_dataplane(netns).delete_tables()
    assert netns.ruleset() == ""


# ---- reading the endpoints back -------------------------------------------------------------


def test_read_endpoints_returns_what_the_kernel_holds(netns: Netns) -> None:
    dp = new_dataplane(netns)
    assert dp.read_endpoints() == []  # no table yet
    zero = svc("zero", "10.96.0.20", [("10.244.0.30", 80, 3), ("10.244.0.31", 80, 0),
                                      ("10.244.0.32", 81, 1)], port_name="")  # fmt: skip
    web6 = svc("web", "fd00:96::10", [("fd00:244::10", 8080, 2), ("fd00:244::11", 8443, 7)])
    dns6 = svc("dns", "fd00:96::a", [("fd00:244::53", 53, 1)], namespace="kube-system",
               port_name="dns", protocol="udp", port=53)  # fmt: skip
    services = [WEB, METRICS, DNS, API, zero, web6, dns6]
    dp.sync_full(services)
    endpoints = dp.read_endpoints()
    assert endpoints == expected_endpoints(services)
    # Spelled out once: the IPv6 port of the default namespace's web service.
    assert ProgrammedEndpoint(family=6, namespace="default", name="web", protocol="tcp",
                              port_name="http", ip="fd00:244::11", port=8443, weight=7,
                              total=9) in endpoints  # fmt: skip

    web2 = svc("web", "10.96.0.10", [("10.244.0.12", 8080, 5), ("10.244.0.10", 8080, 2)])
    apply(dp, [web2], [API, dns6])
    services = [web2, METRICS, DNS, zero, web6]
    assert dp.read_endpoints() == expected_endpoints(services)

    # What is not waolb's endpoint rule is not read: an operator's rule in a service chain,
    # a look-alike chain in a foreign table, another table name's tables.
    netns.nft("add", "rule", "ip", TABLE, chain_of(web2), "counter")
    look_alike = "endpoint 10.244.0.99:80, weight 1 of 1 (100.0%), range 0-0"
    netns.run("nft", "-f", "-", input=f"""
        table ip other {{
            chain {chain_of(API)} {{
                meta l4proto tcp dnat to 10.244.0.99:80 comment "{look_alike}"
            }}
        }}
    """)  # fmt: skip
    other = new_dataplane(netns, table="lb-test")
    other.sync_full([API])
    assert dp.read_endpoints() == expected_endpoints(services)
    assert other.read_endpoints() == expected_endpoints([API])
    # A fresh Dataplane (the `waolb weights` command) reads the same.
    assert new_dataplane(netns).read_endpoints() == expected_endpoints(services)
    dp.delete_tables()
    assert dp.read_endpoints() == []


def test_read_endpoints_reads_every_shard(netns: Netns) -> None:
    dp = new_dataplane(netns)
    services = spread(2000)
    dp.sync_full(services)
    assert len(shard_names(netns, "ip")) == 1
    assert dp.read_endpoints() == expected_endpoints(services)


# ---- namespaces and neighbours --------------------------------------------------------------

FOREIGN = """
table ip other {
    set blocked {
        type ipv4_addr
        elements = { 192.0.2.1 }
    }
    chain input {
        type filter hook input priority 0; policy accept;
        ip saddr @blocked drop
    }
}
table inet filter {
    chain forward {
        type filter hook forward priority 0; policy accept;
        counter
    }
}
table inet wao-loadbalancer {
    chain c {
        type filter hook output priority 10; policy accept;
        meta mark 7 accept
    }
}
"""


def foreign_tables(ns: Netns) -> str:
    return "".join(
        ns.nft("-a", "list", "table", family, name).stdout
        for family, name in (("ip", "other"), ("inet", "filter"), ("inet", TABLE))
    )


def test_foreign_tables_survive_replace_and_delete_tables(netns: Netns) -> None:
    netns.run("nft", "-f", "-", input=FOREIGN)
    before = foreign_tables(netns)
    dp = new_dataplane(netns)
    dp.sync_full([WEB, DNS])
    assert foreign_tables(netns) == before
    dp.sync_full([API])
    apply(dp, [WEB], [API])
    assert foreign_tables(netns) == before
    dp.delete_tables()
    assert foreign_tables(netns) == before
    assert netns.ruleset().count("table ") == 3


def test_a_dataplane_programs_only_the_namespace_it_was_created_in(
    netns_pair: tuple[Netns, Netns],
) -> None:
    first, second = netns_pair
    dp = new_dataplane(first)
    baseline = second.ruleset()
    # Called while this thread sits in the other namespace: the socket still belongs to A.
    with entered(second):
        dp.sync_full([WEB, DNS])
        apply(dp, [API], [DNS])
    assert second.ruleset() == baseline == ""
    assert_tables_hold(first, "ip", [WEB, API])
    with entered(second):
        dp.delete_tables()
    assert read_table(first, "ip") is None
    assert second.ruleset() == ""


def test_delete_tables_removes_both_and_a_later_replace_works(programmed: Programmed) -> None:
    ns, dp = programmed.ns, programmed.dp
    dp.sync_full([WEB, svc("web", "fd00:96::10", [("fd00:244::10", 8080, 1)])])
    dp.delete_tables()
    assert ns.ruleset() == ""
    dp.delete_tables()  # nothing there: still fine
    with pytest.raises(ValueError, match="full sync first"):
        apply(dp, [WEB], [])
    assert ns.ruleset() == ""
    dp.sync_full([WEB])
    assert_tables_hold(ns, "ip", [WEB])
    apply(dp, [API], [])
    assert_tables_hold(ns, "ip", [WEB, API])


def test_a_fresh_dataplane_deletes_tables_that_are_not_there(netns: Netns) -> None:
    new_dataplane(netns).delete_tables()
    assert netns.ruleset() == ""


# ---- bad input ------------------------------------------------------------------------------

GOOD_ARGS: dict[str, Any] = {
    "namespace": "default",
    "name": "web",
    "port_name": "http",
    "protocol": "tcp",
    "family": 4,
    "cluster_ip": "10.96.0.10",
    "port": 80,
    "endpoint_ips": ["10.244.0.10", "10.244.0.11"],
    "endpoint_ports": [8080, 8080],
    "weights": [1, 2],
}

# (id, changes to GOOD_ARGS, expected text in the message)
BAD_SERVICE_PORTS: list[tuple[str, dict[str, Any], str]] = [
    ("cluster IP not an address", {"cluster_ip": "10.96.0.300"}, "cluster IP \"10.96.0.300\""),
    ("cluster IP garbage", {"cluster_ip": "web"}, "is not an IP address"),
    ("cluster IP of the other family", {"cluster_ip": "fd00:96::1"}, "not an ip address"),
    ("cluster IP unspecified", {"cluster_ip": "0.0.0.0"}, "unspecified"),
    ("endpoint IP not an address", {"endpoint_ips": ["10.244.0.10", "10.244.0"]},
     "endpoint address \"10.244.0\""),
    ("endpoint IP with a zone", {"family": 6, "cluster_ip": "fd00:96::1",
                                 "endpoint_ips": ["fe80::1%eth0", "fd00:244::1"]},
     "is not an IP address"),
    ("endpoint IP of the other family", {"endpoint_ips": ["10.244.0.10", "fd00:244::1"]},
     "not a usable ip address"),
    ("port 0", {"port": 0}, "port 0 is outside 1..65535"),
    ("port 65536", {"port": 65536}, "port 65536 is outside 1..65535"),
    ("port negative", {"port": -80}, "port -80 is outside 1..65535"),
    ("endpoint port 0", {"endpoint_ports": [8080, 0]}, "port 0 is outside"),
    ("endpoint port 65536", {"endpoint_ports": [65536, 8080]}, "port 65536 is outside"),
    ("endpoint port negative", {"endpoint_ports": [8080, -1]}, "port -1 is outside"),
    ("duplicate endpoints", {"endpoint_ips": ["10.244.0.10", "10.244.0.10"]}, "listed twice"),
    ("empty namespace", {"namespace": ""}, "namespace is empty"),
    ("empty name", {"name": ""}, "name is empty"),
    ("name not a Kubernetes name", {"name": "Web_1"}, "not a Kubernetes name"),
    ("unknown family", {"family": 5}, "IP family 5 is unknown"),
    ("unknown protocol", {"protocol": "sctp"}, "protocol \"sctp\" is not supported"),
    ("columns differ: ports", {"endpoint_ports": [8080]}, "endpoint columns differ in length"),
    ("columns differ: weights", {"weights": [1, 2, 3]}, "endpoint columns differ in length"),
    ("negative weight", {"weights": [1, -1]}, "weight -1, outside 0..4294967295"),
    ("weight above 32 bits", {"weights": [1, 2**32]}, "outside 0..4294967295"),
    ("all weights 0", {"weights": [0, 0]}, "all 2 weights are 0"),
    ("weights overflow numgen", {"weights": [2**32 - 1, 1]}, "add up to more than"),
    ("more than 100 000 endpoints", {
        "endpoint_ips": [f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}" for i in range(1, 100_002)],
        "endpoint_ports": [8080] * 100_001,
        "weights": [1] * 100_001,
    }, "100001 endpoints is more than the limit of 100000"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "problem"),
    [pytest.param(changes, problem, id=ident) for ident, changes, problem in BAD_SERVICE_PORTS],
)
def test_bad_service_ports_raise_value_error_naming_the_service(
    programmed: Programmed, changes: dict[str, Any], problem: str
) -> None:
    args = {**GOOD_ARGS, **changes}
    before = programmed.ns.ruleset()
    with pytest.raises(ValueError) as info:
        programmed.dp.sync_full([API, ServicePort(**args)])
    message = str(info.value)
    assert message.startswith(f"service {args['namespace']}/{args['name']}:http"), message
    assert problem in message
    assert programmed.ns.ruleset() == before


def test_limits_that_hold_exactly_are_accepted() -> None:
    many = 100_000
    service = ServicePort(
        **{
            **GOOD_ARGS,
            "endpoint_ips": [f"10.{i >> 16}.{i >> 8 & 255}.{i & 255}" for i in range(1, many + 1)],
            "endpoint_ports": [65535] * many,
            "weights": [0] * (many - 1) + [2**32 - 1],
        }
    )
    assert len(service.endpoint_ips) == many
    assert ServicePort(**{**GOOD_ARGS, "port": 65535, "weights": [2**32 - 2, 1]}).port == 65535


@pytest.mark.parametrize(
    "changes",
    [
        {"port": 2**64},
        {"family": -(2**70)},
        {"endpoint_ports": [8080, 2**64]},
        {"weights": [1, 2**64]},
    ],
)
def test_huge_integers_are_a_value_error_too(changes: dict[str, Any]) -> None:
    """Beyond 64 bits too: a ValueError naming the service, not an OverflowError."""
    with pytest.raises(ValueError, match="service default/web:http"):
        ServicePort(**{**GOOD_ARGS, **changes})


SyncCall = Callable[[Dataplane], SyncResult]
WEB_AGAIN = svc("web", "10.96.0.10", [("10.244.0.99", 8080, 1)])
CLAIMS_WEB_IP = svc("other", "10.96.0.10", [("10.244.0.98", 80, 1)])

# (id, call on a Dataplane holding WEB, METRICS, DNS, API; expected text)
BAD_SYNCS: list[tuple[str, SyncCall, str]] = [
    ("full: same port twice", lambda dp: dp.sync_full([WEB, API, WEB_AGAIN]),
     "service default/web:http (tcp ip) is given twice"),
    ("partial: same port twice", lambda dp: dp.sync_services([("default", "web")], [WEB, WEB]),
     "service default/web:http (tcp ip) is given twice"),
    ("partial: unchanged and changed", lambda dp: apply(dp, [WEB, WEB_AGAIN]),
     "service default/web:http (tcp ip) is given twice"),
    ("partial: a port outside the Services synced",
     lambda dp: dp.sync_services([("default", "api")], [WEB_AGAIN]),
     "service default/web:http (tcp ip) is not a port of the Services synced"),
    ("partial: both given and held",
     lambda dp: dp.sync_services([("default", "web")], [WEB], [WEB.key]),
     "service default/web:http (tcp ip) is both given and held"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "problem"),
    [pytest.param(call, problem, id=ident) for ident, call, problem in BAD_SYNCS],
)
def test_bad_syncs_raise_value_error_and_send_nothing(
    programmed: Programmed, call: SyncCall, problem: str
) -> None:
    before = full_ruleset(programmed.ns)
    with pytest.raises(ValueError) as info:
        call(programmed.dp)
    assert problem in str(info.value)
    assert full_ruleset(programmed.ns) == before
    # The Dataplane's own view is intact: a no-op sync still sends nothing.
    assert apply(programmed.dp, programmed.services).messages == 0


def test_a_partial_sync_before_any_full_one_is_refused(netns: Netns) -> None:
    with pytest.raises(ValueError, match="needs a full sync first"):
        apply(new_dataplane(netns), [WEB])
    assert netns.ruleset() == ""


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda dp: dp.sync_full([WEB, METRICS, DNS, API, CLAIMS_WEB_IP]), id="full"),
        pytest.param(lambda dp: apply(dp, [CLAIMS_WEB_IP]), id="partial"),
    ],
)
def test_a_port_claiming_a_programmed_address_is_refused_and_the_rest_commits(
    programmed: Programmed, call: SyncCall
) -> None:
    ns, dp = programmed.ns, programmed.dp
    result = call(dp)
    [refusal] = result.refused
    assert (refusal.key, refusal.reason, refusal.holder, refusal.kept) == (
        CLAIMS_WEB_IP.key,
        "clash",
        WEB.key,
        False,
    )
    assert "both claim 10.96.0.10 port 80/tcp" in refusal.message
    assert_tables_hold(ns, "ip", programmed.services)


# ---- kernel rejections ----------------------------------------------------------------------


@dataclass
class Rejection:
    """Something an operator does with nft, then a sync the kernel must refuse."""

    tamper: str
    call: SyncCall
    code: int
    action: str
    key: tuple[int, str, str, str, str]


#: Refusals of one port: it keeps its programmed state, the rest of the batch commits.
PORT_REJECTIONS = {
    # A rule in waolb's table jumps to a service chain: deleting that chain is EBUSY.
    "chain still referenced": Rejection(
        f"add rule ip {TABLE} services jump {chain_of(WEB)}",
        lambda dp: apply(dp, [], [WEB]),
        errno.EBUSY,
        "delete chain",
        WEB.key,
    ),
    # The same, reached by endpoints going away (the chain goes, the element moves).
    "chain referenced when endpoints go": Rejection(
        f"add rule ip {TABLE} services jump {chain_of(API)}",
        lambda dp: apply(dp, [svc("api", "10.96.0.1", [])]),
        errno.EBUSY,
        "delete chain",
        API.key,
    ),
    # An element with the new service's key already maps somewhere else: EEXIST.
    "conflicting map element": Rejection(
        f"add element ip {TABLE} service-ips {{ 10.96.0.99 . tcp . 80 : goto reject-chain }}",
        lambda dp: apply(dp, [svc("new", "10.96.0.99", [("10.244.0.5", 80, 1)])]),
        errno.EEXIST,
        "add map element",
        (4, "default", "new", "http", "TCP"),
    ),
    # The chain was deleted behind waolb's back (its element first, which jumps to it).
    "chain deleted": Rejection(
        f"delete element ip {TABLE} service-ips {{ 10.96.0.10 . tcp . 80 }} ; "
        f"delete chain ip {TABLE} {chain_of(WEB)}",
        lambda dp: apply(dp, [WEB_AGAIN]),
        errno.ENOENT,
        "flush chain",
        WEB.key,
    ),
}

#: Refusals no port explains: nothing changes.
BATCH_REJECTIONS = {
    # The table was deleted behind waolb's back: the service chain is gone, ENOENT, and the
    # hairpin set with it.
    "table deleted": Rejection(
        f"delete table ip {TABLE}",
        lambda dp: apply(dp, [WEB_AGAIN]),
        errno.ENOENT,
        "flush chain",
        WEB.key,
    ),
    # Only the ip6 half fails; the ip half must not be committed either.
    "other family fails": Rejection(
        f"delete table ip6 {TABLE}",
        lambda dp: apply(dp, [WEB_AGAIN, svc("web6", "fd00:96::10", [("fd00:244::10", 8080, 1)])]),
        errno.ENOENT,
        "add chain",
        (6, "default", "web6", "http", "TCP"),
    ),
}


def tamper(ns: Netns, commands: str) -> None:
    ns.run("nft", "-f", "-", input=commands.replace(" ; ", "\n") + "\n")


@pytest.mark.parametrize("case", list(PORT_REJECTIONS.values()), ids=list(PORT_REJECTIONS))
def test_a_port_the_kernel_refuses_keeps_its_rules_and_replace_recovers(
    programmed: Programmed, case: Rejection
) -> None:
    ns, dp = programmed.ns, programmed.dp
    tamper(ns, case.tamper)
    before = full_ruleset(ns)
    ledger = dp.programmed()
    result = case.call(dp)
    [refusal] = result.refused
    assert (refusal.reason, refusal.errno, refusal.action, refusal.key) == (
        "kernel",
        case.code,
        case.action,
        case.key,
    )
    assert refusal.kept == (case.key != (4, "default", "new", "http", "TCP"))
    assert case.action in refusal.message
    # Nothing else was in the batch: the kernel and the ledger are as they were.
    assert full_ruleset(ns) == before
    assert dp.programmed() == ledger
    # A full sync rebuilds everything, the operator's additions included.
    dp.sync_full(programmed.services)
    assert_tables_hold(ns, "ip", programmed.services)
    assert_tables_hold(ns, "ip6", [])
    # ... and partial syncs work again from there.
    apply(dp, [WEB_AGAIN], [DNS])
    assert_tables_hold(ns, "ip", [WEB_AGAIN, METRICS, API])


def test_one_refused_port_does_not_hold_the_others_back(programmed: Programmed) -> None:
    ns, dp = programmed.ns, programmed.dp
    tamper(ns, PORT_REJECTIONS["chain deleted"].tamper)
    api2 = svc("api", "10.96.0.1", [("10.244.0.21", 6443, 3)])
    dns2 = svc("dns", "10.96.0.53", [("10.244.0.53", 53, 1)], namespace="kube-system",
               port_name="dns", protocol="udp", port=53)  # fmt: skip
    result = apply(dp, [WEB_AGAIN, api2, dns2])
    assert [r.key for r in result.refused] == [WEB.key]
    assert sorted(result.changed) == sorted([api2.key, dns2.key])
    listing = read_table(ns, "ip")
    assert listing is not None
    assert listing.rules[chain_of(api2)] == expected_service_rules(api2)
    assert listing.rules[chain_of(dns2)] == expected_service_rules(dns2)
    assert chain_of(WEB) not in listing.chains  # still gone: the next full sync rebuilds it
    assert {p.key: p for p in dp.programmed()}[WEB.key] == WEB
    dp.sync_full([WEB, METRICS, dns2, api2])
    assert_tables_hold(ns, "ip", [WEB, METRICS, dns2, api2])


@pytest.mark.parametrize("case", list(BATCH_REJECTIONS.values()), ids=list(BATCH_REJECTIONS))
def test_a_rejection_no_port_explains_changes_nothing_and_replace_recovers(
    programmed: Programmed, case: Rejection
) -> None:
    ns, dp = programmed.ns, programmed.dp
    tamper(ns, case.tamper)
    before = ns.ruleset()
    before_handles = full_ruleset(ns)
    with pytest.raises(NftError) as info:
        case.call(dp)
    error = info.value
    assert isinstance(error, OSError)
    assert error.errno == case.code, error
    assert (error.action, error.key) == (case.action, case.key)
    assert error.object.startswith(case.action) and "unchanged" in str(error)
    assert ns.ruleset() == before
    assert full_ruleset(ns) == before_handles
    dp.sync_full(programmed.services)
    assert_tables_hold(ns, "ip", programmed.services)
    assert_tables_hold(ns, "ip6", [])
    apply(dp, [WEB_AGAIN], [DNS])
    assert_tables_hold(ns, "ip", [WEB_AGAIN, METRICS, API])


# Runs in its own process (under `ip netns exec`), so that a hang has a time limit.
FLOOD_SCRIPT = r"""
import subprocess, sys
from waolb._native import Dataplane, NftError, ProgrammedEndpoint, ServicePort, SyncResult

count = int(sys.argv[1])

def services(weight):
    return [
        ServicePort("default", f"s{i}", "http", "tcp", 4, f"10.96.{i // 250}.{i % 250 + 1}", 80,
                    [f"10.244.{i // 200}.{i % 200 + 1}", "10.245.0.1", "10.245.0.2"],
                    [8080] * 3, [1, weight, 3])
        for i in range(count)
    ]

dp = Dataplane()
dp.sync_full(services(1))
subprocess.run(["nft", "flush", "ruleset"], check=True)
try:
    result = dp.sync_services([("default", f"s{i}") for i in range(count)], services(2))
    print(f"refused {len(result.refused)} {result.refused[0].message}")
except NftError as error:
    print(f"NftError {error.errno} {error.object}")
"""


def test_a_flood_of_kernel_errors_is_reported_not_waited_for_forever(netns: Netns) -> None:
    """After `nft flush ruleset` (a firewall reload), a partial sync of 12 000 services
    fails in every one of its ~48 000 messages; the kernel reports each failure, more than
    the receive buffer holds."""
    proc = netns.popen(sys.executable, "-c", FLOOD_SCRIPT, "12000")
    try:
        out, err = proc.communicate(timeout=HUNG_AFTER)
    except subprocess.TimeoutExpired:
        stop_process(proc)
        pytest.fail(f"the sync did not return within {HUNG_AFTER} s (blocked in netlink recv)")
    assert proc.returncode == 0, err
    # Either every report fitted the receive buffer and names its port (each is refused and
    # keeps its state in the ledger; the next full sync rebuilds the tables), or reports were
    # dropped, so that the failures cannot all be tied to ports: the batch is rejected as a
    # whole, reported by its first error. Either way nothing changed.
    assert out.strip() in {
        "refused 12000 the kernel refused flush chain for service default/s0:http (tcp ip): "
        "No such file or directory (os error 2)",
        "NftError 2 flush chain for service default/s0:http (tcp ip)",
    }, out


def test_a_refused_port_can_be_retried_once_the_cause_is_gone(programmed: Programmed) -> None:
    """After a refusal the Dataplane's view still matches the kernel: once the operator's
    rule is gone, the same sync goes through."""
    ns, dp = programmed.ns, programmed.dp
    ns.nft("add", "rule", "ip", TABLE, "services", "jump", chain_of(WEB))
    assert [r.key for r in apply(dp, [], [WEB]).refused] == [WEB.key]
    handle = read_table(ns, "ip").handles["services"][-1]  # type: ignore[union-attr]
    ns.nft("delete", "rule", "ip", TABLE, "services", "handle", str(handle))
    assert apply(dp, [], [WEB]).refused == []
    assert_tables_hold(ns, "ip", [METRICS, DNS, API])
