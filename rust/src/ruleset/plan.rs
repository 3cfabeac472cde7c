//! Planning a sync against the ledger: which state each service port ends up with, which
//! ports change, and which new states are refused (the port then keeps what the kernel
//! holds for it).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;

use super::ledger::Ledger;
use super::model::{MapKey, ServiceId, ServicePort};
use super::shards::Shards;

/// What a sync asks for, checked: the desired ports and the ports to hold.
pub struct SyncRequest {
    /// The Services a partial sync covers (namespace, name); `None` for a full sync.
    services: Option<HashSet<(String, String)>>,
    ports: Vec<ServicePort>,
    /// Each port's position in `ports`.
    index: HashMap<ServiceId, usize>,
    hold: HashSet<ServiceId>,
}

impl SyncRequest {
    /// A full sync: the tables hold `ports`, and the held ports as they are programmed.
    pub fn full(ports: Vec<ServicePort>, hold: Vec<ServiceId>) -> Result<SyncRequest, String> {
        SyncRequest::new(None, ports, hold)
    }

    /// A partial sync of `services`: their ports become `ports` (those not listed go), the
    /// held ports stay as they are programmed, other Services are not touched.
    pub fn partial(
        services: Vec<(String, String)>,
        ports: Vec<ServicePort>,
        hold: Vec<ServiceId>,
    ) -> Result<SyncRequest, String> {
        SyncRequest::new(Some(services.into_iter().collect()), ports, hold)
    }

    fn new(
        services: Option<HashSet<(String, String)>>,
        ports: Vec<ServicePort>,
        hold: Vec<ServiceId>,
    ) -> Result<SyncRequest, String> {
        let ids: Vec<ServiceId> = ports.iter().map(ServicePort::id).collect();
        let mut index = HashMap::with_capacity(ids.len());
        for (position, id) in ids.iter().enumerate() {
            if index.insert(id.clone(), position).is_some() {
                return Err(format!("{id} is given twice"));
            }
        }
        let hold: HashSet<ServiceId> = hold.into_iter().collect();
        if let Some(id) = ids.iter().find(|id| hold.contains(*id)) {
            return Err(format!("{id} is both given and held"));
        }
        if let Some(services) = &services {
            let outside = ids
                .iter()
                .chain(&hold)
                .find(|id| !services.contains(&(id.namespace.clone(), id.name.clone())));
            if let Some(id) = outside {
                return Err(format!("{id} is not a port of the Services synced"));
            }
        }
        Ok(SyncRequest {
            services,
            ports,
            index,
            hold,
        })
    }

    pub fn is_full(&self) -> bool {
        self.services.is_none()
    }

    pub fn into_ports(self) -> Vec<ServicePort> {
        self.ports
    }
}

/// Why a service port's new state was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    /// Another port holds the same address, protocol and port.
    Clash { holder: ServiceId },
    /// The kernel refused a message of the port's change.
    Kernel {
        errno: i32,
        action: &'static str,
        detail: Option<String>,
    },
}

impl RefusalReason {
    /// A short name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            RefusalReason::Clash { .. } => "clash",
            RefusalReason::Kernel { .. } => "kernel",
        }
    }
}

/// A service port whose new state was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub id: ServiceId,
    /// The refused state's port number (or, for a refused removal, the programmed one's).
    pub port: u16,
    pub cluster_ip: String,
    pub reason: RefusalReason,
    /// Whether the port's previous state stays programmed (false: it had none, or the
    /// kernel refused that too).
    pub kept: bool,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            RefusalReason::Clash { holder } => write!(
                f,
                "{} and {holder} both claim {} port {}/{}",
                self.id,
                self.cluster_ip,
                self.port,
                self.id.protocol.name()
            ),
            RefusalReason::Kernel {
                errno,
                action,
                detail,
            } => {
                let error = io::Error::from_raw_os_error(*errno);
                write!(f, "the kernel refused {action} for {}: {error}", self.id)?;
                if let Some(detail) = detail {
                    write!(f, " ({detail})")?;
                }
                Ok(())
            }
        }
    }
}

/// Which state a written port takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The request's port at this index.
    Desired(usize),
    /// What the ledger holds for it.
    Kept,
}

/// One port the batch writes.
pub struct Write {
    pub id: ServiceId,
    pub state: State,
    /// Whether the kernel's state of the port changes (always, in a partial sync).
    pub changed: bool,
}

/// A planned sync, ready to be written as a batch.
pub struct Plan {
    pub full: bool,
    pub shards: Shards,
    /// In id order: every port the tables hold after a full sync; the ports a partial sync
    /// adds or changes.
    pub write: Vec<Write>,
    /// Programmed ports that go.
    pub remove: Vec<ServiceId>,
    pub refused: Vec<Refusal>,
    /// Held ports that keep a programmed state.
    pub held: Vec<ServiceId>,
}

impl Plan {
    /// The ports whose kernel state changes.
    pub fn changed(&self) -> impl Iterator<Item = &ServiceId> {
        self.write.iter().filter(|w| w.changed).map(|w| &w.id)
    }
}

/// A port the kernel refused during this sync: it keeps its programmed state, or, when the
/// kernel refused that too (a full sync rewrites it), goes.
#[derive(Clone, Debug)]
pub struct KernelRefusal {
    pub reason: RefusalReason,
    pub dropped: bool,
}

/// One port's decision while planning.
struct Decision<'a> {
    id: &'a ServiceId,
    applied: Option<&'a ServicePort>,
    state: Option<State>,
    refusal: Option<(RefusalReason, u16, String)>,
    held: bool,
}

impl Decision<'_> {
    fn keep(&mut self) {
        self.state = self.applied.map(|_| State::Kept);
    }
}

/// Plans `request` against `ledger`, with the ports the kernel refused so far in this sync.
pub fn plan(
    ledger: &Ledger,
    request: &SyncRequest,
    kernel: &HashMap<ServiceId, KernelRefusal>,
) -> Result<Plan, String> {
    let full = request.is_full();
    if !full && !ledger.is_initialized() {
        return Err("a partial sync needs a full sync first".into());
    }
    let scope = scope(ledger, request);
    let mut decisions: Vec<Decision<'_>> = scope
        .iter()
        .map(|id| decide(ledger, request, kernel, id))
        .collect();
    resolve_claims(ledger, request, &mut decisions, full);

    let mut plan = Plan {
        full,
        shards: ledger.shards(),
        write: Vec::new(),
        remove: Vec::new(),
        refused: Vec::new(),
        held: Vec::new(),
    };
    for decision in decisions {
        if decision.held && decision.state == Some(State::Kept) {
            plan.held.push(decision.id.clone());
        }
        let changed = match decision.state {
            Some(State::Desired(i)) => decision.applied != Some(&request.ports[i]),
            Some(State::Kept) => false,
            None => {
                if decision.applied.is_some() {
                    plan.remove.push(decision.id.clone());
                }
                false
            }
        };
        if let Some((reason, port, cluster_ip)) = decision.refusal {
            plan.refused.push(Refusal {
                id: decision.id.clone(),
                port,
                cluster_ip,
                reason,
                kept: decision.state == Some(State::Kept),
            });
        }
        if let Some(state) = decision.state {
            if full || changed {
                plan.write.push(Write {
                    id: decision.id.clone(),
                    state,
                    changed,
                });
            }
        }
    }
    if full {
        let written = plan.write.iter().map(|w| resolve(ledger, request, w));
        plan.shards = Shards::for_services(written);
    }
    Ok(plan)
}

/// The port a write programs.
pub fn resolve<'a>(ledger: &'a Ledger, request: &'a SyncRequest, write: &Write) -> &'a ServicePort {
    match write.state {
        State::Desired(i) => &request.ports[i],
        State::Kept => ledger.get(&write.id).expect("a kept port is programmed"),
    }
}

/// The ports a sync decides about, in id order: every programmed and desired one for a full
/// sync, those of the Services covered for a partial one.
fn scope<'a>(ledger: &'a Ledger, request: &'a SyncRequest) -> Vec<&'a ServiceId> {
    let mut ids: HashSet<&ServiceId> = request.index.keys().collect();
    match &request.services {
        None => ids.extend(ledger.ids()),
        Some(services) => {
            for (namespace, name) in services {
                ids.extend(ledger.ports_of(namespace, name));
            }
        }
    }
    let mut sorted: Vec<&ServiceId> = ids.into_iter().collect();
    sorted.sort_unstable();
    sorted
}

fn decide<'a>(
    ledger: &'a Ledger,
    request: &'a SyncRequest,
    kernel: &HashMap<ServiceId, KernelRefusal>,
    id: &'a ServiceId,
) -> Decision<'a> {
    let applied = ledger.get(id);
    let desired = request.index.get(id).copied();
    let mut decision = Decision {
        id,
        applied,
        state: desired.map(State::Desired),
        refusal: None,
        held: false,
    };
    if let Some(refused) = kernel.get(id) {
        let refused_port = desired.map(|i| &request.ports[i]).or(applied);
        let (port, cluster_ip) =
            refused_port.map_or((0, String::new()), |p| (p.port, p.cluster_ip.to_string()));
        decision.refusal = Some((refused.reason.clone(), port, cluster_ip));
        decision.keep();
        if refused.dropped {
            decision.state = None;
        }
    } else if request.hold.contains(id) {
        decision.held = true;
        decision.keep();
    }
    decision
}

/// Who holds a map key while claims are resolved.
#[derive(Clone, Copy)]
struct Owner {
    decision: usize,
    /// A new state's claim, which gives way to a port that must keep its own.
    changing: bool,
}

/// Refuses the new state of every port whose address . protocol . port another port holds.
/// Ports that keep their programmed state keep their claims; new states claim in id order;
/// a refused port goes back to its programmed state and takes its old claim back, refusing
/// in turn a new state that took it.
fn resolve_claims(
    ledger: &Ledger,
    request: &SyncRequest,
    decisions: &mut [Decision<'_>],
    full: bool,
) {
    let in_scope: HashSet<&ServiceId> = decisions.iter().map(|d| d.id).collect();
    let mut owners: HashMap<MapKey, Owner> = HashMap::new();
    // Claims of ports outside a partial sync stay where the ledger has them.
    let held_outside = |key: &MapKey| -> Option<ServiceId> {
        if full {
            return None;
        }
        ledger
            .claimant(key)
            .filter(|owner| !in_scope.contains(owner))
            .cloned()
    };
    let keeps = |d: &Decision<'_>| match d.state {
        Some(State::Kept) => true,
        Some(State::Desired(i)) => d.applied == Some(&request.ports[i]),
        None => false,
    };
    for (index, decision) in decisions.iter().enumerate() {
        if keeps(decision) {
            let claim = decision.applied.expect("kept ports are programmed").claim();
            owners.insert(
                claim,
                Owner {
                    decision: index,
                    changing: false,
                },
            );
        }
    }
    for index in 0..decisions.len() {
        let Some(State::Desired(i)) = decisions[index].state else {
            continue;
        };
        if keeps(&decisions[index]) {
            continue;
        }
        let claim = request.ports[i].claim();
        let holder = match owners.get(&claim) {
            Some(owner) => Some(decisions[owner.decision].id.clone()),
            None => held_outside(&claim),
        };
        match holder {
            None => {
                owners.insert(
                    claim,
                    Owner {
                        decision: index,
                        changing: true,
                    },
                );
            }
            Some(holder) => refuse_clash(request, decisions, &mut owners, index, holder),
        }
    }
}

/// Refuses decision `index`'s new state for a clash with `holder`, and gives the port its
/// programmed claim back, evicting (and so refusing) new states that took it meanwhile.
fn refuse_clash(
    request: &SyncRequest,
    decisions: &mut [Decision<'_>],
    owners: &mut HashMap<MapKey, Owner>,
    index: usize,
    holder: ServiceId,
) {
    let mut pending = vec![(index, holder)];
    while let Some((index, holder)) = pending.pop() {
        let decision = &mut decisions[index];
        if let Some(State::Desired(i)) = decision.state {
            let port = &request.ports[i];
            decision.refusal = Some((
                RefusalReason::Clash { holder },
                port.port,
                port.cluster_ip.to_string(),
            ));
        }
        decision.keep();
        let Some(applied) = decision.applied else {
            continue;
        };
        let claim = applied.claim();
        let kept = Owner {
            decision: index,
            changing: false,
        };
        if let Some(previous) = owners.insert(claim, kept) {
            if previous.changing && previous.decision != index {
                pending.push((previous.decision, decisions[index].id.clone()));
            }
        }
    }
}
