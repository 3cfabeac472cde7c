//! The dataplane: the ruleset's bookkeeping plus the socket that commits its batches.

use std::io;
use std::time::{Duration, Instant};

use crate::netlink::Socket;
use crate::nft::{self, Family};
use crate::ruleset::{
    self, BatchSummary, PendingChange, PreparedBatch, ProgrammedEndpoint, Ruleset, ServiceId,
    ServicePort, FAMILIES,
};

/// Why a sync did not happen. In every case the kernel's ruleset is as it was.
#[derive(Debug)]
pub enum SyncError {
    /// The desired state is invalid; nothing was sent.
    Invalid(String),
    /// The kernel rejected the batch.
    Rejected {
        errno: i32,
        object: String,
        detail: Option<String>,
    },
    /// The socket failed (for example EPERM without CAP_NET_ADMIN).
    Io(io::Error),
}

impl std::fmt::Display for SyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncError::Invalid(problem) => write!(f, "{problem}"),
            SyncError::Rejected {
                errno,
                object,
                detail,
            } => {
                write!(
                    f,
                    "the kernel rejected {object}: {}",
                    io::Error::from_raw_os_error(*errno)
                )?;
                if let Some(detail) = detail {
                    write!(f, " ({detail})")?;
                }
                write!(f, "; the previous ruleset is unchanged")
            }
            SyncError::Io(err) => write!(f, "netlink: {err}"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct SyncReport {
    pub summary: BatchSummary,
    pub elapsed: Duration,
}

pub struct Dataplane {
    ruleset: Ruleset,
    socket: Socket,
}

impl Dataplane {
    /// Opens the netlink socket in the caller's network namespace.
    pub fn new(table: &str, masquerade_bit: u32) -> Result<Dataplane, SyncError> {
        let ruleset = Ruleset::new(table, masquerade_bit).map_err(SyncError::Invalid)?;
        let socket = Socket::open().map_err(SyncError::Io)?;
        Ok(Dataplane { ruleset, socket })
    }

    pub fn ruleset(&self) -> &Ruleset {
        &self.ruleset
    }

    pub fn replace(&mut self, services: Vec<ServicePort>) -> Result<SyncReport, SyncError> {
        let start = Instant::now();
        let existing = self.existing_tables()?;
        let first_seq = self.socket.next_seq();
        let (batch, change) = self
            .ruleset
            .prepare_full(services, &existing, first_seq)
            .map_err(SyncError::Invalid)?;
        self.send(batch, Some(change), start)
    }

    pub fn apply(
        &mut self,
        upsert: Vec<ServicePort>,
        remove: Vec<ServiceId>,
    ) -> Result<SyncReport, SyncError> {
        let start = Instant::now();
        let first_seq = self.socket.next_seq();
        let (batch, change) = self
            .ruleset
            .prepare_partial(upsert, remove, first_seq)
            .map_err(SyncError::Invalid)?;
        self.send(batch, Some(change), start)
    }

    /// Deletes the main tables and their shards; the next sync must be full.
    pub fn delete_tables(&mut self) -> Result<SyncReport, SyncError> {
        let start = Instant::now();
        let existing = self.existing_tables()?;
        let batch = self
            .ruleset
            .prepare_delete(&existing, self.socket.next_seq());
        let report = self.send(batch, None, start)?;
        self.ruleset.reset();
        Ok(report)
    }

    /// Which of the ruleset's tables (main and shards) exist now, as (family, shard).
    fn existing_tables(&mut self) -> Result<Vec<(Family, u32)>, SyncError> {
        let mut existing = Vec::new();
        for family in FAMILIES {
            let tables = self
                .socket
                .dump(nft::NFT_MSG_GETTABLE, family.nfproto(), &[])
                .map_err(SyncError::Io)?;
            existing.extend(
                tables
                    .iter()
                    .filter_map(|payload| nft::parse_table_name(payload))
                    .filter_map(|name| self.ruleset.shard_of_table(name))
                    .map(|shard| (family, shard)),
            );
        }
        Ok(existing)
    }

    /// The endpoint rules the kernel holds in this ruleset's tables, service by service in
    /// layout order. Tables that do not exist hold nothing; other tables are not read.
    pub fn read_endpoints(&mut self) -> Result<Vec<ProgrammedEndpoint>, SyncError> {
        let mut endpoints = Vec::new();
        for (family, shard) in self.existing_tables()? {
            // A table deleted since it was listed gives an empty answer.
            let rules = self
                .socket
                .dump(
                    nft::NFT_MSG_GETRULE,
                    family.nfproto(),
                    &[(nft::NFTA_RULE_TABLE, self.ruleset.table_name(shard))],
                )
                .map_err(SyncError::Io)?;
            endpoints.extend(rules.iter().filter_map(|payload| {
                ruleset::parse_endpoint_rule(family, &nft::parse_rule(payload)?)
            }));
        }
        // Stable: each service's endpoints keep the order of its chain.
        endpoints.sort_by(|a, b| a.service().cmp(&b.service()));
        Ok(endpoints)
    }

    fn send(
        &mut self,
        batch: PreparedBatch,
        change: Option<PendingChange>,
        start: Instant,
    ) -> Result<SyncReport, SyncError> {
        let summary = batch.summary;
        if summary.messages > 0 {
            let outcome = self
                .socket
                .send_batch(&batch.wire, &batch.tags, batch.first_seq)
                .map_err(SyncError::Io)?;
            if let Err(error) = outcome {
                return Err(SyncError::Rejected {
                    errno: error.errno,
                    object: batch.describe(error.tag),
                    detail: error.message,
                });
            }
        }
        if let Some(change) = change {
            self.ruleset.commit(change);
        }
        Ok(SyncReport {
            summary,
            elapsed: start.elapsed(),
        })
    }
}

#[cfg(feature = "python")]
pub mod py {
    //! `ServicePort`, `Dataplane` and `NftError` for Python (stubs in python/waolb/_native.pyi).

    use std::net::IpAddr;

    use pyo3::create_exception;
    use pyo3::exceptions::{PyOSError, PyValueError};
    use pyo3::prelude::*;
    use pyo3::types::PyDict;

    use super::{SyncError, SyncReport};
    use crate::nft::Family;
    use crate::ruleset::{Endpoint, Protocol, ServicePort as NativeServicePort};

    create_exception!(
        _native,
        NftError,
        PyOSError,
        "The kernel rejected a batch; nothing was changed."
    );

    fn to_py_err(err: SyncError) -> PyErr {
        match err {
            SyncError::Invalid(problem) => PyValueError::new_err(problem),
            SyncError::Rejected {
                errno, ref object, ..
            } => Python::attach(|py| {
                let exc = NftError::new_err((errno, err.to_string()));
                let value = exc.value(py);
                match value.setattr("object", object.as_str()) {
                    Ok(()) => exc,
                    Err(e) => e,
                }
            }),
            SyncError::Io(io) => {
                PyOSError::new_err((io.raw_os_error().unwrap_or(0), format!("netlink: {io}")))
            }
        }
    }

    fn family_number(family: Family) -> u8 {
        match family {
            Family::Ip => 4,
            Family::Ip6 => 6,
        }
    }

    /// One Service port of one IP family, with its endpoints in columns.
    #[pyclass(frozen, eq, module = "waolb._native")]
    #[derive(PartialEq)]
    pub struct ServicePort {
        inner: NativeServicePort,
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
            let subject = format!("service {namespace}/{name}:{port_name}");
            let fail = |problem: String| PyValueError::new_err(format!("{subject}: {problem}"));
            // Integers of any size arrive here; a value that does not fit is named, not an
            // OverflowError from deep inside the conversion.
            let integer = |value: &Bound<'_, PyAny>, what: &str| {
                value
                    .extract::<i64>()
                    .map_err(|_| fail(format!("{what} {value} is not an integer in range")))
            };
            let integers = |values: &Bound<'_, PyAny>, what: &str| -> PyResult<Vec<i64>> {
                values
                    .try_iter()?
                    .map(|item| integer(&item?, what))
                    .collect()
            };
            let family = integer(family, "IP family")?;
            let port = integer(port, "service port")?;
            let endpoint_ports = integers(endpoint_ports, "endpoint port")?;
            let weights = integers(weights, "endpoint weight")?;
            let family = match family {
                4 => Family::Ip,
                6 => Family::Ip6,
                other => return Err(fail(format!("IP family {other} is unknown (use 4 or 6)"))),
            };
            let protocol = Protocol::parse(protocol).map_err(fail)?;
            let parse_ip = |text: &str, what: &str| {
                text.parse::<IpAddr>()
                    .map_err(|_| fail(format!("{what} {text:?} is not an IP address")))
            };
            let parse_port = |value: i64, what: &str| match u16::try_from(value) {
                Ok(port) if port > 0 => Ok(port),
                _ => Err(fail(format!("{what} {value} is outside 1..65535"))),
            };
            if endpoint_ips.len() != endpoint_ports.len() || endpoint_ips.len() != weights.len() {
                return Err(fail(format!(
                    "endpoint columns differ in length: {} addresses, {} ports, {} weights",
                    endpoint_ips.len(),
                    endpoint_ports.len(),
                    weights.len()
                )));
            }
            let mut endpoints = Vec::with_capacity(endpoint_ips.len());
            for ((ip, port), weight) in endpoint_ips.iter().zip(endpoint_ports).zip(weights) {
                let addr = parse_ip(ip, "endpoint address")?;
                let weight = u32::try_from(weight).map_err(|_| {
                    fail(format!(
                        "endpoint {ip} has weight {weight}, outside 0..{}",
                        u32::MAX
                    ))
                })?;
                endpoints.push(Endpoint {
                    addr,
                    port: parse_port(port, &format!("endpoint {ip} port"))?,
                    weight,
                });
            }
            let inner = NativeServicePort {
                namespace,
                name,
                port_name,
                protocol,
                family,
                cluster_ip: parse_ip(cluster_ip, "cluster IP")?,
                port: parse_port(port, "service port")?,
                endpoints,
            };
            inner.validate().map_err(PyValueError::new_err)?;
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

        fn __repr__(&self) -> String {
            format!(
                "ServicePort({}/{}:{} {} {} {}:{}, {} endpoints)",
                self.inner.namespace,
                self.inner.name,
                self.inner.port_name,
                self.inner.protocol.name(),
                self.inner.family.name(),
                self.inner.cluster_ip,
                self.inner.port,
                self.inner.endpoints.len()
            )
        }
    }

    /// Owns the nf_tables tables named `table` and `table-shard-<n>` (families ip and ip6)
    /// in the current netns.
    #[pyclass(module = "waolb._native")]
    pub struct Dataplane {
        inner: super::Dataplane,
    }

    fn stats(py: Python<'_>, report: SyncReport) -> PyResult<Bound<'_, PyDict>> {
        let dict = PyDict::new(py);
        dict.set_item("messages", report.summary.messages)?;
        dict.set_item("bytes", report.summary.bytes)?;
        dict.set_item("services", report.summary.services)?;
        dict.set_item("seconds", report.elapsed.as_secs_f64())?;
        Ok(dict)
    }

    fn natives(services: Vec<PyRef<'_, ServicePort>>) -> Vec<NativeServicePort> {
        services.iter().map(|s| s.inner.clone()).collect()
    }

    #[pymethods]
    impl Dataplane {
        #[new]
        #[pyo3(signature = (table = "wao-loadbalancer", masquerade_bit = 14))]
        fn new(table: &str, masquerade_bit: u32) -> PyResult<Self> {
            Ok(Dataplane {
                inner: super::Dataplane::new(table, masquerade_bit).map_err(to_py_err)?,
            })
        }

        #[getter]
        fn table(&self) -> &str {
            self.inner.ruleset().table()
        }

        /// Full sync: the tables' contents become exactly `services`, in one transaction.
        fn replace<'py>(
            &mut self,
            py: Python<'py>,
            services: Vec<PyRef<'py, ServicePort>>,
        ) -> PyResult<Bound<'py, PyDict>> {
            let services = natives(services);
            let inner = &mut self.inner;
            let report = py.detach(|| inner.replace(services)).map_err(to_py_err)?;
            stats(py, report)
        }

        /// Partial sync: add or change `upsert`, delete `remove`; nothing else is touched.
        fn apply<'py>(
            &mut self,
            py: Python<'py>,
            upsert: Vec<PyRef<'py, ServicePort>>,
            remove: Vec<PyRef<'py, ServicePort>>,
        ) -> PyResult<Bound<'py, PyDict>> {
            let upsert = natives(upsert);
            let remove = remove.iter().map(|s| s.inner.id()).collect();
            let inner = &mut self.inner;
            let report = py
                .detach(|| inner.apply(upsert, remove))
                .map_err(to_py_err)?;
            stats(py, report)
        }

        /// The endpoint rules the kernel holds, one dict per rule (`waolb weights`).
        fn read_endpoints<'py>(&mut self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
            let inner = &mut self.inner;
            let endpoints = py.detach(|| inner.read_endpoints()).map_err(to_py_err)?;
            endpoints
                .into_iter()
                .map(|e| {
                    let dict = PyDict::new(py);
                    dict.set_item("family", family_number(e.family))?;
                    dict.set_item("namespace", e.namespace)?;
                    dict.set_item("name", e.name)?;
                    dict.set_item("protocol", e.protocol.name())?;
                    dict.set_item("port_name", e.port_name)?;
                    dict.set_item("ip", e.addr.to_string())?;
                    dict.set_item("port", e.port)?;
                    dict.set_item("weight", e.weight)?;
                    dict.set_item("total", e.total)?;
                    Ok(dict)
                })
                .collect()
        }

        /// Deletes the tables, main and shards (`--cleanup`); the next sync must be full.
        fn delete_tables(&mut self, py: Python<'_>) -> PyResult<()> {
            let inner = &mut self.inner;
            py.detach(|| inner.delete_tables()).map_err(to_py_err)?;
            Ok(())
        }
    }

    pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add_class::<ServicePort>()?;
        m.add_class::<Dataplane>()?;
        m.add("NftError", m.py().get_type::<NftError>())?;
        Ok(())
    }
}
