//! The batch of a planned sync: service chains, their map elements and hairpin pairs, on
//! top of fresh tables (a full sync) or of what the ledger holds (a partial one).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use super::batch::{tag, PreparedBatch, Subject, Tables, Writer};
use super::infrastructure::{delete_tables, write_all};
use super::ledger::Ledger;
use super::model::{addr_bytes, family_of, ServiceId, ServicePort};
use super::plan::{resolve, Plan, SyncRequest};
use super::readback::endpoint_comment;
use super::shards::Shards;
use super::{HAIRPIN_ENDPOINTS, NO_ENDPOINT_SERVICES, REJECT_CHAIN, SERVICE_IPS};
use crate::nft::{self, Element, ElementData, Family, RuleBuilder, Verdict};

/// The batch that makes the tables hold exactly the plan's ports. `existing` lists the
/// tables there now, as (family, shard): those the new layout does not use go too.
pub fn write_full(
    tables: &Tables,
    ledger: &Ledger,
    request: &SyncRequest,
    plan: &Plan,
    existing: &[(Family, u32)],
    first_seq: u32,
) -> PreparedBatch {
    let shards = plan.shards;
    let mut writer = Writer::new(tables, first_seq, plan.write.len());
    write_all(&mut writer, shards);
    let ports: Vec<(&ServicePort, u32)> = plan
        .write
        .iter()
        .map(|write| {
            let subject = writer.subject(Subject::Port(write.id.clone()));
            (resolve(ledger, request, write), subject)
        })
        .collect();
    for &(port, subject) in &ports {
        if port.is_balanced() {
            write_service_chain(&mut writer, port, subject, false, shards);
        }
    }
    write_elements(&mut writer, ports.iter().copied(), false, shards);
    let hairpin: BTreeSet<IpAddr> = ports
        .iter()
        .flat_map(|(p, _)| p.endpoints.iter().filter(|e| e.weight > 0).map(|e| e.addr))
        .collect();
    let subject = writer.subject(Subject::HairpinSet);
    write_hairpin(&mut writer, hairpin.into_iter(), false, subject);
    // Last: until the commit, a deleted table stays on the kernel's list of tables, which
    // every message of the batch searches for its table by name.
    let unused = existing
        .iter()
        .copied()
        .filter(|&(family, shard)| shard >= shards.count(family));
    delete_tables(&mut writer, unused);
    writer.finish()
}

/// The batch that adds, changes and deletes the plan's ports, touching nothing else.
pub fn write_partial(
    tables: &Tables,
    ledger: &Ledger,
    request: &SyncRequest,
    plan: &Plan,
    first_seq: u32,
) -> PreparedBatch {
    let shards = ledger.shards();
    let mut writer = Writer::new(tables, first_seq, plan.write.len() + plan.remove.len());
    let mut hairpin_delta: HashMap<IpAddr, i64> = HashMap::new();
    let mut count = |port: &ServicePort, sign: i64| {
        for endpoint in port.endpoints.iter().filter(|e| e.weight > 0) {
            *hairpin_delta.entry(endpoint.addr).or_default() += sign;
        }
    };
    // 1. Elements that go away or move, so no map still points at a chain we delete.
    for id in &plan.remove {
        let old = ledger.get(id).expect("a removed port is programmed");
        let subject = writer.subject(Subject::Port(id.clone()));
        write_elements(&mut writer, [(old, subject)], true, shards);
        if old.is_balanced() {
            delete_service_chain(&mut writer, old, subject, shards);
        }
        count(old, -1);
    }
    let mut new_elements = Vec::new();
    for write in &plan.write {
        let port = resolve(ledger, request, write);
        let subject = writer.subject(Subject::Port(write.id.clone()));
        let old = ledger.get(&write.id);
        let element_moves = old.is_none_or(|old| {
            old.map_key() != port.map_key() || old.is_balanced() != port.is_balanced()
        });
        if let (Some(old), true) = (old, element_moves) {
            write_elements(&mut writer, [(old, subject)], true, shards);
        }
        if element_moves {
            new_elements.push((port, subject));
        }
        match (
            old.is_some_and(ServicePort::is_balanced),
            port.is_balanced(),
        ) {
            (true, true) => write_service_chain(&mut writer, port, subject, true, shards),
            (true, false) => {
                let old = old.expect("a balanced port is programmed");
                delete_service_chain(&mut writer, old, subject, shards);
            }
            (false, true) => write_service_chain(&mut writer, port, subject, false, shards),
            (false, false) => {}
        }
        if let Some(old) = old {
            count(old, -1);
        }
        count(port, 1);
    }
    // 2. Elements that point at the (re)written chains.
    write_elements(&mut writer, new_elements, false, shards);
    // 3. Hairpin pairs whose reference count crosses zero.
    let mut gone = Vec::new();
    let mut fresh = Vec::new();
    for (addr, delta) in hairpin_delta {
        let before = i64::from(ledger.hairpin_users(&addr));
        let after = before + delta;
        if before > 0 && after <= 0 {
            gone.push(addr);
        } else if before == 0 && after > 0 {
            fresh.push(addr);
        }
    }
    gone.sort();
    fresh.sort();
    if !gone.is_empty() || !fresh.is_empty() {
        let subject = writer.subject(Subject::HairpinSet);
        write_hairpin(&mut writer, gone.into_iter(), true, subject);
        write_hairpin(&mut writer, fresh.into_iter(), false, subject);
    }
    writer.finish()
}

/// The service chain: one rule per endpoint with weight > 0, in layout order.
fn write_service_chain(
    writer: &mut Writer<'_>,
    service: &ServicePort,
    subject: u32,
    existing: bool,
    shards: Shards,
) {
    let table = writer
        .tables
        .table_ref(service.family, shards.of(&service.id()));
    let chain = service.chain_name();
    let batch = &mut writer.batch;
    if existing {
        nft::flush_chain(batch, table, &chain, tag("flush chain", subject));
    } else {
        nft::add_chain(batch, table, &chain, None, tag("add chain", subject));
    }
    let layout = service.layout().expect("validated");
    let total = layout.modulus();
    let port_reg = nft::reg_after(nft::REG32_00, service.family.addr_len());
    for step in layout.chain() {
        let endpoint = &service.endpoints[step.endpoint];
        let mut rule = RuleBuilder::new(batch, table, &chain, tag("add rule", subject));
        if !step.is_unconditional() {
            // numgen yields host order; compare in network order as nft does.
            rule.numgen_random(step.remaining, nft::REG32_00)
                .byteorder(nft::BYTEORDER_HTON, nft::REG32_00, nft::REG32_00, 4, 4)
                .cmp(nft::CMP_LT, nft::REG32_00, &step.weight.to_be_bytes());
        }
        rule.immediate(nft::REG32_00, &addr_bytes(&endpoint.addr))
            .immediate(port_reg, &endpoint.port.to_be_bytes())
            .nat(
                nft::NAT_DNAT,
                service.family,
                nft::REG32_00,
                Some(port_reg),
                0,
            );
        let (first, last) = layout.ranges()[step.endpoint].expect("a step has a range");
        let comment = endpoint_comment(endpoint, step.weight, total, first, last);
        rule.finish(Some(&comment));
    }
}

fn delete_service_chain(
    writer: &mut Writer<'_>,
    service: &ServicePort,
    subject: u32,
    shards: Shards,
) {
    let id: ServiceId = service.id();
    let table = writer.tables.table_ref(service.family, shards.of(&id));
    nft::delete_chain(
        &mut writer.batch,
        table,
        &id.chain_name(),
        tag("delete chain", subject),
    );
}

/// Map elements of services: balanced ones jump to their chain from their shard's
/// `service-ips`, the others reject from the main table's `no-endpoint-services`.
fn write_elements<'s>(
    writer: &mut Writer<'_>,
    services: impl IntoIterator<Item = (&'s ServicePort, u32)>,
    delete: bool,
    shards: Shards,
) {
    // One element list per (family, shard, map), in a stable order.
    let mut groups = BTreeMap::<_, Vec<_>>::new();
    for (service, subject) in services {
        let balanced = service.is_balanced();
        let shard = if balanced {
            shards.of(&service.id())
        } else {
            0
        };
        groups
            .entry((service.family, shard, balanced))
            .or_default()
            .push((service.map_key(), service.chain_name(), subject));
    }
    let action = if delete {
        "delete map element"
    } else {
        "add map element"
    };
    for ((family, shard, balanced), members) in groups {
        let elements = members.iter().map(|(key, chain, subject)| {
            let target = if balanced {
                chain.as_str()
            } else {
                REJECT_CHAIN
            };
            let data = if delete {
                ElementData::None
            } else {
                ElementData::Verdict(Verdict::Goto(target))
            };
            let element = Element {
                key,
                data,
                interval_end: false,
                timeout_ms: None,
            };
            (element, tag(action, *subject))
        });
        let map = if balanced {
            SERVICE_IPS
        } else {
            NO_ENDPOINT_SERVICES
        };
        let table = writer.tables.table_ref(family, shard);
        nft::set_elements(&mut writer.batch, table, map, delete, elements);
    }
}

fn write_hairpin(
    writer: &mut Writer<'_>,
    addrs: impl Iterator<Item = IpAddr>,
    delete: bool,
    subject: u32,
) {
    let mut by_family: BTreeMap<Family, Vec<Vec<u8>>> = BTreeMap::new();
    for addr in addrs {
        let mut key = addr_bytes(&addr);
        key.extend_from_slice(&addr_bytes(&addr));
        by_family.entry(family_of(&addr)).or_default().push(key);
    }
    let action = if delete {
        "delete hairpin element"
    } else {
        "add hairpin element"
    };
    for (family, keys) in by_family {
        let elements = keys.iter().map(|key| {
            let element = Element {
                key,
                data: ElementData::None,
                interval_end: false,
                timeout_ms: None,
            };
            (element, tag(action, subject))
        });
        let table = writer.tables.table_ref(family, 0);
        nft::set_elements(
            &mut writer.batch,
            table,
            HAIRPIN_ENDPOINTS,
            delete,
            elements,
        );
    }
}
