//! The desired state (service ports and their weighted endpoints) and the nf_tables batch
//! that programs it.
//!
//! # Why this layout
//! kube-proxy gives every service an anonymous `numgen ... vmap { ranges }` set. Every set
//! in a table is kept on one list that the kernel walks to check a new set's name and to
//! resolve each set reference, so N per-service sets cost O(N²) in one transaction (the
//! 221 s for 10 000 services in NFTABLES-MEASURED.md). Here no set exists per service:
//!
//! * one `service-ips` verdict map (`daddr . l4proto . dport : goto service-chain`) per
//!   family, filled with batched element messages;
//! * one chain per service port whose rules pick an endpoint with a cascade of
//!   `numgen random mod R_i < w_i  dnat to ADDR:PORT` (R_i = weight still unassigned), so
//!   endpoint i is chosen with probability w_i / total - the same shares as upstream's
//!   `a-b` ranges, which each rule's comment spells out;
//! * one `hairpin-endpoints` set of `addr . addr` pairs, so postrouting marks a pod that
//!   reached itself through its service for masquerade without a chain per endpoint;
//! * services without endpoints go to a `no-endpoint-services` map that rejects them.
//!
//! Chains live in a hash table in the kernel, so every object here costs O(1) to add.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use crate::netlink::{Batch, MessageTag, NO_SUBJECT};
use crate::nft::{
    self, Element, ElementData, Family, Hook, RuleBuilder, SetData, SetSpec, TableRef, Verdict,
};
use crate::weights;

/// The largest number of endpoints one service port may have; beyond this the input is
/// taken to be a mistake rather than a cluster.
pub const MAX_ENDPOINTS_PER_SERVICE: usize = 100_000;
/// nf_tables limits object names to 255 bytes.
const MAX_NAME: usize = 255;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn parse(text: &str) -> Result<Protocol, String> {
        match text.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            other => Err(format!(
                "protocol {other:?} is not supported (use \"tcp\" or \"udp\")"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u32,
}

/// One Service port of one IP family with its endpoints, as the control plane wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    pub protocol: Protocol,
    pub family: Family,
    pub cluster_ip: IpAddr,
    pub port: u16,
    pub endpoints: Vec<Endpoint>,
}

/// A map element's key within its family's table.
type MapKey = (Family, Vec<u8>);

/// What identifies a service port across syncs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId {
    pub family: Family,
    pub namespace: String,
    pub name: String,
    pub protocol: Protocol,
    pub port_name: String,
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service {}/{}:{} ({} {})",
            self.namespace,
            self.name,
            self.port_name,
            self.protocol.name(),
            self.family.name()
        )
    }
}

fn family_of(addr: &IpAddr) -> Family {
    match addr {
        IpAddr::V4(_) => Family::Ip,
        IpAddr::V6(_) => Family::Ip6,
    }
}

fn addr_bytes(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Kubernetes names are DNS labels or subdomains; port names are IANA service names.
fn check_name(what: &str, value: &str, allow_empty: bool) -> Result<(), String> {
    if value.is_empty() {
        return if allow_empty {
            Ok(())
        } else {
            Err(format!("{what} is empty"))
        };
    }
    if value.len() > 253
        || !value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(format!("{what} {value:?} is not a Kubernetes name (lower-case letters, digits, '-' and '.', at most 253)"));
    }
    Ok(())
}

impl ServicePort {
    pub fn id(&self) -> ServiceId {
        ServiceId {
            family: self.family,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            protocol: self.protocol,
            port_name: self.port_name.clone(),
        }
    }

    /// Checks everything the kernel would otherwise reject halfway through a batch.
    pub fn validate(&self) -> Result<(), String> {
        let fail = |problem: String| Err(format!("{}: {problem}", self.id()));
        for (what, value, allow_empty) in [
            ("namespace", &self.namespace, false),
            ("name", &self.name, false),
            ("port name", &self.port_name, true),
        ] {
            if let Err(problem) = check_name(what, value, allow_empty) {
                return fail(problem);
            }
        }
        if self.chain_name().len() > MAX_NAME {
            return fail(format!(
                "chain name {} is longer than {MAX_NAME} bytes",
                self.chain_name()
            ));
        }
        if family_of(&self.cluster_ip) != self.family {
            return fail(format!(
                "cluster IP {} is not an {} address",
                self.cluster_ip,
                self.family.name()
            ));
        }
        if self.cluster_ip.is_unspecified() {
            return fail(format!("cluster IP {} is unspecified", self.cluster_ip));
        }
        if self.port == 0 {
            return fail("port 0 is not a valid service port".into());
        }
        if self.endpoints.len() > MAX_ENDPOINTS_PER_SERVICE {
            return fail(format!(
                "{} endpoints is more than the limit of {MAX_ENDPOINTS_PER_SERVICE}",
                self.endpoints.len()
            ));
        }
        let mut seen = HashSet::with_capacity(self.endpoints.len());
        for endpoint in &self.endpoints {
            if family_of(&endpoint.addr) != self.family || endpoint.addr.is_unspecified() {
                return fail(format!(
                    "endpoint address {} is not a usable {} address",
                    endpoint.addr,
                    self.family.name()
                ));
            }
            if endpoint.port == 0 {
                return fail(format!("endpoint {} has port 0", endpoint.addr));
            }
            if !seen.insert((endpoint.addr, endpoint.port)) {
                return fail(format!(
                    "endpoint {} port {} is listed twice",
                    endpoint.addr, endpoint.port
                ));
            }
        }
        if !self.endpoints.is_empty() {
            if let Err(problem) = self.layout() {
                return fail(problem);
            }
        }
        Ok(())
    }

    fn layout(&self) -> Result<weights::NumgenLayout, String> {
        let weights: Vec<u32> = self.endpoints.iter().map(|e| e.weight).collect();
        weights::numgen_layout(&weights).map_err(|e| e.to_string())
    }

    fn chain_name(&self) -> String {
        format!(
            "service-{}/{}/{}/{}",
            self.namespace,
            self.name,
            self.protocol.name(),
            self.port_name
        )
    }

    fn claim(&self) -> MapKey {
        (self.family, self.map_key())
    }

    fn clash_with(&self, other: &ServiceId) -> String {
        format!(
            "{} and {other} both claim {} port {}/{}",
            self.id(),
            self.cluster_ip,
            self.port,
            self.protocol.name()
        )
    }

    /// The `service-ips` / `no-endpoint-services` key: address . l4proto . port, each
    /// field padded to a 32-bit register.
    fn map_key(&self) -> Vec<u8> {
        let mut key = addr_bytes(&self.cluster_ip);
        key.extend_from_slice(&[self.protocol.number(), 0, 0, 0]);
        key.extend_from_slice(&self.port.to_be_bytes());
        key.extend_from_slice(&[0, 0]);
        key
    }
}

/// Counts of what a sync sent, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchSummary {
    pub messages: usize,
    pub bytes: usize,
    pub services: usize,
}

/// A batch ready to send, with the names its errors would refer to.
pub struct PreparedBatch {
    pub wire: Vec<u8>,
    pub tags: Vec<MessageTag>,
    pub first_seq: u32,
    pub subjects: Vec<String>,
    pub summary: BatchSummary,
}

impl PreparedBatch {
    /// Describes the object a kernel error refers to.
    pub fn describe(&self, tag: Option<MessageTag>) -> String {
        match tag {
            None => "the transaction as a whole (commit)".into(),
            Some(tag) => match self.subjects.get(tag.subject as usize) {
                Some(subject) if tag.subject != NO_SUBJECT => {
                    format!("{} for {subject}", tag.action)
                }
                _ => tag.action.to_string(),
            },
        }
    }
}

const SERVICE_IPS: &str = "service-ips";
const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
const HAIRPIN_ENDPOINTS: &str = "hairpin-endpoints";
const SERVICES_CHAIN: &str = "services";
const ENDPOINTS_CHECK_CHAIN: &str = "service-endpoints-check";
const REJECT_CHAIN: &str = "reject-chain";
const MARK_FOR_MASQUERADE_CHAIN: &str = "mark-for-masquerade";
const MASQUERADING_CHAIN: &str = "masquerading";
const FAMILIES: [Family; 2] = [Family::Ip, Family::Ip6];

/// The programmed state of waolb's tables, and the builder of the batches that change it.
pub struct Ruleset {
    table: String,
    masquerade_mark: u32,
    /// What the kernel holds, as of the last committed batch.
    applied: HashMap<ServiceId, ServicePort>,
    /// How many programmed endpoints use each address: its hairpin element lives while > 0.
    hairpin_refs: HashMap<IpAddr, u32>,
    /// Which service port holds each map key (address . protocol . port), so a partial sync
    /// checks only the ports it changes for clashes.
    claimed: HashMap<MapKey, ServiceId>,
    initialized: bool,
}

/// The effect a batch will have on [`Ruleset`] once the kernel commits it.
pub struct PendingChange {
    full: bool,
    upsert: Vec<ServicePort>,
    remove: Vec<ServiceId>,
}

/// Collects messages and the subjects their errors name.
struct Writer {
    batch: Batch,
    subjects: Vec<String>,
    services: usize,
}

impl Writer {
    fn subject(&mut self, name: String) -> u32 {
        self.subjects.push(name);
        (self.subjects.len() - 1) as u32
    }

    fn finish(self) -> PreparedBatch {
        let messages = self.batch.message_count();
        let (wire, tags, first_seq) = self.batch.finish();
        let bytes = wire.len();
        PreparedBatch {
            wire,
            tags,
            first_seq,
            subjects: self.subjects,
            summary: BatchSummary {
                messages,
                bytes,
                services: self.services,
            },
        }
    }
}

fn tag(action: &'static str, subject: u32) -> MessageTag {
    MessageTag { action, subject }
}

/// Where a service port's map element lives and what it does.
#[derive(PartialEq, Eq)]
enum Placement {
    /// In `service-ips`, jumping to the service chain.
    Balanced,
    /// In `no-endpoint-services`, rejecting.
    Rejected,
}

fn placement(service: &ServicePort) -> Placement {
    if service.endpoints.iter().any(|e| e.weight > 0) {
        Placement::Balanced
    } else {
        Placement::Rejected
    }
}

fn placement_map(p: &Placement) -> &'static str {
    match p {
        Placement::Balanced => SERVICE_IPS,
        Placement::Rejected => NO_ENDPOINT_SERVICES,
    }
}

impl Ruleset {
    pub fn new(table: &str, masquerade_bit: u32) -> Result<Ruleset, String> {
        if table.is_empty()
            || table.len() > MAX_NAME
            || table.bytes().any(|b| !b.is_ascii_graphic())
        {
            return Err(format!(
                "table name {table:?} must be 1 to {MAX_NAME} printable characters without spaces"
            ));
        }
        if masquerade_bit > 31 {
            return Err(format!(
                "masquerade bit {masquerade_bit} is out of range 0..31"
            ));
        }
        Ok(Ruleset {
            table: table.to_string(),
            masquerade_mark: 1 << masquerade_bit,
            applied: HashMap::new(),
            hairpin_refs: HashMap::new(),
            claimed: HashMap::new(),
            initialized: false,
        })
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn table_ref(&self, family: Family) -> TableRef<'_> {
        TableRef {
            family,
            name: &self.table,
        }
    }

    fn check_unique(services: &[ServicePort]) -> Result<(), String> {
        let mut ids = HashSet::with_capacity(services.len());
        let mut keys: HashMap<MapKey, ServiceId> = HashMap::with_capacity(services.len());
        for service in services {
            let id = service.id();
            if !ids.insert(id.clone()) {
                return Err(format!("{id} is given twice"));
            }
            if let Some(other) = keys.insert(service.claim(), id) {
                return Err(service.clash_with(&other));
            }
        }
        Ok(())
    }

    /// Builds the batch that makes the tables hold exactly `services`.
    pub fn prepare_full(
        &self,
        services: Vec<ServicePort>,
        first_seq: u32,
    ) -> Result<(PreparedBatch, PendingChange), String> {
        for service in &services {
            service.validate()?;
        }
        Self::check_unique(&services)?;
        let mut writer = Writer {
            batch: Batch::new(first_seq),
            subjects: Vec::new(),
            services: services.len(),
        };
        for family in FAMILIES {
            self.write_infrastructure(&mut writer, family);
        }
        let mut sorted: Vec<&ServicePort> = services.iter().collect();
        sorted.sort_by_cached_key(|s| s.id());
        let subjects: Vec<u32> = sorted
            .iter()
            .map(|s| writer.subject(s.id().to_string()))
            .collect();
        for (service, &subject) in sorted.iter().zip(&subjects) {
            if placement(service) == Placement::Balanced {
                self.write_service_chain(&mut writer, service, subject, false);
            }
        }
        self.write_elements(
            &mut writer,
            sorted
                .iter()
                .zip(&subjects)
                .map(|(s, &subject)| (*s, subject)),
            false,
        );
        let hairpin: std::collections::BTreeSet<IpAddr> = sorted
            .iter()
            .flat_map(|s| s.endpoints.iter().filter(|e| e.weight > 0).map(|e| e.addr))
            .collect();
        self.write_hairpin(&mut writer, hairpin.into_iter(), false);
        let change = PendingChange {
            full: true,
            upsert: services,
            remove: Vec::new(),
        };
        Ok((writer.finish(), change))
    }

    /// Builds the batch that adds or changes `upsert` and deletes `remove`, touching
    /// nothing else. Unchanged service ports in `upsert` cost nothing.
    pub fn prepare_partial(
        &self,
        upsert: Vec<ServicePort>,
        remove: Vec<ServiceId>,
        first_seq: u32,
    ) -> Result<(PreparedBatch, PendingChange), String> {
        if !self.initialized {
            return Err("a partial sync needs a full sync first".into());
        }
        for service in &upsert {
            service.validate()?;
        }
        let mut updated = HashSet::with_capacity(upsert.len());
        for id in upsert.iter().map(ServicePort::id) {
            if !updated.insert(id.clone()) {
                return Err(format!("{id} is given twice"));
            }
        }
        let mut removed = HashSet::with_capacity(remove.len());
        for id in &remove {
            if updated.contains(id) {
                return Err(format!("{id} is both updated and removed"));
            }
            if !removed.insert(id) {
                return Err(format!("{id} is given twice"));
            }
        }
        let upsert: Vec<ServicePort> = upsert
            .into_iter()
            .filter(|s| self.applied.get(&s.id()) != Some(s))
            .collect();
        let remove: Vec<ServiceId> = remove
            .into_iter()
            .filter(|id| self.applied.contains_key(id))
            .collect();
        // The result must stay free of address clashes: a changed port's key may be held
        // by another changed port, or by a programmed one that keeps it.
        let replaced: HashSet<ServiceId> = upsert
            .iter()
            .map(ServicePort::id)
            .chain(remove.iter().cloned())
            .collect();
        let mut claims: HashMap<MapKey, ServiceId> = HashMap::with_capacity(upsert.len());
        for service in &upsert {
            let key = service.claim();
            let holder = claims.get(&key).or_else(|| {
                self.claimed
                    .get(&key)
                    .filter(|owner| !replaced.contains(owner))
            });
            if let Some(other) = holder {
                return Err(service.clash_with(other));
            }
            claims.insert(key, service.id());
        }

        let mut writer = Writer {
            batch: Batch::new(first_seq),
            subjects: Vec::new(),
            services: upsert.len() + remove.len(),
        };
        let mut hairpin_delta: HashMap<IpAddr, i64> = HashMap::new();
        let mut count = |service: &ServicePort, sign: i64| {
            for endpoint in service.endpoints.iter().filter(|e| e.weight > 0) {
                *hairpin_delta.entry(endpoint.addr).or_default() += sign;
            }
        };
        // 1. Elements that go away or move, so no map still points at a chain we delete.
        for id in &remove {
            let old = &self.applied[id];
            let subject = writer.subject(id.to_string());
            self.write_elements(&mut writer, [(old, subject)], true);
            if placement(old) == Placement::Balanced {
                nft::delete_chain(
                    &mut writer.batch,
                    self.table_ref(old.family),
                    &old.chain_name(),
                    tag("delete chain", subject),
                );
            }
            count(old, -1);
        }
        let mut new_elements = Vec::new();
        for service in &upsert {
            let subject = writer.subject(service.id().to_string());
            let new_placement = placement(service);
            match self.applied.get(&service.id()) {
                None => {
                    if new_placement == Placement::Balanced {
                        self.write_service_chain(&mut writer, service, subject, false);
                    }
                    new_elements.push((service, subject));
                }
                Some(old) => {
                    let old_placement = placement(old);
                    let element_moves =
                        old.map_key() != service.map_key() || old_placement != new_placement;
                    if element_moves {
                        self.write_elements(&mut writer, [(old, subject)], true);
                        new_elements.push((service, subject));
                    }
                    match (
                        old_placement == Placement::Balanced,
                        new_placement == Placement::Balanced,
                    ) {
                        (true, true) => {
                            self.write_service_chain(&mut writer, service, subject, true)
                        }
                        (true, false) => nft::delete_chain(
                            &mut writer.batch,
                            self.table_ref(old.family),
                            &old.chain_name(),
                            tag("delete chain", subject),
                        ),
                        (false, true) => {
                            self.write_service_chain(&mut writer, service, subject, false)
                        }
                        (false, false) => {}
                    }
                    count(old, -1);
                }
            }
            count(service, 1);
        }
        // 2. Elements that point at the (re)written chains.
        self.write_elements(&mut writer, new_elements, false);
        // 3. Hairpin pairs whose reference count crosses zero.
        let mut gone = Vec::new();
        let mut fresh = Vec::new();
        for (addr, delta) in hairpin_delta {
            let before = i64::from(self.hairpin_refs.get(&addr).copied().unwrap_or(0));
            let after = before + delta;
            if before > 0 && after <= 0 {
                gone.push(addr);
            } else if before == 0 && after > 0 {
                fresh.push(addr);
            }
        }
        gone.sort();
        fresh.sort();
        self.write_hairpin(&mut writer, gone.into_iter(), true);
        self.write_hairpin(&mut writer, fresh.into_iter(), false);
        Ok((
            writer.finish(),
            PendingChange {
                full: false,
                upsert,
                remove,
            },
        ))
    }

    /// Records a batch the kernel committed.
    pub fn commit(&mut self, change: PendingChange) {
        if change.full {
            self.reset();
            self.initialized = true;
        }
        for id in change.remove {
            if let Some(old) = self.applied.remove(&id) {
                self.release(&old);
            }
        }
        for service in change.upsert {
            if let Some(old) = self.applied.remove(&service.id()) {
                self.release(&old);
            }
            for endpoint in service.endpoints.iter().filter(|e| e.weight > 0) {
                *self.hairpin_refs.entry(endpoint.addr).or_default() += 1;
            }
            self.claimed.insert(service.claim(), service.id());
            self.applied.insert(service.id(), service);
        }
    }

    /// Drops what a programmed service port held: its map key and its hairpin references.
    fn release(&mut self, old: &ServicePort) {
        // Another port of the same commit may have taken the key over already.
        let key = old.claim();
        if self.claimed.get(&key) == Some(&old.id()) {
            self.claimed.remove(&key);
        }
        for endpoint in old.endpoints.iter().filter(|e| e.weight > 0) {
            if let Some(count) = self.hairpin_refs.get_mut(&endpoint.addr) {
                *count -= 1;
                if *count == 0 {
                    self.hairpin_refs.remove(&endpoint.addr);
                }
            }
        }
    }

    /// Forgets what was programmed: the next sync must be full. Used after the tables were
    /// deleted or when the kernel's state is in doubt.
    pub fn reset(&mut self) {
        self.applied.clear();
        self.hairpin_refs.clear();
        self.claimed.clear();
        self.initialized = false;
    }

    /// The batch that deletes both tables, if they exist.
    pub fn prepare_delete(&self, first_seq: u32) -> PreparedBatch {
        let mut writer = Writer {
            batch: Batch::new(first_seq),
            subjects: Vec::new(),
            services: 0,
        };
        for family in FAMILIES {
            let subject = writer.subject(format!("table {} {}", family.name(), self.table));
            nft::add_table(
                &mut writer.batch,
                self.table_ref(family),
                tag("add table", subject),
            );
            nft::delete_table(
                &mut writer.batch,
                self.table_ref(family),
                tag("delete table", subject),
            );
        }
        writer.finish()
    }

    /// Recreates a family's table with the chains and maps every service relies on.
    fn write_infrastructure(&self, writer: &mut Writer, family: Family) {
        let table = self.table_ref(family);
        let subject = writer.subject(format!("table {} {}", family.name(), self.table));
        let t = |action| tag(action, subject);
        nft::add_table(&mut writer.batch, table, t("add table"));
        nft::delete_table(&mut writer.batch, table, t("delete table"));
        nft::add_table(&mut writer.batch, table, t("add table"));

        let addr = (family.addr_type(), family.addr_len());
        let service_key = [
            addr,
            (nft::TYPE_INET_PROTOCOL, 1),
            (nft::TYPE_INET_SERVICE, 2),
        ];
        for (id, name) in [(1, SERVICE_IPS), (2, NO_ENDPOINT_SERVICES)] {
            let spec = SetSpec {
                name,
                key: &service_key,
                key_byteorder: nft::BYTEORDER_BIG,
                data: SetData::Verdict,
                flags: 0,
                timeout_ms: None,
            };
            nft::add_set(&mut writer.batch, table, &spec, id, t("add map"));
        }
        let pair = [addr, addr];
        let spec = SetSpec {
            name: HAIRPIN_ENDPOINTS,
            key: &pair,
            key_byteorder: nft::BYTEORDER_BIG,
            data: SetData::None,
            flags: 0,
            timeout_ms: None,
        };
        nft::add_set(&mut writer.batch, table, &spec, 3, t("add set"));

        let hooks = [
            (
                "nat-prerouting",
                Hook {
                    kind: "nat",
                    hooknum: nft::HOOK_PREROUTING,
                    priority: -100,
                },
                SERVICES_CHAIN,
            ),
            (
                "nat-output",
                Hook {
                    kind: "nat",
                    hooknum: nft::HOOK_OUTPUT,
                    priority: -100,
                },
                SERVICES_CHAIN,
            ),
            (
                "nat-postrouting",
                Hook {
                    kind: "nat",
                    hooknum: nft::HOOK_POSTROUTING,
                    priority: 100,
                },
                MASQUERADING_CHAIN,
            ),
            // Before DNAT (-100), so a service without endpoints is refused at once.
            (
                "filter-input",
                Hook {
                    kind: "filter",
                    hooknum: nft::HOOK_INPUT,
                    priority: -110,
                },
                ENDPOINTS_CHECK_CHAIN,
            ),
            (
                "filter-forward",
                Hook {
                    kind: "filter",
                    hooknum: nft::HOOK_FORWARD,
                    priority: -110,
                },
                ENDPOINTS_CHECK_CHAIN,
            ),
            (
                "filter-output",
                Hook {
                    kind: "filter",
                    hooknum: nft::HOOK_OUTPUT,
                    priority: -110,
                },
                ENDPOINTS_CHECK_CHAIN,
            ),
        ];
        for name in [
            SERVICES_CHAIN,
            ENDPOINTS_CHECK_CHAIN,
            REJECT_CHAIN,
            MARK_FOR_MASQUERADE_CHAIN,
            MASQUERADING_CHAIN,
        ] {
            nft::add_chain(&mut writer.batch, table, name, None, t("add chain"));
        }
        for (name, hook, _) in hooks {
            nft::add_chain(
                &mut writer.batch,
                table,
                name,
                Some(hook),
                t("add base chain"),
            );
        }
        for (name, hook, target) in hooks {
            let mut rule = RuleBuilder::new(&mut writer.batch, table, name, t("add rule"));
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
        for (chain, map) in [
            (SERVICES_CHAIN, SERVICE_IPS),
            (ENDPOINTS_CHECK_CHAIN, NO_ENDPOINT_SERVICES),
        ] {
            let mut rule = RuleBuilder::new(&mut writer.batch, table, chain, t("add rule"));
            load_service_key(&mut rule, family);
            rule.lookup(map, nft::REG32_00, Some(nft::REG_VERDICT), 0);
            rule.finish(None);
        }
        let (reject_kind, reject_code) = match family {
            Family::Ip => (nft::REJECT_ICMP_UNREACH, nft::ICMP_PORT_UNREACH),
            Family::Ip6 => (nft::REJECT_ICMP_UNREACH, nft::ICMPV6_PORT_UNREACH),
        };
        let mut rule = RuleBuilder::new(&mut writer.batch, table, REJECT_CHAIN, t("add rule"));
        rule.reject(reject_kind, reject_code);
        rule.finish(None);

        let mark = self.masquerade_mark;
        let mut rule = RuleBuilder::new(
            &mut writer.batch,
            table,
            MARK_FOR_MASQUERADE_CHAIN,
            t("add rule"),
        );
        rule.meta_load(nft::META_MARK, nft::REG32_00)
            .bitwise(
                nft::REG32_00,
                nft::REG32_00,
                &(!mark).to_ne_bytes(),
                &mark.to_ne_bytes(),
            )
            .meta_set(nft::META_MARK, nft::REG32_00);
        rule.finish(None);

        // A pod that reached itself through its service: source and new destination match.
        let second = nft::reg_after(nft::REG32_00, family.addr_len());
        let mut rule =
            RuleBuilder::new(&mut writer.batch, table, MASQUERADING_CHAIN, t("add rule"));
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
        let mut rule =
            RuleBuilder::new(&mut writer.batch, table, MASQUERADING_CHAIN, t("add rule"));
        rule.meta_load(nft::META_MARK, nft::REG32_00)
            .bitwise(nft::REG32_00, nft::REG32_00, &mark.to_ne_bytes(), &[0; 4])
            .cmp(nft::CMP_EQ, nft::REG32_00, &[0; 4])
            .verdict(Verdict::Return);
        rule.finish(None);
        let mut rule =
            RuleBuilder::new(&mut writer.batch, table, MASQUERADING_CHAIN, t("add rule"));
        rule.meta_load(nft::META_MARK, nft::REG32_00)
            .bitwise(
                nft::REG32_00,
                nft::REG32_00,
                &[0xff; 4],
                &mark.to_ne_bytes(),
            )
            .meta_set(nft::META_MARK, nft::REG32_00);
        rule.finish(None);
        let mut rule =
            RuleBuilder::new(&mut writer.batch, table, MASQUERADING_CHAIN, t("add rule"));
        rule.masquerade(nft::NAT_RANGE_PROTO_RANDOM_FULLY);
        rule.finish(None);
    }

    /// The service chain: one rule per endpoint with weight > 0, in layout order.
    fn write_service_chain(
        &self,
        writer: &mut Writer,
        service: &ServicePort,
        subject: u32,
        existing: bool,
    ) {
        let table = self.table_ref(service.family);
        let chain = service.chain_name();
        if existing {
            nft::flush_chain(
                &mut writer.batch,
                table,
                &chain,
                tag("flush chain", subject),
            );
        } else {
            nft::add_chain(
                &mut writer.batch,
                table,
                &chain,
                None,
                tag("add chain", subject),
            );
        }
        let layout = service.layout().expect("validated");
        let total = layout.modulus();
        let port_reg = nft::reg_after(nft::REG32_00, service.family.addr_len());
        for step in layout.chain() {
            let endpoint = &service.endpoints[step.endpoint];
            let mut rule =
                RuleBuilder::new(&mut writer.batch, table, &chain, tag("add rule", subject));
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
            let comment = format!(
                "weight {} of {total} ({:.1}%), range {first}-{last}",
                step.weight,
                100.0 * f64::from(step.weight) / f64::from(total)
            );
            rule.finish(Some(&comment));
        }
    }

    /// Map elements of services: balanced ones jump to their chain, the others reject.
    fn write_elements<'s>(
        &self,
        writer: &mut Writer,
        services: impl IntoIterator<Item = (&'s ServicePort, u32)>,
        delete: bool,
    ) {
        let services: Vec<(&ServicePort, u32)> = services.into_iter().collect();
        for family in FAMILIES {
            for target in [Placement::Balanced, Placement::Rejected] {
                let chosen: Vec<(Vec<u8>, String, u32)> = services
                    .iter()
                    .filter(|(s, _)| s.family == family && placement(s) == target)
                    .map(|(s, subject)| (s.map_key(), s.chain_name(), *subject))
                    .collect();
                if chosen.is_empty() {
                    continue;
                }
                let action = if delete {
                    "delete map element"
                } else {
                    "add map element"
                };
                let elements = chosen.iter().map(|(key, chain, subject)| {
                    let verdict = match target {
                        Placement::Balanced => Verdict::Goto(chain),
                        Placement::Rejected => Verdict::Goto(REJECT_CHAIN),
                    };
                    let data = if delete {
                        ElementData::None
                    } else {
                        ElementData::Verdict(verdict)
                    };
                    (
                        Element {
                            key,
                            data,
                            interval_end: false,
                            timeout_ms: None,
                        },
                        tag(action, *subject),
                    )
                });
                nft::set_elements(
                    &mut writer.batch,
                    self.table_ref(family),
                    placement_map(&target),
                    delete,
                    elements,
                );
            }
        }
    }

    fn write_hairpin(
        &self,
        writer: &mut Writer,
        addrs: impl Iterator<Item = IpAddr>,
        delete: bool,
    ) {
        let mut by_family: BTreeMap<Family, Vec<Vec<u8>>> = BTreeMap::new();
        for addr in addrs {
            let mut key = addr_bytes(&addr);
            key.extend_from_slice(&addr_bytes(&addr));
            by_family.entry(family_of(&addr)).or_default().push(key);
        }
        if by_family.is_empty() {
            return;
        }
        let subject = writer.subject(format!("set {HAIRPIN_ENDPOINTS}"));
        let action = if delete {
            "delete hairpin element"
        } else {
            "add hairpin element"
        };
        for (family, keys) in by_family {
            let elements = keys.iter().map(|key| {
                (
                    Element {
                        key,
                        data: ElementData::None,
                        interval_end: false,
                        timeout_ms: None,
                    },
                    tag(action, subject),
                )
            });
            nft::set_elements(
                &mut writer.batch,
                self.table_ref(family),
                HAIRPIN_ENDPOINTS,
                delete,
                elements,
            );
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, vip: &str, endpoints: &[(&str, u16, u32)]) -> ServicePort {
        ServicePort {
            namespace: "default".into(),
            name: name.into(),
            port_name: "http".into(),
            protocol: Protocol::Tcp,
            family: Family::Ip,
            cluster_ip: vip.parse().unwrap(),
            port: 80,
            endpoints: endpoints
                .iter()
                .map(|&(a, port, weight)| Endpoint {
                    addr: a.parse().unwrap(),
                    port,
                    weight,
                })
                .collect(),
        }
    }

    #[test]
    fn validation_names_the_service_and_the_problem() {
        let bad = [
            (service("a", "10.0.0.1", &[("10.1.0.1", 0, 1)]), "port 0"),
            (
                service("a", "10.0.0.1", &[("fd00::1", 80, 1)]),
                "not a usable ip address",
            ),
            (
                service("a", "10.0.0.1", &[("10.1.0.1", 80, 1), ("10.1.0.1", 80, 2)]),
                "listed twice",
            ),
            (service("a", "0.0.0.0", &[]), "unspecified"),
            (service("A_B", "10.0.0.1", &[]), "not a Kubernetes name"),
            (
                service(
                    "a",
                    "10.0.0.1",
                    &[("10.1.0.1", 80, u32::MAX), ("10.1.0.2", 80, 2)],
                ),
                "",
            ),
        ];
        for (svc, needle) in bad {
            let err = svc.validate().unwrap_err();
            assert!(err.contains(needle), "{err}");
            assert!(err.starts_with("service default/"), "{err}");
        }
        assert!(service("a", "10.0.0.1", &[("10.1.0.1", 80, 1)])
            .validate()
            .is_ok());
        assert!(service("a", "10.0.0.1", &[]).validate().is_ok());
    }

    #[test]
    fn full_sync_rejects_clashing_cluster_ips() {
        let rules = Ruleset::new("t", 14).unwrap();
        let err = rules
            .prepare_full(
                vec![service("a", "10.0.0.1", &[]), service("b", "10.0.0.1", &[])],
                1,
            )
            .err()
            .unwrap();
        assert!(err.contains("both claim 10.0.0.1"), "{err}");
    }

    #[test]
    fn partial_sync_skips_unchanged_services_and_needs_a_full_sync_first() {
        let mut rules = Ruleset::new("t", 14).unwrap();
        let a = service("a", "10.0.0.1", &[("10.1.0.1", 80, 1)]);
        assert!(rules.prepare_partial(vec![a.clone()], vec![], 1).is_err());
        let (_, change) = rules.prepare_full(vec![a.clone()], 1).unwrap();
        rules.commit(change);
        let (batch, _) = rules.prepare_partial(vec![a.clone()], vec![], 1).unwrap();
        assert_eq!(batch.summary.messages, 0);
        let mut changed = a.clone();
        changed.endpoints[0].weight = 5;
        let (batch, _) = rules.prepare_partial(vec![changed], vec![], 1).unwrap();
        // flush + one rule; the map element and hairpin pair stay.
        assert_eq!(batch.summary.messages, 2);
    }

    #[test]
    fn partial_sync_checks_clashes_against_the_ports_that_keep_their_address() {
        let mut rules = Ruleset::new("t", 14).unwrap();
        let a = service("a", "10.0.0.1", &[("10.1.0.1", 80, 1)]);
        let b = service("b", "10.0.0.2", &[("10.1.0.2", 80, 1)]);
        let (_, change) = rules.prepare_full(vec![a.clone(), b.clone()], 1).unwrap();
        rules.commit(change);
        let on_a = service("c", "10.0.0.1", &[]);
        let err = rules
            .prepare_partial(vec![on_a.clone()], vec![], 1)
            .err()
            .unwrap();
        assert!(err.contains("both claim 10.0.0.1"), "{err}");
        // An unchanged copy of `a` keeps its address too.
        let err = rules
            .prepare_partial(vec![a.clone(), on_a.clone()], vec![], 1)
            .err()
            .unwrap();
        assert!(err.contains("both claim 10.0.0.1"), "{err}");
        // Once `a` goes, or moves, its address is free; two ports may swap addresses.
        assert!(rules
            .prepare_partial(vec![on_a.clone()], vec![a.id()], 1)
            .is_ok());
        let (a_moved, b_moved) = (service("a", "10.0.0.2", &[]), service("b", "10.0.0.1", &[]));
        let (_, change) = rules
            .prepare_partial(vec![a_moved, b_moved], vec![], 1)
            .unwrap();
        rules.commit(change);
        let err = rules
            .prepare_partial(vec![service("c", "10.0.0.2", &[])], vec![], 1)
            .err()
            .unwrap();
        assert!(err.contains("service default/a:http"), "{err}");
    }

    #[test]
    fn hairpin_pairs_are_reference_counted_across_services() {
        let mut rules = Ruleset::new("t", 14).unwrap();
        let a = service("a", "10.0.0.1", &[("10.1.0.1", 80, 1)]);
        let b = service("b", "10.0.0.2", &[("10.1.0.1", 81, 1)]);
        let (_, change) = rules.prepare_full(vec![a.clone(), b.clone()], 1).unwrap();
        rules.commit(change);
        assert_eq!(
            rules.hairpin_refs[&"10.1.0.1".parse::<IpAddr>().unwrap()],
            2
        );
        // Removing one user keeps the pair: element delete + chain delete only.
        let (batch, change) = rules.prepare_partial(vec![], vec![a.id()], 1).unwrap();
        assert_eq!(batch.summary.messages, 2);
        rules.commit(change);
        let (batch, _) = rules.prepare_partial(vec![], vec![b.id()], 1).unwrap();
        assert_eq!(batch.summary.messages, 3);
    }
}
