//! `ServicePort` for Python: the columns a port arrives in, checked one by one.

use std::net::IpAddr;

use pyo3::prelude::*;

use super::errors::{family_number, invalid_port, port_key, PortKey};
use crate::nft::Family;
use crate::ruleset::{
    Endpoint, InvalidPort, Protocol, ServiceId, ServicePort as NativeServicePort,
};

/// One Service port of one IP family, with its endpoints in columns.
#[pyclass(frozen, eq, module = "waolb._native")]
#[derive(PartialEq)]
pub struct ServicePort {
    pub(super) inner: NativeServicePort,
}

/// The port's fields as given, checked one by one; a problem names the port as far as
/// its identity could be read.
struct Fields<'a, 'py> {
    namespace: &'a str,
    name: &'a str,
    port_name: &'a str,
    protocol: &'a str,
    family: &'a Bound<'py, PyAny>,
    port: &'a Bound<'py, PyAny>,
}

impl Fields<'_, '_> {
    fn fail(&self, problem: String) -> PyErr {
        let py = self.family.py();
        let family = match self.family.extract::<i64>() {
            Ok(6) => Family::Ip6,
            _ => Family::Ip,
        };
        let id = ServiceId {
            family,
            namespace: self.namespace.to_string(),
            name: self.name.to_string(),
            protocol: Protocol::parse(self.protocol).unwrap_or(Protocol::Tcp),
            port_name: self.port_name.to_string(),
        };
        let port = self
            .port
            .extract::<i64>()
            .ok()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(0);
        invalid_port(py, &InvalidPort { id, port, problem })
    }

    /// Integers of any size arrive here; a value that does not fit is named, not an
    /// OverflowError from deep inside the conversion.
    fn integer(&self, value: &Bound<'_, PyAny>, what: &str) -> PyResult<i64> {
        value
            .extract::<i64>()
            .map_err(|_| self.fail(format!("{what} {value} is not an integer in range")))
    }

    fn integers(&self, values: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<i64>> {
        values
            .try_iter()?
            .map(|item| self.integer(&item?, what))
            .collect()
    }

    fn ip(&self, text: &str, what: &str) -> PyResult<IpAddr> {
        text.parse::<IpAddr>()
            .map_err(|_| self.fail(format!("{what} {text:?} is not an IP address")))
    }

    fn port_number(&self, value: i64, what: &str) -> PyResult<u16> {
        match u16::try_from(value) {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(self.fail(format!("{what} {value} is outside 1..65535"))),
        }
    }
}

#[pymethods]
impl ServicePort {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (namespace, name, port_name, protocol, family, cluster_ip, port, endpoint_ips, endpoint_ports, weights))]
    fn new(
        namespace: String,
        name: String,
        port_name: String,
        protocol: &str,
        family: &Bound<'_, PyAny>,
        cluster_ip: &str,
        port: &Bound<'_, PyAny>,
        endpoint_ips: Vec<String>,
        endpoint_ports: &Bound<'_, PyAny>,
        weights: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let fields = Fields {
            namespace: &namespace,
            name: &name,
            port_name: &port_name,
            protocol,
            family,
            port,
        };
        let family = match fields.integer(family, "IP family")? {
            4 => Family::Ip,
            6 => Family::Ip6,
            other => return Err(fields.fail(format!("IP family {other} is unknown (use 4 or 6)"))),
        };
        let port = fields.integer(port, "service port")?;
        let endpoint_ports = fields.integers(endpoint_ports, "endpoint port")?;
        let weights = fields.integers(weights, "endpoint weight")?;
        let protocol = Protocol::parse(protocol).map_err(|problem| fields.fail(problem))?;
        if endpoint_ips.len() != endpoint_ports.len() || endpoint_ips.len() != weights.len() {
            return Err(fields.fail(format!(
                "endpoint columns differ in length: {} addresses, {} ports, {} weights",
                endpoint_ips.len(),
                endpoint_ports.len(),
                weights.len()
            )));
        }
        let mut endpoints = Vec::with_capacity(endpoint_ips.len());
        for ((ip, port), weight) in endpoint_ips.iter().zip(endpoint_ports).zip(weights) {
            let addr = fields.ip(ip, "endpoint address")?;
            let weight = u32::try_from(weight).map_err(|_| {
                let most = u32::MAX;
                fields.fail(format!(
                    "endpoint {ip} has weight {weight}, outside 0..{most}"
                ))
            })?;
            endpoints.push(Endpoint {
                addr,
                port: fields.port_number(port, &format!("endpoint {ip} port"))?,
                weight,
            });
        }
        let cluster_ip = fields.ip(cluster_ip, "cluster IP")?;
        let port = fields.port_number(port, "service port")?;
        let py = fields.family.py();
        let inner = NativeServicePort {
            cluster_ip,
            port,
            namespace,
            name,
            port_name,
            protocol,
            family,
            endpoints,
        };
        inner
            .validate()
            .map_err(|invalid| invalid_port(py, &invalid))?;
        Ok(ServicePort { inner })
    }

    #[getter]
    fn namespace(&self) -> &str {
        &self.inner.namespace
    }
    #[getter]
    fn name(&self) -> &str {
        &self.inner.name
    }
    #[getter]
    fn port_name(&self) -> &str {
        &self.inner.port_name
    }
    #[getter]
    fn protocol(&self) -> &'static str {
        self.inner.protocol.name()
    }
    #[getter]
    fn family(&self) -> u8 {
        family_number(self.inner.family)
    }
    #[getter]
    fn cluster_ip(&self) -> String {
        self.inner.cluster_ip.to_string()
    }
    #[getter]
    fn port(&self) -> u16 {
        self.inner.port
    }
    #[getter]
    fn endpoint_ips(&self) -> Vec<String> {
        self.inner
            .endpoints
            .iter()
            .map(|e| e.addr.to_string())
            .collect()
    }
    #[getter]
    fn endpoint_ports(&self) -> Vec<u16> {
        self.inner.endpoints.iter().map(|e| e.port).collect()
    }
    #[getter]
    fn weights(&self) -> Vec<u32> {
        self.inner.endpoints.iter().map(|e| e.weight).collect()
    }
    /// (family, namespace, name, port name, protocol as Kubernetes spells it).
    #[getter]
    fn key(&self) -> PortKey {
        port_key(&self.inner.id())
    }

    fn __repr__(&self) -> String {
        let port = &self.inner;
        format!(
            "ServicePort({}/{}:{} {} {} {}:{}, {} endpoints)",
            port.namespace,
            port.name,
            port.port_name,
            port.protocol.name(),
            port.family.name(),
            port.cluster_ip,
            port.port,
            port.endpoints.len()
        )
    }
}
