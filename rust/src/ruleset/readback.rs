//! Reading endpoint rules back from the kernel (`waolb weights`): the service from its
//! chain's name, the endpoint from the DNAT the rule performs, weight and total from the
//! comment the batch writers give every endpoint rule.

use std::collections::HashMap;
use std::net::IpAddr;

use super::model::{Endpoint, Protocol};
use crate::nft::{self, DumpedRule, Family};

/// One endpoint rule as the kernel holds it, read back from a service chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgrammedEndpoint {
    pub family: Family,
    pub namespace: String,
    pub name: String,
    pub protocol: Protocol,
    pub port_name: String,
    /// Where the rule's DNAT sends connections.
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u32,
    pub total: u32,
}

impl ProgrammedEndpoint {
    /// The service port it belongs to, in the order [`Dataplane::read_endpoints`] sorts by.
    ///
    /// [`Dataplane::read_endpoints`]: crate::dataplane::Dataplane::read_endpoints
    pub fn service(&self) -> (Family, &str, &str, Protocol, &str) {
        (
            self.family,
            &self.namespace,
            &self.name,
            self.protocol,
            &self.port_name,
        )
    }
}

/// Reads an endpoint rule of a service chain back: the service from the chain's name, the
/// endpoint from the DNAT the rule performs, weight and total from its comment. Anything
/// else (a rule an operator added, another chain) gives `None`.
pub fn parse_endpoint_rule(family: Family, rule: &DumpedRule<'_>) -> Option<ProgrammedEndpoint> {
    let mut parts = rule.chain.strip_prefix("service-")?.split('/');
    let (namespace, name, protocol, port_name) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let (weight, total) = parse_endpoint_comment(rule.comment?)?;
    let mut registers = HashMap::new();
    let mut target = None;
    for &(expression, data) in &rule.expressions {
        match expression {
            "immediate" => {
                let (reg, value) = nft::immediate_value(data)?;
                registers.insert(reg, value);
            }
            "nat" => {
                let (kind, addr_reg, port_reg) = nft::nat_registers(data)?;
                if kind != nft::NAT_DNAT {
                    return None;
                }
                target = Some((*registers.get(&addr_reg)?, *registers.get(&port_reg?)?));
            }
            _ => {}
        }
    }
    let (addr, port) = target?;
    let addr = match (family, addr.len()) {
        (Family::Ip, 4) => IpAddr::from(<[u8; 4]>::try_from(addr).ok()?),
        (Family::Ip6, 16) => IpAddr::from(<[u8; 16]>::try_from(addr).ok()?),
        _ => return None,
    };
    Some(ProgrammedEndpoint {
        family,
        namespace: namespace.to_string(),
        name: name.to_string(),
        protocol: Protocol::parse(protocol).ok()?,
        port_name: port_name.to_string(),
        addr,
        port: u16::from_be_bytes(port.get(..2)?.try_into().ok()?),
        weight,
        total,
    })
}

/// (weight, total) from a comment [`endpoint_comment`] wrote.
fn parse_endpoint_comment(comment: &str) -> Option<(u32, u32)> {
    let (_, figures) = comment.strip_prefix("endpoint ")?.split_once(", weight ")?;
    let (weight, rest) = figures.split_once(" of ")?;
    let (total, _) = rest.split_once(' ')?;
    Some((weight.parse().ok()?, total.parse().ok()?))
}

/// What an endpoint rule says about itself in `nft list`, and what [`parse_endpoint_comment`]
/// reads back: `endpoint ADDR:PORT, weight W of T (x%), range a-b`. At most 127 bytes (an
/// IPv6 address, five 10-digit numbers), so nft never cuts it.
pub(super) fn endpoint_comment(
    endpoint: &Endpoint,
    weight: u32,
    total: u32,
    first: u32,
    last: u32,
) -> String {
    format!(
        "endpoint {}, weight {weight} of {total} ({:.1}%), range {first}-{last}",
        std::net::SocketAddr::new(endpoint.addr, endpoint.port),
        100.0 * f64::from(weight) / f64::from(total)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_comments_fit_nft_and_read_back() {
        let endpoint = Endpoint {
            addr: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe".parse().unwrap(),
            port: 65535,
            weight: 1,
        };
        let longest = endpoint_comment(
            &endpoint,
            4_000_000_000,
            u32::MAX,
            4_000_000_000,
            4_100_000_000,
        );
        assert!(longest.len() < nft::MAX_COMMENT, "{} bytes", longest.len());
        assert!(longest.starts_with("endpoint [ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535, "));
        assert_eq!(
            parse_endpoint_comment(&longest),
            Some((4_000_000_000, u32::MAX))
        );
        let v4 = Endpoint {
            addr: "10.244.1.5".parse().unwrap(),
            port: 8080,
            weight: 100,
        };
        let comment = endpoint_comment(&v4, 100, 247, 0, 99);
        assert_eq!(
            comment,
            "endpoint 10.244.1.5:8080, weight 100 of 247 (40.5%), range 0-99"
        );
        assert_eq!(parse_endpoint_comment(&comment), Some((100, 247)));
        assert_eq!(
            parse_endpoint_comment("weight 100 of 247 (40.5%), range 0-99"),
            None
        );
    }
}
