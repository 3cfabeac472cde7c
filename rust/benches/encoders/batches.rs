//! The same nf_tables batch encoded two ways: waolb's encoder (`nft::RuleBuilder` on a
//! `netlink::Batch`) and `netlink-packet-netfilter` 0.4's typed messages, for the evaluation
//! the README reports. The batch is what a sync writes for service chains: per service an
//! `add chain`, then per endpoint a rule `numgen random mod R < w  dnat to ADDR:PORT` with
//! its comment. netlink-packet-netfilter has no numgen, byteorder or nat expression: those go
//! through its `Expressions::Other` as raw attributes, which is all it offers for them.

use netlink_packet_core::{DefaultNla, Emitable, NetlinkMessage, NLM_F_APPEND, NLM_F_CREATE};
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, Cmp, DataAttribute, Expressions, Immediate, NfTablesMessage,
    Operator, Register, RuleAttribute, RuleMessage,
};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use waolb_native::netlink::{Batch, MessageTag, NO_SUBJECT};
use waolb_native::nft::{self, Family, RuleBuilder, TableRef};

pub const TABLE: &str = "wao-loadbalancer";

/// One endpoint rule's inputs: address, port, the cascade's (remaining, weight), comment.
pub struct Step {
    pub addr: [u8; 4],
    pub port: u16,
    pub remaining: u32,
    pub weight: u32,
    pub comment: String,
}

/// `services` service chains of `endpoints` endpoints each, weights 1, 2, 3...
pub fn service_chains(services: usize, endpoints: usize) -> Vec<(String, Vec<Step>)> {
    (0..services)
        .map(|s| {
            let total: u32 = (1..=endpoints as u32).sum();
            let mut start = 0;
            let steps = (0..endpoints)
                .map(|e| {
                    let weight = e as u32 + 1;
                    let n = s * endpoints + e;
                    let addr = [10, 64 + (n >> 16) as u8, (n >> 8) as u8, n as u8];
                    let step = Step {
                        addr,
                        port: 8080,
                        remaining: total - start,
                        weight,
                        comment: format!("endpoint {n}, weight {weight} of {total}"),
                    };
                    start += weight;
                    step
                })
                .collect();
            (format!("service-bench/svc-{s}/tcp/http"), steps)
        })
        .collect()
}

const TAG: MessageTag = MessageTag {
    action: "add rule",
    subject: NO_SUBJECT,
};
const REG_PORT: u32 = nft::REG32_00 + 1;

/// waolb's encoder: one contiguous buffer, attributes written in place.
pub fn waolb_batch(chains: &[(String, Vec<Step>)], first_seq: u32) -> Vec<u8> {
    let table = TableRef {
        family: Family::Ip,
        name: TABLE,
    };
    let mut batch = Batch::new(first_seq);
    for (chain, steps) in chains {
        nft::add_chain(&mut batch, table, chain, None, TAG);
        for step in steps {
            let mut rule = RuleBuilder::new(&mut batch, table, chain, TAG);
            if step.remaining != step.weight {
                rule.numgen_random(step.remaining, nft::REG32_00)
                    .byteorder(nft::BYTEORDER_HTON, nft::REG32_00, nft::REG32_00, 4, 4)
                    .cmp(nft::CMP_LT, nft::REG32_00, &step.weight.to_be_bytes());
            }
            rule.immediate(nft::REG32_00, &step.addr)
                .immediate(REG_PORT, &step.port.to_be_bytes())
                .nat(nft::NAT_DNAT, Family::Ip, nft::REG32_00, Some(REG_PORT), 0);
            rule.finish(Some(&step.comment));
        }
    }
    batch.finish().0
}

fn be32(kind: u16, value: u32) -> DefaultNla {
    DefaultNla::new(kind, value.to_be_bytes().to_vec())
}

/// A rule comment as nft's userdata TLV (type 0: comment, NUL-terminated).
fn comment_udata(comment: &str) -> Vec<u8> {
    let mut udata = vec![0, (comment.len() + 1) as u8];
    udata.extend_from_slice(comment.as_bytes());
    udata.push(0);
    udata
}

fn message(inner: NfTablesMessage, flags: u16, seq: u32) -> NetlinkMessage<NetfilterMessage> {
    let header = NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0);
    let mut message = NetlinkMessage::from(NetfilterMessage::new(header, inner));
    message.header.flags = flags;
    message.header.sequence_number = seq;
    message.finalize();
    message
}

/// netlink-packet-netfilter: a typed message per object, each emitted into the buffer.
/// Returns the messages only (netlink-packet-netfilter frames a batch with its
/// `ControlMessage::BatchBegin`/`BatchEnd`, which are 20 bytes each like waolb's).
pub fn crate_messages(chains: &[(String, Vec<Step>)], first_seq: u32) -> Vec<u8> {
    let flags = libc::NLM_F_REQUEST as u16 | NLM_F_CREATE;
    let mut seq = first_seq;
    let mut wire = Vec::with_capacity(1 << 16);
    let mut emit = |message: NetlinkMessage<NetfilterMessage>| {
        let start = wire.len();
        wire.resize(start + message.buffer_len(), 0);
        message.emit(&mut wire[start..]);
    };
    for (chain, steps) in chains {
        seq += 1;
        let add_chain = NfTablesMessage::NewChain(ChainMessage {
            attributes: vec![
                ChainAttribute::Table(TABLE.into()),
                ChainAttribute::Name(chain.clone()),
            ],
        });
        emit(message(add_chain, flags, seq));
        for step in steps {
            let mut expressions = Vec::with_capacity(6);
            if step.remaining != step.weight {
                expressions.push(Expressions::Other {
                    expression_type: "numgen".into(),
                    attributes: vec![
                        be32(1, nft::REG32_00),
                        be32(2, step.remaining),
                        be32(3, nft::NUMGEN_RANDOM),
                    ],
                });
                expressions.push(Expressions::Other {
                    expression_type: "byteorder".into(),
                    attributes: vec![
                        be32(1, nft::REG32_00),
                        be32(2, nft::REG32_00),
                        be32(3, nft::BYTEORDER_HTON),
                        be32(4, 4),
                        be32(5, 4),
                    ],
                });
                expressions.push(Expressions::Cmp(vec![
                    Cmp::SourceRegister(Register::Reg32_00),
                    Cmp::Op(Operator::LessThan),
                    Cmp::Data(DataAttribute::Value(step.weight.to_be_bytes().to_vec())),
                ]));
            }
            expressions.push(Expressions::Immediate(vec![
                Immediate::DestinationRegister(Register::Reg32_00),
                Immediate::Data(DataAttribute::Value(step.addr.to_vec())),
            ]));
            expressions.push(Expressions::Immediate(vec![
                Immediate::DestinationRegister(Register::Reg32_01),
                Immediate::Data(DataAttribute::Value(step.port.to_be_bytes().to_vec())),
            ]));
            expressions.push(Expressions::Other {
                expression_type: "nat".into(),
                attributes: vec![
                    be32(1, nft::NAT_DNAT),
                    be32(2, u32::from(Family::Ip.nfproto())),
                    be32(3, nft::REG32_00),
                    be32(5, REG_PORT),
                ],
            });
            let add_rule = NfTablesMessage::NewRule(RuleMessage {
                attributes: vec![
                    RuleAttribute::Table(TABLE.into()),
                    RuleAttribute::Chain(chain.clone()),
                    RuleAttribute::Expressions(expressions.into_iter().map(Into::into).collect()),
                    RuleAttribute::UserData(comment_udata(&step.comment)),
                ],
            });
            seq += 1;
            emit(message(add_rule, flags | NLM_F_APPEND, seq));
        }
    }
    wire
}

/// The messages of a waolb batch without its BATCH_BEGIN and BATCH_END frame.
pub fn without_frame(batch: &[u8]) -> &[u8] {
    &batch[20..batch.len() - 20]
}
