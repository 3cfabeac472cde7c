//! Rules: a builder that writes one rule's expressions into a batch.

use super::objects::{put_value, put_verdict, Verdict};
use super::{
    Family, TableRef, MAX_COMMENT, NFTA_EXPR_DATA, NFTA_EXPR_NAME, NFTA_LIST_ELEM, NFTA_RULE_CHAIN,
    NFTA_RULE_EXPRESSIONS, NFTA_RULE_TABLE, NFTA_RULE_USERDATA, NFT_MSG_NEWRULE, NUMGEN_RANDOM,
    REG_VERDICT, UDATA_RULE_COMMENT,
};
use crate::netlink::{Batch, MessageTag, NLM_F_APPEND, NLM_F_CREATE};

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

    #[test]
    fn long_comments_are_cut_on_a_character_boundary() {
        let text = "é".repeat(100);
        let cut = truncate_at_char(&text, MAX_COMMENT - 1);
        assert!(cut.len() < MAX_COMMENT);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
