//! What the dataplane needs of the kernel, and the netlink socket that provides it.

use std::io;

use crate::netlink::{BatchError, Socket};
use crate::nft::{self, Family};
use crate::ruleset::PreparedBatch;

/// Commits batches and reads tables and rules back.
pub trait Kernel: Send + Sync {
    /// The sequence number the next batch should start at.
    fn next_seq(&self) -> u32;
    /// The names of the tables of a family.
    fn table_names(&mut self, family: Family) -> io::Result<Vec<String>>;
    /// Sends a batch: every error the kernel reported (none: committed; any: nothing
    /// changed).
    fn send(&mut self, batch: &PreparedBatch) -> io::Result<Vec<BatchError>>;
    /// The rules of a table, as dumped (nfgenmsg and attributes each).
    fn rules(&mut self, family: Family, table: &str) -> io::Result<Vec<Vec<u8>>>;
}

impl Kernel for Socket {
    fn next_seq(&self) -> u32 {
        Socket::next_seq(self)
    }

    fn table_names(&mut self, family: Family) -> io::Result<Vec<String>> {
        let tables = self.dump(nft::NFT_MSG_GETTABLE, family.nfproto(), &[])?;
        Ok(tables
            .iter()
            .filter_map(|payload| nft::parse_table_name(payload))
            .map(str::to_string)
            .collect())
    }

    fn send(&mut self, batch: &PreparedBatch) -> io::Result<Vec<BatchError>> {
        self.send_batch(&batch.wire, &batch.tags, batch.first_seq)
    }

    fn rules(&mut self, family: Family, table: &str) -> io::Result<Vec<Vec<u8>>> {
        self.dump(
            nft::NFT_MSG_GETRULE,
            family.nfproto(),
            &[(nft::NFTA_RULE_TABLE, table)],
        )
    }
}
