//! The desired state (service ports and their weighted endpoints) and the nf_tables batch
//! that programs it.
//!
//! # Why this layout
//! kube-proxy gives every service an anonymous `numgen ... vmap { ranges }` set. Every set
//! in a table is kept on one list that the kernel walks to check a new set's name and to
//! resolve each set reference, so N per-service sets cost O(N²) in one transaction (the
//! 221 s for 10 000 services with nft 1.0.6 on Linux 6.1, reproduced by
//! `bench/test_bench_dataplane.py::test_nft_text_kube_proxy_layout`, whose 3 000-service
//! case already takes 16 s). Here no set exists per service:
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

//!
//! # Modules
//! [`model`] is the desired state and its checks, [`shards`] places service chains in
//! tables, [`ledger`] records what the kernel holds, [`plan`] decides a sync against the
//! ledger (refusing new states that cannot be programmed), [`batch`], [`infrastructure`] and
//! [`services`] write the batch, and [`readback`] reads endpoint rules back.

mod batch;
mod infrastructure;
mod ledger;
mod model;
mod plan;
mod readback;
mod services;
mod shards;

use std::collections::HashMap;

pub use batch::{BatchSummary, PreparedBatch, Subject};
pub use ledger::Ledger;
pub use model::{
    Endpoint, InvalidPort, Protocol, ServiceId, ServicePort, MAX_ENDPOINTS_PER_SERVICE,
};
pub use plan::{KernelRefusal, Plan, Refusal, RefusalReason, SyncRequest};
pub use readback::{parse_endpoint_rule, ProgrammedEndpoint};
pub use shards::MAX_SHARDS;

use crate::nft::Family;
use batch::{Tables, Writer};
use model::MAX_NAME;

const SERVICE_IPS: &str = "service-ips";
const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
const HAIRPIN_ENDPOINTS: &str = "hairpin-endpoints";
const SERVICES_CHAIN: &str = "services";
const ENDPOINTS_CHECK_CHAIN: &str = "service-endpoints-check";
const REJECT_CHAIN: &str = "reject-chain";
const MARK_FOR_MASQUERADE_CHAIN: &str = "mark-for-masquerade";
const MASQUERADING_CHAIN: &str = "masquerading";
pub const FAMILIES: [Family; 2] = [Family::Ip, Family::Ip6];

/// waolb's tables: the ledger of what they hold, and the builder of the batches that
/// change them.
pub struct Ruleset {
    tables: Tables,
    ledger: Ledger,
}

impl Ruleset {
    pub fn new(table: &str, masquerade_bit: u32) -> Result<Ruleset, String> {
        Ok(Ruleset {
            tables: Tables::new(table, masquerade_bit)?,
            ledger: Ledger::default(),
        })
    }

    pub fn table(&self) -> &str {
        self.tables.main()
    }

    /// The shard a table of that name holds (0: the main table), if it is one of this
    /// ruleset's tables.
    pub fn shard_of_table(&self, name: &str) -> Option<u32> {
        self.tables.shard_of(name)
    }

    pub fn table_name(&self, shard: u32) -> &str {
        self.tables.name(shard)
    }

    /// What the kernel holds, as of the last committed batch.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Plans `request` against the ledger, given the ports the kernel refused so far.
    pub fn plan(
        &self,
        request: &SyncRequest,
        kernel: &HashMap<ServiceId, KernelRefusal>,
    ) -> Result<Plan, String> {
        plan::plan(&self.ledger, request, kernel)
    }

    /// The batch of a plan. `existing` (for a full sync) lists the tables there now, as
    /// (family, shard).
    pub fn write(
        &self,
        request: &SyncRequest,
        plan: &Plan,
        existing: &[(Family, u32)],
        first_seq: u32,
    ) -> PreparedBatch {
        if plan.full {
            services::write_full(
                &self.tables,
                &self.ledger,
                request,
                plan,
                existing,
                first_seq,
            )
        } else {
            services::write_partial(&self.tables, &self.ledger, request, plan, first_seq)
        }
    }

    /// Records a plan the kernel committed.
    pub fn commit(&mut self, request: SyncRequest, plan: &Plan) {
        let mut desired: Vec<Option<ServicePort>> =
            request.into_ports().into_iter().map(Some).collect();
        let mut take = |write: &plan::Write| match write.state {
            plan::State::Desired(i) => desired[i].take(),
            plan::State::Kept => None,
        };
        if plan.full {
            let kept: Vec<ServiceId> = plan
                .write
                .iter()
                .filter(|w| w.state == plan::State::Kept)
                .map(|w| w.id.clone())
                .collect();
            let kept = self.ledger.take(&kept);
            let fresh: Vec<ServicePort> = plan.write.iter().filter_map(&mut take).collect();
            self.ledger
                .replace_all(plan.shards, kept.into_iter().chain(fresh));
        } else {
            let fresh: Vec<ServicePort> = plan.write.iter().filter_map(&mut take).collect();
            self.ledger.apply(fresh, &plan.remove);
        }
    }

    /// Forgets what was programmed: the next sync must be full.
    pub fn reset(&mut self) {
        self.ledger.reset();
    }

    /// The batch that deletes both main tables, if they exist, and the shard tables in
    /// `existing` (family, shard).
    pub fn prepare_delete(&self, existing: &[(Family, u32)], first_seq: u32) -> PreparedBatch {
        let mut writer = Writer::new(&self.tables, first_seq, 0);
        let shards = existing.iter().copied().filter(|&(_, shard)| shard > 0);
        infrastructure::delete_tables(
            &mut writer,
            FAMILIES.map(|family| (family, 0)).into_iter().chain(shards),
        );
        writer.finish()
    }
}

#[cfg(test)]
pub(crate) mod tests;
