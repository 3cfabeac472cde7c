//! Refusals on demand, for tests of what waolb does when the kernel refuses a port: built
//! only with the `fault-injection` feature (`make native` turns it on; release builds and
//! images do not), so nothing here is on the production path.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use super::Kernel;
use crate::netlink::BatchError;
use crate::nft::Family;
use crate::ruleset::{PreparedBatch, Subject};

/// Refuse, with `errno`, every message of a batch about the matching service ports (or,
/// with neither namespace nor name, the batch as a whole), for the next `times` batches
/// it matches (`None`: always).
#[derive(Clone, Debug)]
pub struct Fault {
    pub errno: i32,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// Only messages doing this ("flush chain", "add rule"...), if given.
    pub action: Option<String>,
    /// Only messages whose bytes contain these (an endpoint's address: a port's new state,
    /// not the one it has), if given.
    pub containing: Option<Vec<u8>>,
    pub times: Option<u32>,
}

impl Fault {
    fn errors(&self, batch: &PreparedBatch) -> Vec<BatchError> {
        if self.namespace.is_none() && self.name.is_none() {
            return vec![BatchError {
                errno: self.errno,
                tag: None,
                message: Some("injected".into()),
            }];
        }
        let messages = messages(&batch.wire);
        batch
            .tags
            .iter()
            .zip(messages)
            .filter(|(_, bytes)| {
                self.containing
                    .as_deref()
                    .is_none_or(|wanted| bytes.windows(wanted.len()).any(|w| w == wanted))
            })
            .map(|(tag, _)| tag)
            .filter(|tag| self.action.as_deref().is_none_or(|a| a == tag.action))
            .filter(|tag| match batch.subject(Some(**tag)) {
                Some(Subject::Port(id)) => {
                    self.namespace.as_deref().is_none_or(|n| n == id.namespace)
                        && self.name.as_deref().is_none_or(|n| n == id.name)
                }
                _ => false,
            })
            .map(|tag| BatchError {
                errno: self.errno,
                tag: Some(*tag),
                message: Some("injected".into()),
            })
            .collect()
    }
}

/// The nf_tables messages of a batch's wire bytes, in order, without the batch frame.
fn messages(wire: &[u8]) -> Vec<&[u8]> {
    let mut all = Vec::new();
    let mut rest = wire;
    while rest.len() >= 4 {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < 4 || len > rest.len() {
            break;
        }
        all.push(&rest[..len]);
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    // The first and last are BATCH_BEGIN and BATCH_END.
    all.get(1..all.len().saturating_sub(1))
        .map(<[&[u8]]>::to_vec)
        .unwrap_or_default()
}

/// The faults a [`Faulty`] kernel applies; shared with whoever injects them.
pub type Faults = Arc<Mutex<Vec<Fault>>>;

/// A kernel that refuses what its faults match, and passes everything else on.
pub struct Faulty {
    inner: Box<dyn Kernel>,
    faults: Faults,
}

impl Faulty {
    pub fn new(inner: Box<dyn Kernel>) -> (Faulty, Faults) {
        let faults = Faults::default();
        let kernel = Faulty {
            inner,
            faults: Arc::clone(&faults),
        };
        (kernel, faults)
    }
}

impl Kernel for Faulty {
    fn next_seq(&self) -> u32 {
        self.inner.next_seq()
    }

    fn table_names(&mut self, family: Family) -> io::Result<Vec<String>> {
        self.inner.table_names(family)
    }

    fn send(&mut self, batch: &PreparedBatch) -> io::Result<Vec<BatchError>> {
        let mut faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        let mut errors = Vec::new();
        for fault in faults.iter_mut() {
            let matched = fault.errors(batch);
            if !matched.is_empty() {
                fault.times = fault.times.map(|times| times.saturating_sub(1));
                errors.extend(matched);
            }
        }
        faults.retain(|fault| fault.times != Some(0));
        drop(faults);
        if errors.is_empty() {
            self.inner.send(batch)
        } else {
            // As the kernel does: nothing of a batch with an error is committed.
            Ok(errors)
        }
    }

    fn rules(&mut self, family: Family, table: &str) -> io::Result<Vec<Vec<u8>>> {
        self.inner.rules(family, table)
    }
}

/// A kernel that takes every batch and holds nothing: the ledger is all there is to read
/// (unit tests without root).
#[derive(Default)]
pub struct Simulated {
    seq: u32,
}

impl Kernel for Simulated {
    fn next_seq(&self) -> u32 {
        self.seq
    }

    fn table_names(&mut self, _family: Family) -> io::Result<Vec<String>> {
        Ok(Vec::new())
    }

    fn send(&mut self, batch: &PreparedBatch) -> io::Result<Vec<BatchError>> {
        self.seq = batch.first_seq.wrapping_add(batch.tags.len() as u32 + 2);
        Ok(Vec::new())
    }

    fn rules(&mut self, _family: Family, _table: &str) -> io::Result<Vec<Vec<u8>>> {
        Ok(Vec::new())
    }
}
