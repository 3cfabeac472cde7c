//! The chains and maps every service relies on: each table's dispatch (its `service-ips`
//! map and the nat hooks that look it up), and in the main table the rejection of ports
//! without endpoints and the hairpin masquerade.

use super::batch::{tag, Writer};
use super::shards::Shards;
use super::{
    ENDPOINTS_CHECK_CHAIN, FAMILIES, HAIRPIN_ENDPOINTS, MARK_FOR_MASQUERADE_CHAIN,
    MASQUERADING_CHAIN, NO_ENDPOINT_SERVICES, REJECT_CHAIN, SERVICES_CHAIN, SERVICE_IPS,
};
use crate::netlink::{Batch, MessageTag};
use crate::nft::{self, Family, Hook, RuleBuilder, SetData, SetSpec, TableRef, Verdict};

/// Deletes tables given as (family, shard). "add; delete" works on every kernel whether or
/// not a table is still there; deleting a table also deletes everything in it.
pub fn delete_tables(writer: &mut Writer<'_>, tables: impl IntoIterator<Item = (Family, u32)>) {
    for (family, shard) in tables {
        let subject = writer.table_subject(family, shard);
        let table = writer.tables.table_ref(family, shard);
        nft::add_table(&mut writer.batch, table, tag("add table", subject));
        nft::delete_table(&mut writer.batch, table, tag("delete table", subject));
    }
}

/// Recreates every table a full sync uses: for each family the main table with the chains
/// and maps every service relies on, and the shard tables its service chains spread over.
pub fn write_all(writer: &mut Writer<'_>, shards: Shards) {
    for family in FAMILIES {
        for shard in 0..shards.count(family) {
            write_dispatch(writer, family, shard);
        }
        write_main(writer, family);
    }
}

/// A fresh table that dispatches to service chains: its `service-ips` map, the `services`
/// chain that looks it up, and the nat hooks that jump there. The kernel's NAT stops at the
/// first table that translated a new connection, so a port is looked up in the tables in
/// turn until the one that holds it.
fn write_dispatch(writer: &mut Writer<'_>, family: Family, shard: u32) {
    let table = writer.tables.table_ref(family, shard);
    let subject = writer.table_subject(family, shard);
    let t = |action| tag(action, subject);
    let batch = &mut writer.batch;
    nft::add_table(batch, table, t("add table"));
    nft::delete_table(batch, table, t("delete table"));
    nft::add_table(batch, table, t("add table"));
    add_service_map(batch, table, SERVICE_IPS, 1, t("add map"));
    nft::add_chain(batch, table, SERVICES_CHAIN, None, t("add chain"));
    for (name, hooknum) in [
        ("nat-prerouting", nft::HOOK_PREROUTING),
        ("nat-output", nft::HOOK_OUTPUT),
    ] {
        let hook = Hook {
            kind: "nat",
            hooknum,
            priority: -100,
        };
        nft::add_chain(batch, table, name, Some(hook), t("add base chain"));
        let mut rule = RuleBuilder::new(batch, table, name, t("add rule"));
        rule.verdict(Verdict::Jump(SERVICES_CHAIN));
        rule.finish(None);
    }
    let mut rule = RuleBuilder::new(batch, table, SERVICES_CHAIN, t("add rule"));
    load_service_key(&mut rule, family);
    rule.lookup(SERVICE_IPS, nft::REG32_00, Some(nft::REG_VERDICT), 0);
    rule.finish(None);
}

/// The main table's own objects, after its dispatch: the maps and chains that reject ports
/// without endpoints, and the hairpin masquerade.
fn write_main(writer: &mut Writer<'_>, family: Family) {
    let table = writer.tables.table_ref(family, 0);
    let mark = writer.tables.masquerade_mark;
    let subject = writer.table_subject(family, 0);
    let t = |action| tag(action, subject);
    let batch = &mut writer.batch;
    add_service_map(batch, table, NO_ENDPOINT_SERVICES, 2, t("add map"));
    let addr = (family.addr_type(), family.addr_len());
    let hairpin = SetSpec {
        name: HAIRPIN_ENDPOINTS,
        key: &[addr, addr],
        key_byteorder: nft::BYTEORDER_BIG,
        data: SetData::None,
        flags: 0,
        timeout_ms: None,
    };
    nft::add_set(batch, table, &hairpin, 3, t("add set"));
    for name in [
        ENDPOINTS_CHECK_CHAIN,
        REJECT_CHAIN,
        MARK_FOR_MASQUERADE_CHAIN,
        MASQUERADING_CHAIN,
    ] {
        nft::add_chain(batch, table, name, None, t("add chain"));
    }
    write_base_chains(batch, table, t);
    write_rejection(batch, table, t);
    write_masquerade(batch, table, mark, t);
}

/// The filter and postrouting hooks of the main table, each with the rule that jumps on.
fn write_base_chains(
    batch: &mut Batch,
    table: TableRef<'_>,
    t: impl Fn(&'static str) -> MessageTag,
) {
    let filter = |hooknum| Hook {
        kind: "filter",
        hooknum,
        // Before DNAT (-100), so a service without endpoints is refused at once.
        priority: -110,
    };
    let hooks = [
        (
            "nat-postrouting",
            Hook {
                kind: "nat",
                hooknum: nft::HOOK_POSTROUTING,
                priority: 100,
            },
            MASQUERADING_CHAIN,
        ),
        (
            "filter-input",
            filter(nft::HOOK_INPUT),
            ENDPOINTS_CHECK_CHAIN,
        ),
        (
            "filter-forward",
            filter(nft::HOOK_FORWARD),
            ENDPOINTS_CHECK_CHAIN,
        ),
        (
            "filter-output",
            filter(nft::HOOK_OUTPUT),
            ENDPOINTS_CHECK_CHAIN,
        ),
    ];
    for (name, hook, _) in hooks {
        nft::add_chain(batch, table, name, Some(hook), t("add base chain"));
    }
    for (name, hook, target) in hooks {
        let mut rule = RuleBuilder::new(batch, table, name, t("add rule"));
        if hook.kind == "filter" {
            // ct state new
            rule.ct_load(nft::CT_STATE, nft::REG32_00)
                .bitwise(
                    nft::REG32_00,
                    nft::REG32_00,
                    &nft::CT_STATE_NEW.to_ne_bytes(),
                    &[0; 4],
                )
                .cmp(nft::CMP_NEQ, nft::REG32_00, &[0; 4]);
        }
        rule.verdict(Verdict::Jump(target));
        rule.finish(None);
    }
}

/// A port without endpoints is looked up in `no-endpoint-services` and rejected with
/// "port unreachable".
fn write_rejection(batch: &mut Batch, table: TableRef<'_>, t: impl Fn(&'static str) -> MessageTag) {
    let family = table.family;
    let mut rule = RuleBuilder::new(batch, table, ENDPOINTS_CHECK_CHAIN, t("add rule"));
    load_service_key(&mut rule, family);
    rule.lookup(
        NO_ENDPOINT_SERVICES,
        nft::REG32_00,
        Some(nft::REG_VERDICT),
        0,
    );
    rule.finish(None);
    let code = match family {
        Family::Ip => nft::ICMP_PORT_UNREACH,
        Family::Ip6 => nft::ICMPV6_PORT_UNREACH,
    };
    let mut rule = RuleBuilder::new(batch, table, REJECT_CHAIN, t("add rule"));
    rule.reject(nft::REJECT_ICMP_UNREACH, code);
    rule.finish(None);
}

/// Marks a pod that reached itself through its service, and masquerades what is marked.
fn write_masquerade(
    batch: &mut Batch,
    table: TableRef<'_>,
    mark: u32,
    t: impl Fn(&'static str) -> MessageTag,
) {
    let family = table.family;
    let mut rule = RuleBuilder::new(batch, table, MARK_FOR_MASQUERADE_CHAIN, t("add rule"));
    rule.meta_load(nft::META_MARK, nft::REG32_00)
        .bitwise(
            nft::REG32_00,
            nft::REG32_00,
            &(!mark).to_ne_bytes(),
            &mark.to_ne_bytes(),
        )
        .meta_set(nft::META_MARK, nft::REG32_00);
    rule.finish(None);

    // Source and new destination match: the hairpin set holds `addr . addr` pairs.
    let second = nft::reg_after(nft::REG32_00, family.addr_len());
    let mut rule = RuleBuilder::new(batch, table, MASQUERADING_CHAIN, t("add rule"));
    rule.payload(
        nft::PAYLOAD_NETWORK,
        family.saddr_offset(),
        family.addr_len(),
        nft::REG32_00,
    )
    .payload(
        nft::PAYLOAD_NETWORK,
        family.daddr_offset(),
        family.addr_len(),
        second,
    )
    .lookup(HAIRPIN_ENDPOINTS, nft::REG32_00, None, 0)
    .verdict(Verdict::Jump(MARK_FOR_MASQUERADE_CHAIN));
    rule.finish(Some("hairpin: a pod reached itself through a service"));
    let mut rule = RuleBuilder::new(batch, table, MASQUERADING_CHAIN, t("add rule"));
    rule.meta_load(nft::META_MARK, nft::REG32_00)
        .bitwise(nft::REG32_00, nft::REG32_00, &mark.to_ne_bytes(), &[0; 4])
        .cmp(nft::CMP_EQ, nft::REG32_00, &[0; 4])
        .verdict(Verdict::Return);
    rule.finish(None);
    let mut rule = RuleBuilder::new(batch, table, MASQUERADING_CHAIN, t("add rule"));
    rule.meta_load(nft::META_MARK, nft::REG32_00)
        .bitwise(
            nft::REG32_00,
            nft::REG32_00,
            &[0xff; 4],
            &mark.to_ne_bytes(),
        )
        .meta_set(nft::META_MARK, nft::REG32_00);
    rule.finish(None);
    let mut rule = RuleBuilder::new(batch, table, MASQUERADING_CHAIN, t("add rule"));
    rule.masquerade(nft::NAT_RANGE_PROTO_RANDOM_FULLY);
    rule.finish(None);
}

/// The key of `service-ips` and `no-endpoint-services`: (nft type, length) of each field.
fn service_key(family: Family) -> [(u32, u32); 3] {
    [
        (family.addr_type(), family.addr_len()),
        (nft::TYPE_INET_PROTOCOL, 1),
        (nft::TYPE_INET_SERVICE, 2),
    ]
}

/// A `daddr . l4proto . dport : verdict` map: the shape of both per-service maps.
fn add_service_map(batch: &mut Batch, table: TableRef<'_>, name: &str, id: u32, tag: MessageTag) {
    let spec = SetSpec {
        name,
        key: &service_key(table.family),
        key_byteorder: nft::BYTEORDER_BIG,
        data: SetData::Verdict,
        flags: 0,
        timeout_ms: None,
    };
    nft::add_set(batch, table, &spec, id, tag);
}

/// `daddr . l4proto . dport` into consecutive registers from REG32_00.
fn load_service_key(rule: &mut RuleBuilder<'_>, family: Family) {
    let proto_reg = nft::reg_after(nft::REG32_00, family.addr_len());
    rule.payload(
        nft::PAYLOAD_NETWORK,
        family.daddr_offset(),
        family.addr_len(),
        nft::REG32_00,
    )
    .meta_load(nft::META_L4PROTO, proto_reg)
    .payload(nft::PAYLOAD_TRANSPORT, 2, 2, proto_reg + 1);
}
