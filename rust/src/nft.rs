//! Encoders for nf_tables objects (tables, chains, sets, maps, elements, rules) and the
//! rule expressions a service proxy needs, written into a netlink [`Batch`].
//!
//! Numbers and layouts follow `include/uapi/linux/netfilter/nf_tables.h`. Integers inside
//! nf_tables attributes are big-endian; register contents are raw bytes.

use crate::netlink::{
    attr_text, attributes, Batch, MessageTag, MAX_ATTR_LEN, NLM_F_APPEND, NLM_F_CREATE,
};

/// Address families, as nfgenmsg carries them (NFPROTO_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Ip,
    Ip6,
}

impl Family {
    pub fn nfproto(self) -> u8 {
        match self {
            Family::Ip => 2,
            Family::Ip6 => 10,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }

    pub fn addr_len(self) -> u32 {
        match self {
            Family::Ip => 4,
            Family::Ip6 => 16,
        }
    }

    /// Offsets of the source and destination address in the network header.
    pub fn saddr_offset(self) -> u32 {
        match self {
            Family::Ip => 12,
            Family::Ip6 => 8,
        }
    }

    pub fn daddr_offset(self) -> u32 {
        match self {
            Family::Ip => 16,
            Family::Ip6 => 24,
        }
    }

    /// nft's data type for this family's addresses (ipv4_addr / ipv6_addr).
    pub fn addr_type(self) -> u32 {
        match self {
            Family::Ip => TYPE_IPADDR,
            Family::Ip6 => TYPE_IP6ADDR,
        }
    }
}

// Message types.
pub const NFT_MSG_NEWTABLE: u16 = 0;
pub const NFT_MSG_GETTABLE: u16 = 1;
pub const NFT_MSG_DELTABLE: u16 = 2;
pub const NFT_MSG_NEWCHAIN: u16 = 3;
pub const NFT_MSG_DELCHAIN: u16 = 5;
pub const NFT_MSG_NEWRULE: u16 = 6;
pub const NFT_MSG_GETRULE: u16 = 7;
pub const NFT_MSG_DELRULE: u16 = 8;
pub const NFT_MSG_NEWSET: u16 = 9;
pub const NFT_MSG_NEWSETELEM: u16 = 12;
pub const NFT_MSG_DELSETELEM: u16 = 14;

// Registers: the verdict register and the sixteen 32-bit data registers.
pub const REG_VERDICT: u32 = 0;
pub const REG32_00: u32 = 8;

/// The 32-bit register after `bytes` bytes of data that starts at `reg`.
pub fn reg_after(reg: u32, bytes: u32) -> u32 {
    reg + bytes.div_ceil(4)
}

// Hooks and verdicts.
pub const HOOK_PREROUTING: u32 = 0;
pub const HOOK_INPUT: u32 = 1;
pub const HOOK_FORWARD: u32 = 2;
pub const HOOK_OUTPUT: u32 = 3;
pub const HOOK_POSTROUTING: u32 = 4;

pub const NF_ACCEPT: i32 = 1;
pub const NFT_JUMP: i32 = -3;
pub const NFT_GOTO: i32 = -4;
pub const NFT_RETURN: i32 = -5;

/// Data types nft uses to print set keys (nft's `enum datatypes`).
pub const TYPE_IPADDR: u32 = 7;
pub const TYPE_IP6ADDR: u32 = 8;
pub const TYPE_INET_PROTOCOL: u32 = 12;
pub const TYPE_INET_SERVICE: u32 = 13;
pub const TYPE_MARK: u32 = 19;
const TYPE_BITS: u32 = 6;

/// The data type id of a concatenation, as nft encodes it.
pub fn concat_type(types: &[u32]) -> u32 {
    types.iter().fold(0, |acc, t| (acc << TYPE_BITS) | t)
}

/// Set data type of verdict maps.
pub const DATA_VERDICT: u32 = 0xffff_ff00;

// Set flags.
pub const SET_INTERVAL: u32 = 0x4;
pub const SET_MAP: u32 = 0x8;
pub const SET_TIMEOUT: u32 = 0x10;
pub const SET_EVAL: u32 = 0x20;
pub const SET_CONCAT: u32 = 0x80;

pub const SET_ELEM_INTERVAL_END: u32 = 0x1;

// Payload bases.
pub const PAYLOAD_NETWORK: u32 = 1;
pub const PAYLOAD_TRANSPORT: u32 = 2;

// Meta keys.
pub const META_MARK: u32 = 3;
pub const META_L4PROTO: u32 = 16;

// Conntrack keys and bits.
pub const CT_STATE: u32 = 0;
pub const CT_STATUS: u32 = 2;
pub const CT_STATE_NEW: u32 = 1 << 3;
pub const CT_STATUS_DNAT: u32 = 1 << 5;

// Comparison operators.
pub const CMP_EQ: u32 = 0;
pub const CMP_NEQ: u32 = 1;
pub const CMP_LT: u32 = 2;

pub const BYTEORDER_HTON: u32 = 1;
pub const NUMGEN_RANDOM: u32 = 1;
pub const LOOKUP_INVERT: u32 = 1;
pub const DYNSET_UPDATE: u32 = 1;

pub const NAT_SNAT: u32 = 0;
pub const NAT_DNAT: u32 = 1;
pub const NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 16;

pub const REJECT_ICMP_UNREACH: u32 = 0;
pub const REJECT_TCP_RST: u32 = 1;
pub const ICMP_PORT_UNREACH: u8 = 3;
pub const ICMPV6_PORT_UNREACH: u8 = 4;

// Attribute numbers, grouped by object.
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
pub const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
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
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
/// nfgenmsg, before a dumped object's attributes.
const NFGENMSG_LEN: usize = 4;

// Userdata TLVs that nft reads back to print objects (libnftnl's udata types).
const UDATA_RULE_COMMENT: u8 = 0;
const UDATA_SET_KEYBYTEORDER: u8 = 0;
const UDATA_SET_DATABYTEORDER: u8 = 1;
/// nft's `enum byteorder`.
pub const BYTEORDER_HOST: u32 = 1;
pub const BYTEORDER_BIG: u32 = 2;
/// nft truncates comments beyond this; the kernel caps userdata at 256 bytes.
pub const MAX_COMMENT: usize = 128;

/// Identifies the table every message of a batch writes to.
#[derive(Clone, Copy)]
pub struct TableRef<'a> {
    pub family: Family,
    pub name: &'a str,
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

fn put_verdict(batch: &mut Batch, verdict: Verdict<'_>) {
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

fn put_value(batch: &mut Batch, kind: u16, value: &[u8]) {
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

/// Appends one rule to a chain; expressions are added through the builder's methods.
pub struct RuleBuilder<'b> {
    batch: &'b mut Batch,
}

impl<'b> RuleBuilder<'b> {
    pub fn new(batch: &'b mut Batch, table: TableRef<'_>, chain: &str, tag: MessageTag) -> Self {
        batch.begin_message(
            table.family.nfproto(),
            NFT_MSG_NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            tag,
        );
        batch.attr_str(NFTA_RULE_TABLE, table.name);
        batch.attr_str(NFTA_RULE_CHAIN, chain);
        batch.nest_start(NFTA_RULE_EXPRESSIONS);
        RuleBuilder { batch }
    }

    fn expr(&mut self, name: &str, body: impl FnOnce(&mut Batch)) -> &mut Self {
        self.batch.nest_start(NFTA_LIST_ELEM);
        self.batch.attr_str(NFTA_EXPR_NAME, name);
        self.batch.nest_start(NFTA_EXPR_DATA);
        body(self.batch);
        self.batch.nest_end();
        self.batch.nest_end();
        self
    }

    /// Loads `len` bytes at `offset` of a packet header into `dreg`.
    pub fn payload(&mut self, base: u32, offset: u32, len: u32, dreg: u32) -> &mut Self {
        self.expr("payload", |b| {
            b.attr_be32(1, dreg);
            b.attr_be32(2, base);
            b.attr_be32(3, offset);
            b.attr_be32(4, len);
        })
    }

    pub fn meta_load(&mut self, key: u32, dreg: u32) -> &mut Self {
        self.expr("meta", |b| {
            b.attr_be32(1, dreg);
            b.attr_be32(2, key);
        })
    }

    pub fn meta_set(&mut self, key: u32, sreg: u32) -> &mut Self {
        self.expr("meta", |b| {
            b.attr_be32(2, key);
            b.attr_be32(3, sreg);
        })
    }

    pub fn ct_load(&mut self, key: u32, dreg: u32) -> &mut Self {
        self.expr("ct", |b| {
            b.attr_be32(1, dreg);
            b.attr_be32(2, key);
        })
    }

    pub fn cmp(&mut self, op: u32, sreg: u32, data: &[u8]) -> &mut Self {
        self.expr("cmp", |b| {
            b.attr_be32(1, sreg);
            b.attr_be32(2, op);
            put_value(b, 3, data);
        })
    }

    /// `dreg = (sreg & mask) ^ xor` over `mask.len()` bytes.
    pub fn bitwise(&mut self, sreg: u32, dreg: u32, mask: &[u8], xor: &[u8]) -> &mut Self {
        debug_assert_eq!(mask.len(), xor.len());
        self.expr("bitwise", |b| {
            b.attr_be32(1, sreg);
            b.attr_be32(2, dreg);
            b.attr_be32(3, mask.len() as u32);
            put_value(b, 4, mask);
            put_value(b, 5, xor);
        })
    }

    pub fn byteorder(&mut self, op: u32, sreg: u32, dreg: u32, len: u32, size: u32) -> &mut Self {
        self.expr("byteorder", |b| {
            b.attr_be32(1, sreg);
            b.attr_be32(2, dreg);
            b.attr_be32(3, op);
            b.attr_be32(4, len);
            b.attr_be32(5, size);
        })
    }

    /// Looks the key in `sreg..` up in a named set; a map writes its value to `dreg`.
    pub fn lookup(&mut self, set: &str, sreg: u32, dreg: Option<u32>, flags: u32) -> &mut Self {
        self.expr("lookup", |b| {
            b.attr_str(1, set);
            b.attr_be32(2, sreg);
            if let Some(dreg) = dreg {
                b.attr_be32(3, dreg);
            }
            if flags != 0 {
                b.attr_be32(5, flags);
            }
        })
    }

    pub fn immediate(&mut self, dreg: u32, data: &[u8]) -> &mut Self {
        self.expr("immediate", |b| {
            b.attr_be32(1, dreg);
            put_value(b, 2, data);
        })
    }

    pub fn verdict(&mut self, verdict: Verdict<'_>) -> &mut Self {
        self.expr("immediate", |b| {
            b.attr_be32(1, REG_VERDICT);
            b.nest_start(2);
            put_verdict(b, verdict);
            b.nest_end();
        })
    }

    /// A random number in `0..modulus`, in host byte order, into `dreg`.
    pub fn numgen_random(&mut self, modulus: u32, dreg: u32) -> &mut Self {
        self.expr("numgen", |b| {
            b.attr_be32(1, dreg);
            b.attr_be32(2, modulus);
            b.attr_be32(3, NUMGEN_RANDOM);
        })
    }

    /// Source or destination NAT to the address in `addr_reg` and, if given, the port in
    /// `port_reg`; the kernel derives the range flags from which registers are present.
    pub fn nat(
        &mut self,
        kind: u32,
        family: Family,
        addr_reg: u32,
        port_reg: Option<u32>,
        flags: u32,
    ) -> &mut Self {
        self.expr("nat", |b| {
            b.attr_be32(1, kind);
            b.attr_be32(2, u32::from(family.nfproto()));
            b.attr_be32(3, addr_reg);
            if let Some(port_reg) = port_reg {
                b.attr_be32(5, port_reg);
            }
            if flags != 0 {
                b.attr_be32(7, flags);
            }
        })
    }

    pub fn masquerade(&mut self, flags: u32) -> &mut Self {
        self.expr("masq", |b| {
            if flags != 0 {
                b.attr_be32(1, flags);
            }
        })
    }

    pub fn counter(&mut self) -> &mut Self {
        self.expr("counter", |b| {
            b.attr_be64(1, 0);
            b.attr_be64(2, 0);
        })
    }

    pub fn reject(&mut self, kind: u32, code: u8) -> &mut Self {
        self.expr("reject", |b| {
            b.attr_be32(1, kind);
            b.attr_bytes(2, &[code]);
        })
    }

    /// Adds or refreshes the key in `sreg_key..` (and value in `sreg_data..`) in a set
    /// from the packet path, with an optional per-element timeout.
    pub fn dynset(
        &mut self,
        set: &str,
        op: u32,
        sreg_key: u32,
        sreg_data: Option<u32>,
        timeout_ms: Option<u64>,
    ) -> &mut Self {
        self.expr("dynset", |b| {
            b.attr_str(1, set);
            b.attr_be32(3, op);
            b.attr_be32(4, sreg_key);
            if let Some(sreg_data) = sreg_data {
                b.attr_be32(5, sreg_data);
            }
            if let Some(timeout) = timeout_ms {
                b.attr_be64(6, timeout);
            }
        })
    }

    /// Closes the rule, with a comment nft shows after it.
    pub fn finish(self, comment: Option<&str>) {
        self.batch.nest_end();
        if let Some(comment) = comment {
            let text = truncate_at_char(comment, MAX_COMMENT - 1);
            let mut udata = Vec::with_capacity(text.len() + 3);
            udata.push(UDATA_RULE_COMMENT);
            udata.push((text.len() + 1) as u8);
            udata.extend_from_slice(text.as_bytes());
            udata.push(0);
            self.batch.attr_bytes(NFTA_RULE_USERDATA, &udata);
        }
        self.batch.end_message();
    }
}

/// A rule as a GETRULE dump returns it: where it lives, its expressions as (name, data
/// attributes), and its comment.
pub struct DumpedRule<'a> {
    pub table: &'a str,
    pub chain: &'a str,
    pub expressions: Vec<(&'a str, &'a [u8])>,
    pub comment: Option<&'a str>,
}

/// Decodes one NEWRULE message of a dump (its payload after the netlink header).
pub fn parse_rule(payload: &[u8]) -> Option<DumpedRule<'_>> {
    let mut rule = DumpedRule {
        table: "",
        chain: "",
        expressions: Vec::new(),
        comment: None,
    };
    for (kind, value) in attributes(payload.get(NFGENMSG_LEN..)?) {
        match kind {
            NFTA_RULE_TABLE => rule.table = attr_text(value)?,
            NFTA_RULE_CHAIN => rule.chain = attr_text(value)?,
            NFTA_RULE_EXPRESSIONS => {
                for (_, expr) in attributes(value) {
                    let mut name = None;
                    let mut data: &[u8] = &[];
                    for (kind, value) in attributes(expr) {
                        match kind {
                            NFTA_EXPR_NAME => name = attr_text(value),
                            NFTA_EXPR_DATA => data = value,
                            _ => {}
                        }
                    }
                    rule.expressions.push((name?, data));
                }
            }
            NFTA_RULE_USERDATA => rule.comment = comment_of(value),
            _ => {}
        }
    }
    Some(rule)
}

/// The comment TLV of a rule's userdata.
fn comment_of(udata: &[u8]) -> Option<&str> {
    let mut rest = udata;
    while let [kind, len, tail @ ..] = rest {
        let value = tail.get(..usize::from(*len))?;
        if *kind == UDATA_RULE_COMMENT {
            return attr_text(value);
        }
        rest = &tail[value.len()..];
    }
    None
}

/// The name of a table in a GETTABLE dump's answer.
pub fn parse_table_name(payload: &[u8]) -> Option<&str> {
    attributes(payload.get(NFGENMSG_LEN..)?)
        .find(|&(kind, _)| kind == NFTA_TABLE_NAME)
        .and_then(|(_, value)| attr_text(value))
}

fn be32(value: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(value.get(..4)?.try_into().ok()?))
}

/// A register as a 32-bit register number: the kernel dumps a register that starts one of
/// the four legacy 16-byte registers under that register's number (NFT_REG_1 for REG32_00).
fn register(value: &[u8]) -> Option<u32> {
    match be32(value)? {
        legacy @ 1..=4 => Some(REG32_00 + (legacy - 1) * 4),
        reg => Some(reg),
    }
}

/// An `immediate` expression's data: (destination register, value bytes). Verdicts give
/// `None`.
pub fn immediate_value(data: &[u8]) -> Option<(u32, &[u8])> {
    let mut dreg = None;
    let mut value = None;
    for (kind, attr) in attributes(data) {
        match kind {
            NFTA_IMMEDIATE_DREG => dreg = register(attr),
            NFTA_IMMEDIATE_DATA => {
                value = attributes(attr)
                    .find(|&(kind, _)| kind == NFTA_DATA_VALUE)
                    .map(|(_, v)| v)
            }
            _ => {}
        }
    }
    Some((dreg?, value?))
}

/// A `nat` expression's (type, address register, port register if any).
pub fn nat_registers(data: &[u8]) -> Option<(u32, u32, Option<u32>)> {
    let mut kind_of = None;
    let mut addr = None;
    let mut port = None;
    for (kind, attr) in attributes(data) {
        match kind {
            NFTA_NAT_TYPE => kind_of = be32(attr),
            NFTA_NAT_REG_ADDR_MIN => addr = register(attr),
            NFTA_NAT_REG_PROTO_MIN => port = register(attr),
            _ => {}
        }
    }
    Some((kind_of?, addr?, port))
}

fn truncate_at_char(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::NO_SUBJECT;

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

    #[test]
    fn long_comments_are_cut_on_a_character_boundary() {
        let text = "é".repeat(100);
        let cut = truncate_at_char(&text, MAX_COMMENT - 1);
        assert!(cut.len() < MAX_COMMENT);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
