//! The ledger: what the kernel holds in waolb's tables, as of the last committed batch. It is
//! the one record of the kernel's state; every sync is planned against it.

use std::collections::HashMap;
use std::net::IpAddr;

use super::model::{MapKey, ServiceId, ServicePort};
use super::shards::Shards;

#[derive(Default)]
pub struct Ledger {
    applied: HashMap<ServiceId, ServicePort>,
    /// The programmed ports of each Service (namespace, name), for partial syncs. A Vec: a
    /// Service has a port or a few, and a tree node would cost ten times the memory.
    by_service: HashMap<(String, String), Vec<ServiceId>>,
    /// How many programmed endpoints use each address: its hairpin element lives while > 0.
    hairpin_refs: HashMap<IpAddr, u32>,
    /// Which service port holds each map key (address . protocol . port), so a partial sync
    /// checks only the ports it changes for clashes.
    claimed: HashMap<MapKey, ServiceId>,
    /// How the programmed service chains are spread over tables.
    shards: Shards,
    /// Whether a full sync has programmed the tables (a partial sync needs one first).
    initialized: bool,
}

impl Ledger {
    pub fn get(&self, id: &ServiceId) -> Option<&ServicePort> {
        self.applied.get(id)
    }

    pub fn is_initialized(&self) -> bool {
        self.initialized
    }

    pub fn shards(&self) -> Shards {
        self.shards
    }

    /// Every programmed port, in no particular order.
    pub fn ports(&self) -> impl Iterator<Item = &ServicePort> {
        self.applied.values()
    }

    /// Every programmed port's id, in no particular order.
    pub fn ids(&self) -> impl Iterator<Item = &ServiceId> {
        self.applied.keys()
    }

    /// The programmed ports of one Service.
    pub fn ports_of(&self, namespace: &str, name: &str) -> impl Iterator<Item = &ServiceId> {
        self.by_service
            .get(&(namespace.to_string(), name.to_string()))
            .into_iter()
            .flatten()
    }

    /// The port that holds a map key.
    pub fn claimant(&self, key: &MapKey) -> Option<&ServiceId> {
        self.claimed.get(key)
    }

    /// How many programmed endpoints (of weight > 0) use `addr`.
    pub fn hairpin_users(&self, addr: &IpAddr) -> u32 {
        self.hairpin_refs.get(addr).copied().unwrap_or(0)
    }

    /// Records a full sync: the tables hold exactly `ports`, spread as `shards`.
    pub fn replace_all(&mut self, shards: Shards, ports: impl IntoIterator<Item = ServicePort>) {
        self.reset();
        self.initialized = true;
        self.shards = shards;
        for port in ports {
            self.insert(port);
        }
    }

    /// Takes the programmed state of `ids` out (to carry it into a full sync).
    pub fn take(&mut self, ids: &[ServiceId]) -> Vec<ServicePort> {
        ids.iter()
            .filter_map(|id| self.applied.remove(id))
            .collect()
    }

    /// Records a partial sync: `remove` went, `upsert` were added or changed.
    pub fn apply(&mut self, upsert: impl IntoIterator<Item = ServicePort>, remove: &[ServiceId]) {
        for id in remove {
            if let Some(old) = self.applied.remove(id) {
                self.release(&old);
            }
        }
        for port in upsert {
            if let Some(old) = self.applied.remove(&port.id()) {
                self.release(&old);
            }
            self.insert(port);
        }
    }

    fn insert(&mut self, port: ServicePort) {
        for endpoint in port.endpoints.iter().filter(|e| e.weight > 0) {
            *self.hairpin_refs.entry(endpoint.addr).or_default() += 1;
        }
        let id = port.id();
        self.claimed.insert(port.claim(), id.clone());
        self.by_service
            .entry((id.namespace.clone(), id.name.clone()))
            .or_default()
            .push(id.clone());
        self.applied.insert(id, port);
    }

    /// Drops what a programmed service port held: its map key, its hairpin references and
    /// its place in its Service's list.
    fn release(&mut self, old: &ServicePort) {
        let id = old.id();
        // Another port of the same commit may have taken the key over already.
        let key = old.claim();
        if self.claimed.get(&key) == Some(&id) {
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
        let service = (id.namespace.clone(), id.name.clone());
        if let Some(ports) = self.by_service.get_mut(&service) {
            ports.retain(|port| port != &id);
            if ports.is_empty() {
                self.by_service.remove(&service);
            }
        }
    }

    /// Forgets what was programmed: the next sync must be full. Used after the tables were
    /// deleted.
    pub fn reset(&mut self) {
        *self = Ledger::default();
    }
}
