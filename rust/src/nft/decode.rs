//! Rules and tables read back from a dump.

use super::{
    NFGENMSG_LEN, NFTA_DATA_VALUE, NFTA_EXPR_DATA, NFTA_EXPR_NAME, NFTA_RULE_CHAIN,
    NFTA_RULE_EXPRESSIONS, NFTA_RULE_TABLE, NFTA_RULE_USERDATA, NFTA_TABLE_NAME, REG32_00,
    UDATA_RULE_COMMENT,
};
use crate::netlink::{attr_text, attributes};

const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;

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
