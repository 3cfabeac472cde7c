//! A NETLINK_NETFILTER socket that sends one nf_tables batch atomically and reports
//! which messages, if any, the kernel rejected.
//!
//! Only errors are acknowledged: per-message acks for a 100 000-message batch would
//! overflow any receive buffer (the kernel drops them and the sender sees ENOBUFS), and
//! they carry no information when everything succeeded. The kernel processes a batch
//! synchronously inside `send`, so once a following `GETGEN` request is answered every
//! error the batch produced is already queued ahead of that answer.

mod batch;
mod socket;

pub use batch::{Batch, BatchError};
pub use socket::Socket;

pub const NLM_F_REQUEST: u16 = libc::NLM_F_REQUEST as u16;
pub const NLM_F_ACK: u16 = libc::NLM_F_ACK as u16;
pub const NLM_F_EXCL: u16 = libc::NLM_F_EXCL as u16;
pub const NLM_F_CREATE: u16 = libc::NLM_F_CREATE as u16;
pub const NLM_F_APPEND: u16 = libc::NLM_F_APPEND as u16;
pub const NLM_F_NONREC: u16 = libc::NLM_F_NONREC as u16;
/// NLM_F_ROOT | NLM_F_MATCH: every object, in as many messages as it takes.
pub const NLM_F_DUMP: u16 = libc::NLM_F_DUMP as u16;

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLA_HDRLEN: usize = 4;
const NLA_F_NESTED: u16 = libc::NLA_F_NESTED as u16;
const NFNL_SUBSYS_NFTABLES: u16 = libc::NFNL_SUBSYS_NFTABLES as u16;
const NFT_MSG_NEWGEN: u16 = libc::NFT_MSG_NEWGEN as u16;
const NFT_MSG_GETGEN: u16 = libc::NFT_MSG_GETGEN as u16;

/// The largest a nested attribute may grow: `nla_len` is 16 bits.
pub const MAX_ATTR_LEN: usize = u16::MAX as usize;

const fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// What a message in a batch programs, kept so a kernel error can name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageTag {
    /// A static description such as "add rule" or "add chain".
    pub action: &'static str,
    /// An index into the caller's list of subjects, or `NO_SUBJECT`.
    pub subject: u32,
}

pub const NO_SUBJECT: u32 = u32::MAX;

fn push_header(buf: &mut Vec<u8>, msg_type: u16, flags: u16, seq: u32, family: u8, res_id: u16) {
    buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched later
    buf.extend_from_slice(&msg_type.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    buf.push(family);
    buf.push(0); // NFNETLINK_V0
    buf.extend_from_slice(&res_id.to_be_bytes());
}

fn patch_len(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// An attribute whose value is the concatenation of `parts`, padded to 4 bytes.
fn push_attr(buf: &mut Vec<u8>, kind: u16, parts: &[&[u8]]) {
    let len = NLA_HDRLEN + parts.iter().map(|p| p.len()).sum::<usize>();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    for part in parts {
        buf.extend_from_slice(part);
    }
    buf.resize(buf.len() + align4(len) - len, 0);
}

/// The attributes in `bytes`, as (type without the nested flag, value); stops at the first
/// malformed one.
pub fn attributes(bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.len() < NLA_HDRLEN {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & !NLA_F_NESTED;
        if len < NLA_HDRLEN || len > rest.len() {
            return None;
        }
        let value = &rest[NLA_HDRLEN..len];
        rest = &rest[align4(len).min(rest.len())..];
        Some((kind, value))
    })
}

/// A NUL-terminated string attribute's text.
pub fn attr_text(value: &[u8]) -> Option<&str> {
    std::str::from_utf8(value.split(|&b| b == 0).next()?).ok()
}
