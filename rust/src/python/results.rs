//! What a sync did, and the endpoint rules read back, for Python.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::errors::{family_number, port_key, PortKey};
use crate::dataplane::SyncReport;
use crate::ruleset::{ProgrammedEndpoint as NativeEndpoint, Protocol, Refusal, RefusalReason};

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
    pub(super) fn new(py: Python<'_>, report: SyncReport) -> PyResult<SyncResult> {
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
