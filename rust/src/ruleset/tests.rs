//! Planning and writing syncs against the ledger, without a kernel.

use std::collections::HashMap;
use std::net::IpAddr;

use super::model::tests::service;
use super::*;

/// A port of `name` with `count` endpoints of weight 1 from 10.64.0.1 up.
pub fn wide(name: &str, vip: &str, count: u32) -> ServicePort {
    let mut port = service(name, vip, &[]);
    port.endpoints = (1..=count)
        .map(|i| Endpoint {
            addr: IpAddr::from([10, 64 + (i >> 16) as u8, (i >> 8) as u8, i as u8]),
            port: 8080,
            weight: 1,
        })
        .collect();
    port
}

fn no_refusals() -> HashMap<ServiceId, KernelRefusal> {
    HashMap::new()
}

/// Plans, writes and commits a request as if the kernel took the batch.
fn sync(rules: &mut Ruleset, request: SyncRequest) -> (Plan, PreparedBatch) {
    let plan = rules.plan(&request, &no_refusals()).unwrap();
    let batch = rules.write(&request, &plan, &[], 1);
    rules.commit(request, &plan);
    (plan, batch)
}

fn full(ports: &[ServicePort]) -> SyncRequest {
    SyncRequest::full(ports.to_vec(), vec![]).unwrap()
}

fn partial(services: &[&str], ports: &[ServicePort]) -> SyncRequest {
    let services = services
        .iter()
        .map(|name| ("default".to_string(), name.to_string()))
        .collect();
    SyncRequest::partial(services, ports.to_vec(), vec![]).unwrap()
}

fn programmed(rules: &Ruleset) -> Vec<ServicePort> {
    let mut ports: Vec<ServicePort> = rules.ledger().ports().cloned().collect();
    ports.sort_by_key(ServicePort::id);
    ports
}

#[test]
fn a_port_given_twice_is_a_request_error() {
    let a = service("a", "10.0.0.1", &[]);
    let err = SyncRequest::full(vec![a.clone(), a.clone()], vec![])
        .err()
        .unwrap();
    assert!(
        err.contains("service default/a:http (tcp ip) is given twice"),
        "{err}"
    );
    let err = SyncRequest::partial(vec![("default".into(), "b".into())], vec![a], vec![])
        .err()
        .unwrap();
    assert!(
        err.contains("is not a port of the Services synced"),
        "{err}"
    );
}

#[test]
fn a_new_claim_on_a_programmed_address_is_refused_and_the_rest_goes_through() {
    let mut rules = Ruleset::new("t", 14).unwrap();
    let a = service("a", "10.0.0.1", &[("10.1.0.1", 80, 1)]);
    sync(&mut rules, full(std::slice::from_ref(&a)));
    // Full sync: `b` claims a's address; `c` is fine.
    let b = service("b", "10.0.0.1", &[("10.1.0.2", 80, 1)]);
    let c = service("c", "10.0.0.3", &[]);
    let (plan, _) = sync(&mut rules, full(&[a.clone(), b.clone(), c.clone()]));
    assert_eq!(plan.refused.len(), 1);
    let refusal = &plan.refused[0];
    assert_eq!(refusal.id, b.id());
    assert_eq!(refusal.reason, RefusalReason::Clash { holder: a.id() });
    assert!(!refusal.kept);
    assert!(
        refusal
            .to_string()
            .contains("both claim 10.0.0.1 port 80/tcp"),
        "{refusal}"
    );
    assert_eq!(programmed(&rules), [a.clone(), c.clone()]);
    // Partial sync: the same.
    let (plan, batch) = sync(&mut rules, partial(&["b"], std::slice::from_ref(&b)));
    assert_eq!(plan.refused[0].id, b.id());
    assert_eq!(batch.summary.messages, 0);
    // Once `a` moves away, `b` gets the address; two ports may swap addresses.
    let a_moved = service("a", "10.0.0.2", &[("10.1.0.1", 80, 1)]);
    let (plan, _) = sync(
        &mut rules,
        partial(&["a", "b"], &[a_moved.clone(), b.clone()]),
    );
    assert!(plan.refused.is_empty());
    let (a_back, b_moved) = (a.clone(), service("b", "10.0.0.2", &[("10.1.0.2", 80, 1)]));
    let (plan, _) = sync(
        &mut rules,
        partial(&["a", "b"], &[a_back.clone(), b_moved.clone()]),
    );
    assert!(plan.refused.is_empty());
    assert_eq!(programmed(&rules), [a_back, b_moved, c]);
}

#[test]
fn a_changed_port_refused_for_a_clash_keeps_its_state_and_its_claim() {
    let mut rules = Ruleset::new("t", 14).unwrap();
    let a = service("a", "10.0.0.1", &[("10.1.0.1", 80, 1)]);
    let b = service("b", "10.0.0.2", &[("10.1.0.2", 80, 1)]);
    sync(&mut rules, full(&[a.clone(), b.clone()]));
    // `a` wants b's address while `b` stays: a keeps 10.0.0.1 and its endpoints.
    let a_onto_b = service("a", "10.0.0.2", &[("10.1.0.9", 80, 1)]);
    for request in [
        full(&[a_onto_b.clone(), b.clone()]),
        partial(&["a"], std::slice::from_ref(&a_onto_b)),
    ] {
        let (plan, _) = sync(&mut rules, request);
        assert_eq!(plan.refused.len(), 1);
        assert!(plan.refused[0].kept);
        assert_eq!(programmed(&rules), [a.clone(), b.clone()]);
    }
}

#[test]
fn held_ports_keep_their_programmed_state() {
    let mut rules = Ruleset::new("t", 14).unwrap();
    let a = service("a", "10.0.0.1", &[("10.1.0.1", 80, 1)]);
    let b = service("b", "10.0.0.2", &[("10.1.0.2", 80, 1)]);
    sync(&mut rules, full(&[a.clone(), b.clone()]));
    let b2 = service("b", "10.0.0.2", &[("10.1.0.3", 80, 1)]);
    for request in [
        SyncRequest::full(vec![b2.clone()], vec![a.id()]).unwrap(),
        SyncRequest::partial(
            vec![
                ("default".into(), "a".into()),
                ("default".into(), "b".into()),
            ],
            vec![b2.clone()],
            vec![a.id()],
        )
        .unwrap(),
    ] {
        sync(&mut rules, request);
        assert_eq!(programmed(&rules), [a.clone(), b2.clone()]);
    }
}

#[test]
fn a_port_the_kernel_refused_keeps_its_state_or_goes_when_refused_again() {
    let mut rules = Ruleset::new("t", 14).unwrap();
    let a = service("a", "10.0.0.1", &[("10.1.0.1", 80, 1)]);
    sync(&mut rules, full(std::slice::from_ref(&a)));
    let a2 = service("a", "10.0.0.1", &[("10.1.0.2", 80, 1)]);
    let reason = RefusalReason::Kernel {
        errno: libc::ENOENT,
        action: "flush chain",
        detail: None,
    };
    let mut refused = HashMap::from([(
        a.id(),
        KernelRefusal {
            reason: reason.clone(),
            dropped: false,
        },
    )]);
    let request = partial(&["a"], std::slice::from_ref(&a2));
    let plan = rules.plan(&request, &refused).unwrap();
    assert!(plan.write.is_empty() && plan.remove.is_empty());
    assert_eq!(plan.refused[0].reason, reason);
    assert!(plan.refused[0].kept);
    // A full sync writes the programmed state instead.
    let request = full(std::slice::from_ref(&a2));
    let plan = rules.plan(&request, &refused).unwrap();
    assert_eq!(plan.write.len(), 1);
    assert!(!plan.write[0].changed);
    refused.get_mut(&a.id()).unwrap().dropped = true;
    let plan = rules.plan(&request, &refused).unwrap();
    assert!(plan.write.is_empty());
    assert_eq!(plan.remove, [a.id()]);
    assert!(!plan.refused[0].kept);
}

#[test]
fn partial_syncs_skip_unchanged_ports_remove_missing_ones_and_need_a_full_sync_first() {
    let mut rules = Ruleset::new("t", 14).unwrap();
    let a = service("a", "10.0.0.1", &[("10.1.0.1", 80, 1)]);
    let err = rules
        .plan(&partial(&["a"], std::slice::from_ref(&a)), &no_refusals())
        .err()
        .unwrap();
    assert!(err.contains("needs a full sync first"), "{err}");
    sync(&mut rules, full(std::slice::from_ref(&a)));
    let (_, batch) = sync(&mut rules, partial(&["a"], std::slice::from_ref(&a)));
    assert_eq!(batch.summary.messages, 0);
    let mut changed = a.clone();
    changed.endpoints[0].weight = 5;
    let (plan, batch) = sync(&mut rules, partial(&["a"], &[changed]));
    // flush + one rule; the map element and hairpin pair stay.
    assert_eq!(batch.summary.messages, 2);
    assert_eq!(plan.changed().collect::<Vec<_>>(), [&a.id()]);
    let (plan, _) = sync(&mut rules, partial(&["a"], &[]));
    assert_eq!(plan.remove, [a.id()]);
    assert!(rules.ledger().ports().next().is_none());
}

/// Whether a batch names `table`: every message does so in attribute 1, NUL-terminated.
fn mentions(wire: &[u8], table: &str) -> bool {
    let mut attr = ((4 + table.len() + 1) as u16).to_ne_bytes().to_vec();
    attr.extend_from_slice(&1u16.to_ne_bytes());
    attr.extend_from_slice(table.as_bytes());
    attr.push(0);
    wire.windows(attr.len()).any(|w| w == attr)
}

#[test]
fn only_the_shard_tables_that_exist_are_deleted() {
    let rules = Ruleset::new("t", 14).unwrap();
    let existing = [(Family::Ip, 0), (Family::Ip, 1), (Family::Ip6, 5)];
    let request = full(&[service("a", "10.0.0.1", &[("10.1.0.1", 80, 1)])]);
    let plan = rules.plan(&request, &no_refusals()).unwrap();
    let batch = rules.write(&request, &plan, &existing, 1);
    let shards: Vec<u32> = (1..MAX_SHARDS)
        .filter(|n| mentions(&batch.wire, &format!("t-shard-{n}")))
        .collect();
    assert_eq!(shards, [1, 5]);
    let batch = rules.prepare_delete(&existing, 1);
    assert!(mentions(&batch.wire, "t"));
    // add + delete: both main tables, and the shards listed.
    assert_eq!(batch.summary.messages, 2 * 4);
}

#[test]
fn a_partial_sync_writes_only_into_the_table_of_the_port_it_changes() {
    let mut rules = Ruleset::new("t", 14).unwrap();
    let services: Vec<ServicePort> = (0..6)
        .map(|i| wide(&format!("s{i}"), &format!("10.0.0.{}", i + 1), 6000))
        .collect();
    let (_, batch) = sync(&mut rules, full(&services));
    let shards = rules.ledger().shards();
    assert_eq!(shards.count(Family::Ip), 3);
    for table in ["t", "t-shard-1", "t-shard-2"] {
        assert!(mentions(&batch.wire, table), "{table}");
    }
    let mut changed = services[0].clone();
    changed.endpoints[0].weight = 3;
    let shard = shards.of(&changed.id());
    let (_, batch) = sync(&mut rules, partial(&["s0"], &[changed]));
    for (n, table) in ["t", "t-shard-1", "t-shard-2"].iter().enumerate() {
        assert_eq!(mentions(&batch.wire, table), n == shard as usize, "{table}");
    }
}

#[test]
fn table_names_leave_room_for_the_shards() {
    let longest = "x".repeat(MAX_NAME - "-shard-63".len());
    let rules = Ruleset::new(&longest, 14).unwrap();
    assert_eq!(rules.shard_of_table(&longest), Some(0));
    let last = format!("{longest}-shard-63");
    assert_eq!(rules.shard_of_table(&last), Some(63));
    assert_eq!(rules.table_name(63), last);
    assert_eq!(rules.shard_of_table(&format!("{longest}-shard-64")), None);
    assert_eq!(rules.shard_of_table("other"), None);
    let err = Ruleset::new(&format!("{longest}x"), 14).err().unwrap();
    assert!(err.contains("must be 1 to 246 printable"), "{err}");
}

#[test]
fn hairpin_pairs_are_reference_counted_across_services() {
    let mut rules = Ruleset::new("t", 14).unwrap();
    let a = service("a", "10.0.0.1", &[("10.1.0.1", 80, 1)]);
    let b = service("b", "10.0.0.2", &[("10.1.0.1", 81, 1)]);
    sync(&mut rules, full(&[a.clone(), b.clone()]));
    let shared: IpAddr = "10.1.0.1".parse().unwrap();
    assert_eq!(rules.ledger().hairpin_users(&shared), 2);
    // Removing one user keeps the pair: element delete + chain delete only.
    let (_, batch) = sync(&mut rules, partial(&["a"], &[]));
    assert_eq!(batch.summary.messages, 2);
    let (_, batch) = sync(&mut rules, partial(&["b"], &[]));
    assert_eq!(batch.summary.messages, 3);
}
