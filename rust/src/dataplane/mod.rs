//! The dataplane: a ruleset (its ledger and batch writers) and the kernel that commits its
//! batches. A sync refuses, port by port, the new states the kernel or the checks refuse,
//! and commits the rest: a refused port keeps what the kernel holds for it.

mod kernel;

#[cfg(feature = "fault-injection")]
pub mod faults;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::time::{Duration, Instant};

pub use kernel::Kernel;

use crate::netlink::{BatchError, Socket};
use crate::nft::{self, Family};
use crate::ruleset::{
    self, BatchSummary, KernelRefusal, PreparedBatch, ProgrammedEndpoint, Refusal, RefusalReason,
    Ruleset, ServiceId, Subject, SyncRequest, FAMILIES,
};

/// Why a sync did not happen. In every case the kernel's ruleset is as it was.
#[derive(Debug)]
pub enum SyncError {
    /// The request is inconsistent (a caller's mistake); nothing was sent.
    Invalid(String),
    /// The kernel rejected the batch for a reason no single service port explains.
    Rejected(Box<Rejection>),
    /// The socket failed (for example EPERM without CAP_NET_ADMIN).
    Io(io::Error),
}

/// A batch the kernel rejected: its first error.
#[derive(Debug)]
pub struct Rejection {
    pub errno: i32,
    /// What the failing message did ("add table"), if the kernel named one.
    pub action: Option<&'static str>,
    /// What it did it to, if the kernel named a message.
    pub subject: Option<Subject>,
    /// Both, as text.
    pub object: String,
    pub detail: Option<String>,
}

impl std::fmt::Display for SyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncError::Invalid(problem) => write!(f, "{problem}"),
            SyncError::Rejected(rejection) => {
                let error = io::Error::from_raw_os_error(rejection.errno);
                write!(f, "the kernel rejected {}: {error}", rejection.object)?;
                if let Some(detail) = &rejection.detail {
                    write!(f, " ({detail})")?;
                }
                write!(f, "; the previous ruleset is unchanged")
            }
            SyncError::Io(err) => write!(f, "netlink: {err}"),
        }
    }
}

/// What a sync did.
#[derive(Clone, Debug)]
pub struct SyncReport {
    pub full: bool,
    pub summary: BatchSummary,
    pub elapsed: Duration,
    /// Ports added or changed, in id order.
    pub changed: Vec<ServiceId>,
    /// Ports that went.
    pub removed: Vec<ServiceId>,
    /// Ports whose new state was refused; each keeps its programmed state if it had one.
    pub refused: Vec<Refusal>,
    /// Held ports that keep a programmed state.
    pub held: Vec<ServiceId>,
}

pub struct Dataplane {
    ruleset: Ruleset,
    kernel: Box<dyn Kernel>,
}

impl Dataplane {
    /// Opens the netlink socket in the caller's network namespace.
    pub fn new(table: &str, masquerade_bit: u32) -> Result<Dataplane, SyncError> {
        let socket = Socket::open().map_err(SyncError::Io)?;
        Dataplane::with_kernel(table, masquerade_bit, Box::new(socket))
    }

    /// A dataplane that commits through `kernel`.
    pub fn with_kernel(
        table: &str,
        masquerade_bit: u32,
        kernel: Box<dyn Kernel>,
    ) -> Result<Dataplane, SyncError> {
        let ruleset = Ruleset::new(table, masquerade_bit).map_err(SyncError::Invalid)?;
        Ok(Dataplane { ruleset, kernel })
    }

    pub fn ruleset(&self) -> &Ruleset {
        &self.ruleset
    }

    /// Programs `request`: a port whose new state the kernel refuses is planned again with
    /// its programmed state (in a partial sync: left alone), and the batch sent again, until
    /// the kernel takes it. A port whose programmed state the kernel refuses too (a full
    /// sync writes every port) is left out. An error no port explains fails the sync.
    pub fn sync(&mut self, request: SyncRequest) -> Result<SyncReport, SyncError> {
        let start = Instant::now();
        let existing = if request.is_full() {
            self.existing_tables()?
        } else {
            Vec::new()
        };
        let mut refused: HashMap<ServiceId, KernelRefusal> = HashMap::new();
        loop {
            let plan = self
                .ruleset
                .plan(&request, &refused)
                .map_err(SyncError::Invalid)?;
            let batch = self
                .ruleset
                .write(&request, &plan, &existing, self.kernel.next_seq());
            let errors = if batch.summary.messages > 0 {
                self.kernel.send(&batch).map_err(SyncError::Io)?
            } else {
                Vec::new()
            };
            if errors.is_empty() {
                let summary = batch.summary;
                // The batch is the largest thing alive; the ledger grows only after it goes.
                drop(batch);
                self.ruleset.commit(request, &plan);
                return Ok(SyncReport {
                    full: plan.full,
                    summary,
                    elapsed: start.elapsed(),
                    changed: plan.changed().cloned().collect(),
                    removed: plan.remove,
                    refused: plan.refused,
                    held: plan.held,
                });
            }
            blame(&batch, &errors, &mut refused)?;
        }
    }

    /// Deletes the main tables and their shards; the next sync must be full.
    pub fn delete_tables(&mut self) -> Result<(), SyncError> {
        let existing = self.existing_tables()?;
        let batch = self
            .ruleset
            .prepare_delete(&existing, self.kernel.next_seq());
        let errors = self.kernel.send(&batch).map_err(SyncError::Io)?;
        if let Some(error) = errors.first() {
            return Err(rejected(&batch, error));
        }
        self.ruleset.reset();
        Ok(())
    }

    /// Which of the ruleset's tables (main and shards) exist now, as (family, shard).
    fn existing_tables(&mut self) -> Result<Vec<(Family, u32)>, SyncError> {
        let mut existing = Vec::new();
        for family in FAMILIES {
            let names = self.kernel.table_names(family).map_err(SyncError::Io)?;
            existing.extend(
                names
                    .iter()
                    .filter_map(|name| self.ruleset.shard_of_table(name))
                    .map(|shard| (family, shard)),
            );
        }
        Ok(existing)
    }

    /// The endpoint rules the kernel holds in this ruleset's tables, service by service in
    /// layout order. Tables that do not exist hold nothing; other tables are not read.
    pub fn read_endpoints(&mut self) -> Result<Vec<ProgrammedEndpoint>, SyncError> {
        let mut endpoints = Vec::new();
        for (family, shard) in self.existing_tables()? {
            let table = self.ruleset.table_name(shard).to_string();
            // A table deleted since it was listed gives an empty answer.
            let rules = self.kernel.rules(family, &table).map_err(SyncError::Io)?;
            endpoints.extend(rules.iter().filter_map(|payload| {
                ruleset::parse_endpoint_rule(family, &nft::parse_rule(payload)?)
            }));
        }
        // Stable: each service's endpoints keep the order of its chain.
        endpoints.sort_by(|a, b| a.service().cmp(&b.service()));
        Ok(endpoints)
    }
}

/// Records which ports the kernel's errors name: a port refused for the first time keeps
/// its programmed state, one whose programmed state was refused too goes. An error that
/// names no port, or a port already left out, fails the sync.
fn blame(
    batch: &PreparedBatch,
    errors: &[BatchError],
    refused: &mut HashMap<ServiceId, KernelRefusal>,
) -> Result<(), SyncError> {
    // One refusal per port: its messages after the first failing one may fail too. An error
    // no port explains (a table or the hairpin set is missing, the commit failed) fails the
    // sync, reported as the kernel's first error.
    let mut blamed: BTreeMap<&ServiceId, &BatchError> = BTreeMap::new();
    for error in errors {
        match batch.subject(error.tag) {
            Some(Subject::Port(id)) => {
                blamed.entry(id).or_insert(error);
            }
            _ => return Err(rejected(batch, &errors[0])),
        }
    }
    for (id, error) in blamed {
        match refused.get_mut(id) {
            None => {
                let reason = RefusalReason::Kernel {
                    errno: error.errno,
                    action: error.tag.map_or("commit", |tag| tag.action),
                    detail: error.message.clone(),
                };
                let refusal = KernelRefusal {
                    reason,
                    dropped: false,
                };
                refused.insert(id.clone(), refusal);
            }
            Some(refusal) if !refusal.dropped => refusal.dropped = true,
            Some(_) => return Err(rejected(batch, error)),
        }
    }
    Ok(())
}

fn rejected(batch: &PreparedBatch, error: &BatchError) -> SyncError {
    SyncError::Rejected(Box::new(Rejection {
        errno: error.errno,
        action: error.tag.map(|tag| tag.action),
        subject: batch.subject(error.tag).cloned(),
        object: batch.describe(error.tag),
        detail: error.message.clone(),
    }))
}
