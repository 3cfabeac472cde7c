//! Which table holds a service port's chain: a family's balanced ports are spread over as
//! many tables as keep each near [`SHARD_LOAD`] (see the module documentation of
//! [`ruleset`](super)).

use super::model::{ServiceId, ServicePort};
use crate::nft::Family;

/// How many service chains and endpoint rules one table holds before a family's services
/// are spread over more tables. nf_tables re-validates every chain of a table on each commit
/// that adds a DNAT rule: about 4 ms at this size (2 ms at half of it), while 27 000 take
/// 15 ms and 110 000 (10 000 services x 10 endpoints) 60-70 ms, as the walk no longer fits
/// the CPU caches. Each table costs a new connection that it does not translate about
/// 0.12 us (one more nat chain and map lookup), and a full sync a little: every message of a
/// batch looks its table up by name in a list that holds the old and the new tables.
pub const SHARD_LOAD: usize = 16_384;
/// The most tables one family's service chains are spread over.
pub const MAX_SHARDS: u32 = 64;

/// How many tables each family's service chains are spread over, and which one holds a
/// service port. Table 0 is the main table; the others are named `<table>-shard-<n>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shards {
    pub(super) ip: u32,
    pub(super) ip6: u32,
}

impl Default for Shards {
    fn default() -> Shards {
        Shards { ip: 1, ip6: 1 }
    }
}

impl Shards {
    /// As many tables as keep each near [`SHARD_LOAD`], for the balanced ports of `services`.
    pub fn for_services<'s>(services: impl Iterator<Item = &'s ServicePort> + Clone) -> Shards {
        let count = |family: Family| {
            let load: usize = services
                .clone()
                .filter(|s| s.family == family && s.is_balanced())
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
    pub fn count_for(load: usize) -> u32 {
        load.div_ceil(SHARD_LOAD).clamp(1, MAX_SHARDS as usize) as u32
    }

    pub fn count(&self, family: Family) -> u32 {
        match family {
            Family::Ip => self.ip,
            Family::Ip6 => self.ip6,
        }
    }

    /// The table of a service port: its chain name's FNV-1a hash, so that every process
    /// places it alike.
    pub fn of(&self, id: &ServiceId) -> u32 {
        let hash = id
            .chain_name()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
            });
        (hash % u64::from(self.count(id.family))) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::model::tests::service;
    use crate::ruleset::model::Endpoint;
    use crate::ruleset::tests::wide;

    #[test]
    fn service_chains_spread_over_more_tables_as_the_load_grows() {
        let count =
            |services: &[ServicePort]| Shards::for_services(services.iter()).count(Family::Ip);
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
        let both = Shards::for_services([full, other_family].iter());
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
}
