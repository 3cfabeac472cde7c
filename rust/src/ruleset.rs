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
//!
//! # Why service chains are spread over tables
//! On every commit that adds a rule with a DNAT (or any expression with a `validate` hook)
//! or a map element that jumps, nf_tables re-validates the whole table: it walks from each
//! base chain through `service-ips` into every service chain and every rule. With 10 000
//! services x 10 endpoints in one table that is 60-70 ms for a one-service change. The
//! kernel keeps that state per table (since 6.4; stable kernels got it in September 2023,
//! for example 5.15.133), so a family's balanced service chains are spread over about
//! `load / SHARD_LOAD` tables (see `Shards`): the main table and `<table>-shard-<n>`, each
//! with its own `service-ips`, `services` chain and nat base chains. A change re-validates
//! only its own table. NAT consults the tables' nat chains in turn for a new connection and
//! stops at the first that translates it; everything else (reject, hairpin, masquerade)
//! stays in the main table.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use crate::netlink::{Batch, MessageTag, NO_SUBJECT};
use crate::nft::{
    self, DumpedRule, Element, ElementData, Family, Hook, RuleBuilder, SetData, SetSpec, TableRef,
    Verdict,
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

impl ServiceId {
    fn chain_name(&self) -> String {
        format!(
            "service-{}/{}/{}/{}",
            self.namespace,
            self.name,
            self.protocol.name(),
            self.port_name
        )
    }
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
        self.id().chain_name()
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

/// One endpoint rule as the kernel holds it, read back from a service chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgrammedEndpoint {
    pub family: Family,
    pub namespace: String,
    pub name: String,
    pub protocol: Protocol,
    pub port_name: String,
    /// Where the rule's DNAT sends connections.
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u32,
    pub total: u32,
}

impl ProgrammedEndpoint {
    /// The service port it belongs to, in the order [`Dataplane::read_endpoints`] sorts by.
    ///
    /// [`Dataplane::read_endpoints`]: crate::dataplane::Dataplane::read_endpoints
    pub fn service(&self) -> (Family, &str, &str, Protocol, &str) {
        (
            self.family,
            &self.namespace,
            &self.name,
            self.protocol,
            &self.port_name,
        )
    }
}

/// Reads an endpoint rule of a service chain back: the service from the chain's name, the
/// endpoint from the DNAT the rule performs, weight and total from its comment. Anything
/// else (a rule an operator added, another chain) gives `None`.
pub fn parse_endpoint_rule(family: Family, rule: &DumpedRule<'_>) -> Option<ProgrammedEndpoint> {
    let mut parts = rule.chain.strip_prefix("service-")?.split('/');
    let (namespace, name, protocol, port_name) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let (weight, total) = parse_endpoint_comment(rule.comment?)?;
    let mut registers = HashMap::new();
    let mut target = None;
    for &(expression, data) in &rule.expressions {
        match expression {
            "immediate" => {
                let (reg, value) = nft::immediate_value(data)?;
                registers.insert(reg, value);
            }
            "nat" => {
                let (kind, addr_reg, port_reg) = nft::nat_registers(data)?;
                if kind != nft::NAT_DNAT {
                    return None;
                }
                target = Some((*registers.get(&addr_reg)?, *registers.get(&port_reg?)?));
            }
            _ => {}
        }
    }
    let (addr, port) = target?;
    let addr = match (family, addr.len()) {
        (Family::Ip, 4) => IpAddr::from(<[u8; 4]>::try_from(addr).ok()?),
        (Family::Ip6, 16) => IpAddr::from(<[u8; 16]>::try_from(addr).ok()?),
        _ => return None,
    };
    Some(ProgrammedEndpoint {
        family,
        namespace: namespace.to_string(),
        name: name.to_string(),
        protocol: Protocol::parse(protocol).ok()?,
        port_name: port_name.to_string(),
        addr,
        port: u16::from_be_bytes(port.get(..2)?.try_into().ok()?),
        weight,
        total,
    })
}

/// (weight, total) from a comment [`endpoint_comment`] wrote.
fn parse_endpoint_comment(comment: &str) -> Option<(u32, u32)> {
    let (_, figures) = comment.strip_prefix("endpoint ")?.split_once(", weight ")?;
    let (weight, rest) = figures.split_once(" of ")?;
    let (total, _) = rest.split_once(' ')?;
    Some((weight.parse().ok()?, total.parse().ok()?))
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
pub const FAMILIES: [Family; 2] = [Family::Ip, Family::Ip6];
/// How many service chains and endpoint rules one table holds before a family's services
/// are spread over more tables. nf_tables re-validates every chain of a table on each commit
/// that adds a DNAT rule: about 4 ms at this size (2 ms at half of it), while 27 000 take
/// 15 ms and 110 000 (10 000 services x 10 endpoints) 60-70 ms, as the walk no longer fits
/// the CPU caches. Each table costs a new connection that it does not translate about
/// 0.12 us (one more nat chain and map lookup), and a full sync a little: every message of a
/// batch looks its table up by name in a list that holds the old and the new tables.
const SHARD_LOAD: usize = 16_384;
/// The most tables one family's service chains are spread over.
pub const MAX_SHARDS: u32 = 64;

/// How many tables each family's service chains are spread over, and which one holds a
/// service port. Table 0 is the main table; the others are named `<table>-shard-<n>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shards {
    ip: u32,
    ip6: u32,
}

impl Shards {
    /// As many tables as keep each near [`SHARD_LOAD`], for the balanced ports of `services`.
    fn for_services(services: &[ServicePort]) -> Shards {
        let count = |family: Family| {
            let load: usize = services
                .iter()
                .filter(|s| s.family == family && placement(s) == Placement::Balanced)
                .map(|s| 1 + s.endpoints.iter().filter(|e| e.weight > 0).count())
                .sum();
            Shards::count_for(load)
        };
        Shards {
            ip: count(Family::Ip),
            ip6: count(Family::Ip6),
        }
    }

    /// Tables for `load` chains and rules.
    fn count_for(load: usize) -> u32 {
        load.div_ceil(SHARD_LOAD).clamp(1, MAX_SHARDS as usize) as u32
    }

    fn count(&self, family: Family) -> u32 {
        match family {
            Family::Ip => self.ip,
            Family::Ip6 => self.ip6,
        }
    }

    /// The table of a service port: its chain name's FNV-1a hash, so that every process
    /// places it alike.
    fn of(&self, id: &ServiceId) -> u32 {
        let hash = id
            .chain_name()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
            });
        (hash % u64::from(self.count(id.family))) as u32
    }
}

/// The programmed state of waolb's tables, and the builder of the batches that change it.
pub struct Ruleset {
    /// The main table's name, then the shard tables' (index = shard).
    tables: Vec<String>,
    masquerade_mark: u32,
    /// How the programmed service chains are spread over tables.
    shards: Shards,
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
    /// For a full sync, the new spread of service chains over tables.
    full: Option<Shards>,
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
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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
        let tables: Vec<String> = std::iter::once(table.to_string())
            .chain((1..MAX_SHARDS).map(|shard| format!("{table}-shard-{shard}")))
            .collect();
        let longest = MAX_NAME - (tables[tables.len() - 1].len() - table.len());
        if table.is_empty() || table.len() > longest || table.bytes().any(|b| !b.is_ascii_graphic())
        {
            return Err(format!(
                "table name {table:?} must be 1 to {longest} printable characters without spaces"
            ));
        }
        if masquerade_bit > 31 {
            return Err(format!(
                "masquerade bit {masquerade_bit} is out of range 0..31"
            ));
        }
        Ok(Ruleset {
            tables,
            masquerade_mark: 1 << masquerade_bit,
            shards: Shards { ip: 1, ip6: 1 },
            applied: HashMap::new(),
            hairpin_refs: HashMap::new(),
            claimed: HashMap::new(),
            initialized: false,
        })
    }

    pub fn table(&self) -> &str {
        &self.tables[0]
    }

    /// The shard a table of that name holds (0: the main table), if it is one of this
    /// ruleset's tables.
    pub fn shard_of_table(&self, name: &str) -> Option<u32> {
        self.tables
            .iter()
            .position(|table| table == name)
            .map(|shard| shard as u32)
    }

    pub fn table_name(&self, shard: u32) -> &str {
        &self.tables[shard as usize]
    }

    fn table_ref(&self, family: Family, shard: u32) -> TableRef<'_> {
        TableRef {
            family,
            name: &self.tables[shard as usize],
        }
    }

    fn table_subject(&self, writer: &mut Writer, family: Family, shard: u32) -> u32 {
        writer.subject(format!(
            "table {} {}",
            family.name(),
            self.tables[shard as usize]
        ))
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

    /// Builds the batch that makes the tables hold exactly `services`. `existing` lists the
    /// tables there now, as (family, shard): those the new layout does not use go too.
    pub fn prepare_full(
        &self,
        services: Vec<ServicePort>,
        existing: &[(Family, u32)],
        first_seq: u32,
    ) -> Result<(PreparedBatch, PendingChange), String> {
        for service in &services {
            service.validate()?;
        }
        Self::check_unique(&services)?;
        let shards = Shards::for_services(&services);
        let mut writer = Writer {
            batch: Batch::new(first_seq),
            subjects: Vec::new(),
            services: services.len(),
        };
        for family in FAMILIES {
            self.write_infrastructure(&mut writer, family, shards);
        }
        let mut sorted: Vec<&ServicePort> = services.iter().collect();
        sorted.sort_by_cached_key(|s| s.id());
        let subjects: Vec<u32> = sorted
            .iter()
            .map(|s| writer.subject(s.id().to_string()))
            .collect();
        for (service, &subject) in sorted.iter().zip(&subjects) {
            if placement(service) == Placement::Balanced {
                self.write_service_chain(&mut writer, service, subject, false, shards);
            }
        }
        self.write_elements(
            &mut writer,
            sorted
                .iter()
                .zip(&subjects)
                .map(|(s, &subject)| (*s, subject)),
            false,
            shards,
        );
        let hairpin: std::collections::BTreeSet<IpAddr> = sorted
            .iter()
            .flat_map(|s| s.endpoints.iter().filter(|e| e.weight > 0).map(|e| e.addr))
            .collect();
        self.write_hairpin(&mut writer, hairpin.into_iter(), false);
        // Last: until the commit, a deleted table stays on the kernel's list of tables, which
        // every message of the batch searches for its table by name.
        let unused = existing
            .iter()
            .copied()
            .filter(|&(family, shard)| shard >= shards.count(family));
        self.delete_tables(&mut writer, unused);
        let change = PendingChange {
            full: Some(shards),
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
        let shards = self.shards;
        // 1. Elements that go away or move, so no map still points at a chain we delete.
        for id in &remove {
            let old = &self.applied[id];
            let subject = writer.subject(id.to_string());
            self.write_elements(&mut writer, [(old, subject)], true, shards);
            if placement(old) == Placement::Balanced {
                self.delete_service_chain(&mut writer, old, subject);
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
                        self.write_service_chain(&mut writer, service, subject, false, shards);
                    }
                    new_elements.push((service, subject));
                }
                Some(old) => {
                    let old_placement = placement(old);
                    let element_moves =
                        old.map_key() != service.map_key() || old_placement != new_placement;
                    if element_moves {
                        self.write_elements(&mut writer, [(old, subject)], true, shards);
                        new_elements.push((service, subject));
                    }
                    match (
                        old_placement == Placement::Balanced,
                        new_placement == Placement::Balanced,
                    ) {
                        (true, true) => {
                            self.write_service_chain(&mut writer, service, subject, true, shards)
                        }
                        (true, false) => self.delete_service_chain(&mut writer, old, subject),
                        (false, true) => {
                            self.write_service_chain(&mut writer, service, subject, false, shards)
                        }
                        (false, false) => {}
                    }
                    count(old, -1);
                }
            }
            count(service, 1);
        }
        // 2. Elements that point at the (re)written chains.
        self.write_elements(&mut writer, new_elements, false, shards);
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
                full: None,
                upsert,
                remove,
            },
        ))
    }

    /// Records a batch the kernel committed.
    pub fn commit(&mut self, change: PendingChange) {
        if let Some(shards) = change.full {
            self.reset();
            self.initialized = true;
            self.shards = shards;
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

    /// The batch that deletes both main tables, if they exist, and the shard tables in
    /// `existing` (family, shard).
    pub fn prepare_delete(&self, existing: &[(Family, u32)], first_seq: u32) -> PreparedBatch {
        let mut writer = Writer {
            batch: Batch::new(first_seq),
            subjects: Vec::new(),
            services: 0,
        };
        let shards = existing.iter().copied().filter(|&(_, shard)| shard > 0);
        self.delete_tables(
            &mut writer,
            FAMILIES.map(|family| (family, 0)).into_iter().chain(shards),
        );
        writer.finish()
    }

    /// Deletes tables given as (family, shard). "add; delete" works on every kernel whether
    /// or not a table is still there; deleting a table also deletes everything in it.
    fn delete_tables(&self, writer: &mut Writer, tables: impl IntoIterator<Item = (Family, u32)>) {
        for (family, shard) in tables {
            let subject = self.table_subject(writer, family, shard);
            let table = self.table_ref(family, shard);
            nft::add_table(&mut writer.batch, table, tag("add table", subject));
            nft::delete_table(&mut writer.batch, table, tag("delete table", subject));
        }
    }

    /// A fresh table that dispatches to service chains: its `service-ips` map, the
    /// `services` chain that looks it up, and the nat hooks that jump there. The kernel's
    /// NAT stops at the first table that translated a new connection, so a port is looked
    /// up in the tables in turn until the one that holds it.
    fn write_dispatch(&self, writer: &mut Writer, family: Family, shard: u32) {
        let table = self.table_ref(family, shard);
        let subject = self.table_subject(writer, family, shard);
        let t = |action| tag(action, subject);
        nft::add_table(&mut writer.batch, table, t("add table"));
        nft::delete_table(&mut writer.batch, table, t("delete table"));
        nft::add_table(&mut writer.batch, table, t("add table"));
        add_service_map(
            &mut writer.batch,
            table,
            family,
            SERVICE_IPS,
            1,
            t("add map"),
        );
        nft::add_chain(
            &mut writer.batch,
            table,
            SERVICES_CHAIN,
            None,
            t("add chain"),
        );
        for (name, hooknum) in [
            ("nat-prerouting", nft::HOOK_PREROUTING),
            ("nat-output", nft::HOOK_OUTPUT),
        ] {
            let hook = Hook {
                kind: "nat",
                hooknum,
                priority: -100,
            };
            nft::add_chain(
                &mut writer.batch,
                table,
                name,
                Some(hook),
                t("add base chain"),
            );
            let mut rule = RuleBuilder::new(&mut writer.batch, table, name, t("add rule"));
            rule.verdict(Verdict::Jump(SERVICES_CHAIN));
            rule.finish(None);
        }
        let mut rule = RuleBuilder::new(&mut writer.batch, table, SERVICES_CHAIN, t("add rule"));
        load_service_key(&mut rule, family);
        rule.lookup(SERVICE_IPS, nft::REG32_00, Some(nft::REG_VERDICT), 0);
        rule.finish(None);
    }

    /// Recreates a family's tables: the main table with the chains and maps every service
    /// relies on, and the shard tables its service chains are spread over. The batch ends
    /// by deleting the shard tables the new layout does not use.
    fn write_infrastructure(&self, writer: &mut Writer, family: Family, shards: Shards) {
        for shard in 0..shards.count(family) {
            self.write_dispatch(writer, family, shard);
        }
        let table = self.table_ref(family, 0);
        let subject = self.table_subject(writer, family, 0);
        let t = |action| tag(action, subject);
        add_service_map(
            &mut writer.batch,
            table,
            family,
            NO_ENDPOINT_SERVICES,
            2,
            t("add map"),
        );
        let addr = (family.addr_type(), family.addr_len());
        let spec = SetSpec {
            name: HAIRPIN_ENDPOINTS,
            key: &[addr, addr],
            key_byteorder: nft::BYTEORDER_BIG,
            data: SetData::None,
            flags: 0,
            timeout_ms: None,
        };
        nft::add_set(&mut writer.batch, table, &spec, 3, t("add set"));

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
        let mut rule = RuleBuilder::new(
            &mut writer.batch,
            table,
            ENDPOINTS_CHECK_CHAIN,
            t("add rule"),
        );
        load_service_key(&mut rule, family);
        rule.lookup(
            NO_ENDPOINT_SERVICES,
            nft::REG32_00,
            Some(nft::REG_VERDICT),
            0,
        );
        rule.finish(None);
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
        shards: Shards,
    ) {
        let table = self.table_ref(service.family, shards.of(&service.id()));
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
            rule.finish(Some(&endpoint_comment(
                endpoint,
                step.weight,
                total,
                first,
                last,
            )));
        }
    }

    fn delete_service_chain(&self, writer: &mut Writer, service: &ServicePort, subject: u32) {
        let id = service.id();
        nft::delete_chain(
            &mut writer.batch,
            self.table_ref(service.family, self.shards.of(&id)),
            &id.chain_name(),
            tag("delete chain", subject),
        );
    }

    /// Map elements of services: balanced ones jump to their chain from their shard's
    /// `service-ips`, the others reject from the main table's `no-endpoint-services`.
    fn write_elements<'s>(
        &self,
        writer: &mut Writer,
        services: impl IntoIterator<Item = (&'s ServicePort, u32)>,
        delete: bool,
        shards: Shards,
    ) {
        // One element list per (family, shard, map), in a stable order.
        let mut groups = BTreeMap::<_, Vec<_>>::new();
        for (service, subject) in services {
            let target = placement(service);
            let shard = match target {
                Placement::Balanced => shards.of(&service.id()),
                Placement::Rejected => 0,
            };
            groups
                .entry((service.family, shard, target))
                .or_default()
                .push((service, subject));
        }
        let action = if delete {
            "delete map element"
        } else {
            "add map element"
        };
        for ((family, shard, target), members) in groups {
            let chosen: Vec<(Vec<u8>, String, u32)> = members
                .iter()
                .map(|&(s, subject): &(&ServicePort, u32)| (s.map_key(), s.chain_name(), subject))
                .collect();
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
                self.table_ref(family, shard),
                placement_map(&target),
                delete,
                elements,
            );
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
                self.table_ref(family, 0),
                HAIRPIN_ENDPOINTS,
                delete,
                elements,
            );
        }
    }
}

/// What an endpoint rule says about itself in `nft list`, and what [`parse_endpoint_comment`]
/// reads back: `endpoint ADDR:PORT, weight W of T (x%), range a-b`. At most 127 bytes (an
/// IPv6 address, five 10-digit numbers), so nft never cuts it.
fn endpoint_comment(endpoint: &Endpoint, weight: u32, total: u32, first: u32, last: u32) -> String {
    format!(
        "endpoint {}, weight {weight} of {total} ({:.1}%), range {first}-{last}",
        std::net::SocketAddr::new(endpoint.addr, endpoint.port),
        100.0 * f64::from(weight) / f64::from(total)
    )
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
fn add_service_map(
    batch: &mut Batch,
    table: TableRef<'_>,
    family: Family,
    name: &str,
    id: u32,
    tag: MessageTag,
) {
    let spec = SetSpec {
        name,
        key: &service_key(family),
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
                &[],
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
        let (_, change) = rules.prepare_full(vec![a.clone()], &[], 1).unwrap();
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
        let (_, change) = rules
            .prepare_full(vec![a.clone(), b.clone()], &[], 1)
            .unwrap();
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

    /// A port of `name` with `count` endpoints of weight 1 from 10.64.0.1 up.
    fn wide(name: &str, vip: &str, count: u32) -> ServicePort {
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

    #[test]
    fn service_chains_spread_over_more_tables_as_the_load_grows() {
        let count = |services: &[ServicePort]| Shards::for_services(services).count(Family::Ip);
        // A chain and its rules count; weight-0 endpoints and ports without endpoints do not.
        let full = wide("a", "10.0.0.1", SHARD_LOAD as u32 - 1);
        assert_eq!(count(std::slice::from_ref(&full)), 1);
        let mut idle = wide("b", "10.0.0.2", 5);
        idle.endpoints.iter_mut().for_each(|e| e.weight = 0);
        assert_eq!(
            count(&[full.clone(), idle, service("c", "10.0.0.3", &[])]),
            1
        );
        assert_eq!(count(&[full.clone(), wide("b", "10.0.0.2", 1)]), 2);
        let mut other_family = wide("b", "fd00::2", 0);
        other_family.family = Family::Ip6;
        other_family.cluster_ip = "fd00::2".parse().unwrap();
        other_family.endpoints.push(Endpoint {
            addr: "fd00::1:1".parse().unwrap(),
            port: 80,
            weight: 1,
        });
        let both = Shards::for_services(&[full, other_family]);
        assert_eq!((both.count(Family::Ip), both.count(Family::Ip6)), (1, 1));
        assert_eq!(Shards::count_for(usize::MAX), MAX_SHARDS);
    }

    #[test]
    fn a_port_always_lands_in_the_same_table() {
        let shards = Shards { ip: 7, ip6: 1 };
        let mut seen = [0; 7];
        for i in 0..7000 {
            let id = service(&format!("s{i}"), "10.0.0.1", &[]).id();
            let shard = shards.of(&id);
            assert_eq!(shard, shards.of(&id));
            seen[shard as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
        // Pinned: another process, or another release, must place it alike; the family
        // only decides how many tables there are.
        let web = service("web", "10.0.0.1", &[]).id();
        assert_eq!(shards.of(&web), 1);
        let web6 = ServiceId {
            family: Family::Ip6,
            ..web
        };
        assert_eq!(Shards { ip: 1, ip6: 7 }.of(&web6), 1);
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
        let a = service("a", "10.0.0.1", &[("10.1.0.1", 80, 1)]);
        let (batch, _) = rules.prepare_full(vec![a], &existing, 1).unwrap();
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
        let (batch, change) = rules.prepare_full(services.clone(), &[], 1).unwrap();
        rules.commit(change);
        assert_eq!(rules.shards.count(Family::Ip), 3);
        for table in ["t", "t-shard-1", "t-shard-2"] {
            assert!(mentions(&batch.wire, table), "{table}");
        }
        let mut changed = services[0].clone();
        changed.endpoints[0].weight = 3;
        let shard = rules.shards.of(&changed.id());
        let (batch, _) = rules.prepare_partial(vec![changed], vec![], 1).unwrap();
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
    fn endpoint_comments_fit_nft_and_read_back() {
        let endpoint = Endpoint {
            addr: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe".parse().unwrap(),
            port: 65535,
            weight: 1,
        };
        let longest = endpoint_comment(
            &endpoint,
            4_000_000_000,
            u32::MAX,
            4_000_000_000,
            4_100_000_000,
        );
        assert!(longest.len() < nft::MAX_COMMENT, "{} bytes", longest.len());
        assert!(longest.starts_with("endpoint [ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535, "));
        assert_eq!(
            parse_endpoint_comment(&longest),
            Some((4_000_000_000, u32::MAX))
        );
        let v4 = Endpoint {
            addr: "10.244.1.5".parse().unwrap(),
            port: 8080,
            weight: 100,
        };
        let comment = endpoint_comment(&v4, 100, 247, 0, 99);
        assert_eq!(
            comment,
            "endpoint 10.244.1.5:8080, weight 100 of 247 (40.5%), range 0-99"
        );
        assert_eq!(parse_endpoint_comment(&comment), Some((100, 247)));
        assert_eq!(
            parse_endpoint_comment("weight 100 of 247 (40.5%), range 0-99"),
            None
        );
    }

    #[test]
    fn hairpin_pairs_are_reference_counted_across_services() {
        let mut rules = Ruleset::new("t", 14).unwrap();
        let a = service("a", "10.0.0.1", &[("10.1.0.1", 80, 1)]);
        let b = service("b", "10.0.0.2", &[("10.1.0.1", 81, 1)]);
        let (_, change) = rules
            .prepare_full(vec![a.clone(), b.clone()], &[], 1)
            .unwrap();
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
