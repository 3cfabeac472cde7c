//! The desired state: service ports and their weighted endpoints, and the checks that keep
//! a batch from failing halfway for a reason known in advance.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;

use crate::nft::Family;
use crate::weights;

/// The largest number of endpoints one service port may have; beyond this the input is
/// taken to be a mistake rather than a cluster.
pub const MAX_ENDPOINTS_PER_SERVICE: usize = 100_000;
/// nf_tables limits object names to 255 bytes.
pub const MAX_NAME: usize = 255;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn parse(text: &str) -> Result<Protocol, String> {
        match text.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            other => Err(format!(
                "protocol {other:?} is not supported (use \"tcp\" or \"udp\")"
            )),
        }
    }

    /// As nft and the chain names spell it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// As Kubernetes spells it.
    pub fn kubernetes_name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }

    pub(super) fn number(self) -> u8 {
        match self {
            Protocol::Tcp => libc::IPPROTO_TCP as u8,
            Protocol::Udp => libc::IPPROTO_UDP as u8,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u32,
}

/// One Service port of one IP family with its endpoints, as the control plane wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    pub protocol: Protocol,
    pub family: Family,
    pub cluster_ip: IpAddr,
    pub port: u16,
    pub endpoints: Vec<Endpoint>,
}

/// A map element's key within its family's table.
pub(super) type MapKey = (Family, Vec<u8>);

/// What identifies a service port across syncs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId {
    pub family: Family,
    pub namespace: String,
    pub name: String,
    pub protocol: Protocol,
    pub port_name: String,
}

impl ServiceId {
    pub(super) fn chain_name(&self) -> String {
        format!(
            "service-{}/{}/{}/{}",
            self.namespace,
            self.name,
            self.protocol.name(),
            self.port_name
        )
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service {}/{}:{} ({} {})",
            self.namespace,
            self.name,
            self.port_name,
            self.protocol.name(),
            self.family.name()
        )
    }
}

/// A service port the checks refuse: which one, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidPort {
    pub id: ServiceId,
    pub port: u16,
    pub problem: String,
}

impl fmt::Display for InvalidPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.id, self.problem)
    }
}

pub(super) fn family_of(addr: &IpAddr) -> Family {
    match addr {
        IpAddr::V4(_) => Family::Ip,
        IpAddr::V6(_) => Family::Ip6,
    }
}

pub(super) fn addr_bytes(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Kubernetes names are DNS labels or subdomains; port names are IANA service names.
fn check_name(what: &str, value: &str, allow_empty: bool) -> Result<(), String> {
    if value.is_empty() {
        return if allow_empty {
            Ok(())
        } else {
            Err(format!("{what} is empty"))
        };
    }
    if value.len() > 253
        || !value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(format!("{what} {value:?} is not a Kubernetes name (lower-case letters, digits, '-' and '.', at most 253)"));
    }
    Ok(())
}

impl ServicePort {
    pub fn id(&self) -> ServiceId {
        ServiceId {
            family: self.family,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            protocol: self.protocol,
            port_name: self.port_name.clone(),
        }
    }

    /// Checks everything the kernel would otherwise reject halfway through a batch.
    pub fn validate(&self) -> Result<(), InvalidPort> {
        self.problem().map_or(Ok(()), |problem| {
            Err(InvalidPort {
                id: self.id(),
                port: self.port,
                problem,
            })
        })
    }

    fn problem(&self) -> Option<String> {
        for (what, value, allow_empty) in [
            ("namespace", &self.namespace, false),
            ("name", &self.name, false),
            ("port name", &self.port_name, true),
        ] {
            if let Err(problem) = check_name(what, value, allow_empty) {
                return Some(problem);
            }
        }
        let chain = self.chain_name();
        if chain.len() > MAX_NAME {
            return Some(format!(
                "chain name {chain} is longer than {MAX_NAME} bytes"
            ));
        }
        if family_of(&self.cluster_ip) != self.family {
            let family = self.family.name();
            return Some(format!(
                "cluster IP {} is not an {family} address",
                self.cluster_ip
            ));
        }
        if self.cluster_ip.is_unspecified() {
            return Some(format!("cluster IP {} is unspecified", self.cluster_ip));
        }
        if self.port == 0 {
            return Some("port 0 is not a valid service port".into());
        }
        if self.endpoints.len() > MAX_ENDPOINTS_PER_SERVICE {
            return Some(format!(
                "{} endpoints is more than the limit of {MAX_ENDPOINTS_PER_SERVICE}",
                self.endpoints.len()
            ));
        }
        self.endpoint_problem()
    }

    fn endpoint_problem(&self) -> Option<String> {
        let mut seen = HashSet::with_capacity(self.endpoints.len());
        for endpoint in &self.endpoints {
            if family_of(&endpoint.addr) != self.family || endpoint.addr.is_unspecified() {
                return Some(format!(
                    "endpoint address {} is not a usable {} address",
                    endpoint.addr,
                    self.family.name()
                ));
            }
            if endpoint.port == 0 {
                return Some(format!("endpoint {} has port 0", endpoint.addr));
            }
            if !seen.insert((endpoint.addr, endpoint.port)) {
                return Some(format!(
                    "endpoint {} port {} is listed twice",
                    endpoint.addr, endpoint.port
                ));
            }
        }
        if self.endpoints.is_empty() {
            return None;
        }
        self.layout().err()
    }

    pub(super) fn layout(&self) -> Result<weights::NumgenLayout, String> {
        let weights: Vec<u32> = self.endpoints.iter().map(|e| e.weight).collect();
        weights::numgen_layout(&weights).map_err(|e| e.to_string())
    }

    pub(super) fn chain_name(&self) -> String {
        self.id().chain_name()
    }

    /// Whether any endpoint takes traffic: such a port jumps to its chain, the others are
    /// rejected.
    pub(super) fn is_balanced(&self) -> bool {
        self.endpoints.iter().any(|e| e.weight > 0)
    }

    pub(super) fn claim(&self) -> MapKey {
        (self.family, self.map_key())
    }

    /// The `service-ips` / `no-endpoint-services` key: address . l4proto . port, each
    /// field padded to a 32-bit register.
    pub(super) fn map_key(&self) -> Vec<u8> {
        let mut key = addr_bytes(&self.cluster_ip);
        key.extend_from_slice(&[self.protocol.number(), 0, 0, 0]);
        key.extend_from_slice(&self.port.to_be_bytes());
        key.extend_from_slice(&[0, 0]);
        key
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub fn service(name: &str, vip: &str, endpoints: &[(&str, u16, u32)]) -> ServicePort {
        ServicePort {
            namespace: "default".into(),
            name: name.into(),
            port_name: "http".into(),
            protocol: Protocol::Tcp,
            family: Family::Ip,
            cluster_ip: vip.parse().unwrap(),
            port: 80,
            endpoints: endpoints
                .iter()
                .map(|&(a, port, weight)| Endpoint {
                    addr: a.parse().unwrap(),
                    port,
                    weight,
                })
                .collect(),
        }
    }

    #[test]
    fn validation_names_the_service_and_the_problem() {
        let bad = [
            (service("a", "10.0.0.1", &[("10.1.0.1", 0, 1)]), "port 0"),
            (
                service("a", "10.0.0.1", &[("fd00::1", 80, 1)]),
                "not a usable ip address",
            ),
            (
                service("a", "10.0.0.1", &[("10.1.0.1", 80, 1), ("10.1.0.1", 80, 2)]),
                "listed twice",
            ),
            (service("a", "0.0.0.0", &[]), "unspecified"),
            (service("A_B", "10.0.0.1", &[]), "not a Kubernetes name"),
            (
                service(
                    "a",
                    "10.0.0.1",
                    &[("10.1.0.1", 80, u32::MAX), ("10.1.0.2", 80, 2)],
                ),
                "",
            ),
        ];
        for (svc, needle) in bad {
            let err = svc.validate().unwrap_err();
            assert_eq!(err.id, svc.id());
            assert_eq!(err.port, 80);
            assert!(err.problem.contains(needle), "{err}");
            assert!(err.to_string().starts_with("service "), "{err}");
        }
        assert!(service("a", "10.0.0.1", &[("10.1.0.1", 80, 1)])
            .validate()
            .is_ok());
        assert!(service("a", "10.0.0.1", &[]).validate().is_ok());
    }
}
