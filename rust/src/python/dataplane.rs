//! `ServicePort`, `Dataplane`, their results and errors for Python.

use std::net::IpAddr;

use pyo3::create_exception;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;

use crate::dataplane::{Dataplane as NativeDataplane, Kernel, SyncError, SyncReport};
use crate::netlink::Socket;
use crate::nft::Family;
use crate::ruleset::{
    Endpoint, InvalidPort, ProgrammedEndpoint as NativeEndpoint, Protocol, Refusal, RefusalReason,
    ServiceId, ServicePort as NativeServicePort, Subject, SyncRequest,
};

create_exception!(
    _native,
    NftError,
    PyOSError,
    "The kernel rejected a batch for a reason no single service port explains; nothing \
     changed."
);
create_exception!(
    _native,
    InvalidServicePort,
    PyValueError,
    "A service port the dataplane cannot program, with what is wrong."
);

/// A service port's identity as Python's ServicePortKey: (family, namespace, name, port
/// name, protocol as Kubernetes spells it).
type PortKey = (u8, String, String, String, &'static str);

fn family_number(family: Family) -> u8 {
    match family {
        Family::Ip => 4,
        Family::Ip6 => 6,
    }
}

fn port_key(id: &ServiceId) -> PortKey {
    (
        family_number(id.family),
        id.namespace.clone(),
        id.name.clone(),
        id.port_name.clone(),
        id.protocol.kubernetes_name(),
    )
}

fn service_id(key: (i64, String, String, String, String)) -> PyResult<ServiceId> {
    let (family, namespace, name, port_name, protocol) = key;
    let family = match family {
        4 => Family::Ip,
        6 => Family::Ip6,
        other => {
            return Err(PyValueError::new_err(format!(
                "IP family {other} is unknown (use 4 or 6)"
            )))
        }
    };
    Ok(ServiceId {
        family,
        namespace,
        name,
        protocol: Protocol::parse(&protocol).map_err(PyValueError::new_err)?,
        port_name,
    })
}

/// Sets attributes on an exception; an error setting them wins (it should not happen).
fn with_attributes(error: PyErr, attributes: &[(&str, Py<PyAny>)]) -> PyErr {
    Python::attach(|py| {
        let value = error.value(py);
        for (name, attribute) in attributes {
            if let Err(failed) = value.setattr(*name, attribute) {
                return failed;
            }
        }
        error
    })
}

fn to_py_err(err: SyncError) -> PyErr {
    match err {
        SyncError::Invalid(problem) => PyValueError::new_err(problem),
        SyncError::Rejected(ref rejection) => Python::attach(|py| {
            let key = match &rejection.subject {
                Some(Subject::Port(id)) => port_key(id).into_py_any(py),
                _ => Ok(py.None()),
            };
            let attributes = (|| {
                Ok::<_, PyErr>(vec![
                    ("key", key?),
                    ("object", rejection.object.as_str().into_py_any(py)?),
                    ("action", rejection.action.into_py_any(py)?),
                    ("detail", rejection.detail.as_deref().into_py_any(py)?),
                ])
            })();
            match attributes {
                Ok(values) => {
                    let error = NftError::new_err((rejection.errno, err.to_string()));
                    with_attributes(error, &values)
                }
                Err(error) => error,
            }
        }),
        SyncError::Io(io) => {
            PyOSError::new_err((io.raw_os_error().unwrap_or(0), format!("netlink: {io}")))
        }
    }
}

fn invalid_port(py: Python<'_>, invalid: &InvalidPort) -> PyErr {
    let id = &invalid.id;
    let attributes: PyResult<Vec<(&str, Py<PyAny>)>> = (|| {
        Ok(vec![
            ("key", port_key(id).into_py_any(py)?),
            ("namespace", id.namespace.as_str().into_py_any(py)?),
            ("name", id.name.as_str().into_py_any(py)?),
            ("port_name", id.port_name.as_str().into_py_any(py)?),
            ("protocol", id.protocol.kubernetes_name().into_py_any(py)?),
            ("family", family_number(id.family).into_py_any(py)?),
            ("port", invalid.port.into_py_any(py)?),
            ("reason", invalid.problem.as_str().into_py_any(py)?),
        ])
    })();
    match attributes {
        Ok(attributes) => with_attributes(
            InvalidServicePort::new_err(invalid.to_string()),
            &attributes,
        ),
        Err(error) => error,
    }
}

/// One Service port of one IP family, with its endpoints in columns.
#[pyclass(frozen, eq, module = "waolb._native")]
#[derive(PartialEq)]
pub struct ServicePort {
    inner: NativeServicePort,
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

/// A service port whose new state a sync refused; it keeps its programmed state, if any.
#[pyclass(frozen, get_all, module = "waolb._native")]
pub struct PortRefusal {
    key: PortKey,
    namespace: String,
    name: String,
    port_name: String,
    protocol: &'static str,
    family: u8,
    port: u16,
    /// "clash" (another port holds its address and port) or "kernel".
    reason: &'static str,
    errno: Option<i32>,
    action: Option<&'static str>,
    holder: Option<PortKey>,
    message: String,
    kept: bool,
}

impl PortRefusal {
    fn new(refusal: &Refusal) -> PortRefusal {
        let id = &refusal.id;
        let (errno, action, holder) = match &refusal.reason {
            RefusalReason::Kernel { errno, action, .. } => (Some(*errno), Some(*action), None),
            RefusalReason::Clash { holder } => (None, None, Some(port_key(holder))),
            RefusalReason::Invalid(_) => (None, None, None),
        };
        PortRefusal {
            key: port_key(id),
            namespace: id.namespace.clone(),
            name: id.name.clone(),
            port_name: id.port_name.clone(),
            protocol: id.protocol.kubernetes_name(),
            family: family_number(id.family),
            port: refusal.port,
            reason: refusal.reason.kind(),
            errno,
            action,
            holder,
            message: refusal.to_string(),
            kept: refusal.kept,
        }
    }
}

#[pymethods]
impl PortRefusal {
    fn __repr__(&self) -> String {
        format!("PortRefusal({:?}, kept={})", self.message, self.kept)
    }
}

/// What a sync did.
#[pyclass(frozen, get_all, module = "waolb._native")]
pub struct SyncResult {
    full: bool,
    messages: usize,
    bytes: usize,
    /// Service ports the batch programmed (full) or changed (partial).
    services: usize,
    seconds: f64,
    changed: Vec<PortKey>,
    removed: Vec<PortKey>,
    refused: Vec<Py<PortRefusal>>,
    /// Held ports that keep a programmed state.
    held: Vec<PortKey>,
}

impl SyncResult {
    fn new(py: Python<'_>, report: SyncReport) -> PyResult<SyncResult> {
        Ok(SyncResult {
            full: report.full,
            messages: report.summary.messages,
            bytes: report.summary.bytes,
            services: report.summary.services,
            seconds: report.elapsed.as_secs_f64(),
            changed: report.changed.iter().map(port_key).collect(),
            removed: report.removed.iter().map(port_key).collect(),
            refused: report
                .refused
                .iter()
                .map(|refusal| Py::new(py, PortRefusal::new(refusal)))
                .collect::<PyResult<_>>()?,
            held: report.held.iter().map(port_key).collect(),
        })
    }
}

#[pymethods]
impl SyncResult {
    fn __repr__(&self) -> String {
        format!(
            "SyncResult(full={}, messages={}, changed={}, removed={}, refused={})",
            self.full,
            self.messages,
            self.changed.len(),
            self.removed.len(),
            self.refused.len()
        )
    }
}

/// One endpoint rule as the kernel holds it (`Dataplane.read_endpoints`).
#[pyclass(frozen, get_all, eq, module = "waolb._native")]
#[derive(PartialEq)]
pub struct ProgrammedEndpoint {
    family: u8,
    namespace: String,
    name: String,
    protocol: &'static str,
    port_name: String,
    ip: String,
    port: u16,
    weight: u32,
    total: u32,
}

impl From<NativeEndpoint> for ProgrammedEndpoint {
    fn from(e: NativeEndpoint) -> ProgrammedEndpoint {
        ProgrammedEndpoint {
            family: family_number(e.family),
            namespace: e.namespace,
            name: e.name,
            protocol: e.protocol.name(),
            port_name: e.port_name,
            ip: e.addr.to_string(),
            port: e.port,
            weight: e.weight,
            total: e.total,
        }
    }
}

#[pymethods]
impl ProgrammedEndpoint {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (family, namespace, name, protocol, port_name, ip, port, weight, total))]
    fn new(
        family: u8,
        namespace: String,
        name: String,
        protocol: &str,
        port_name: String,
        ip: String,
        port: u16,
        weight: u32,
        total: u32,
    ) -> PyResult<Self> {
        let protocol = Protocol::parse(protocol).map_err(PyValueError::new_err)?;
        Ok(ProgrammedEndpoint {
            family,
            namespace,
            name,
            protocol: protocol.name(),
            port_name,
            ip,
            port,
            weight,
            total,
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "ProgrammedEndpoint({}/{}:{} {} ipv{} -> {} port {}, weight {} of {})",
            self.namespace,
            self.name,
            self.port_name,
            self.protocol,
            self.family,
            self.ip,
            self.port,
            self.weight,
            self.total
        )
    }
}

/// Owns the nf_tables tables named `table` and `table-shard-<n>` (families ip and ip6)
/// in the current netns, and the ledger of what they hold.
#[pyclass(module = "waolb._native")]
pub struct Dataplane {
    inner: NativeDataplane,
    #[cfg(feature = "fault-injection")]
    faults: crate::dataplane::faults::Faults,
}

type HeldKey = (i64, String, String, String, String);

impl Dataplane {
    /// A dataplane committing through `kernel` (in fault-injection builds, through a kernel
    /// that refuses what the test injects first).
    fn build(table: &str, masquerade_bit: u32, kernel: Box<dyn Kernel>) -> PyResult<Self> {
        #[cfg(feature = "fault-injection")]
        let (kernel, faults) = faults::faulty(kernel);
        let inner =
            NativeDataplane::with_kernel(table, masquerade_bit, kernel).map_err(to_py_err)?;
        Ok(Dataplane {
            inner,
            #[cfg(feature = "fault-injection")]
            faults,
        })
    }

    fn run(&mut self, py: Python<'_>, request: SyncRequest) -> PyResult<SyncResult> {
        let inner = &mut self.inner;
        let report = py.detach(|| inner.sync(request)).map_err(to_py_err)?;
        SyncResult::new(py, report)
    }
}

fn natives(ports: Vec<PyRef<'_, ServicePort>>) -> Vec<NativeServicePort> {
    ports.iter().map(|s| s.inner.clone()).collect()
}

fn held(hold: Vec<HeldKey>) -> PyResult<Vec<ServiceId>> {
    hold.into_iter().map(service_id).collect()
}

#[pymethods]
impl Dataplane {
    #[new]
    #[pyo3(signature = (table = "wao-loadbalancer", masquerade_bit = 14))]
    fn new(table: &str, masquerade_bit: u32) -> PyResult<Self> {
        let socket = Socket::open().map_err(|err| to_py_err(SyncError::Io(err)))?;
        Dataplane::build(table, masquerade_bit, Box::new(socket))
    }

    #[getter]
    fn table(&self) -> &str {
        self.inner.ruleset().table()
    }

    /// Full sync: the tables hold exactly `ports`, and the `hold` ports as programmed.
    #[pyo3(signature = (ports, hold = Vec::new()))]
    fn sync_full(
        &mut self,
        py: Python<'_>,
        ports: Vec<PyRef<'_, ServicePort>>,
        hold: Vec<HeldKey>,
    ) -> PyResult<SyncResult> {
        let request =
            SyncRequest::full(natives(ports), held(hold)?).map_err(PyValueError::new_err)?;
        self.run(py, request)
    }

    /// Partial sync of `services` ((namespace, name) pairs): their ports become `ports`.
    #[pyo3(signature = (services, ports, hold = Vec::new()))]
    fn sync_services(
        &mut self,
        py: Python<'_>,
        services: Vec<(String, String)>,
        ports: Vec<PyRef<'_, ServicePort>>,
        hold: Vec<HeldKey>,
    ) -> PyResult<SyncResult> {
        let request = SyncRequest::partial(services, natives(ports), held(hold)?)
            .map_err(PyValueError::new_err)?;
        self.run(py, request)
    }

    /// What the ledger says the kernel holds, in key order.
    fn programmed(&self, py: Python<'_>) -> PyResult<Vec<Py<ServicePort>>> {
        let mut ports: Vec<&NativeServicePort> = self.inner.ruleset().ledger().ports().collect();
        ports.sort_by_cached_key(|port| port.id());
        ports
            .into_iter()
            .map(|port| {
                Py::new(
                    py,
                    ServicePort {
                        inner: port.clone(),
                    },
                )
            })
            .collect()
    }

    /// The endpoint rules the kernel holds (`waolb weights`).
    fn read_endpoints(&mut self, py: Python<'_>) -> PyResult<Vec<ProgrammedEndpoint>> {
        let inner = &mut self.inner;
        let endpoints = py.detach(|| inner.read_endpoints()).map_err(to_py_err)?;
        Ok(endpoints
            .into_iter()
            .map(ProgrammedEndpoint::from)
            .collect())
    }

    /// Deletes the tables, main and shards (`--cleanup`); the next sync must be full.
    fn delete_tables(&mut self, py: Python<'_>) -> PyResult<()> {
        let inner = &mut self.inner;
        py.detach(|| inner.delete_tables()).map_err(to_py_err)
    }

    #[cfg(feature = "fault-injection")]
    /// A dataplane whose kernel takes every batch and holds nothing (no root needed).
    #[staticmethod]
    #[pyo3(signature = (table = "wao-loadbalancer", masquerade_bit = 14))]
    fn simulated(table: &str, masquerade_bit: u32) -> PyResult<Dataplane> {
        Dataplane::build(
            table,
            masquerade_bit,
            Box::new(crate::dataplane::faults::Simulated::default()),
        )
    }

    #[cfg(feature = "fault-injection")]
    /// Refuse, with `errno`, the messages about the matching ports (all of a batch if
    /// neither namespace nor name is given), for `times` batches (None: until cleared).
    #[pyo3(signature = (errno, namespace = None, name = None, action = None, times = None, containing = None))]
    #[allow(clippy::too_many_arguments)]
    fn inject_fault(
        &self,
        errno: i32,
        namespace: Option<String>,
        name: Option<String>,
        action: Option<String>,
        times: Option<u32>,
        containing: Option<Vec<u8>>,
    ) -> PyResult<()> {
        if times == Some(0) {
            return Err(PyValueError::new_err("times must be at least 1"));
        }
        let fault = crate::dataplane::faults::Fault {
            errno,
            namespace,
            name,
            action,
            containing,
            times,
        };
        self.faults
            .lock()
            .map_err(|_| PyValueError::new_err("fault list poisoned"))?
            .push(fault);
        Ok(())
    }

    #[cfg(feature = "fault-injection")]
    fn clear_faults(&self) -> PyResult<()> {
        self.faults
            .lock()
            .map_err(|_| PyValueError::new_err("fault list poisoned"))?
            .clear();
        Ok(())
    }
}

#[cfg(feature = "fault-injection")]
mod faults {
    //! Refusals on demand (the `fault-injection` feature; see rust/src/dataplane/faults.rs).

    use crate::dataplane::faults::{Faults, Faulty};
    use crate::dataplane::Kernel;

    pub(super) fn faulty(kernel: Box<dyn Kernel>) -> (Box<dyn Kernel>, Faults) {
        let (kernel, faults) = Faulty::new(kernel);
        (Box::new(kernel), faults)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ServicePort>()?;
    m.add_class::<Dataplane>()?;
    m.add_class::<SyncResult>()?;
    m.add_class::<PortRefusal>()?;
    m.add_class::<ProgrammedEndpoint>()?;
    m.add("NftError", m.py().get_type::<NftError>())?;
    m.add(
        "InvalidServicePort",
        m.py().get_type::<InvalidServicePort>(),
    )?;
    Ok(())
}
