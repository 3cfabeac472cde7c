//! Tables, chains, sets and maps, and set elements.

use super::{
    TableRef, DATA_VERDICT, NFTA_DATA_VALUE, NFTA_LIST_ELEM, NFTA_RULE_CHAIN, NFTA_RULE_TABLE,
    NFTA_TABLE_NAME, NFT_GOTO, NFT_JUMP, NFT_MSG_DELCHAIN, NFT_MSG_DELRULE, NFT_MSG_DELSETELEM,
    NFT_MSG_DELTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWSET, NFT_MSG_NEWSETELEM, NFT_MSG_NEWTABLE,
    NFT_RETURN, NF_ACCEPT, SET_CONCAT, SET_ELEM_INTERVAL_END, SET_MAP,
};
use crate::netlink::{Batch, MessageTag, MAX_ATTR_LEN, NLM_F_CREATE};

const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_TIMEOUT: u16 = 11;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_DESC_CONCAT: u16 = 2;
const NFTA_SET_FIELD_LEN: u16 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
/// Userdata TLVs that nft reads back to print sets (libnftnl's udata types).
const UDATA_SET_KEYBYTEORDER: u8 = 0;
const UDATA_SET_DATABYTEORDER: u8 = 1;
/// Bits per field of a concatenation's data type id, as nft encodes it.
const TYPE_BITS: u32 = 6;

/// The data type id of a concatenation, as nft encodes it.
pub const fn concat_type(types: &[u32]) -> u32 {
    let mut id = 0;
    let mut i = 0;
    while i < types.len() {
        id = (id << TYPE_BITS) | types[i];
        i += 1;
    }
    id
}

pub fn add_table(batch: &mut Batch, table: TableRef<'_>, tag: MessageTag) {
    batch.begin_message(table.family.nfproto(), NFT_MSG_NEWTABLE, NLM_F_CREATE, tag);
    batch.attr_str(NFTA_TABLE_NAME, table.name);
    batch.attr_be32(NFTA_TABLE_FLAGS, 0);
    batch.end_message();
}

/// Deletes a table and everything in it. Callers that cannot know whether it exists add
/// it first: "add; delete" is valid in one batch and works on every kernel.
pub fn delete_table(batch: &mut Batch, table: TableRef<'_>, tag: MessageTag) {
    batch.begin_message(table.family.nfproto(), NFT_MSG_DELTABLE, 0, tag);
    batch.attr_str(NFTA_TABLE_NAME, table.name);
    batch.end_message();
}

/// A base chain's hook: where in the stack it runs and what kind of chain it is.
#[derive(Clone, Copy)]
pub struct Hook {
    pub kind: &'static str,
    pub hooknum: u32,
    pub priority: i32,
}

pub fn add_chain(
    batch: &mut Batch,
    table: TableRef<'_>,
    name: &str,
    hook: Option<Hook>,
    tag: MessageTag,
) {
    batch.begin_message(table.family.nfproto(), NFT_MSG_NEWCHAIN, NLM_F_CREATE, tag);
    batch.attr_str(NFTA_CHAIN_TABLE, table.name);
    batch.attr_str(NFTA_CHAIN_NAME, name);
    if let Some(hook) = hook {
        batch.nest_start(NFTA_CHAIN_HOOK);
        batch.attr_be32(NFTA_HOOK_HOOKNUM, hook.hooknum);
        batch.attr_be32(NFTA_HOOK_PRIORITY, hook.priority as u32);
        batch.nest_end();
        batch.attr_str(NFTA_CHAIN_TYPE, hook.kind);
        batch.attr_be32(NFTA_CHAIN_POLICY, NF_ACCEPT as u32);
    }
    batch.end_message();
}

/// Deletes a chain and its rules; nothing may still jump to it.
pub fn delete_chain(batch: &mut Batch, table: TableRef<'_>, name: &str, tag: MessageTag) {
    batch.begin_message(table.family.nfproto(), NFT_MSG_DELCHAIN, 0, tag);
    batch.attr_str(NFTA_CHAIN_TABLE, table.name);
    batch.attr_str(NFTA_CHAIN_NAME, name);
    batch.end_message();
}

/// Deletes every rule of a chain (a DELRULE naming only the chain).
pub fn flush_chain(batch: &mut Batch, table: TableRef<'_>, name: &str, tag: MessageTag) {
    batch.begin_message(table.family.nfproto(), NFT_MSG_DELRULE, 0, tag);
    batch.attr_str(NFTA_RULE_TABLE, table.name);
    batch.attr_str(NFTA_RULE_CHAIN, name);
    batch.end_message();
}

/// What a set's elements map to.
#[derive(Clone, Copy)]
pub enum SetData {
    None,
    Verdict,
    Value {
        type_id: u32,
        len: u32,
        byteorder: u32,
    },
}

/// A named set or map.
pub struct SetSpec<'a> {
    pub name: &'a str,
    /// One entry per key field: (nft data type, length in bytes).
    pub key: &'a [(u32, u32)],
    pub key_byteorder: u32,
    pub data: SetData,
    pub flags: u32,
    /// Default element timeout in milliseconds, for sets with `SET_TIMEOUT`.
    pub timeout_ms: Option<u64>,
}

/// Key bytes of a concatenation: each field is padded to a whole register.
pub fn key_len(fields: &[(u32, u32)]) -> u32 {
    fields.iter().map(|&(_, len)| len.div_ceil(4) * 4).sum()
}

fn put_udata(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

pub fn add_set(
    batch: &mut Batch,
    table: TableRef<'_>,
    set: &SetSpec<'_>,
    id: u32,
    tag: MessageTag,
) {
    let types: Vec<u32> = set.key.iter().map(|&(t, _)| t).collect();
    let mut flags = set.flags;
    if set.key.len() > 1 {
        flags |= SET_CONCAT;
    }
    if !matches!(set.data, SetData::None) {
        flags |= SET_MAP;
    }
    batch.begin_message(table.family.nfproto(), NFT_MSG_NEWSET, NLM_F_CREATE, tag);
    batch.attr_str(NFTA_SET_TABLE, table.name);
    batch.attr_str(NFTA_SET_NAME, set.name);
    batch.attr_be32(NFTA_SET_FLAGS, flags);
    batch.attr_be32(NFTA_SET_KEY_TYPE, concat_type(&types));
    batch.attr_be32(NFTA_SET_KEY_LEN, key_len(set.key));
    let mut udata = Vec::with_capacity(12);
    put_udata(
        &mut udata,
        UDATA_SET_KEYBYTEORDER,
        &set.key_byteorder.to_ne_bytes(),
    );
    match set.data {
        SetData::None => {}
        SetData::Verdict => {
            batch.attr_be32(NFTA_SET_DATA_TYPE, DATA_VERDICT);
        }
        SetData::Value {
            type_id,
            len,
            byteorder,
        } => {
            batch.attr_be32(NFTA_SET_DATA_TYPE, type_id);
            batch.attr_be32(NFTA_SET_DATA_LEN, len);
            put_udata(
                &mut udata,
                UDATA_SET_DATABYTEORDER,
                &byteorder.to_ne_bytes(),
            );
        }
    }
    batch.attr_be32(NFTA_SET_ID, id);
    if let Some(timeout) = set.timeout_ms {
        batch.attr_be64(NFTA_SET_TIMEOUT, timeout);
    }
    if set.key.len() > 1 {
        batch.nest_start(NFTA_SET_DESC);
        batch.nest_start(NFTA_SET_DESC_CONCAT);
        for &(_, len) in set.key {
            batch.nest_start(NFTA_LIST_ELEM);
            batch.attr_be32(NFTA_SET_FIELD_LEN, len);
            batch.nest_end();
        }
        batch.nest_end();
        batch.nest_end();
    }
    batch.attr_bytes(NFTA_SET_USERDATA, &udata);
    batch.end_message();
}

/// A verdict: accept, return, or a jump / goto to a named chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    Accept,
    Return,
    Jump(&'a str),
    Goto(&'a str),
}

pub(super) fn put_verdict(batch: &mut Batch, verdict: Verdict<'_>) {
    batch.nest_start(NFTA_DATA_VERDICT);
    let (code, chain) = match verdict {
        Verdict::Accept => (NF_ACCEPT, None),
        Verdict::Return => (NFT_RETURN, None),
        Verdict::Jump(chain) => (NFT_JUMP, Some(chain)),
        Verdict::Goto(chain) => (NFT_GOTO, Some(chain)),
    };
    batch.attr_be32(NFTA_VERDICT_CODE, code as u32);
    if let Some(chain) = chain {
        batch.attr_str(NFTA_VERDICT_CHAIN, chain);
    }
    batch.nest_end();
}

pub(super) fn put_value(batch: &mut Batch, kind: u16, value: &[u8]) {
    batch.nest_start(kind);
    batch.attr_bytes(NFTA_DATA_VALUE, value);
    batch.nest_end();
}

/// One set element.
pub struct Element<'a> {
    pub key: &'a [u8],
    pub data: ElementData<'a>,
    pub interval_end: bool,
    pub timeout_ms: Option<u64>,
}

pub enum ElementData<'a> {
    None,
    Verdict(Verdict<'a>),
    Value(&'a [u8]),
}

/// Adds or deletes set elements, as many messages as the 64 KiB attribute limit needs.
/// `tag_of` names each message after the first element it carries.
pub fn set_elements<'e>(
    batch: &mut Batch,
    table: TableRef<'_>,
    set: &str,
    delete: bool,
    elements: impl IntoIterator<Item = (Element<'e>, MessageTag)>,
) {
    // Leave room for the element being written and the message's own attributes.
    const SOFT_LIMIT: usize = MAX_ATTR_LEN - 1024;
    let (msg, flags) = if delete {
        (NFT_MSG_DELSETELEM, 0)
    } else {
        (NFT_MSG_NEWSETELEM, NLM_F_CREATE)
    };
    let mut list_start: Option<usize> = None;
    for (element, tag) in elements {
        if let Some(start) = list_start {
            if batch.bytes_since(start) > SOFT_LIMIT {
                batch.nest_end();
                batch.end_message();
                list_start = None;
            }
        }
        if list_start.is_none() {
            batch.begin_message(table.family.nfproto(), msg, flags, tag);
            batch.attr_str(NFTA_SET_ELEM_LIST_TABLE, table.name);
            batch.attr_str(NFTA_SET_ELEM_LIST_SET, set);
            list_start = Some(batch.len_bytes());
            batch.nest_start(NFTA_SET_ELEM_LIST_ELEMENTS);
        }
        batch.nest_start(NFTA_LIST_ELEM);
        put_value(batch, NFTA_SET_ELEM_KEY, element.key);
        match element.data {
            ElementData::None => {}
            ElementData::Verdict(verdict) => {
                batch.nest_start(NFTA_SET_ELEM_DATA);
                put_verdict(batch, verdict);
                batch.nest_end();
            }
            ElementData::Value(value) => put_value(batch, NFTA_SET_ELEM_DATA, value),
        }
        if element.interval_end {
            batch.attr_be32(NFTA_SET_ELEM_FLAGS, SET_ELEM_INTERVAL_END);
        }
        if let Some(timeout) = element.timeout_ms {
            batch.attr_be64(NFTA_SET_ELEM_TIMEOUT, timeout);
        }
        batch.nest_end();
    }
    if list_start.is_some() {
        batch.nest_end();
        batch.end_message();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::NO_SUBJECT;
    use crate::nft::{
        reg_after, Family, REG32_00, TYPE_INET_PROTOCOL, TYPE_INET_SERVICE, TYPE_IPADDR,
    };

    const TAG: MessageTag = MessageTag {
        action: "test",
        subject: NO_SUBJECT,
    };

    #[test]
    fn concatenated_key_types_and_lengths_follow_nft() {
        let key = [
            (TYPE_IPADDR, 4),
            (TYPE_INET_PROTOCOL, 1),
            (TYPE_INET_SERVICE, 2),
        ];
        assert_eq!(
            concat_type(&[TYPE_IPADDR, TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]),
            (7 << 12) | (12 << 6) | 13
        );
        assert_eq!(key_len(&key), 12);
        assert_eq!(reg_after(REG32_00, 4), REG32_00 + 1);
        assert_eq!(reg_after(REG32_00, 16), REG32_00 + 4);
    }

    #[test]
    fn element_lists_split_before_the_attribute_limit() {
        let mut batch = Batch::new(1);
        let table = TableRef {
            family: Family::Ip,
            name: "t",
        };
        let keys: Vec<[u8; 8]> = (0u32..5000)
            .map(|i| {
                let mut k = [0u8; 8];
                k[..4].copy_from_slice(&i.to_be_bytes());
                k
            })
            .collect();
        set_elements(
            &mut batch,
            table,
            "s",
            false,
            keys.iter().map(|k| {
                (
                    Element {
                        key: k,
                        data: ElementData::None,
                        interval_end: false,
                        timeout_ms: None,
                    },
                    TAG,
                )
            }),
        );
        // 5000 elements of ~24 bytes cannot fit one 64 KiB attribute.
        assert!(batch.message_count() >= 2, "{}", batch.message_count());
        let (wire, tags, _) = batch.finish();
        assert_eq!(tags.len(), batch_messages(&wire) - 2);
    }

    fn batch_messages(wire: &[u8]) -> usize {
        let mut count = 0;
        let mut offset = 0;
        while offset < wire.len() {
            let len = u32::from_ne_bytes(wire[offset..offset + 4].try_into().unwrap()) as usize;
            assert!(len >= 16 && offset + len <= wire.len());
            offset += (len + 3) & !3;
            count += 1;
        }
        count
    }
}
