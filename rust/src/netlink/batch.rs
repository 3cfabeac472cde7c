//! A batch of nf_tables messages: the wire bytes and what each message programs.

use super::{
    patch_len, push_attr, push_header, MessageTag, MAX_ATTR_LEN, NFNL_SUBSYS_NFTABLES,
    NLA_F_NESTED, NLM_F_REQUEST,
};

const NFNL_MSG_BATCH_BEGIN: u16 = libc::NFNL_MSG_BATCH_BEGIN as u16;
const NFNL_MSG_BATCH_END: u16 = libc::NFNL_MSG_BATCH_END as u16;

/// A batch of nf_tables messages under construction, framed by BATCH_BEGIN/END.
pub struct Batch {
    buf: Vec<u8>,
    first_seq: u32,
    tags: Vec<MessageTag>,
    open_message: Option<usize>,
    open_nests: Vec<usize>,
}

/// A kernel rejection, tied back to the message that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchError {
    pub errno: i32,
    /// `None` when the failure was not tied to one message (for example at commit).
    pub tag: Option<MessageTag>,
    /// The kernel's extended-ack text, when it gave one.
    pub message: Option<String>,
}

impl Batch {
    pub fn new(first_seq: u32) -> Self {
        let mut batch = Batch {
            buf: Vec::with_capacity(1 << 16),
            first_seq,
            tags: Vec::new(),
            open_message: None,
            open_nests: Vec::new(),
        };
        batch.push_control(NFNL_MSG_BATCH_BEGIN);
        batch
    }

    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Number of nf_tables messages, not counting the batch frame.
    pub fn message_count(&self) -> usize {
        self.tags.len()
    }

    fn next_seq(&self) -> u32 {
        // seq first_seq is BATCH_BEGIN; message i has first_seq + 1 + i.
        self.first_seq.wrapping_add(1 + self.tags.len() as u32)
    }

    fn push_header(&mut self, msg_type: u16, flags: u16, seq: u32, family: u8, res_id: u16) {
        push_header(&mut self.buf, msg_type, flags, seq, family, res_id);
    }

    fn patch_len(&mut self, start: usize) {
        patch_len(&mut self.buf, start);
    }

    fn push_control(&mut self, msg_type: u16) {
        let start = self.buf.len();
        let seq = if msg_type == NFNL_MSG_BATCH_BEGIN {
            self.first_seq
        } else {
            self.next_seq()
        };
        self.push_header(
            msg_type,
            NLM_F_REQUEST,
            seq,
            libc::AF_UNSPEC as u8,
            NFNL_SUBSYS_NFTABLES,
        );
        self.patch_len(start);
    }

    /// Starts an nf_tables message; attributes follow until [`Batch::end_message`].
    pub fn begin_message(&mut self, family: u8, msg: u16, flags: u16, tag: MessageTag) {
        debug_assert!(self.open_message.is_none(), "message left open");
        let start = self.buf.len();
        let seq = self.next_seq();
        self.push_header(
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            NLM_F_REQUEST | flags,
            seq,
            family,
            0,
        );
        self.tags.push(tag);
        self.open_message = Some(start);
    }

    pub fn end_message(&mut self) {
        debug_assert!(self.open_nests.is_empty(), "attribute nest left open");
        let start = self.open_message.take().expect("no open message");
        self.patch_len(start);
    }

    pub fn attr_bytes(&mut self, kind: u16, value: &[u8]) {
        push_attr(&mut self.buf, kind, &[value]);
    }

    /// A NUL-terminated string attribute, as nf_tables expects for names.
    pub fn attr_str(&mut self, kind: u16, value: &str) {
        push_attr(&mut self.buf, kind, &[value.as_bytes(), &[0]]);
    }

    /// nf_tables integer attributes are big-endian.
    pub fn attr_be32(&mut self, kind: u16, value: u32) {
        self.attr_bytes(kind, &value.to_be_bytes());
    }

    pub fn attr_be64(&mut self, kind: u16, value: u64) {
        self.attr_bytes(kind, &value.to_be_bytes());
    }

    pub fn nest_start(&mut self, kind: u16) {
        self.open_nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }

    /// Closes the innermost nest. Callers keep nests under [`MAX_ATTR_LEN`]; a larger one
    /// would silently wrap `nla_len`, so it is a programming error.
    pub fn nest_end(&mut self) {
        let start = self.open_nests.pop().expect("no open nest");
        let len = self.buf.len() - start;
        assert!(len <= MAX_ATTR_LEN, "netlink attribute nest of {len} bytes");
        self.buf[start..start + 2].copy_from_slice(&(len as u16).to_ne_bytes());
    }

    /// Bytes written since `mark` (a value of [`Batch::len_bytes`]).
    pub fn bytes_since(&self, mark: usize) -> usize {
        self.buf.len() - mark
    }

    /// Closes the batch and returns the wire bytes and the tag of every message.
    pub fn finish(mut self) -> (Vec<u8>, Vec<MessageTag>, u32) {
        self.push_control(NFNL_MSG_BATCH_END);
        let first = self.first_seq;
        (self.buf, self.tags, first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{NLM_F_CREATE, NO_SUBJECT};

    #[test]
    fn batch_frames_messages_with_consecutive_sequence_numbers() {
        let mut batch = Batch::new(100);
        batch.begin_message(
            2,
            0,
            NLM_F_CREATE,
            MessageTag {
                action: "add table",
                subject: NO_SUBJECT,
            },
        );
        batch.attr_str(1, "t");
        batch.end_message();
        let (wire, tags, first) = batch.finish();
        assert_eq!(first, 100);
        assert_eq!(tags.len(), 1);
        // begin (20 bytes) + table message (20 + 8) + end (20)
        assert_eq!(wire.len(), 20 + 28 + 20);
        let seqs: Vec<u32> = [0usize, 20, 48]
            .iter()
            .map(|&o| u32::from_ne_bytes(wire[o + 8..o + 12].try_into().unwrap()))
            .collect();
        assert_eq!(seqs, vec![100, 101, 102]);
        // The string attribute is NUL-terminated and padded to 4 bytes.
        assert_eq!(&wire[40..48], &[6, 0, 1, 0, b't', 0, 0, 0]);
    }

    #[test]
    fn nests_record_their_length() {
        let mut batch = Batch::new(1);
        batch.begin_message(
            2,
            6,
            0,
            MessageTag {
                action: "add rule",
                subject: 0,
            },
        );
        let mark = batch.len_bytes();
        batch.nest_start(4);
        batch.attr_be32(1, 7);
        batch.nest_end();
        assert_eq!(batch.bytes_since(mark), 12);
        batch.end_message();
        let (wire, _, _) = batch.finish();
        let nest = &wire[40..52];
        assert_eq!(u16::from_ne_bytes([nest[0], nest[1]]), 12);
        assert_eq!(u16::from_ne_bytes([nest[2], nest[3]]), 4 | NLA_F_NESTED);
        assert_eq!(&nest[8..12], &7u32.to_be_bytes());
    }
}
