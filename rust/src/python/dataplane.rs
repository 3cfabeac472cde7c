//! `Dataplane` for Python (stubs in python/waolb/_native.pyi).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::errors::{service_id, to_py_err, InvalidServicePort, NftError};
use super::port::ServicePort;
use super::results::{PortRefusal, ProgrammedEndpoint, SyncResult};
use crate::dataplane::{Dataplane as NativeDataplane, Kernel, SyncError};
use crate::netlink::Socket;
use crate::ruleset::{ServiceId, ServicePort as NativeServicePort, SyncRequest};

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
