//! nf_tables for a service proxy: address families and the kernel's numbers ([`objects`]
//! and [`rule`] write tables, chains, sets, elements and rules into a netlink [`Batch`];
//! [`decode`] reads dumped rules back).
//!
//! Numbers and layouts follow `include/uapi/linux/netfilter/nf_tables.h`, taken from `libc`
//! where it has them (its `c_int` constants are cast to the widths netlink carries); the
//! attribute numbers, which `libc` lacks, are spelled out here. Integers inside nf_tables
//! attributes are big-endian; register contents are raw bytes.
//!
//! [`Batch`]: crate::netlink::Batch

mod decode;
mod objects;
mod rule;

pub use decode::{immediate_value, nat_registers, parse_rule, parse_table_name, DumpedRule};
pub use objects::{
    add_chain, add_set, add_table, concat_type, delete_chain, delete_table, flush_chain, key_len,
    set_elements, Element, ElementData, Hook, SetData, SetSpec, Verdict,
};
pub use rule::RuleBuilder;

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
pub const NFT_MSG_NEWTABLE: u16 = libc::NFT_MSG_NEWTABLE as u16;
pub const NFT_MSG_GETTABLE: u16 = libc::NFT_MSG_GETTABLE as u16;
pub const NFT_MSG_DELTABLE: u16 = libc::NFT_MSG_DELTABLE as u16;
pub const NFT_MSG_NEWCHAIN: u16 = libc::NFT_MSG_NEWCHAIN as u16;
pub const NFT_MSG_DELCHAIN: u16 = libc::NFT_MSG_DELCHAIN as u16;
pub const NFT_MSG_NEWRULE: u16 = libc::NFT_MSG_NEWRULE as u16;
pub const NFT_MSG_GETRULE: u16 = libc::NFT_MSG_GETRULE as u16;
pub const NFT_MSG_DELRULE: u16 = libc::NFT_MSG_DELRULE as u16;
pub const NFT_MSG_NEWSET: u16 = libc::NFT_MSG_NEWSET as u16;
pub const NFT_MSG_NEWSETELEM: u16 = libc::NFT_MSG_NEWSETELEM as u16;
pub const NFT_MSG_DELSETELEM: u16 = libc::NFT_MSG_DELSETELEM as u16;

// Registers: the verdict register and the sixteen 32-bit data registers.
pub const REG_VERDICT: u32 = libc::NFT_REG_VERDICT as u32;
pub const REG32_00: u32 = libc::NFT_REG32_00 as u32;

/// The 32-bit register after `bytes` bytes of data that starts at `reg`.
pub fn reg_after(reg: u32, bytes: u32) -> u32 {
    reg + bytes.div_ceil(4)
}

// Hooks and verdicts.
pub const HOOK_PREROUTING: u32 = libc::NF_INET_PRE_ROUTING as u32;
pub const HOOK_INPUT: u32 = libc::NF_INET_LOCAL_IN as u32;
pub const HOOK_FORWARD: u32 = libc::NF_INET_FORWARD as u32;
pub const HOOK_OUTPUT: u32 = libc::NF_INET_LOCAL_OUT as u32;
pub const HOOK_POSTROUTING: u32 = libc::NF_INET_POST_ROUTING as u32;

pub const NF_ACCEPT: i32 = libc::NF_ACCEPT;
pub const NFT_JUMP: i32 = libc::NFT_JUMP;
pub const NFT_GOTO: i32 = libc::NFT_GOTO;
pub const NFT_RETURN: i32 = libc::NFT_RETURN;

/// Data types nft uses to print set keys (nft's `enum datatypes`; not kernel ABI).
pub const TYPE_IPADDR: u32 = 7;
pub const TYPE_IP6ADDR: u32 = 8;
pub const TYPE_INET_PROTOCOL: u32 = 12;
pub const TYPE_INET_SERVICE: u32 = 13;
pub const TYPE_MARK: u32 = 19;

/// Set data type of verdict maps.
pub const DATA_VERDICT: u32 = libc::NFT_DATA_VERDICT;

// Set flags.
pub const SET_INTERVAL: u32 = libc::NFT_SET_INTERVAL as u32;
pub const SET_MAP: u32 = libc::NFT_SET_MAP as u32;
pub const SET_TIMEOUT: u32 = libc::NFT_SET_TIMEOUT as u32;
pub const SET_EVAL: u32 = libc::NFT_SET_EVAL as u32;
/// NFT_SET_CONCAT (Linux 5.6), not in libc.
pub const SET_CONCAT: u32 = 0x80;

pub const SET_ELEM_INTERVAL_END: u32 = libc::NFT_SET_ELEM_INTERVAL_END as u32;

// Payload bases.
pub const PAYLOAD_NETWORK: u32 = libc::NFT_PAYLOAD_NETWORK_HEADER as u32;
pub const PAYLOAD_TRANSPORT: u32 = libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32;

// Meta keys.
pub const META_MARK: u32 = libc::NFT_META_MARK as u32;
pub const META_L4PROTO: u32 = libc::NFT_META_L4PROTO as u32;

// Conntrack keys and bits.
pub const CT_STATE: u32 = libc::NFT_CT_STATE as u32;
pub const CT_STATUS: u32 = libc::NFT_CT_STATUS as u32;
/// NF_CT_STATE_BIT(IP_CT_NEW): not in libc.
pub const CT_STATE_NEW: u32 = 1 << 3;
/// IPS_DST_NAT: not in libc.
pub const CT_STATUS_DNAT: u32 = 1 << 5;

// Comparison operators.
pub const CMP_EQ: u32 = libc::NFT_CMP_EQ as u32;
pub const CMP_NEQ: u32 = libc::NFT_CMP_NEQ as u32;
pub const CMP_LT: u32 = libc::NFT_CMP_LT as u32;

pub const BYTEORDER_HTON: u32 = libc::NFT_BYTEORDER_HTON as u32;
pub const NUMGEN_RANDOM: u32 = libc::NFT_NG_RANDOM as u32;
pub const LOOKUP_INVERT: u32 = libc::NFT_LOOKUP_F_INV as u32;
pub const DYNSET_UPDATE: u32 = libc::NFT_DYNSET_OP_UPDATE as u32;

pub const NAT_SNAT: u32 = libc::NFT_NAT_SNAT as u32;
pub const NAT_DNAT: u32 = libc::NFT_NAT_DNAT as u32;
/// NF_NAT_RANGE_PROTO_RANDOM_FULLY: not in libc.
pub const NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 16;

pub const REJECT_ICMP_UNREACH: u32 = libc::NFT_REJECT_ICMP_UNREACH as u32;
pub const REJECT_TCP_RST: u32 = libc::NFT_REJECT_TCP_RST as u32;
/// ICMP_PORT_UNREACH and ICMPV6_PORT_UNREACH: not in libc.
pub const ICMP_PORT_UNREACH: u8 = 3;
pub const ICMPV6_PORT_UNREACH: u8 = 4;

// Attributes of tables and rules, which encoders and decoders share. NFTA_RULE_TABLE is
// public for dumps filtered by table.
const NFTA_TABLE_NAME: u16 = 1;
pub const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
/// nft's `enum byteorder` (set userdata, read by nft only).
pub const BYTEORDER_HOST: u32 = 1;
pub const BYTEORDER_BIG: u32 = 2;
/// nft truncates comments beyond this; the kernel caps userdata at 256 bytes.
pub const MAX_COMMENT: usize = 128;
/// nfgenmsg, before a dumped object's attributes.
const NFGENMSG_LEN: usize = 4;
/// Userdata TLV of a rule's comment (libnftnl's udata types).
const UDATA_RULE_COMMENT: u8 = 0;
// Attributes shared by several objects.
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;

/// Identifies the table every message of a batch writes to.
#[derive(Clone, Copy)]
pub struct TableRef<'a> {
    pub family: Family,
    pub name: &'a str,
}
