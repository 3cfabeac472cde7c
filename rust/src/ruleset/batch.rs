//! A batch being written: its messages, and what each message's errors would be about.

use std::fmt;

use super::model::ServiceId;
use super::shards::MAX_SHARDS;
use super::MAX_NAME;
use crate::netlink::{Batch, MessageTag, NO_SUBJECT};
use crate::nft::{Family, TableRef};

/// The tables a ruleset owns and the mark it masquerades by.
pub struct Tables {
    /// The main table's name, then the shard tables' (index = shard).
    names: Vec<String>,
    pub(super) masquerade_mark: u32,
}

impl Tables {
    pub fn new(table: &str, masquerade_bit: u32) -> Result<Tables, String> {
        let names: Vec<String> = std::iter::once(table.to_string())
            .chain((1..MAX_SHARDS).map(|shard| format!("{table}-shard-{shard}")))
            .collect();
        let longest = MAX_NAME - (names[names.len() - 1].len() - table.len());
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
        Ok(Tables {
            names,
            masquerade_mark: 1 << masquerade_bit,
        })
    }

    pub fn main(&self) -> &str {
        &self.names[0]
    }

    pub fn name(&self, shard: u32) -> &str {
        &self.names[shard as usize]
    }

    /// The shard a table of that name holds (0: the main table), if it is one of these.
    pub fn shard_of(&self, name: &str) -> Option<u32> {
        self.names
            .iter()
            .position(|table| table == name)
            .map(|shard| shard as u32)
    }

    pub fn table_ref(&self, family: Family, shard: u32) -> TableRef<'_> {
        TableRef {
            family,
            name: self.name(shard),
        }
    }
}

/// What a message of the batch programs, so that a kernel error can be tied back to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// One of waolb's tables, or the chains and maps every service relies on in it.
    Table { family: Family, name: String },
    /// The hairpin set, which several service ports share.
    HairpinSet,
    /// One service port's chain, rules or map element.
    Port(ServiceId),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Table { family, name } => write!(f, "table {} {name}", family.name()),
            Subject::HairpinSet => write!(f, "set {}", super::HAIRPIN_ENDPOINTS),
            Subject::Port(id) => write!(f, "{id}"),
        }
    }
}

/// Counts of what a sync sent, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchSummary {
    pub messages: usize,
    pub bytes: usize,
    /// Service ports the batch programs (a full sync) or changes (a partial one).
    pub services: usize,
}

/// A batch ready to send, with the subjects its errors would refer to.
pub struct PreparedBatch {
    pub wire: Vec<u8>,
    pub tags: Vec<MessageTag>,
    pub first_seq: u32,
    pub subjects: Vec<Subject>,
    pub summary: BatchSummary,
}

impl PreparedBatch {
    /// The subject of a message, by its tag; `None` for the transaction as a whole.
    pub fn subject(&self, tag: Option<MessageTag>) -> Option<&Subject> {
        let tag = tag?;
        (tag.subject != NO_SUBJECT)
            .then(|| self.subjects.get(tag.subject as usize))
            .flatten()
    }

    /// Describes the object a kernel error refers to.
    pub fn describe(&self, tag: Option<MessageTag>) -> String {
        match (tag, self.subject(tag)) {
            (None, _) => "the transaction as a whole (commit)".into(),
            (Some(tag), Some(subject)) => format!("{} for {subject}", tag.action),
            (Some(tag), None) => tag.action.to_string(),
        }
    }
}

/// Collects messages and the subjects their errors name.
pub struct Writer<'t> {
    pub tables: &'t Tables,
    pub batch: Batch,
    subjects: Vec<Subject>,
    services: usize,
}

impl<'t> Writer<'t> {
    pub fn new(tables: &'t Tables, first_seq: u32, services: usize) -> Writer<'t> {
        Writer {
            tables,
            batch: Batch::new(first_seq),
            subjects: Vec::new(),
            services,
        }
    }

    pub fn subject(&mut self, subject: Subject) -> u32 {
        self.subjects.push(subject);
        (self.subjects.len() - 1) as u32
    }

    pub fn table_subject(&mut self, family: Family, shard: u32) -> u32 {
        let name = self.tables.name(shard).to_string();
        self.subject(Subject::Table { family, name })
    }

    pub fn finish(self) -> PreparedBatch {
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

pub fn tag(action: &'static str, subject: u32) -> MessageTag {
    MessageTag { action, subject }
}
