//! Exceptions, and the service port keys they and the results carry, for Python.

use pyo3::create_exception;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;

use crate::dataplane::SyncError;
use crate::nft::Family;
use crate::ruleset::{InvalidPort, Protocol, ServiceId, Subject};

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
pub type PortKey = (u8, String, String, String, &'static str);

pub fn family_number(family: Family) -> u8 {
    match family {
        Family::Ip => 4,
        Family::Ip6 => 6,
    }
}

pub fn port_key(id: &ServiceId) -> PortKey {
    (
        family_number(id.family),
        id.namespace.clone(),
        id.name.clone(),
        id.port_name.clone(),
        id.protocol.kubernetes_name(),
    )
}

pub fn service_id(key: (i64, String, String, String, String)) -> PyResult<ServiceId> {
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

pub fn to_py_err(err: SyncError) -> PyErr {
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

pub fn invalid_port(py: Python<'_>, invalid: &InvalidPort) -> PyErr {
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
